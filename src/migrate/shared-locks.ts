/**
 * File locks on storage both hosts see (NFS, a shared volume). The target's restore must take the
 * tree's locks again while the frozen source still holds them: a read lock beside a read lock is
 * fine, but a write lock can never be had there, and CRIU waits for it forever. Whether a file is
 * shared is found out, not guessed: a probe file written next to it here is looked for there.
 */
import { randomBytes } from 'node:crypto';
import { rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CedanaError } from '../errors.js';
import { describeLock, type HeldLock } from '../proc/locks.js';

export interface Probe {
  /** The locked file it stands beside. */
  path: string;
  /** The probe file here. */
  probe: string;
  token: string;
}

/** Writes a probe beside each locked file (skipping directories this host cannot write to). */
export async function placeProbes(paths: string[]): Promise<Probe[]> {
  const out: Probe[] = [];
  for (const path of [...new Set(paths)]) {
    const token = randomBytes(16).toString('hex');
    const probe = join(dirname(path), `.cedana-probe-${token.slice(0, 12)}`);
    try {
      await writeFile(probe, token, { flag: 'wx', mode: 0o600 });
      out.push({ path, probe, token });
    } catch {
      // A read-only or vanished directory: this file is not judged (the restore still fails fast).
    }
  }
  return out;
}

export async function removeProbes(probes: Probe[]): Promise<void> {
  await Promise.all(probes.map((p) => rm(p.probe, { force: true })));
}

/**
 * Locks on shared files: a write lock refuses the migration before anything is frozen; read locks
 * are noted (the source could take a write lock by the time it freezes: then the target's restore
 * fails fast instead). Returns the notes. Pure.
 */
export function judgeSharedLocks(locks: HeldLock[], shared: Set<string>, target: string): string[] {
  const onShared = locks.filter((l) => shared.has(l.path));
  const writes = onShared.filter((l) => l.type !== 'READ');
  if (writes.length > 0) {
    throw new CedanaError('SHARED_FILE_LOCKED', `${writes.map(describeLock).join('; ')}: ${target} sees the same file, and cannot take that lock while the frozen source holds it`, {
      hint: 'move it when it holds no write lock, or checkpoint instead: cedana dump (the source ends and lets go of its locks), then cedana restore on the target',
      details: { files: [...new Set(writes.map((l) => l.path))] },
    });
  }
  if (onShared.length === 0) return [];
  return [
    `file locks on storage ${target} sees too: ${[...new Set(onShared.map((l) => l.path))].join(', ')} (read locks only now; should the source hold a write lock there when it freezes, the restore fails fast and the source resumes)`,
  ];
}
