/**
 * CRIU's restore unlinks whatever socket file sits at the path of each unix socket it is about to
 * bind (criu/sk-unix.c, unlink_sk), early in the restore. When the target sees the source's files
 * (shared storage), that is the source's own socket file: a failed migration would leave the
 * resumed source listening on a socket nobody can find (seen with tmux). So before the target
 * restores, each bound socket file gets a second name (a hard link keeps its inode); after a
 * failure it is put back under its path, after success the second name goes.
 */
import { randomBytes } from 'node:crypto';
import { link, lstat, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

export interface KeptSocket {
  path: string;
  keep: string;
  ino: bigint;
}

export async function keepSocketFiles(paths: string[]): Promise<KeptSocket[]> {
  const out: KeptSocket[] = [];
  for (const path of paths) {
    try {
      const st = await lstat(path, { bigint: true });
      if (!st.isSocket()) continue;
      const keep = join(dirname(path), `.cedana-keep-${randomBytes(6).toString('hex')}`);
      await link(path, keep);
      out.push({ path, keep, ino: st.ino });
    } catch {
      // Gone already, or a directory we cannot write: nothing to keep.
    }
  }
  return out;
}

/** After a failure: each socket file back under its path (where something else, or nothing, is now). */
export async function putBackSocketFiles(kept: KeptSocket[]): Promise<void> {
  for (const k of kept) {
    const now = await lstat(k.path, { bigint: true }).catch(() => undefined);
    if (now?.ino === k.ino) await rm(k.keep, { force: true });
    else await rename(k.keep, k.path).catch(() => undefined);
  }
}

/** After success: the second names go (the target's restore made its own socket files). */
export async function dropKeptSocketFiles(kept: KeptSocket[]): Promise<void> {
  await Promise.all(kept.map((k) => rm(k.keep, { force: true })));
}
