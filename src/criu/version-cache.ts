/**
 * `criu --version`, cached: every command that runs CRIU reads its version, and a CRIU binary does
 * not change between commands. The cache is one file, /run/cedana/criu-version.json (tmpfs: gone at
 * reboot; CEDANA_CACHE_DIR moves it), in a directory of mode 0700 and a file of mode 0600, both
 * owned by the user: a cache anyone else could write is ignored, never trusted. Each entry is keyed
 * by the binary's path and by what a replaced or rewritten binary changes — device, inode, size,
 * mtime and ctime (ctime moves even when a copy keeps the old mtime) — so another CRIU at the same
 * path is always asked again. Any failure to read or write the cache only means asking CRIU.
 */
import { lstat, mkdir, open, readFile, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';

export function versionCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  return env.CEDANA_CACHE_DIR || '/run/cedana';
}

export const VERSION_CACHE_FILE = 'criu-version.json';

interface Entry {
  key: string;
  out: string;
}

/** The identity of the binary at `path` (symlinks followed): changes whenever the file does. */
export async function binaryKey(path: string): Promise<string | undefined> {
  try {
    const s = await stat(path, { bigint: true });
    return [path, s.dev, s.ino, s.size, s.mtimeNs, s.ctimeNs].join(':');
  } catch {
    return undefined;
  }
}

/** A file or directory only this user can write, or not at all. */
async function private_(path: string, dir: boolean): Promise<boolean> {
  try {
    const s = await lstat(path);
    const uid = process.getuid?.();
    return (dir ? s.isDirectory() : s.isFile()) && s.uid === uid && (s.mode & 0o077) === 0;
  } catch {
    return false;
  }
}

async function readEntries(dir: string): Promise<Record<string, Entry>> {
  const file = join(dir, VERSION_CACHE_FILE);
  if (!(await private_(dir, true)) || !(await private_(file, false))) return {};
  try {
    const o = JSON.parse(await readFile(file, 'utf8')) as unknown;
    return o && typeof o === 'object' && !Array.isArray(o) ? (o as Record<string, Entry>) : {};
  } catch {
    return {};
  }
}

/** The output `criu --version` gave for this very binary, if cached. */
export async function cachedVersionOutput(path: string, key: string, env: NodeJS.ProcessEnv = process.env): Promise<string | undefined> {
  const e = (await readEntries(versionCacheDir(env)))[path];
  return e && e.key === key && typeof e.out === 'string' ? e.out : undefined;
}

/** Records the output of `criu --version` for the binary that had `key` before it ran. Never fails. */
export async function storeVersionOutput(path: string, key: string, out: string, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const dir = versionCacheDir(env);
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    if (!(await private_(dir, true))) return;
    const entries = await readEntries(dir);
    // The binary must not have changed while it ran: else the output may be the old one's.
    if ((await binaryKey(path)) !== key) return;
    entries[path] = { key, out };
    const tmp = join(dir, `.${VERSION_CACHE_FILE}.${process.pid}`);
    const fh = await open(tmp, 'w', 0o600);
    try {
      await fh.chmod(0o600);
      await fh.writeFile(JSON.stringify(entries));
    } finally {
      await fh.close();
    }
    await rename(tmp, join(dir, VERSION_CACHE_FILE));
  } catch {
    // A cache that cannot be written is no cache.
  }
}
