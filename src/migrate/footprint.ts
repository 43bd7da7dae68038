/**
 * What a process tree needs from a target host: its PIDs, its memory, and the paths it has open
 * (working directories, executables, mapped files, open files).
 */
import { readFile, readlink } from 'node:fs/promises';
import { PROC, readFds } from '../proc/procfs.js';

export interface Footprint {
  pids: number[];
  /** Resident memory of the tree (sum of Rss): what the target must have room for. */
  rssBytes: number;
  /**
   * The memory CRIU will send: anonymous pages (private, and file pages copied on write), swapped
   * ones, and shared memory (Pss_Shmem: each sharer's share, so counted once in all). Rss also
   * counts the libraries' clean pages, which CRIU leaves to the target's files: ~twice as much.
   */
  dumpBytes: number;
  /** Absolute paths that must exist on the target for CRIU to reopen them. */
  paths: string[];
}

/** Paths CRIU reopens by name: pseudo files and deleted files (CRIU carries those itself) are left out. Pure. */
export function pathsToCheck(raw: string[]): string[] {
  const out = new Set<string>();
  for (const p of raw) {
    if (!p.startsWith('/') || p.endsWith(' (deleted)')) continue;
    if (/^\/(proc|sys|dev\/pts)(\/|$)|^\/memfd:/.test(p)) continue; // not /procedures, /system, …
    out.add(p);
  }
  return [...out].sort();
}

/** File paths in /proc/<pid>/maps (column 6 onward), pseudo mappings excluded. Pure. */
export function mappedPaths(maps: string): string[] {
  const out: string[] = [];
  for (const line of maps.split('\n')) {
    const m = /^\S+\s+\S+\s+\S+\s+\S+\s+\d+\s+(\/.*)$/.exec(line);
    if (m) out.push(m[1]!);
  }
  return out;
}

export function rssFromSmapsRollup(text: string): number {
  return kB(text, 'Rss');
}

/** What CRIU dumps of one process, by its smaps_rollup (see Footprint.dumpBytes). Pure. */
export function dumpBytesFromSmapsRollup(text: string): number {
  return kB(text, 'Anonymous') + kB(text, 'Swap') + kB(text, 'Pss_Shmem');
}

const kB = (text: string, field: string): number => {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
  return m ? Number(m[1]) * 1024 : 0;
};

export async function footprint(pids: number[]): Promise<Footprint> {
  let rssBytes = 0;
  let dumpBytes = 0;
  const raw: string[] = [];
  for (const pid of pids) {
    const rollup = await readFile(`${PROC}/${pid}/smaps_rollup`, 'utf8').catch(() => '');
    rssBytes += rssFromSmapsRollup(rollup);
    dumpBytes += dumpBytesFromSmapsRollup(rollup);
    for (const link of ['cwd', 'exe', 'root']) {
      const t = await readlink(`${PROC}/${pid}/${link}`).catch(() => undefined);
      if (t && link !== 'root') raw.push(t);
    }
    raw.push(...mappedPaths(await readFile(`${PROC}/${pid}/maps`, 'utf8').catch(() => '')));
    for (const fd of await readFds(pid)) raw.push(fd.target);
  }
  return { pids: [...pids].sort((a, b) => a - b), rssBytes, dumpBytes, paths: pathsToCheck(raw) };
}
