/**
 * Path remapping on restore (--map-path OLD=NEW): the open files, working directories, executables
 * and mapped files that lived under OLD are restored from NEW. CRIU reopens them all by the names in
 * files.img, so rewriting those names is enough; the rest of the image is untouched.
 */
import { mkdir, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { CedanaError } from '../errors.js';
import { decodeImage, encodeImage, type DecodedImage, type ImageEntry } from './criu/codec.js';

export interface PathMap {
  from: string;
  to: string;
}

export interface Remapped {
  id: number;
  from: string;
  to: string;
  /** The size CRIU recorded at dump time, when it did. */
  size?: number;
}

/** "OLD=NEW", both absolute. Pure. */
export function parsePathMap(text: string): PathMap {
  const i = text.indexOf('=');
  const [from, to] = i < 0 ? ['', ''] : [text.slice(0, i), text.slice(i + 1)];
  if (!from.startsWith('/') || !to.startsWith('/')) {
    throw new CedanaError('USAGE', `--map-path ${JSON.stringify(text)}: expected OLD=NEW with two absolute paths`, { hint: 'e.g. --map-path /srv/old=/srv/new' });
  }
  const norm = (p: string): string => (p === '/' ? p : posix.normalize(p).replace(/\/+$/, ''));
  return { from: norm(from), to: norm(to) };
}

/** The path under the first map that covers it (the path itself or below), or undefined. Pure. */
export function remapPath(path: string, maps: PathMap[]): string | undefined {
  for (const m of maps) {
    if (path === m.from) return m.to;
    const prefix = m.from === '/' ? '/' : `${m.from}/`;
    if (path.startsWith(prefix)) return posix.join(m.to, path.slice(prefix.length));
  }
  return undefined;
}

/** files.img with every regular file's name remapped; the entries it changed. Pure. */
export function remapFilesImage(files: DecodedImage, maps: PathMap[]): { image: DecodedImage; changed: Remapped[] } {
  const changed: Remapped[] = [];
  const entries = files.entries.map((e): ImageEntry => {
    if (e.type === null) return e;
    const value = e.value as { id?: number; reg?: { name?: unknown; size?: bigint | number } };
    const name = value.reg?.name;
    if (typeof name !== 'string') return e;
    const to = remapPath(name, maps);
    if (to === undefined) return e;
    const size = value.reg!.size === undefined ? undefined : Number(value.reg!.size);
    changed.push({ id: Number(value.id ?? 0), from: name, to, size });
    // A new entry object: the codec re-encodes it instead of writing back the original bytes.
    return { ...e, value: { ...e.value, reg: { ...value.reg, name: to } } as typeof e.value };
  });
  return { image: { ...files, entries }, changed };
}

/**
 * A copy of the image for CRIU with files.img remapped: links to every other file of `dir` and a
 * rewritten files.img, in `into`. Each remapped path must exist, and a file must have the size CRIU
 * recorded at dump time (CRIU would refuse it, less clearly).
 */
export async function writeRemappedImage(dir: string, into: string, maps: PathMap[]): Promise<{ dir: string; changed: Remapped[] }> {
  const files = decodeImage(await readFile(join(dir, 'files.img')), 'files.img');
  const { image, changed } = remapFilesImage(files, maps);
  const problems: string[] = [];
  for (const c of changed) {
    const st = await stat(c.to).catch(() => undefined);
    if (!st) problems.push(`${c.to} (for ${c.from}) does not exist`);
    else if (st.isFile() && c.size !== undefined && st.size !== c.size) problems.push(`${c.to} has ${st.size} bytes, ${c.from} had ${c.size} at the dump`);
  }
  if (problems.length > 0) {
    throw new CedanaError('REMAP_INVALID', `--map-path: ${[...new Set(problems)].slice(0, 5).join('; ')}`, {
      hint: 'copy the files to the new place as they were at the dump, or fix the mapping',
      details: { problems: [...new Set(problems)] },
    });
  }
  await mkdir(into, { mode: 0o700 });
  for (const name of await readdir(dir)) {
    if (name !== 'files.img') await symlink(join(dir, name), join(into, name));
  }
  await writeFile(join(into, 'files.img'), encodeImage(image), { mode: 0o600 });
  return { dir: into, changed };
}
