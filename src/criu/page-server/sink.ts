/**
 * The page sink: cedana as CRIU's page server for a local dump. `criu dump --page-server --ps-socket 3`
 * streams every page into cedana instead of writing it to fresh page cache itself; cedana writes the
 * pagemap and pages images exactly as the stock `criu page-server` does (pages-<n>.img numbered from
 * 0x10001, one pagemap entry per command), hashing each file as it goes, so the manifest's entries
 * of these files need no second read.
 *
 * With a parent, each arriving page is compared with the page the parent chain holds at the same
 * address, by content (ParentPages: the chain's bytes, read from its pages files while the command's
 * pages arrive): only changed pages are written, the rest become PE_PARENT entries. CRIU is told
 * has_parent = 0 (else it would look for a parent inventory of its own).
 */
import { open, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { CedanaError } from '../../errors.js';
import { createHasher, hashBytes, type Hasher } from '../../image/checksum.js';
import { encodeImage, type ImageEntry } from '../../image/criu/codec.js';
import { IMG_COMMON, MAGICS } from '../../image/criu/kinds.js';
import type { FileEntry } from '../../image/manifest.js';
import type { ParentPages } from '../../image/parent-pages.js';
import {
  addFlags, decodeDstId, PAGE_SIZE, PE_PARENT, PE_PRESENT, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PS_TYPE_SHMEM, PsDecoder, ProtocolError, type PsHeader,
} from './protocol.js';

/** The stock page server's first pages image id (criu/image.c up_page_ids_base: 1 + 0x10000). */
export const FIRST_PAGES_ID = 0x10001;
const FLUSH_BYTES = 4 << 20;

export interface SinkOptions {
  /** The images directory. */
  dir: string;
  /** Compare with the parent chain's pages (exact): write only the changed ones. */
  against?: ParentPages;
  /** Per process (as CRIU names it): address ranges [start, end) never to leave in the parent (hugetlb: CRIU restores those from the top image only). */
  keepWhole?: Map<number, [number, number][]>;
}

export interface SinkResult {
  /** Manifest entries (size, BLAKE3) of every file the sink wrote. */
  files: Record<string, FileEntry>;
  pagesWritten: number;
  pagesInParent: number;
  /** Bytes of page data received from CRIU. */
  bytesReceived: number;
}

/** One pagemap being received (OPEN2 to the next OPEN2 or CLOSE). */
class Xfer {
  readonly entries: ImageEntry[];
  private fh: FileHandle | undefined;
  private bufs: Buffer[] = [];
  private bufBytes = 0;
  private size = 0;
  private readonly hash: Hasher = createHasher('blake3');
  private inflight: Promise<void> | undefined;
  private run: { vaddr: number; n: number; flags: number } | undefined;

  constructor(readonly dstId: bigint, readonly pagemapName: string, readonly pagesName: string, pagesId: number, readonly pid: number | undefined) {
    this.entries = [{ type: 'pagemap_head', value: { pages_id: pagesId } }];
  }

  async open(dir: string): Promise<void> {
    this.fh = await open(join(dir, this.pagesName), 'wx', 0o600);
  }

  /** A pagemap entry as CRIU's page server writes one: for each command, or for each run of pages of one fate. */
  entry(vaddr: number, n: number, flags: number): void {
    this.entries.push({ type: 'pagemap_entry', value: { vaddr: BigInt(vaddr), compat_nr_pages: 0, flags, nr_pages: BigInt(n) } });
  }

  /** Adds pages to the current run of consecutive pages of the same flags (incremental mode). */
  addRun(vaddr: number, n: number, flags: number): void {
    const r = this.run;
    if (r && r.flags === flags && r.vaddr + r.n * PAGE_SIZE === vaddr) r.n += n;
    else {
      this.closeRun();
      this.run = { vaddr, n, flags };
    }
  }

  closeRun(): void {
    if (this.run) this.entry(this.run.vaddr, this.run.n, this.run.flags);
    this.run = undefined;
  }

  async write(data: Buffer): Promise<void> {
    this.hash.update(data);
    this.size += data.length;
    this.bufs.push(data);
    this.bufBytes += data.length;
    if (this.bufBytes >= FLUSH_BYTES) await this.flush();
  }

  /**
   * Hands the buffered pages to a write in the thread pool, at most one at a time: the next pages are
   * received and hashed while the last ones are written.
   */
  private async flush(): Promise<void> {
    if (this.bufBytes === 0) return;
    const bufs = this.bufs;
    this.bufs = [];
    this.bufBytes = 0;
    if (this.inflight) await this.inflight;
    this.inflight = writeAll(this.fh!, bufs);
    this.inflight.catch(() => undefined); // observed by the next flush or by finish()
  }

  private async drain(): Promise<void> {
    await this.flush();
    const w = this.inflight;
    this.inflight = undefined;
    await w;
  }

  /** Flushes and closes the pages file, writes the pagemap; returns both files' entries. */
  async finish(dir: string): Promise<Record<string, FileEntry>> {
    this.closeRun();
    await this.drain();
    await this.fh!.close();
    this.fh = undefined;
    const pm = encodeImage({ kind: 'PAGEMAP', head: IMG_COMMON, magic: MAGICS.PAGEMAP, entries: this.entries });
    await writeFile(join(dir, this.pagemapName), pm, { mode: 0o600, flag: 'wx' });
    return {
      [this.pagesName]: { size: this.size, blake3: this.hash.hex() },
      [this.pagemapName]: { size: pm.length, blake3: hashBytes('blake3', pm) },
    };
  }

  async abandon(): Promise<void> {
    await this.inflight?.catch(() => undefined);
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
  }
}

async function writeAll(fh: FileHandle, bufs: Buffer[]): Promise<void> {
  let left = bufs.reduce((a, b) => a + b.length, 0);
  let parts = bufs;
  while (left > 0) {
    const { bytesWritten } = await fh.writev(parts);
    left -= bytesWritten;
    if (left > 0) parts = skip(parts, bytesWritten);
  }
}

/** The buffers after the first n bytes. */
function skip(bufs: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) n -= b.length;
    else {
      out.push(n > 0 ? b.subarray(n) : b);
      n = 0;
    }
  }
  return out;
}

