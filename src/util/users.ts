/** User and group names from /etc/passwd and /etc/group, for messages that name a process's owner. */
import { readFile } from 'node:fs/promises';

/** The name of an id in a passwd or group file (both are name:password:id:…), or undefined. Pure. */
export function nameForId(text: string, id: number): string | undefined {
  for (const line of text.split('\n')) {
    const [name, , field] = line.split(':');
    if (name && !name.startsWith('#') && field !== undefined && /^\d+$/.test(field) && Number(field) === id) return name;
  }
  return undefined;
}

/** The name of a user (or group) on this host; undefined where the file or the entry is missing (e.g. a container's own ids). */
export async function idName(kind: 'user' | 'group', id: number): Promise<string | undefined> {
  const text = await readFile(kind === 'user' ? '/etc/passwd' : '/etc/group', 'utf8').catch(() => '');
  return nameForId(text, id);
}
