/**
 * File locks a process tree holds: read from each open file's fdinfo (`lock:` lines, which list the
 * locks that descriptor's owner holds on the file), with the file's path and whether the process
 * also maps it. A restore must take every one again: CRIU 4.2 silently drops a lock on a file the
 * process also has mapped (SQLite's `-shm`), and a lock on a file another host sees too (shared
 * storage) cannot be taken there while the frozen source still holds it.
 */
import { readlinkSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { PROC, readFdinfo, readFds } from './procfs.js';

/** One lock, as the kernel lists it (/proc/locks, fdinfo), with where the tree holds it. */
export interface HeldLock {
  pid: number;
  fd: number;
  path: string;
  /** POSIX, FLOCK, OFDLCK, LEASE… */
  kind: string;
  /** READ or WRITE (UNLCK for a lease being broken). */
  type: string;
  start: string;
  end: string;
  /** major:minor:inode, as /proc/locks writes it (hex:hex:decimal). */
  file: string;
  /** The process also maps the file (CRIU 4.2 does not restore a lock on such a file). */
  mapped: boolean;
}

/** A `lock:` line of fdinfo or a line of /proc/locks (the arrow of a waiter removed). */
export interface LockLine {
  kind: string;
  type: string;
  pid: number;
  file: string;
  start: string;
  end: string;
  waiting: boolean;
}

/** `1: POSIX  ADVISORY  READ 1234 fd:01:5678 128 128` or `1: -> FLOCK …`; undefined for anything else. Pure. */
export function parseLockLine(line: string): LockLine | undefined {
  const f = line.replace(/^lock:\s*/, '').trim().split(/\s+/);
  if (!/^\d+:$/.test(f[0] ?? '')) return undefined;
  const waiting = f[1] === '->';
  const r = f.slice(waiting ? 2 : 1);
  if (r.length < 7) return undefined;
  const [kind, , type, pid, file, start, end] = r as [string, string, string, string, string, string, string];
  if (!/^[0-9a-f]+:[0-9a-f]+:\d+$/.test(file)) return undefined;
  return { kind, type, pid: Number(pid), file, start, end, waiting };
}

/** A st_dev and inode as /proc/locks writes them: the kernel's MAJOR/MINOR split, in hex. Pure. */
export function lockFileId(dev: number | bigint, ino: number | bigint): string {
  const d = BigInt(dev);
  const major = ((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn);
  const minor = (d & 0xffn) | ((d >> 12n) & ~0xffn);
  return `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${BigInt(ino).toString()}`;
}

/** /proc/PID/maps: the `dev inode` of every file mapping (e.g. `fd:01 5678`). Pure. */
export function mappedFiles(maps: string): Set<string> {
  const out = new Set<string>();
  for (const line of maps.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 6 && f[4] !== '0') out.add(`${f[3]}:${f[4]}`);
  }
  return out;
}

/** Every lock the tree's processes hold, through their open descriptors (deduplicated). */
export async function treeLocks(pids: number[]): Promise<HeldLock[]> {
  const out: HeldLock[] = [];
  const seen = new Set<string>();
  for (const pid of pids) {
    let maps: Set<string> | undefined;
    for (const fd of await readFds(pid)) {
      if (!fd.target.startsWith('/')) continue;
      const lines = (await readFdinfo(pid, fd.fd)).split('\n').filter((l) => l.startsWith('lock:'));
      for (const l of lines) {
        const k = parseLockLine(l);
        if (!k) continue;
        const key = `${k.kind} ${k.type} ${k.pid} ${k.file} ${k.start} ${k.end}`;
        if (seen.has(key)) continue;
        seen.add(key);
        maps ??= mappedFiles(await readFile(`${PROC}/${pid}/maps`, 'utf8').catch(() => ''));
        const [maj, min, ino] = k.file.split(':') as [string, string, string];
        out.push({ pid, fd: fd.fd, path: fd.target.replace(/ \(deleted\)$/, ''), kind: k.kind, type: k.type, start: k.start, end: k.end, file: k.file, mapped: maps.has(`${maj}:${min}:${ino}`) });
      }
    }
  }
  return out;
}

/** How a lock reads in a message: `POSIX READ lock on /data/db-shm (bytes 128-128) held by PID 42`. Pure. */
export function describeLock(l: Pick<HeldLock, 'kind' | 'type' | 'path' | 'start' | 'end' | 'pid'>): string {
  return `${l.kind} ${l.type} lock on ${l.path} (bytes ${l.start}-${l.end}) held by PID ${l.pid}`;
}

/**
 * The expected locks no /proc/locks line holds again after a restore: same kind, type, range and
 * file (found through the restored process's descriptor), owned by the same PID (OFD locks belong
 * to no PID). `fileOf` gives the /proc/locks id of a restored descriptor. Pure.
 */
export function lostLocks<T extends Pick<HeldLock, 'pid' | 'fd' | 'kind' | 'type' | 'start' | 'end'>>(expected: T[], procLocks: string, fileOf: (pid: number, fd: number) => string | undefined): T[] {
  const held = procLocks.split('\n').map(parseLockLine).filter((l): l is LockLine => !!l && !l.waiting);
  return expected.filter((e) => {
    const file = fileOf(e.pid, e.fd);
    return !held.some((h) => h.kind === e.kind && h.type === e.type && h.start === e.start && h.end === e.end && h.file === file && (e.kind === 'OFDLCK' || h.pid === e.pid));
  });
}

/** The /proc/locks id of a process's descriptor on this host, or undefined when it is not there. */
export function localFileOf(pid: number, fd: number): string | undefined {
  try {
    const st = statSync(`${PROC}/${pid}/fd/${fd}`, { bigint: true });
    return lockFileId(st.dev, st.ino);
  } catch {
    return undefined;
  }
}

/** The path of a process's descriptor on this host (for messages), or `fd N of PID P`. */
export function localPathOf(pid: number, fd: number): string {
  try {
    return readlinkSync(`${PROC}/${pid}/fd/${fd}`);
  } catch {
    return `fd ${fd} of PID ${pid}`;
  }
}