/** A command's pages being received, compared with the chain's once all are in. */
interface Pending {
  vaddr: number;
  pages: number;
  flags: number;
  chunks: Buffer[];
  got: number;
  /** Which of its pages the chain holds; their bytes are in the sink's reference buffer once this resolves. */
  ref: Promise<Uint8Array>;
}

function allHeld(held: Uint8Array, from: number, n: number): boolean {
  for (let i = from; i < from + n; i++) if (held[i] !== 1) return false;
  return true;
}

/** Whether [vaddr, vaddr + bytes) touches one of the ranges that must stay whole in this image. */
function wholeOnly(ranges: [number, number][] | undefined, vaddr: number, bytes: number): boolean {
  return ranges !== undefined && ranges.some(([s, e]) => vaddr < e && s < vaddr + bytes);
}

/**
 * Serves one page-server session on `sock` (CRIU's end is its --ps-socket): resolves once CRIU's
 * CLOSE is answered, with every file written and hashed. On any failure (a write, a malformed
 * stream, CRIU going away) it rejects and cuts the connection, which makes CRIU fail its dump and
 * resume the tree; the caller removes the images directory.
 */
export async function servePageSink(sock: Duplex, opts: SinkOptions): Promise<SinkResult> {
  const decoder = new PsDecoder();
  const files: Record<string, FileEntry> = {};
  // Shared memory (no PID) is stored whole.
  const incremental = (x: Xfer): boolean => opts.against !== undefined && x.pid !== undefined;
  let nextId = FIRST_PAGES_ID;
  let cur: Xfer | undefined;
  let pagesWritten = 0;
  let pagesInParent = 0;
  let bytesReceived = 0;
  let closed = false;

  const finishXfer = async (): Promise<void> => {
    if (!cur) return;
    const x = cur;
    cur = undefined;
    if (pend) throw new ProtocolError('a pagemap closed before all pages of its last command arrived');
    Object.assign(files, await x.finish(opts.dir));
  };

  const answer = (b: Buffer): Promise<void> =>
    new Promise((resolve, reject) => sock.write(b, (e) => (e ? reject(e) : resolve())));

  // The command whose pages are arriving (content mode): its pages are compared once all are in,
  // with the chain's bytes read for it in the thread pool meanwhile.
  let pend: Pending | undefined;
  let refBuf = Buffer.alloc(0);

  const compareCommand = async (x: Xfer, p: Pending): Promise<void> => {
    const held = await p.ref;
    let at = 0; // page index within the command
    for (const data of p.chunks) {
      const n = data.length / PAGE_SIZE;
      const o0 = at * PAGE_SIZE;
      // The common case: nothing in this piece changed.
      if (allHeld(held, at, n) && data.compare(refBuf, o0, o0 + data.length) === 0) {
        x.addRun(p.vaddr + o0, n, PE_PARENT);
        pagesInParent += n;
        at += n;
        continue;
      }
      let keepFrom = -1;
      for (let i = 0; i < n; i++) {
        const o = i * PAGE_SIZE;
        const r = o0 + o;
        if (held[at + i] === 1 && data.compare(refBuf, r, r + PAGE_SIZE, o, o + PAGE_SIZE) === 0) {
          if (keepFrom >= 0) {
            await x.write(data.subarray(keepFrom * PAGE_SIZE, o));
            keepFrom = -1;
          }
          x.addRun(p.vaddr + r, 1, PE_PARENT);
          pagesInParent++;
        } else {
          if (keepFrom < 0) keepFrom = i;
          x.addRun(p.vaddr + r, 1, p.flags);
          pagesWritten++;
        }
      }
      if (keepFrom >= 0) await x.write(data.subarray(keepFrom * PAGE_SIZE));
      at += n;
    }
  };

  const onCommand = async (h: PsHeader): Promise<void> => {
    if (h.op === PS_IOV_OPEN2) {
      await finishXfer();
      const { type, id } = decodeDstId(h.dstId);
      if (type !== PS_TYPE_PID && type !== PS_TYPE_SHMEM) throw new ProtocolError(`unknown pagemap type ${type}`);
      const pagesId = nextId++;
      const name = type === PS_TYPE_PID ? `pagemap-${id}.img` : `pagemap-shmem-${id}.img`;
      cur = new Xfer(h.dstId, name, `pages-${pagesId}.img`, pagesId, type === PS_TYPE_PID ? id : undefined);
      await cur.open(opts.dir);
      await answer(Buffer.from([0])); // has_parent: no (cedana keeps the parent itself)
      return;
    }
    if (h.op === PS_IOV_CLOSE || h.op === PS_IOV_FORCE_CLOSE) {
      await finishXfer();
      const status = Buffer.alloc(4);
      status.writeInt32LE(0, 0);
      await answer(status);
      closed = true;
      return;
    }
    const flags = addFlags(h);
    if (flags === undefined) throw new ProtocolError(`page-server command ${h.op} is not expected from criu dump`);
    if (!cur || cur.dstId !== h.dstId) throw new ProtocolError('pages sent outside of an open pagemap');
    if (!(flags & PE_PRESENT)) {
      if (incremental(cur) && flags & PE_PARENT) throw new ProtocolError('a parent hole, though cedana answered has_parent = 0');
      if (incremental(cur)) cur.addRun(h.vaddr, h.nrPages, flags);
      else cur.entry(h.vaddr, h.nrPages, flags);
    } else if (!incremental(cur)) {
      cur.entry(h.vaddr, h.nrPages, flags);
    } else if (h.nrPages > 0) {
      if (wholeOnly(opts.keepWhole?.get(cur.pid!), h.vaddr, h.nrPages * PAGE_SIZE)) {
        pend = { vaddr: h.vaddr, pages: h.nrPages, flags, chunks: [], got: 0, ref: Promise.resolve(new Uint8Array(h.nrPages)) };
      } else {
        const bytes = h.nrPages * PAGE_SIZE;
        if (refBuf.length < bytes) refBuf = Buffer.allocUnsafe(bytes);
        const ref = opts.against!.readAsync(cur.pid!, h.vaddr, h.nrPages, refBuf);
        ref.catch(() => undefined); // awaited when the pages are in
        pend = { vaddr: h.vaddr, pages: h.nrPages, flags, chunks: [], got: 0, ref };
      }
    }
  };

  const onPages = async (data: Buffer): Promise<void> => {
    const x = cur!;
    bytesReceived += data.length;
    const n = data.length / PAGE_SIZE;
    if (!incremental(x)) {
      pagesWritten += n;
      await x.write(data);
      return;
    }
    const p = pend;
    if (!p) throw new ProtocolError('pages sent outside of a command');
    p.chunks.push(data);
    p.got += n;
    if (p.got === p.pages) {
      pend = undefined;
      await compareCommand(x, p);
    }
  };


  try {
    for await (const chunk of sock as AsyncIterable<Buffer>) {
      if (closed) throw new ProtocolError('data after the page server was closed');
      for (const ev of decoder.push(chunk)) {
        if (ev.kind === 'command') await onCommand(ev.header);
        else await onPages(ev.data);
      }
      if (closed) break;
    }
    if (!closed) throw new ProtocolError('criu closed the page stream before its end');
    return { files, pagesWritten, pagesInParent, bytesReceived };
  } catch (e) {
    sock.destroy();
    await cur?.abandon();
    if (e instanceof ProtocolError) throw new CedanaError('CRIU_FAILED', `the page stream from criu: ${e.message}`, { cause: e });
    throw new CedanaError('IO_ERROR', `writing the pages images failed: ${(e as Error).message}`, {
      hint: (e as NodeJS.ErrnoException).code === 'ENOSPC' ? 'free space on the output file system, or dump elsewhere' : undefined,
      cause: e,
    });
  }
}
