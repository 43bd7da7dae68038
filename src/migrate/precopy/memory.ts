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
 *  - pages mapped to the shared zero page (read but never written): CRIU compares the PFN with the
 *    zero page's; so does cedana, the zero page's PFN found in /proc/kpageflags (KPF_ZERO_PAGE) the
 *    first time a PFN repeats on consecutive pages. Where PFNs are hidden (no CAP_SYS_ADMIN) or
 *    kpageflags cannot be read, such pages are read and sent: all zeros, correct, more bytes;
 *  - shared mappings (`s` in maps): shared anonymous memory goes to CRIU's shmem images, shared file
 *    mappings are the file's own;
 *  - [vsyscall] (above the task size), [vvar]/[vvar_vclock]; [vdso] is left out here too (CRIU
 *    handles it itself and sends its two pages in the final dump anyway).
 * Left out by cedana on purpose: hugetlb mappings (CRIU restores those only from the top image, never
 * through a parent: the final dump ships them whole) and device mappings under /dev (VM_IO/PFNMAP:
 * /proc/PID/mem refuses them).
 *
 * A swapped-out page is read back in by the read (as CRIU's dump would too).
 * A page that changes between the pagemap read and the content read is sent as read: the round's
 * hash is of the bytes sent, so the next round compares against what the target holds. A page
 * unmapped meanwhile (a read error) is dropped from the round.
 */
import { closeSync, openSync, read as readCb, readSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import * as nodeCrypto from 'node:crypto';
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { CedanaError } from '../../errors.js';
import { hugetlbMountPoints, isHugetlb, parseMaps, type Vma } from '../../proc/maps.js';

export { hugetlbMountPoints, nsPid, parseMaps, type Vma } from '../../proc/maps.js';

export const PAGE_SIZE = 4096;
/** Hash bytes kept per page (a truncated SHA-256: 128 bits). */
export const HASH_BYTES = 16;

/** High 32 bits of a pagemap entry (bits 32..63). */
const PM_PRESENT = 0x80000000;
const PM_SWAP = 0x40000000;
const PM_FILE = 0x20000000;
const PM_GUARD = 0x04000000;

const SPECIAL = new Set(['[vsyscall]', '[vvar]', '[vvar_vclock]', '[vdso]', '[uprobes]']);

/**
 * Whether the pages of this mapping belong in a content round (see the module comment). Pure.
 * `hugetlbMounts`: the mount points of hugetlbfs.
 */
export function isRoundVma(v: Vma, hugetlbMounts: string[] = []): boolean {
  if (v.perms[3] !== 'p') return false;
  if (SPECIAL.has(v.path)) return false;
  if (isHugetlb(v, hugetlbMounts)) return false;
  if (v.path.startsWith('/dev/') && !v.path.startsWith('/dev/shm/') && !v.path.startsWith('/dev/zero')) return false;
  return true;
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
export function selectPages(pm: Uint32Array, pages: number, fileBacked: boolean, out: Uint8Array, zeroPfn = -1): number {
  let n = 0;
  for (let i = 0; i < pages; i++) {
    const hi = pm[2 * i + 1]!;
    let take = (hi & (PM_PRESENT | PM_SWAP)) !== 0 && (hi & PM_GUARD) === 0;
    if (take && fileBacked && (hi & PM_FILE) !== 0) take = false;
    if (take && zeroPfn >= 0 && (hi & PM_PRESENT) !== 0 && pfnOf(pm, i) === zeroPfn) take = false;
    out[i] = take ? 1 : 0;
    if (take) n++;
  }
  return n;
}

/** The PFN of a present page's entry (bits 0..54; 0 where the kernel hides PFNs). */
export function pfnOf(pm: Uint32Array, i: number): number {
  return (pm[2 * i + 1]! & 0x7fffff) * 0x100000000 + pm[2 * i]!;
}

/** The first PFN (non-zero) that two consecutive present pages of the slice share, not in `seen`. Pure. */
export function repeatedPfn(pm: Uint32Array, pages: number, seen: Set<number>): number | undefined {
  let last = -1;
  for (let i = 0; i < pages; i++) {
    if ((pm[2 * i + 1]! & PM_PRESENT) === 0) {
      last = -1;
      continue;
    }
    const pfn = pfnOf(pm, i);
    if (pfn !== 0 && pfn === last && !seen.has(pfn)) return pfn;
    last = pfn;
  }
  return undefined;
}

/** KPF_ZERO_PAGE in /proc/kpageflags. */
const KPF_ZERO_PAGE = 24;

/**
 * Finds the zero page's PFN among the PFNs repeated in a pagemap slice (the zero page is mapped at
 * every never-written address of an anonymous mapping), asking /proc/kpageflags about each once.
 */
class ZeroPage {
  pfn = -1;
  private readonly seen = new Set<number>();
  private fd: number | undefined;

  constructor() {
    try {
      this.fd = openSync('/proc/kpageflags', 'r');
    } catch {
      this.fd = undefined;
    }
  }

  look(pm: Uint32Array, pages: number): void {
    if (this.fd === undefined || this.pfn >= 0) return;
    for (let tries = 0; tries < 4; tries++) {
      const pfn = repeatedPfn(pm, pages, this.seen);
      if (pfn === undefined || this.seen.size > 64) return;
      this.seen.add(pfn);
      const b = Buffer.alloc(8);
      try {
        if (readSync(this.fd, b, 0, 8, pfn * 8) === 8 && (b.readBigUInt64LE(0) >> BigInt(KPF_ZERO_PAGE)) & 1n) {
          this.pfn = pfn;
          return;
        }
      } catch {
        return;
      }
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
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
  /** pages * PAGE_SIZE bytes: the run's own until release() (never reused by the reader before). */
  data: Buffer;
  /** pages * HASH_BYTES bytes (its own buffer, 4-byte aligned). */
  hashes: Buffer;
  /**
   * The consumer is done with `data` (nothing it handed on still refers to it): the reader may read
   * a later run into the same memory. Optional: a run never released is simply left to the GC.
   */
  release(): void;
}

/**
 * SHA-256 of each page of `data`, its first HASH_BYTES bytes into `out` at the page's index.
 * Measured here (2 loaded CPUs, best of 4): createHash('sha256') per 4 KiB page 4.2 µs (~1 GB/s), of
 * which the hashing itself is ~2.3 µs (SHA-256 over one large buffer); SHA-1 3.4 µs; BLAKE3 through
 * @napi-rs/blake-hash 3.4 µs a page (0.9 µs over one large buffer: the per-call cost dominates).
 * No per-page call is much cheaper, so SHA-256: cryptographic, so no crafted pair of pages can
 * make a changed page look unchanged. The one-shot crypto.hash (no Hash object per page) took
 * 3.2–3.7 µs a page where createHash took 3.7–4.6 µs, alternated on the same buffer. The digest
 * comes back as a latin1 string, not a Buffer: 2.8 µs a page against 3.35, and no malloc'd Buffer
 * per page — a round of 1 GiB made 262,144 of them, garbage outside V8's heap that the GC did not
 * count, which kept cedana's [heap] at ~100 MB. `workers` moves it off the main thread.
 */
export function hashPages(data: Buffer, pages: number, out: Buffer): void {
  for (let i = 0; i < pages; i++) {
    out.write(oneShot('sha256', data.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), 'binary'), i * HASH_BYTES, HASH_BYTES, 'latin1');
  }
}

/** crypto.hash (Node ≥ 20.12, ≥ 21.7), or the same through a Hash object where it is missing. */
const oneShot: (alg: string, data: Buffer, enc: 'binary') => string =
  (nodeCrypto.hash as typeof nodeCrypto.hash | undefined) ?? ((alg, data, enc) => createHash(alg).update(data).digest(enc));

export interface ReadOptions {
  /** Pages per content read (and most pages of one run). Default 1024 (4 MiB). */
  chunkPages?: number;
  /** Hash the pages (default true). */
  hash?: boolean;
  timings?: ReadTimings;
  /** Read and hash in this many worker threads (0: read in the thread pool, hash on the main thread). */
  workers?: number;
}

/**
 * Run buffers given back by the consumer (PageRun.release), read into again, round after round (one
 * pool for the process). A round reads the whole memory again, most of it to hash and drop: a fresh
 * 4 MiB buffer for each run left ~1 GiB of garbage per round of a 1 GiB process, freed only when
 * the GC got to it, and glibc then kept the freed runs in its heap (its mmap threshold rises to the
 * size of the first large block freed): cedana's [heap] grew ~15 MB a round, its peak RSS to 220–320 MB.
 */
class RunBuffers {
  private readonly free: Buffer[] = [];
  constructor(private readonly size: number, private readonly keep: number) {}
  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.size);
  }
  give(b: Buffer): void {
    if (b.length === this.size && this.free.length < this.keep) this.free.push(b);
  }
}

const pread = (fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> =>
  new Promise((res, rej) => readCb(fd, buf, off, len, pos, (e, n) => (e ? rej(e) : res(n))));

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/**
 * The worker of `workers > 0`: reads a run from /proc/PID/mem and hashes its pages off the main
 * thread, handing both back (transferred, no copy). Plain CommonJS, evaluated, so that it runs the
 * same from the build and from the TypeScript sources under test.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { openSync, readSync, closeSync } = require('node:fs');
const { createHash } = require('node:crypto');
const fd = openSync(workerData.mem, 'r');
const P = ${PAGE_SIZE}, H = ${HASH_BYTES};
const ms = () => Number(process.hrtime.bigint()) / 1e6;
parentPort.on('message', (m) => {
  if (m.close) { closeSync(fd); parentPort.close(); return; }
  const buf = Buffer.allocUnsafeSlow(m.pages * P);
  let got = 0;
  const s = ms();
  try {
    while (got < buf.length) { const n = readSync(fd, buf, got, buf.length - got, m.vaddr + got); if (n === 0) break; got += n; }
  } catch (e) {}
  got -= got % P;
  const r = ms();
  const pages = got / P;
  const hashes = Buffer.allocUnsafeSlow(Math.max(1, pages) * H);
  const one = require('node:crypto').hash ?? ((a, d, e) => createHash(a).update(d).digest(e));
  if (m.hash) for (let i = 0; i < pages; i++) hashes.write(one('sha256', buf.subarray(i * P, (i + 1) * P), 'binary'), i * H, H, 'latin1');
  parentPort.postMessage({ id: m.id, data: buf.buffer, pages, hashes: hashes.buffer, mem: r - s, hash: ms() - r }, [buf.buffer, hashes.buffer]);
});
`;

interface Fetched {
  data: Buffer;
  hashes: Buffer;
  pages: number;
  /** The pooled buffer `data` lies in, until given back (reads in this thread only). */
  full?: Buffer;
}

/** Reads and hashes runs in `n` worker threads, each request answered in turn. */
class WorkerPool {
  private readonly workers: Worker[];
  private readonly exited: Promise<void>[];
  private readonly waiting = new Map<number, { resolve: (f: Fetched | undefined) => void; reject: (e: Error) => void }>();
  private nextId = 0;
  private rr = 0;
  private failed: Error | undefined;

  constructor(mem: string, n: number, private readonly hash: boolean, private readonly t?: ReadTimings) {
    this.workers = Array.from({ length: n }, () => new Worker(WORKER_SOURCE, { eval: true, workerData: { mem } }));
    const fail = (e: Error): void => {
      this.failed ??= e;
      for (const r of this.waiting.values()) r.reject(this.failed);
      this.waiting.clear();
    };
    this.exited = this.workers.map((w) => new Promise<void>((resolve) => {
      w.on('message', (m: { id: number; data: ArrayBuffer; pages: number; hashes: ArrayBuffer; mem: number; hash: number }) => {
        const req = this.waiting.get(m.id);
        this.waiting.delete(m.id);
        if (this.t) {
          this.t.mem += m.mem;
          this.t.hash += m.hash;
        }
        req?.resolve(m.pages > 0 ? { data: Buffer.from(m.data, 0, m.pages * PAGE_SIZE), hashes: Buffer.from(m.hashes, 0, m.pages * HASH_BYTES), pages: m.pages } : undefined);
      });
      w.on('error', (e) => fail(e));
      w.on('exit', () => {
        // Any request still waiting will get no answer.
        fail(new Error('a memory-reading worker ended'));
        resolve();
      });
    }));
  }

  fetch(vaddr: number, pages: number): Promise<Fetched | undefined> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    const w = this.workers[this.rr++ % this.workers.length]!;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      w.postMessage({ id, vaddr, pages, hash: this.hash });
    });
  }

  /** Each worker closes its descriptor and ends by itself (terminate() would leak the descriptor). */
  async close(): Promise<void> {
    for (const w of this.workers) w.postMessage({ close: true });
    await Promise.all(this.exited);
  }
}

