/**
 * A running process's memory as CRIU would dump it, read by cedana itself (no freeze, no kernel
 * dirty tracking): the present pages of its private mappings, found through /proc/PID/pagemap, their
 * bytes read through /proc/PID/mem in large runs, each page hashed.
 *
 * Which pages (CRIU 4.2, criu/mem.c, read from its source; not copied): CRIU dumps the pages of
 * private mappings (private anonymous and private file-backed, any protection: its parasite makes a
 * PROT_NONE area readable to dump it) whose pagemap entry says present (bit 63) or swapped (bit 62),
 * except
 *  - pages of a private file mapping not yet copied on write (bit 61, "file page or shared anon"):
 *    the file holds them;
 *  - guard regions (bit 58, MADV_GUARD_INSTALL);
 *  - the shared zero page (CRIU compares the PFN; cedana does not: such pages are read, they are
 *    all zeros, and are sent — correct, a few more bytes);
 *  - shared mappings (`s` in maps): shared anonymous memory goes to CRIU's shmem images, shared file
 *    mappings are the file's own;
 *  - [vsyscall] (above the task size), [vvar]/[vvar_vclock]; [vdso] is left out here too (CRIU
 *    handles it itself and sends its two pages in the final dump anyway).
 * Left out by cedana on purpose: hugetlb mappings (CRIU restores those only from the top image, never
 * through a parent: the final dump ships them whole) and device mappings under /dev (VM_IO/PFNMAP:
 * /proc/PID/mem refuses them).
 *
 * A page that changes between the pagemap read and the content read is sent as read: the round's
 * hash is of the bytes sent, so the next round compares against what the target holds. A page
 * unmapped meanwhile (a read error) is dropped from the round.
 */
import { closeSync, openSync, read as readCb, readSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createHash } from 'node:crypto';

export const PAGE_SIZE = 4096;
/** Hash bytes kept per page (a truncated SHA-256: 128 bits). */
export const HASH_BYTES = 16;

/** High 32 bits of a pagemap entry (bits 32..63). */
const PM_PRESENT = 0x80000000;
const PM_SWAP = 0x40000000;
const PM_FILE = 0x20000000;
const PM_GUARD = 0x04000000;

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

const SPECIAL = new Set(['[vsyscall]', '[vvar]', '[vvar_vclock]', '[vdso]', '[uprobes]']);

/**
 * Whether the pages of this mapping belong in a content round (see the module comment). Pure.
 * `hugetlbMounts`: the mount points of hugetlbfs.
 */
export function isRoundVma(v: Vma, hugetlbMounts: string[] = []): boolean {
  if (v.perms[3] !== 'p') return false;
  if (SPECIAL.has(v.path)) return false;
  if (v.path.startsWith('/anon_hugepage') || hugetlbMounts.some((mp) => v.path.startsWith(`${mp}/`))) return false;
  if (v.path.startsWith('/dev/') && !v.path.startsWith('/dev/shm/') && !v.path.startsWith('/dev/zero')) return false;
  return true;
}

export async function hugetlbMountPoints(): Promise<string[]> {
  return (await readFile('/proc/self/mounts', 'utf8').catch(() => ''))
    .split('\n')
    .map((l) => l.split(' '))
    .filter((f) => f[2] === 'hugetlbfs')
    .map((f) => f[1]!.replace(/\\040/g, ' '));
}

/** The mappings of `pid` whose pages a round carries, in address order. */
export async function roundVmas(pid: number): Promise<Vma[]> {
  const [maps, mounts] = await Promise.all([readFile(`/proc/${pid}/maps`, 'utf8'), hugetlbMountPoints()]);
  return parseMaps(maps).filter((v) => isRoundVma(v, mounts));
}

/**
 * Which pages of a pagemap slice CRIU would dump: `pm` holds the raw little-endian u64 entries,
 * `fileBacked` whether the mapping is a private file mapping. Writes 1/0 per page into `out`. Pure.
 */
export function selectPages(pm: Uint32Array, pages: number, fileBacked: boolean, out: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < pages; i++) {
    const hi = pm[2 * i + 1]!;
    let take = (hi & (PM_PRESENT | PM_SWAP)) !== 0 && (hi & PM_GUARD) === 0;
    if (take && fileBacked && (hi & PM_FILE) !== 0) take = false;
    out[i] = take ? 1 : 0;
    if (take) n++;
  }
  return n;
}

/** Time spent per stage (milliseconds), summed over a read. */
export interface ReadTimings {
  maps: number;
  pagemap: number;
  mem: number;
  hash: number;
}

/** One run of consecutive pages read from the process: their bytes and their hashes. */
export interface PageRun {
  /** Index of the run's mapping among the round's (runs of different mappings never merge). */
  vma: number;
  vaddr: number;
  pages: number;
  /** pages * PAGE_SIZE bytes, a buffer of its own (never reused by the reader). */
  data: Buffer;
  /** pages * HASH_BYTES bytes (its own buffer, 4-byte aligned). */
  hashes: Buffer;
}

