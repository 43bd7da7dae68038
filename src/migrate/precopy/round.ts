/**
 * One pre-copy round by content, while the process runs: cedana reads its pages (memory.ts) and
 * sends them to a stock `criu page-server` as its client. Round 0 sends every page; a later round,
 * into a directory whose page server has the previous round's as `--prev-images-dir`, sends only the
 * pages whose hash changed and a PE_PARENT entry (no data) for each run of unchanged ones.
 *
 * Coverage: a PE_PARENT entry here names only pages the previous round sent (with data or as
 * PE_PARENT itself), so the chain resolves every one of them and CRIU's page server, which checks
 * each PE_PARENT range against the parent's pagemap, accepts them. Pages the previous round held but
 * this one does not (unmapped since) are simply not named.
 *
 * PE_PARENT is sent only where the page server answered has_parent = 1 (else everything goes with
 * its data). Entries ascend, and a PE_PARENT run never spans two mappings.
 */
import type { PageServerClient } from '../../criu/page-server/client.js';
import { HASH_BYTES, nsPid, PAGE_SIZE, readPages, type ReadTimings } from './memory.js';

/** A round's pages as the target now holds them: ascending addresses and their hashes. */
export interface RoundPages {
  count: number;
  vaddrs: Float64Array;
  /** count * HASH_BYTES bytes. */
  hashes: Buffer;
}

export interface RoundTimings extends ReadTimings {
  /** Waiting for the socket to take the data (backpressure), in ms. */
  send: number;
  /** The whole round, in ms. */
  total: number;
}

export interface RoundResult {
  pages: RoundPages;
  /** Pages sent with their data. */
  pagesSent: number;
  /** Pages sent as PE_PARENT (unchanged since the previous round). */
  pagesUnchanged: number;
  bytesSent: number;
  /** The page server's answer to OPEN2. */
  hasParent: boolean;
  timings: RoundTimings;
}

export interface RoundOptions {
  /** The previous round's pages: compare against them (omit for round 0). */
  prev?: RoundPages;
  /** Pages per content read and most pages per data command (default 1024). */
  chunkPages?: number;
  /** Read and hash in this many worker threads (see readPages). */
  workers?: number;
}

const STAGING_BYTES = 4 << 20;
/** Staging buffers kept for the whole migration (a pagemap takes two at a time, and gives them back). */
const stagingPool: Buffer[] = [];

/**
 * Where a later round copies the changed pages it sends, so that the socket's queue (up to 8 MiB,
 * full on a slow link) holds those pages and not each whole 4 MiB run one came from: on a 1 Gbit/s
 * link that pinned ~20 runs, cedana's RSS rose by ~120 MB. Two buffers, filled in turn; one is
 * filled again only once the connection has taken everything written from it (client.flushed()).
 */
class Staging {
  private readonly bufs: Buffer[] = [stagingPool.pop() ?? Buffer.allocUnsafeSlow(STAGING_BYTES), stagingPool.pop() ?? Buffer.allocUnsafeSlow(STAGING_BYTES)];
  private readonly flushed: Promise<void>[] = [Promise.resolve(), Promise.resolve()];
  private cur = 0;
  private off = 0;

  constructor(private readonly client: PageServerClient) {}

  /** `data` copied into staging (or into a buffer of its own, when larger than one). */
  async copy(data: Buffer): Promise<Buffer> {
    if (data.length > STAGING_BYTES) return Buffer.from(data);
    if (this.off + data.length > STAGING_BYTES) {
      this.flushed[this.cur] = this.client.flushed();
      this.cur ^= 1;
      this.off = 0;
      await this.flushed[this.cur];
    }
    const out = this.bufs[this.cur]!.subarray(this.off, this.off + data.length);
    data.copy(out);
    this.off += data.length;
    return out;
  }

  /** Back to the pool once the connection has taken all of it. */
  release(): void {
    void this.client.flushed().then(() => {
      for (const b of this.bufs) if (stagingPool.length < 4) stagingPool.push(b);
    });
  }
}

class Growing {
  count = 0;
  vaddrs: Float64Array;
  hashes: Buffer;

  /** `expect`: the pages the last round held (a round after the first grows little, if at all). */
  constructor(expect = 0) {
    const cap = Math.max(1 << 14, Math.ceil(expect * 1.05));
    this.vaddrs = new Float64Array(cap);
    this.hashes = Buffer.allocUnsafeSlow(cap * HASH_BYTES);
  }

  push(vaddr: number, pages: number, hashes: Buffer): void {
    const need = this.count + pages;
    if (need > this.vaddrs.length) {
      let cap = this.vaddrs.length;
      while (cap < need) cap *= 2;
      const v = new Float64Array(cap);
      v.set(this.vaddrs.subarray(0, this.count));
      const h = Buffer.allocUnsafeSlow(cap * HASH_BYTES);
      this.hashes.copy(h, 0, 0, this.count * HASH_BYTES);
      this.vaddrs = v;
      this.hashes = h;
    }
    for (let i = 0; i < pages; i++) this.vaddrs[this.count + i] = vaddr + i * PAGE_SIZE;
    hashes.copy(this.hashes, this.count * HASH_BYTES, 0, pages * HASH_BYTES);
    this.count = need;
  }

  done(): RoundPages {
    return { count: this.count, vaddrs: this.vaddrs.subarray(0, this.count), hashes: this.hashes.subarray(0, this.count * HASH_BYTES) };
  }
}

const now = (): number => Number(process.hrtime.bigint()) / 1e6;
const i32 = (b: Buffer): Int32Array => new Int32Array(b.buffer, b.byteOffset, b.length >> 2);

