import { access, lstat, mkdir, mkdtemp, open, readdir } from 'node:fs/promises';
import { constants } from 'node:fs';
import { delimiter, join } from 'node:path';
import { tmpdir } from 'node:os';

export async function findOnPath(name: string, pathEnv = process.env.PATH ?? ''): Promise<string | undefined> {
  if (name.includes('/')) return (await isExecutable(name)) ? name : undefined;
  for (const dir of pathEnv.split(delimiter)) {
    if (!dir) continue;
    const candidate = join(dir, name);
    if (await isExecutable(candidate)) return candidate;
  }
  return undefined;
}

export async function isExecutable(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** A new private (0700) temporary directory. */
export async function privateTempDir(prefix: string, parent = tmpdir()): Promise<string> {
  await mkdir(parent, { recursive: true });
  return mkdtemp(join(parent, prefix));
}

/** Where failed runs' CRIU logs are kept. */
export function logDir(): string {
  return process.env.CEDANA_LOG_DIR ?? '/var/log/cedana';
}

export function utcStamp(d = new Date()): string {
  return d.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
}

/**
 * Makes a file or a directory tree durable: every regular file below it and every directory is
 * fsync'ed, so that a checkpoint reported saved survives a crash of the host (the case it exists for).
 */
export async function syncTree(path: string): Promise<void> {
  const st = await lstat(path);
  if (st.isDirectory()) {
    for (const e of await readdir(path, { withFileTypes: true })) {
      if (e.isDirectory() || e.isFile()) await syncTree(join(path, e.name));
    }
  } else if (!st.isFile()) {
    return;
  }
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Makes a rename in dir durable. */
export async function syncDirEntry(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