/** SHA-256 of each page of `data`, its first HASH_BYTES bytes into `out` at the page's index. */
export function hashPages(data: Buffer, pages: number, out: Buffer): void {
  for (let i = 0; i < pages; i++) {
    const d = createHash('sha256').update(data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE)).digest();
    d.copy(out, i * HASH_BYTES, 0, HASH_BYTES);
  }
}

export interface ReadOptions {
  /** Pages per content read (and most pages of one run). Default 1024 (4 MiB). */
  chunkPages?: number;
  /** Hash the pages (default true). */
  hash?: boolean;
  timings?: ReadTimings;
}

const pread = (fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> =>
  new Promise((res, rej) => readCb(fd, buf, off, len, pos, (e, n) => (e ? rej(e) : res(n))));

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/**
 * The process's pages a round carries, in ascending address order, as runs of at most chunkPages
 * consecutive pages (a run never crosses a mapping's end). The next content read runs in the thread
 * pool while the caller's work on a run (hashing here, sending there) runs on the main thread.
 */
export async function* readPages(pid: number, opts: ReadOptions = {}): AsyncGenerator<PageRun> {
  const chunk = opts.chunkPages ?? 1024;
  const t = opts.timings;
  let t0 = now();
  const vmas = await roundVmas(pid);
  if (t) t.maps += now() - t0;
  const pmFd = openSync(`/proc/${pid}/pagemap`, 'r');
  const memFd = openSync(`/proc/${pid}/mem`, 'r');
  // Runs to read, found ahead; their reads are started one ahead of the consumer.
  type Pending = { vma: number; vaddr: number; pages: number; read: Promise<Buffer | undefined> };
  let ahead: Pending | undefined;
  try {
    const pmBuf = Buffer.allocUnsafe(chunk * 8);
    const pm = new Uint32Array(pmBuf.buffer, pmBuf.byteOffset, chunk * 2);
    const sel = new Uint8Array(chunk);
    const start = (vma: number, vaddr: number, pages: number): Pending => {
      const buf = Buffer.allocUnsafeSlow(pages * PAGE_SIZE);
      const read = (async () => {
        const s = now();
        let got = 0;
        try {
          while (got < buf.length) {
            const n = await pread(memFd, buf, got, buf.length - got, vaddr + got);
            if (n === 0) break;
            got += n;
          }
        } catch {
          // A page of the run went away (unmapped, or truncated file): end the run before it.
        }
        if (t) t.mem += now() - s;
        return got === buf.length ? buf : got >= PAGE_SIZE ? buf.subarray(0, got - (got % PAGE_SIZE)) : undefined;
      })();
      return { vma, vaddr, pages, read };
    };
    const finish = async (p: Pending): Promise<PageRun | undefined> => {
      const data = await p.read;
      if (!data) return undefined;
      const pages = data.length / PAGE_SIZE;
      const hashes = Buffer.allocUnsafeSlow(pages * HASH_BYTES);
      if (opts.hash !== false) {
        const s = now();
        hashPages(data, pages, hashes);
        if (t) t.hash += now() - s;
      }
      return { vma: p.vma, vaddr: p.vaddr, pages, data, hashes };
    };
    for (const [vi, v] of vmas.entries()) {
      const fileBacked = v.path !== '' && !v.path.startsWith('[');
      for (let base = v.start; base < v.end; base += chunk * PAGE_SIZE) {
        const pages = Math.min(chunk, (v.end - base) / PAGE_SIZE);
        t0 = now();
        let got = 0;
        try {
          got = readSync(pmFd, pmBuf, 0, pages * 8, Math.floor(base / PAGE_SIZE) * 8);
        } catch {
          got = 0;
        }
        const have = Math.floor(got / 8);
        selectPages(pm, have, fileBacked, sel);
        if (t) t.pagemap += now() - t0;
        // Runs of selected pages in this slice.
        let i = 0;
        while (i < have) {
          if (!sel[i]) {
            i++;
            continue;
          }
          let j = i + 1;
          while (j < have && sel[j]) j++;
          const prev = ahead;
          ahead = start(vi, base + i * PAGE_SIZE, j - i);
          i = j;
          if (prev) {
            const r = await finish(prev);
            if (r) yield r;
          }
        }
      }
    }
    if (ahead) {
      const last = ahead;
      const r = await finish(last);
      if (r) yield r;
    }
  } finally {
    // A consumer that stopped early leaves a read in flight: let it end before its descriptor closes.
    await ahead?.read.catch(() => undefined);
    closeSync(pmFd);
    closeSync(memFd);
  }
}

/** The PID a process has inside its own PID namespace (what CRIU names it by), from NSpid. */
export async function nsPid(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const last = /^NSpid:\s*(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/).pop();
  return last ? Number(last) : pid;
}
