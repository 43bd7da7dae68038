/**
 * The file locks an image holds (CRIU's filelocks.img), as the kernel lists them in /proc/locks,
 * and the check that a restored tree holds every one of them again. CRIU 4.2 drops some without a
 * word (a lock on a file the process also maps: SQLite's `-shm`), and a program that relies on its
 * lock (SQLite's "am I alone" test) then corrupts its data; a lost lock fails the restore unless
 * the user accepts it (--allow-lost-locks).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CedanaError } from '../errors.js';
import { decodeImage, type MessageEntry } from './criu/codec.js';
import { describeLock, type HeldLock } from '../proc/locks.js';

export type ExpectedLock = Pick<HeldLock, 'pid' | 'fd' | 'kind' | 'type' | 'start' | 'end'>;

/** CRIU's FL_* flags and F_*LCK types, by the names /proc/locks uses. */
const KINDS: Record<number, string> = { 1: 'POSIX', 2: 'FLOCK', 4: 'OFDLCK', 8: 'LEASE' };
const TYPES: Record<number, string> = { 0: 'READ', 1: 'WRITE', 2: 'UNLCK' };

/** The locks of filelocks.img's entries. Pure. */
export function locksOfEntries(entries: MessageEntry[]): ExpectedLock[] {
  return entries.map((e) => {
    const v = e.value as { flag: number; type: number; pid: number; fd: number; start: unknown; len: unknown };
    const start = BigInt(String(v.start));
    const len = BigInt(String(v.len));
    return {
      pid: v.pid,
      fd: v.fd,
      kind: KINDS[v.flag] ?? `flag-${v.flag}`,
      type: TYPES[v.type] ?? `type-${v.type}`,
      start: start.toString(),
      end: len === 0n ? 'EOF' : (start + len - 1n).toString(),
    };
  });
}

/** The locks in an image directory (none when it has no filelocks.img). */
export async function imageLocks(dir: string): Promise<ExpectedLock[]> {
  const buf = await readFile(join(dir, 'filelocks.img')).catch(() => undefined);
  if (!buf) return [];
  return locksOfEntries(decodeImage(buf, 'filelocks.img').entries.filter((e): e is MessageEntry => e.type === 'file_lock_entry'));
}

/** The error for locks a restore did not take again; `where`: "here" or "on HOST". Pure. */
export function locksLost(lost: (ExpectedLock & { path: string })[], where: string): CedanaError {
  return new CedanaError('LOCK_LOST', `the restored tree does not hold ${lost.length === 1 ? 'a file lock' : `${lost.length} file locks`} it held at the dump ${where}: ${lost.map(describeLock).join('; ')}`, {
    hint: 'CRIU 4.2 drops a lock on a file the process also maps (SQLite\'s -shm): another program may then change the file under it. The restored tree was ended; restore with --allow-lost-locks to run it anyway',
    details: { lost: lost.map((l) => ({ pid: l.pid, fd: l.fd, path: l.path, kind: l.kind, type: l.type, start: l.start, end: l.end })) },
  });
}

/**
 * A CRIU action script for the target's restore: at post-restore (restored, not yet run) it checks
 * that every lock of `expected-locks` (lines `pid fd kind type start end`, beside it) is held again
 * — found in /proc/locks on the file the restored descriptor opens — and otherwise writes the lost
 * ones, with their paths, to `lost-locks` and fails, so that CRIU ends the tree before it runs.
 */
export const LOCK_CHECK_SCRIPT = `#!/bin/sh
[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0
here=$(dirname "$0")
: > "$here/lost-locks"
while read -r pid fd kind type start end; do
  id=$(stat -L -c '%d %i' "/proc/$pid/fd/$fd" 2>/dev/null) || id="0 0"
  d=\${id% *}; i=\${id#* }
  f=$(printf '%02x:%02x:%s' $(( (d >> 8) & 4095 )) $(( (d & 255) | ((d >> 12) & 1048320) )) "$i")
  awk -v k="$kind" -v t="$type" -v p="$pid" -v f="$f" -v s="$start" -v e="$end" \\
    '$2 != "->" && $2 == k && $4 == t && $6 == f && $7 == s && $8 == e && (k == "OFDLCK" || $5 == p) { found = 1 } END { exit !found }' /proc/locks \\
    || echo "$pid $fd $kind $type $start $end $(readlink "/proc/$pid/fd/$fd")" >> "$here/lost-locks"
done < "$here/expected-locks"
[ ! -s "$here/lost-locks" ]
`;

/** expected-locks, the list LOCK_CHECK_SCRIPT reads. Pure. */
export function expectedLocksFile(locks: ExpectedLock[]): string {
  return locks.map((l) => `${l.pid} ${l.fd} ${l.kind} ${l.type} ${l.start} ${l.end}\n`).join('');
}

/** The `lost-locks` lines LOCK_CHECK_SCRIPT wrote, back as locks with paths. Pure. */
export function parseLostLocks(text: string): (ExpectedLock & { path: string })[] {
  return text.split('\n').filter(Boolean).map((line) => {
    const [pid, fd, kind, type, start, end, ...path] = line.split(' ');
    return { pid: Number(pid), fd: Number(fd), kind: kind ?? '', type: type ?? '', start: start ?? '', end: end ?? '', path: path.join(' ') || `fd ${fd} of PID ${pid}` };
  });
}