/**
 * Sends one round of `pid`'s memory through `client` (a fresh session: OPEN2 … CLOSE). Resolves once
 * the page server confirmed the round (CLOSE answered 0). On any failure the connection is dropped:
 * the page server then exits with an error, leaving a partial directory the caller removes.
 */
export async function sendRound(pid: number, client: PageServerClient, opts: RoundOptions = {}): Promise<RoundResult> {
  const t0 = now();
  const r = await sendPagemap(pid, client, opts).catch((e: unknown) => {
    client.abort(); // else the page server would wait for the rest of the round
    throw e;
  });
  const s = now();
  await client.close();
  r.timings.send += now() - s;
  r.timings.total = now() - t0;
  return r;
}

export interface TreeRoundResult {
  /** Per process (by its PID here). */
  byPid: Map<number, RoundResult>;
  pagesSent: number;
  pagesUnchanged: number;
  bytesSent: number;
  ms: number;
}

/**
 * One round of several processes (a tree) in one session: a pagemap each (OPEN2 per process, as
 * `criu dump` sends them), one CLOSE. `prev`: each process's previous round, by its PID here; a
 * process without one (new since) is sent whole.
 */
export async function sendTreeRound(pids: number[], client: PageServerClient, opts: Omit<RoundOptions, 'prev'> & { prev?: Map<number, RoundPages> } = {}): Promise<TreeRoundResult> {
  const t0 = now();
  const byPid = new Map<number, RoundResult>();
  try {
    for (const pid of pids) byPid.set(pid, await sendPagemap(pid, client, { ...opts, prev: opts.prev?.get(pid) }));
  } catch (e) {
    client.abort(); // else the page server would wait for the rest of the round
    throw e;
  }
  await client.close();
  const all = [...byPid.values()];
  return {
    byPid,
    pagesSent: all.reduce((a, r) => a + r.pagesSent, 0),
    pagesUnchanged: all.reduce((a, r) => a + r.pagesUnchanged, 0),
    bytesSent: all.reduce((a, r) => a + r.bytesSent, 0),
    ms: now() - t0,
  };
}

/** One process's pagemap: OPEN2, its pages (data or PE_PARENT), no CLOSE. */
async function sendPagemap(pid: number, client: PageServerClient, opts: RoundOptions): Promise<RoundResult> {
  const t0 = now();
  const timings: RoundTimings = { maps: 0, pagemap: 0, mem: 0, hash: 0, send: 0, total: 0 };
  const hasParent = await client.open(await nsPid(pid));
  const prev = hasParent ? opts.prev : undefined;
  const prevH = prev ? i32(prev.hashes) : undefined;
  const cur = new Growing(prev?.count);
  const staging = new Staging(client);
  let k = 0; // cursor into prev
  let sent = 0;
  let unchanged = 0;
  /** The pending run of unchanged pages. */
  let hole: { vma: number; vaddr: number; n: number } | undefined;
  const send = async (p: Promise<void>): Promise<void> => {
    const s = now();
    await p;
    timings.send += now() - s;
  };
  const flushHole = async (): Promise<void> => {
    if (!hole) return;
    const h = hole;
    hole = undefined;
    await send(client.parent(h.vaddr, h.n));
  };

  for await (const run of readPages(pid, { chunkPages: opts.chunkPages, workers: opts.workers, timings })) {
    cur.push(run.vaddr, run.pages, run.hashes);
    if (!prev || !prevH) {
      sent += run.pages;
      await send(client.add(run.vaddr, run.data));
      // Its memory goes back to the reader once the socket has taken it.
      void client.flushed().then(() => run.release());
      continue;
    }
    // A later round copies the changed pages out (Staging): the run is free again once compared.
    if (hole && (hole.vma !== run.vma || hole.vaddr + hole.n * PAGE_SIZE !== run.vaddr)) await flushHole();
    const h = i32(run.hashes);
    let dataFrom = -1; // first page of the pending changed run in this run
    for (let i = 0; i < run.pages; i++) {
      const va = run.vaddr + i * PAGE_SIZE;
      while (k < prev.count && prev.vaddrs[k]! < va) k++;
      let same = false;
      if (k < prev.count && prev.vaddrs[k] === va) {
        const a = k * 4;
        const b = i * 4;
        same = prevH[a] === h[b] && prevH[a + 1] === h[b + 1] && prevH[a + 2] === h[b + 2] && prevH[a + 3] === h[b + 3];
      }
      if (same) {
        if (dataFrom >= 0) {
          sent += i - dataFrom;
          await send(client.add(run.vaddr + dataFrom * PAGE_SIZE, await staging.copy(run.data.subarray(dataFrom * PAGE_SIZE, i * PAGE_SIZE))));
          dataFrom = -1;
        }
        unchanged++;
        if (hole) hole.n++;
        else hole = { vma: run.vma, vaddr: va, n: 1 };
      } else {
        if (hole) await flushHole();
        if (dataFrom < 0) dataFrom = i;
      }
    }
    if (dataFrom >= 0) {
      sent += run.pages - dataFrom;
      await send(client.add(run.vaddr + dataFrom * PAGE_SIZE, await staging.copy(run.data.subarray(dataFrom * PAGE_SIZE))));
    }
    run.release();
  }
  await flushHole();
  staging.release();
  timings.total = now() - t0;
  return { pages: cur.done(), pagesSent: sent, pagesUnchanged: unchanged, bytesSent: sent * PAGE_SIZE, hasParent, timings };
}
