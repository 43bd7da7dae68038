/**
 * The live final step of pre-copy by content: during the final freeze `criu dump --page-server
 * --ps-socket 0` streams every page into cedana, and cedana forwards the stream to the target's stock
 * `criu page-server` (whose --prev-images-dir is the last round), translating on the way: a page
 * whose hash equals the hash the target holds for that address since the last round (RoundPages)
 * becomes part of a PE_PARENT run, without data; only the rest crosses as PE_PRESENT data.
 *
 * Toward criu dump, cedana is the page server:
 *  - OPEN2 is forwarded; the target's has_parent is read, and CRIU is answered has_parent = 0 (else
 *    criu dump runs its pid-reuse detection against a parent inventory it does not have, and fails);
 *  - CLOSE / FORCE_CLOSE are forwarded and the target's status relayed to CRIU (a non-zero status
 *    fails the proxy too).
 * Toward the target, cedana is the dump:
 *  - PE_PARENT only where the target answered has_parent = 1, only for a process's pagemap (type 1;
 *    shared memory, type 2, goes whole), never in a range that must stay whole (hugetlb: CRIU
 *    restores those from the top image only), and only for pages of a PE_PRESENT command (with or
 *    without PE_LAZY, which criu dump sets on every private anonymous page; forwarded data keeps
 *    CRIU's flags);
 *  - entries stay in CRIU's order, ascending within a pagemap (the client refuses anything else);
 *  - a PE_PARENT run only names pages the last round named, so the target's coverage check passes.
 * Any error cuts both connections: CRIU then fails its dump and resumes the tree, and the target's
 * page server exits with an error. The caller removes the target's directory.
 *
 * A failed criu dump still sends CLOSE (its cleanup path), and the page server then answers 0 and
 * exits 0 with a partial directory: the proxy's success alone means nothing — trust the dump's exit
 * code (dumpThroughProxy does).
 *
 * Chunks from CRIU may be a reused read buffer (socketPair): a command's pages are copied into a
 * buffer of the proxy's own, and what is forwarded is copied again into a buffer that belongs to the
 * socket's queue (only changed pages, so little).
 *
 * Cost (measured here, 2 shared CPUs, bench/final-proxy.ts, 256 MiB, 0.1% rewritten since round 1,
 * target on 127.0.0.1): ~135 of 67,700 pages cross; CRIU's frozen time 0.5–0.6 s, about that of a
 * plain local `criu dump` (0.3–0.5 s) or of `criu dump` straight into a stock page server over
 * loopback (0.45–0.56 s), because every page CRIU sends is hashed (SHA-256, ~0.9 GB/s on one core)
 * while the tree is frozen. The gain is on a real link, where the stock route moves every page while
 * frozen. Hashing in worker threads (HashPool) did not help on 2 busy CPUs.
 */