/**
 * The process's pages a round carries, in ascending address order, as runs of at most chunkPages
 * consecutive pages (a run never crosses a mapping's end). Reads run ahead of the consumer: in the
 * thread pool (hashing on the main thread), or, with `workers`, read and hashed in worker threads.
 */
/** PF_EXITING in the flags field (the 9th) of /proc/PID/stat. Pure. */
export function exiting(stat: string): boolean {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(rest[6]) & 0x4) !== 0;
}

const DEFAULT_CHUNK = 1024;
/** Kept across rounds: a round needs ~6 at once (reads ahead, runs waiting in the socket's queue). */
const sharedBuffers = new RunBuffers(DEFAULT_CHUNK * PAGE_SIZE, 16);

export async function* readPages(pid: number, opts: ReadOptions = {}): AsyncGenerator<PageRun> {
  const chunk = opts.chunkPages ?? DEFAULT_CHUNK;
  const t = opts.timings;
  const hash = opts.hash !== false;
  const depth = Math.max(2, (opts.workers ?? 0) * 2);
  let t0 = now();
  const vmas = await roundVmas(pid);
  if (t) t.maps += now() - t0;
  const pmFd = openSync(`/proc/${pid}/pagemap`, 'r');
  const memFd = openSync(`/proc/${pid}/mem`, 'r');
  const pool = opts.workers ? new WorkerPool(`/proc/${pid}/mem`, opts.workers, hash, t) : undefined;
  /** Runs whose reads were started, oldest first. */
  type Pending = { vma: number; vaddr: number; read: Promise<Fetched | undefined> };
  const queue: Pending[] = [];
  const zero = new ZeroPage();

  const buffers = chunk === DEFAULT_CHUNK ? sharedBuffers : new RunBuffers(chunk * PAGE_SIZE, depth + 6);
  const inThread = async (vaddr: number, pages: number): Promise<Fetched | undefined> => {
    const full = buffers.take();
    const buf = full.subarray(0, pages * PAGE_SIZE);
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
    got -= got % PAGE_SIZE;
    if (got === 0) {
      buffers.give(full);
      return undefined;
    }
    const data = got === buf.length ? buf : buf.subarray(0, got);
    const n = got / PAGE_SIZE;
    const hashes = Buffer.allocUnsafeSlow(n * HASH_BYTES);
    return { data, hashes, pages: n, full };
  };
  const finish = async (p: Pending): Promise<PageRun | undefined> => {
    const f = await p.read;
    if (!f) return undefined;
    if (hash && !pool) {
      const s = now();
      hashPages(f.data, f.pages, f.hashes);
      if (t) t.hash += now() - s;
    }
    const release = (): void => {
      if (f.full) buffers.give(f.full);
      f.full = undefined;
    };
    return { vma: p.vma, vaddr: p.vaddr, pages: f.pages, data: f.data, hashes: f.hashes, release };
  };
  try {
    const pmBuf = Buffer.allocUnsafe(chunk * 8);
    const pm = new Uint32Array(pmBuf.buffer, pmBuf.byteOffset, chunk * 2);
    const sel = new Uint8Array(chunk);
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
        zero.look(pm, have);
        selectPages(pm, have, fileBacked, sel, zero.pfn);
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
          const vaddr = base + i * PAGE_SIZE;
          queue.push({ vma: vi, vaddr, read: pool ? pool.fetch(vaddr, j - i) : inThread(vaddr, j - i) });
          i = j;
          while (queue.length >= depth) {
            const r = await finish(queue.shift()!);
            if (r) yield r;
          }
        }
      }
    }
    while (queue.length) {
      const r = await finish(queue.shift()!);
      if (r) yield r;
    }
    // A process that ended (or became a zombie) mid-way reads as nothing: never a complete round.
    // "Ended" includes exiting: the kernel releases its memory (which then reads as absent) before
    // the task becomes a zombie, and marks it PF_EXITING first.
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
    if (!stat || /^\d+ \(.*\) [ZX] /.test(stat) || exiting(stat)) throw new CedanaError('PID_NOT_FOUND', `process ${pid} ended while its memory was read`);
  } finally {
    // A consumer that stopped early leaves reads in flight: let them end before their descriptor closes.
    await Promise.all(queue.map((p) => p.read.catch(() => undefined)));
    await pool?.close();
    zero.close();
    closeSync(pmFd);
    closeSync(memFd);
  }
}

