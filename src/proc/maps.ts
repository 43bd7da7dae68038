/**
 * A process's mappings as /proc shows them, and the facts CRIU's page handling depends on: which
 * mappings are hugetlb (CRIU restores their pages from the image's own pages file only, never
 * through a parent) and the PID CRIU names a process by.
 */
import { readFile } from 'node:fs/promises';

export interface Vma {
  start: number;
  end: number;
  /** e.g. "rw-p". */
  perms: string;
  /** The path or [name], '' when anonymous. */
  path: string;
}

/** /proc/PID/maps, parsed. Pure. */
export function parseMaps(text: string): Vma[] {
  const out: Vma[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (!m) continue;
    out.push({ start: parseInt(m[1]!, 16), end: parseInt(m[2]!, 16), perms: m[3]!, path: m[4]! });
  }
  return out;
}

/** Whether a mapping is hugetlb: anonymous MAP_HUGETLB, or a file on a hugetlbfs mount. Pure. */
export function isHugetlb(v: Pick<Vma, 'path'>, hugetlbMounts: string[]): boolean {
  return v.path.startsWith('/anon_hugepage') || hugetlbMounts.some((mp) => v.path.startsWith(`${mp}/`));
}

export async function hugetlbMountPoints(): Promise<string[]> {
  return (await readFile('/proc/self/mounts', 'utf8').catch(() => ''))
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'hugetlbfs')
    .map((f) => f[1]!.replace(/\\040/g, ' '));
}

/** The PID a process has inside its own PID namespace (what CRIU names it by), from NSpid. */
export async function nsPid(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const last = /^NSpid:\s*(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/).pop();
  return last ? Number(last) : pid;
}

/**
 * Per process of the tree, keyed by its PID as CRIU names it: the address ranges [start, end) of its
 * hugetlb mappings. A process without any is left out.
 */
export async function hugetlbRanges(pids: number[]): Promise<Map<number, [number, number][]>> {
  const mounts = await hugetlbMountPoints();
  const out = new Map<number, [number, number][]>();
  for (const pid of pids) {
    const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '');
    const ranges = parseMaps(maps).filter((v) => isHugetlb(v, mounts)).map((v): [number, number] => [v.start, v.end]);
    if (ranges.length > 0) out.set(await nsPid(pid).catch(() => pid), ranges);
  }
  return out;
}

/** Whether [vaddr, vaddr + bytes) overlaps one of `ranges` (hugetlbRanges' [start, end) of a process). Pure. */
export function touchesRange(ranges: [number, number][] | undefined, vaddr: number, bytes: number): boolean {
  return ranges !== undefined && ranges.some(([s, e]) => vaddr < e && s < vaddr + bytes);
}