import type { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { Worker } from 'node:worker_threads';
import { PageServerClient } from '../../criu/page-server/client.js';
import { duplexSource, inOrder, socketPair, type PageSource } from '../../criu/page-server/source.js';
import {
  addFlags, decodeDstId, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PS_TYPE_SHMEM, PsDecoder, ProtocolError, type PsEvent, type PsHeader,
} from '../../criu/page-server/protocol.js';
import { CedanaError, toCedanaError } from '../../errors.js';
import { spawnCriu, type Criu } from '../../criu/criu.js';
import { HASH_BYTES, hashPages, nsPid } from './memory.js';
import type { RoundPages, TreeRoundResult } from './round.js';
import { touchesRange } from '../../proc/maps.js';

export interface ProxyOptions {
  /** What the target holds since the last round, per process as CRIU names it (its PID in its own namespace). */
  held: Map<number, RoundPages>;
  /** Per process (as CRIU names it): address ranges [start, end) never to leave in the parent (hugetlb). */
  keepWhole?: Map<number, [number, number][]>;
  /**
   * Hash in these worker threads (started before the freeze: see HashPool), the main thread reading
   * CRIU's stream meanwhile; without, each command is hashed on the main thread as it completes.
   */
  hasher?: HashPool;
  /**
   * How long to wait for the target (an answer, or room in the connection) before giving up, in ms
   * (default 30 s): a target that hangs must not keep the tree frozen; CRIU resumes it once cut off.
   */
  targetTimeoutMs?: number;
  /** Cuts both connections when aborted (SIGINT to cedana): CRIU fails its dump and resumes the tree. */
  signal?: AbortSignal;
}

export interface ProxyResult {
  /** The target's answer to CLOSE (0: everything received). */
  status: number;
  /** Pages CRIU sent with their data. */
  pagesReceived: number;
  /** Pages forwarded with their data (changed, new, shared memory, hugetlb, or where the target has no parent). */
  pagesForwarded: number;
  /** Pages sent as PE_PARENT (the target holds them unchanged). */
  pagesParent: number;
  /** Of pagesForwarded: shared-memory pages (always whole). */
  pagesShmem: number;
  /** Pagemaps opened (OPEN2), and of them those the target had a parent for. */
  pagemaps: number;
  pagemapsWithParent: number;
  /** From the first byte CRIU sent to the relayed CLOSE answer, in ms. */
  ms: number;
}

/** One pagemap being forwarded (OPEN2 to the next OPEN2 or CLOSE). */
interface Xfer {
  type: number;
  id: number;
  /** The round's pages to compare with (only where the target has a parent and this is a process). */
  held: RoundPages | undefined;
  keepWhole: [number, number][] | undefined;
  /** The pending PE_PARENT run. */
  run: { vaddr: number; n: number } | undefined;
}

/** A command whose pages are arriving. */
interface Pending {
  header: PsHeader;
  flags: number;
  /** Compare by content (else forward whole). */
  compare: boolean;
  buf: Buffer;
  got: number;
}

const now = (): number => Number(process.hrtime.bigint()) / 1e6;

/** CRIU's stream ended without CLOSE: CRIU failed, and its own error says why. */
class CriuWentAway extends ProtocolError {}

/**
 * ProxyOptions.held from the last round of a tree: keyed by each process's PID as CRIU names it (in
 * its own PID namespace, as OPEN2 carries it), where the round keys by the PID here. Call it before
 * the freeze, while the processes exist.
 */
export async function heldPages(last: TreeRoundResult): Promise<Map<number, RoundPages>> {
  const out = new Map<number, RoundPages>();
  for (const [pid, r] of last.byPid) out.set(await nsPid(pid), r.pages);
  return out;
}

/** The index of the first vaddr >= va in the ascending array. */
function lowerBound(v: Float64Array, count: number, va: number): number {
  let lo = 0;
  let hi = count;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (v[mid]! < va) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}


/**
 * Serves one `criu dump` page-server session from `src` (CRIU's end is its --ps-socket), forwarding
 * it translated to `target` (a connection to the target's page server). Resolves once CRIU's CLOSE is
 * answered with the target's status 0; rejects on anything else, with both connections cut.
 */
export async function servePageProxy(src: PageSource | Duplex, target: PageServerClient | Duplex, opts: ProxyOptions): Promise<ProxyResult> {
  const source: PageSource = 'run' in src ? src : duplexSource(src);
  const client = target instanceof PageServerClient ? target : new PageServerClient(target);
  const decoder = new PsDecoder({ transient: true });
  const r: ProxyResult = { status: -1, pagesReceived: 0, pagesForwarded: 0, pagesParent: 0, pagesShmem: 0, pagemaps: 0, pagemapsWithParent: 0, ms: 0 };
  let t0 = 0;
  let cur: Xfer | undefined;
  let pend: Pending | undefined;
  let closed = false;
  let cmdBuf = Buffer.alloc(0);
  const hash = Buffer.allocUnsafe(HASH_BYTES);
  const timeoutMs = opts.targetTimeoutMs ?? 30_000;

  /** The target's part of the work, given up on after timeoutMs. */
  const guard = <T>(work: Promise<T>): Promise<T> => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new CedanaError('IO_ERROR', `the target's page server did not answer or take data for ${timeoutMs / 1000} s`)), timeoutMs);
    });
    return Promise.race([work, late]).finally(() => clearTimeout(timer));
  };

  const flushRun = async (x: Xfer): Promise<void> => {
    const run = x.run;
    if (!run) return;
    x.run = undefined;
    await guard(client.entry(run.vaddr, run.n, PE_PARENT));
  };

  const forward = async (x: Xfer, vaddr: number, n: number, flags: number, data: Buffer): Promise<void> => {
    await flushRun(x);
    r.pagesForwarded += n;
    if (x.type === PS_TYPE_SHMEM) r.pagesShmem += n;
    await guard(client.entry(vaddr, n, flags, data));
  };

  const parentPages = async (x: Xfer, vaddr: number, n: number): Promise<void> => {
    r.pagesParent += n;
    const run = x.run;
    if (run && run.vaddr + run.n * PAGE_SIZE === vaddr) run.n += n;
    else {
      await flushRun(x);
      x.run = { vaddr, n };
    }
  };

  /**
   * A complete command compared page by page with the round: runs of held pages become PE_PARENT,
   * the rest is forwarded. `hashes`: every page's hash (from a worker), or undefined: hashed here,
   * only the pages the round holds at their address.
   */
  const compareCommand = async (x: Xfer, h: PsHeader, flags: number, buf: Buffer, hashes: Buffer | undefined): Promise<void> => {
    const held = x.held!;
    const hv = held.vaddrs;
    const { vaddr, nrPages } = h;
    let k = lowerBound(hv, held.count, vaddr);
    // Runs of one fate: [first page, end, held?].
    const runs: [number, number, boolean][] = [];
    for (let i = 0; i < nrPages; i++) {
      const va = vaddr + i * PAGE_SIZE;
      while (k < held.count && hv[k]! < va) k++;
      let same = false;
      if (k < held.count && hv[k] === va) {
        let mine = hashes;
        let off = i * HASH_BYTES;
        if (!mine) {
          hashPages(buf.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE), 1, hash);
          mine = hash;
          off = 0;
        }
        same = mine.compare(held.hashes, k * HASH_BYTES, (k + 1) * HASH_BYTES, off, off + HASH_BYTES) === 0;
      }
      const last = runs.at(-1);
      if (last && last[2] === same) last[1] = i + 1;
      else runs.push([i, i + 1, same]);
    }
    for (const [from, to, same] of runs) {
      if (same) await parentPages(x, vaddr + from * PAGE_SIZE, to - from);
      else {
        // The socket's queue keeps what it is given: a copy of the changed pages (few).
        const data = Buffer.allocUnsafeSlow((to - from) * PAGE_SIZE);
        buf.copy(data, 0, from * PAGE_SIZE, to * PAGE_SIZE);
        await forward(x, vaddr + from * PAGE_SIZE, to - from, flags, data);
      }
    }
  };

  /** Work in stream order behind the hashing (the tail of the queue), and how many hashed commands wait in it. */
  let chain: Promise<void> = Promise.resolve();
  let queued = 0;
  let chainErr: Error | undefined;
  const after = (fn: () => Promise<void> | void): Promise<void> => {
    chain = chain.then(fn);
    chain.catch((e: Error) => {
      if (chainErr) return;
      chainErr = e;
      source.destroy(); // cut CRIU off now, not at its CLOSE
      client.abort();
    });
    return chain;
  };

  const onCommand = async (h: PsHeader): Promise<void> => {
    if (chainErr) throw chainErr;
    // Everything but a data command's header waits for the hashed commands before it.
    if (addFlags(h) === undefined || !(addFlags(h)! & PE_PRESENT)) await chain;
    if (h.op === PS_IOV_OPEN2) {
      if (cur) await flushRun(cur);
      const { type, id } = decodeDstId(h.dstId);
      if (type !== PS_TYPE_PID && type !== PS_TYPE_SHMEM) throw new ProtocolError(`unknown pagemap type ${type}`);
      const hasParent = await guard(client.openDst(h.dstId));
      r.pagemaps++;
      if (hasParent) r.pagemapsWithParent++;
      const held = hasParent && type === PS_TYPE_PID ? opts.held.get(id) : undefined;
      cur = { type, id, held, keepWhole: type === PS_TYPE_PID ? opts.keepWhole?.get(id) : undefined, run: undefined };
      await source.write(Buffer.from([0])); // has_parent, toward criu dump: no (cedana keeps the parent)
      return;
    }
    if (h.op === PS_IOV_CLOSE || h.op === PS_IOV_FORCE_CLOSE) {
      if (pend) throw new ProtocolError('CLOSE before all pages of the last command arrived');
      if (cur) await flushRun(cur);
      cur = undefined;
      r.status = await guard(client.finish(h.op));
      const status = Buffer.alloc(4);
      status.writeInt32LE(r.status, 0);
      await source.write(status);
      r.ms = now() - t0;
      closed = true;
      source.stop();
      return;
    }
    const flags = addFlags(h);
    if (flags === undefined) throw new ProtocolError(`page-server command ${h.op} is not expected from criu dump`);
    if (!cur || decodeDstId(h.dstId).id !== cur.id || decodeDstId(h.dstId).type !== cur.type) throw new ProtocolError('pages sent outside of an open pagemap');
    if (pend) throw new ProtocolError('a command before all pages of the last one arrived');
    if (!(flags & PE_PRESENT)) {
      // No data: a hole of CRIU's own. PE_PARENT cannot come (CRIU was told has_parent = 0).
      if (flags & PE_PARENT) throw new ProtocolError('a parent hole, though cedana answered has_parent = 0');
      await flushRun(cur);
      await guard(client.entry(h.vaddr, h.nrPages, flags));
      return;
    }
    if (h.nrPages === 0) return;
    const bytes = h.nrPages * PAGE_SIZE;
    // criu dump marks the pages of private anonymous mappings PE_PRESENT | PE_LAZY (they could be
    // served lazily): compared like the others. A PE_PARENT run carries no PE_LAZY.
    const compare = cur.held !== undefined && (flags & ~PE_LAZY) === PE_PRESENT && !touchesRange(cur.keepWhole, h.vaddr, bytes);
    let buf: Buffer;
    if (compare && opts.hasher) buf = opts.hasher.buffer(bytes); // handed to a worker, back to the pool after
    else if (compare) {
      if (cmdBuf.length < bytes) cmdBuf = Buffer.allocUnsafeSlow(bytes);
      buf = cmdBuf;
    } else buf = Buffer.allocUnsafeSlow(bytes); // forwarded as it is: the socket's queue keeps it
    pend = { header: h, flags, compare, buf, got: 0 };
  };

  const onPages = (data: Buffer): Promise<void> | undefined => {
    if (chainErr) throw chainErr;
    const p = pend;
    const x = cur;
    if (!p || !x) throw new ProtocolError('pages sent outside of a command');
    data.copy(p.buf, p.got * PAGE_SIZE);
    const n = data.length / PAGE_SIZE;
    p.got += n;
    r.pagesReceived += n;
    if (p.got < p.header.nrPages) return undefined;
    pend = undefined;
    const pool = opts.hasher;
    if (p.compare && pool) {
      // Hashed in a worker while the next commands are read; compared and forwarded in order.
      const hashed = pool.hash(p.buf, p.header.nrPages);
      hashed.catch(() => undefined);
      queued++;
      const done = after(async () => {
        const { buf, hashes } = await hashed;
        queued--;
        await compareCommand(x, p.header, p.flags, buf, hashes);
        pool.release(buf);
      });
      // Reading ahead is bounded: past a few commands, CRIU waits.
      return queued > pool.ahead ? done : undefined;
    }
    if (p.compare) return chain.then(() => compareCommand(x, p.header, p.flags, p.buf, undefined));
    return chain.then(() => forward(x, p.header.vaddr, p.header.nrPages, p.flags, p.buf.subarray(0, p.header.nrPages * PAGE_SIZE)));
  };

  /** One event of the stream; a promise when it has to wait (the source pauses meanwhile). */
  const handle = (ev: PsEvent): Promise<void> | undefined => {
    if (closed) throw new ProtocolError('data after the page server was closed');
    return ev.kind === 'command' ? onCommand(ev.header) : onPages(ev.data);
  };

  const onAbort = (): void => {
    if (chainErr) return;
    chainErr = new CedanaError('INTERRUPTED', 'interrupted during the final dump: the page streams were cut, CRIU resumes the tree');
    source.destroy();
    client.abort();
  };
  if (opts.signal?.aborted) onAbort();
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (chainErr) throw chainErr;
    await source.run((chunk) => {
      if (!t0) t0 = now();
      if (closed) throw new ProtocolError('data after the page server was closed');
      return inOrder(decoder.push(chunk), handle);
    });
    if (chainErr) throw chainErr;
    if (!closed) throw new CriuWentAway('criu closed the page stream before its end');
    source.destroy(); // CRIU has its answer in the socket
    if (r.status !== 0) throw new CedanaError('IO_ERROR', `the target's page server answered CLOSE with status ${r.status}`);
    return r;
  } catch (err) {
    source.destroy();
    client.abort();
    const e = chainErr ?? err;
    if (e instanceof CedanaError) throw e;
    if (e instanceof ProtocolError) throw new CedanaError('CRIU_FAILED', `the page stream from criu: ${e.message}`, { cause: e });
    throw new CedanaError('IO_ERROR', `forwarding pages to the target failed: ${(e as Error).message}`, { cause: e });
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

/**
 * The worker of HashPool: hashes every page of a command's buffer as the rounds do (hashPages: a
 * SHA-256 per page, its first HASH_BYTES bytes), handing buffer and hashes back (transferred, no
 * copy). Plain CommonJS, evaluated, so it runs the same from the build and from the sources under test.
 */
const HASH_WORKER = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const P = ${PAGE_SIZE}, H = ${HASH_BYTES};
parentPort.on('message', (m) => {
  if (m.close) { parentPort.close(); return; }
  const buf = Buffer.from(m.ab, 0, m.pages * P);
  const hashes = Buffer.allocUnsafeSlow(Math.max(1, m.pages) * H);
  for (let i = 0; i < m.pages; i++) createHash('sha256').update(buf.subarray(i * P, (i + 1) * P)).digest().copy(hashes, i * H, 0, H);
  parentPort.postMessage({ id: m.id, ab: m.ab, hashes: hashes.buffer }, [m.ab, hashes.buffer]);
});
`;

/**
 * Worker threads that hash the final dump's pages off the main thread, so that CRIU's stream is read
 * on while pages are hashed (on the main thread alone, SHA-256 at ~0.5–0.9 GB/s here is what the
 * frozen tree waits for). Start it before the freeze (a worker takes tens of ms to start); the
 * buffers go back and forth between the threads and are reused.
 */
export class HashPool {
  private readonly workers: Worker[];
  private readonly exited: Promise<void>[];
  private readonly waiting = new Map<number, { pages: number; resolve: (r: { buf: Buffer; hashes: Buffer }) => void; reject: (e: Error) => void }>();
  private readonly free: ArrayBuffer[] = [];
  private nextId = 0;
  private rr = 0;
  private failed: Error | undefined;

  /** `ahead`: how many commands may wait hashed or hashing before CRIU is made to wait. */
  constructor(n: number, readonly ahead = 2 * n + 2) {
    this.workers = Array.from({ length: n }, () => new Worker(HASH_WORKER, { eval: true }));
    const fail = (e: Error): void => {
      this.failed ??= e;
      for (const w of this.waiting.values()) w.reject(this.failed);
      this.waiting.clear();
    };
    this.exited = this.workers.map((w) => new Promise<void>((resolve) => {
      w.on('message', (m: { id: number; ab: ArrayBuffer; hashes: ArrayBuffer }) => {
        const req = this.waiting.get(m.id);
        this.waiting.delete(m.id);
        req?.resolve({ buf: Buffer.from(m.ab, 0, req.pages * PAGE_SIZE), hashes: Buffer.from(m.hashes, 0, req.pages * HASH_BYTES) });
      });
      w.on('error', (e) => fail(e));
      w.on('exit', () => {
        fail(new Error('a hashing worker ended'));
        resolve();
      });
    }));
  }

  /** A buffer of `bytes` that owns its memory from offset 0 (for hash()): a reused one where one is big enough. */
  buffer(bytes: number): Buffer {
    const i = this.free.findIndex((ab) => ab.byteLength >= bytes);
    const ab = i >= 0 ? this.free.splice(i, 1)[0]! : new ArrayBuffer(bytes);
    return Buffer.from(ab, 0, bytes);
  }

  /** Gives a buffer from buffer()/hash() back for reuse. */
  release(buf: Buffer): void {
    if (this.free.length < 2 * this.workers.length + 4) this.free.push(buf.buffer as ArrayBuffer);
  }

  /** Hashes `pages` pages of `buf` (from buffer(); it is moved to the worker and comes back as `buf`). */
  hash(buf: Buffer, pages: number): Promise<{ buf: Buffer; hashes: Buffer }> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    const w = this.workers[this.rr++ % this.workers.length]!;
    const ab = buf.buffer as ArrayBuffer;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { pages, resolve, reject });
      w.postMessage({ id, ab, pages }, [ab]);
    });
  }

  /** Each worker ends by itself. */
  async close(): Promise<void> {
    for (const w of this.workers) w.postMessage({ close: true });
    await Promise.all(this.exited);
  }
}

export interface ProxyDumpOptions extends ProxyOptions {
  criu: Criu;
  /** criu dump's arguments (-t, -D, -o, --leave-running …), without the page-server ones. */
  args: string[];
  /** Absolute path of the log named by -o. */
  logFile: string;
  /** Where the socket between CRIU and cedana is made for a moment (a private directory). */
  workDir: string;
  /** A connection to the target's page server (its --prev-images-dir: the last round). */
  target: Duplex;
  /** Told the proxy's result as soon as the session is over (before the dump's exit is known). */
  onProxied?: (r: ProxyResult) => void;
  /** Hash in this many worker threads (started here before criu dump; ignored when `hasher` is given). */
  workers?: number;
}

export interface ProxyDumpResult {
  proxy: ProxyResult;
  /** From spawning criu dump to its exit, in ms. */
  dumpMs: number;
}

/**
 * The live final step: `criu dump` through the proxy. Succeeds only when both the dump exited 0 and
 * the target confirmed every page (status 0): a failed dump still sends CLOSE, and the target's page
 * server then exits 0 with a partial directory, so the dump's exit code decides. On failure CRIU has
 * resumed the tree (unless the failure came after its point of no return); the caller removes the
 * target's directory.
 */
export async function dumpThroughProxy(o: ProxyDumpOptions): Promise<ProxyDumpResult> {
  const own = !o.hasher && o.workers ? new HashPool(o.workers) : undefined;
  try {
    return await dumpThrough({ ...o, hasher: o.hasher ?? own });
  } finally {
    await own?.close();
  }
}

async function dumpThrough(o: ProxyDumpOptions): Promise<ProxyDumpResult> {
  const pair = await socketPair(o.workDir);
  const t0 = now();
  let criuEnd: Socket | undefined = pair.criuEnd;
  let run: { done: Promise<void> };
  try {
    run = spawnCriu(o.criu, [...o.args, '--page-server', '--ps-socket', '0'], { logFile: o.logFile, label: 'dump-final', stdinSocket: criuEnd });
    criuEnd = undefined;
  } catch (e) {
    criuEnd?.destroy();
    pair.source.destroy();
    o.target.destroy();
    throw e;
  }
  const proxied = servePageProxy(pair.source, o.target, o).then((r) => {
    o.onProxied?.(r);
    return r;
  });
  proxied.catch(() => undefined);
  const dumped = run.done.then(() => now() - t0);
  dumped.catch(() => undefined);
  const [p, d] = await Promise.allSettled([proxied, dumped]);
  if (d.status === 'rejected') {
    // The proxy's own failure is the cause when there is one (CRIU failed because the stream was
    // cut), unless it only saw CRIU go away.
    if (p.status === 'rejected' && !((p.reason as Error).cause instanceof CriuWentAway)) throw toCedanaError(p.reason);
    if (o.signal?.aborted) throw new CedanaError('INTERRUPTED', 'interrupted during the final dump; CRIU resumed the tree', { cause: d.reason });
    throw toCedanaError(d.reason);
  }
  if (p.status === 'rejected') throw toCedanaError(p.reason);
  return { proxy: p.value, dumpMs: d.value };
}
