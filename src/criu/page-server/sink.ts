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
import { duplexSource, inOrder, type PageSource } from './source.js';
import { CedanaError } from '../../errors.js';
import { createHasher, hashBytes, type Hasher } from '../../image/checksum.js';
import { encodeImage, type ImageEntry } from '../../image/criu/codec.js';
import { IMG_COMMON, MAGICS } from '../../image/criu/kinds.js';
import type { FileEntry } from '../../image/manifest.js';
import type { ParentPages } from '../../image/parent-pages.js';
import type { TarOut } from '../../image/archive.js';
import { touchesRange } from '../../proc/maps.js';
import {
  addFlags, decodeDstId, PAGE_SIZE, PE_PARENT, PE_PRESENT, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PS_TYPE_SHMEM, PsDecoder, ProtocolError, type PsEvent, type PsHeader,
} from './protocol.js';

/** The stock page server's first pages image id (criu/image.c up_page_ids_base: 1 + 0x10000). */
export const FIRST_PAGES_ID = 0x10001;
const STAGE_BYTES = 4 << 20;

export interface SinkOptions {
  /** The images directory. */
  dir: string;
  /** Compare with the parent chain's pages (exact): write only the changed ones. */
  against?: ParentPages;
  /** Per process (as CRIU names it): address ranges [start, end) never to leave in the parent (hugetlb: CRIU restores those from the top image only). */
  keepWhole?: Map<number, [number, number][]>;
  /**
   * The pages files go into this archive or stream as they arrive (in parts), not into `dir`; the
   * pagemaps, small, are still written to `dir` (they follow with the image's other files).
   */
  archive?: TarOut;
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
  private readonly head: ImageEntry;
  /** The pagemap's entries, flat (vaddr, pages, flags): a checkpoint of scattered changes has hundreds of thousands. */
  private readonly runs: number[] = [];
  private fh: FileHandle | undefined;
  private stage = Buffer.allocUnsafe(STAGE_BYTES);
  private spare = Buffer.allocUnsafe(STAGE_BYTES);
  private staged = 0;
  private size = 0;
  private readonly hash: Hasher = createHasher('blake3');
  private inflight: Promise<void> | undefined;
  private run: { vaddr: number; n: number; flags: number } | undefined;

  constructor(readonly dstId: bigint, readonly pagemapName: string, readonly pagesName: string, pagesId: number, readonly pid: number | undefined, private readonly archive?: TarOut) {
    this.head = { type: 'pagemap_head', value: { pages_id: pagesId } };
  }

  async open(dir: string): Promise<void> {
    if (!this.archive) this.fh = await open(join(dir, this.pagesName), 'wx', 0o600);
  }

  /** A pagemap entry as CRIU's page server writes one: for each command, or for each run of pages of one fate. */
  entry(vaddr: number, n: number, flags: number): void {
    this.runs.push(vaddr, n, flags);
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

  /**
   * Copies `data` (which may be the socket's reused read buffer) into a staging buffer. A full
   * staging buffer goes to a write in the thread pool while the other one fills: a promise comes back
   * only when both are taken (the caller then waits before handing in more).
   */
  write(data: Buffer): Promise<void> | undefined {
    this.hash.update(data);
    this.size += data.length;
    return this.copyIn(data, 0);
  }

  private copyIn(data: Buffer, from: number): Promise<void> | undefined {
    let off = from;
    while (off < data.length) {
      const n = data.copy(this.stage, this.staged, off);
      this.staged += n;
      off += n;
      if (this.staged === this.stage.length) {
        const wait = this.flush();
        const rest = off;
        if (wait) return wait.then(() => this.copyIn(data, rest));
      }
    }
    return undefined;
  }

  /** Sends the staging buffer to be written; a promise when the other one is still being written (then nothing is sent yet). */
  private flush(): Promise<void> | undefined {
    if (this.staged === 0) return undefined;
    if (this.inflight) {
      const w = this.inflight;
      this.inflight = undefined;
      return w.then(() => this.flush());
    }
    const full = this.stage.subarray(0, this.staged);
    this.inflight = this.archive ? this.archive.part(this.pagesName, full) : writeAll(this.fh!, full);
    this.inflight.catch(() => undefined); // observed by the next flush or by finish()
    [this.stage, this.spare] = [this.spare, this.stage];
    this.staged = 0;
    return undefined;
  }

  private async drain(): Promise<void> {
    await this.flush();
    const w = this.inflight;
    this.inflight = undefined;
    await w;
    if (this.staged > 0) await this.drain();
  }

  /** Flushes and closes the pages file, writes the pagemap; returns both files' entries. */
  async finish(dir: string): Promise<Record<string, FileEntry>> {
    this.closeRun();
    await this.drain();
    // An empty pages file is still a file of the image: one empty part makes it there.
    if (this.archive && this.size === 0) await this.archive.part(this.pagesName, Buffer.alloc(0));
    await this.fh?.close();
    this.fh = undefined;
    const pm = this.pagemap();
    await writeFile(join(dir, this.pagemapName), pm, { mode: 0o600, flag: 'wx' });
    return {
      [this.pagesName]: { size: this.size, blake3: this.hash.hex() },
      [this.pagemapName]: { size: pm.length, blake3: hashBytes('blake3', pm) },
    };
  }

  /** The pagemap image, its entries made into messages a slice at a time (never all at once). */
  private pagemap(): Buffer {
    const image = (entries: ImageEntry[]): Buffer => encodeImage({ kind: 'PAGEMAP', head: IMG_COMMON, magic: MAGICS.PAGEMAP, entries: [this.head, ...entries] });
    const headOnly = image([]).length;
    const parts: Buffer[] = [];
    const SLICE = 3 * 4096;
    for (let i = 0; i === 0 || i < this.runs.length; i += SLICE) {
      const entries: ImageEntry[] = [];
      for (let k = i; k < Math.min(i + SLICE, this.runs.length); k += 3) {
        entries.push({ type: 'pagemap_entry', value: { vaddr: BigInt(this.runs[k]!), compat_nr_pages: 0, flags: this.runs[k + 2]!, nr_pages: BigInt(this.runs[k + 1]!) } });
      }
      const buf = image(entries);
      parts.push(i === 0 ? buf : buf.subarray(headOnly)); // later slices: without the magic and the head
    }
    return Buffer.concat(parts);
  }

  async abandon(): Promise<void> {
    await this.inflight?.catch(() => undefined);
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
  }
}

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length; ) off += (await fh.write(buf, off)).bytesWritten;
}

/** A command's pages being received, compared with the chain's once all are in. */
interface Pending {
  vaddr: number;
  pages: number;
  flags: number;
  /** Pages received so far. */
  got: number;
  /** Which of its pages the chain holds (their bytes then in refBuf): set when the read is done. */
  held: Uint8Array | undefined;
  /** The chain's read, when there is one. */
  ref: Promise<void> | undefined;
}

function allHeld(held: Uint8Array): boolean {
  for (let i = 0; i < held.length; i++) if (held[i] !== 1) return false;
  return true;
}


/**
 * Serves one page-server session from `src` (CRIU's end is its --ps-socket): resolves once CRIU's
 * CLOSE is answered, with every file written and hashed. On any failure (a write, a malformed
 * stream, CRIU going away) it rejects and cuts the connection, which makes CRIU fail its dump and
 * resume the tree; the caller removes the images directory. Chunks from `src` may be a reused read
 * buffer: whatever is kept is copied (into the command's buffer, or a pages file's staging buffer).
 */
export async function servePageSink(src: PageSource | Duplex, opts: SinkOptions): Promise<SinkResult> {
  const source: PageSource = 'run' in src ? src : duplexSource(src);
  const decoder = new PsDecoder({ transient: true });
  const files: Record<string, FileEntry> = {};
  // Shared memory (no PID) is stored whole.
  const incremental = (x: Xfer): boolean => opts.against !== undefined && x.pid !== undefined;
  let nextId = FIRST_PAGES_ID;
  let cur: Xfer | undefined;
  let pagesWritten = 0;
  let pagesInParent = 0;
  let bytesReceived = 0;
  let closed = false;
  // The command whose pages are arriving (content mode): its pages are copied into cmdBuf and
  // compared once all are in, with the chain's bytes read into refBuf in the thread pool meanwhile.
  let pend: Pending | undefined;
  let cmdBuf = Buffer.alloc(0);
  let refBuf = Buffer.alloc(0);

  const finishXfer = async (): Promise<void> => {
    if (!cur) return;
    const x = cur;
    cur = undefined;
    if (pend) throw new ProtocolError('a pagemap closed before all pages of its last command arrived');
    Object.assign(files, await x.finish(opts.dir));
  };

  /** Runs of changed pages of the complete command go to the pages file; the rest become PE_PARENT. */
  const compareCommand = (x: Xfer, p: Pending, held: Uint8Array): Promise<void> | undefined => {
    const bytes = p.pages * PAGE_SIZE;
    if (allHeld(held) && cmdBuf.compare(refBuf, 0, bytes, 0, bytes) === 0) {
      x.addRun(p.vaddr, p.pages, PE_PARENT);
      pagesInParent += p.pages;
      return undefined;
    }
    const kept: [number, number][] = [];
    for (let i = 0; i < p.pages; i++) {
      const o = i * PAGE_SIZE;
      if (held[i] === 1 && cmdBuf.compare(refBuf, o, o + PAGE_SIZE, o, o + PAGE_SIZE) === 0) {
        x.addRun(p.vaddr + o, 1, PE_PARENT);
        pagesInParent++;
      } else {
        const last = kept.at(-1);
        if (last && last[1] === i) last[1] = i + 1;
        else kept.push([i, i + 1]);
        x.addRun(p.vaddr + o, 1, p.flags);
        pagesWritten++;
      }
    }
    // In order; a promise once one write has to wait (cmdBuf stays as it is until then).
    return inOrder(kept, ([from, to]) => x.write(cmdBuf.subarray(from * PAGE_SIZE, to * PAGE_SIZE)));
  };

  const onCommand = async (h: PsHeader): Promise<void> => {
    if (h.op === PS_IOV_OPEN2) {
      await finishXfer();
      const { type, id } = decodeDstId(h.dstId);
      if (type !== PS_TYPE_PID && type !== PS_TYPE_SHMEM) throw new ProtocolError(`unknown pagemap type ${type}`);
      const pagesId = nextId++;
      const name = type === PS_TYPE_PID ? `pagemap-${id}.img` : `pagemap-shmem-${id}.img`;
      cur = new Xfer(h.dstId, name, `pages-${pagesId}.img`, pagesId, type === PS_TYPE_PID ? id : undefined, opts.archive);
      await cur.open(opts.dir);
      await source.write(Buffer.from([0])); // has_parent: no (cedana keeps the parent itself)
      return;
    }
    if (h.op === PS_IOV_CLOSE || h.op === PS_IOV_FORCE_CLOSE) {
      await finishXfer();
      const status = Buffer.alloc(4);
      status.writeInt32LE(0, 0);
      await source.write(status);
      closed = true;
      source.stop();
      return;
    }
    const flags = addFlags(h);
    if (flags === undefined) throw new ProtocolError(`page-server command ${h.op} is not expected from criu dump`);
    if (!cur || cur.dstId !== h.dstId) throw new ProtocolError('pages sent outside of an open pagemap');
    if (pend) throw new ProtocolError('a command before all pages of the last one arrived');
    if (!(flags & PE_PRESENT)) {
      if (incremental(cur) && flags & PE_PARENT) throw new ProtocolError('a parent hole, though cedana answered has_parent = 0');
      if (incremental(cur)) cur.addRun(h.vaddr, h.nrPages, flags);
      else cur.entry(h.vaddr, h.nrPages, flags);
    } else if (!incremental(cur)) {
      cur.entry(h.vaddr, h.nrPages, flags);
    } else if (h.nrPages > 0) {
      const bytes = h.nrPages * PAGE_SIZE;
      if (cmdBuf.length < bytes) cmdBuf = Buffer.allocUnsafe(bytes);
      const p: Pending = { vaddr: h.vaddr, pages: h.nrPages, flags, got: 0, held: undefined, ref: undefined };
      if (touchesRange(opts.keepWhole?.get(cur.pid!), h.vaddr, bytes)) p.held = new Uint8Array(h.nrPages);
      else {
        if (refBuf.length < bytes) refBuf = Buffer.allocUnsafe(bytes);
        p.ref = opts.against!.readAsync(cur.pid!, h.vaddr, h.nrPages, refBuf).then((held) => void (p.held = held));
        p.ref.catch(() => undefined); // awaited when the pages are in
      }
      pend = p;
    }
  };

  /** Page data of the current command; synchronous unless a write or the chain's read must be waited for. */
  const onPages = (data: Buffer): Promise<void> | undefined => {
    const x = cur!;
    bytesReceived += data.length;
    const n = data.length / PAGE_SIZE;
    if (!incremental(x)) {
      pagesWritten += n;
      return x.write(data);
    }
    const p = pend;
    if (!p) throw new ProtocolError('pages sent outside of a command');
    data.copy(cmdBuf, p.got * PAGE_SIZE);
    p.got += n;
    if (p.got < p.pages) return undefined;
    pend = undefined;
    if (p.held) return compareCommand(x, p, p.held);
    return p.ref!.then(() => compareCommand(x, p, p.held!));
  };

  /** One event of the stream; a promise when it has to wait (the source pauses meanwhile). */
  const handle = (ev: PsEvent): Promise<void> | undefined => {
    if (closed) throw new ProtocolError('data after the page server was closed');
    return ev.kind === 'command' ? onCommand(ev.header) : onPages(ev.data);
  };

  try {
    await source.run((chunk) => {
      if (closed) throw new ProtocolError('data after the page server was closed');
      return inOrder(decoder.push(chunk), handle);
    });
    if (!closed) throw new ProtocolError('criu closed the page stream before its end');
    source.destroy(); // CRIU has its answer (the status is in the socket, CRIU may still read it)
    return { files, pagesWritten, pagesInParent, bytesReceived };
  } catch (e) {
    source.destroy();
    await cur?.abandon();
    if (e instanceof ProtocolError) throw new CedanaError('CRIU_FAILED', `the page stream from criu: ${e.message}`, { cause: e });
    throw new CedanaError('IO_ERROR', `writing the pages images failed: ${(e as Error).message}`, {
      hint: (e as NodeJS.ErrnoException).code === 'ENOSPC' ? 'free space on the output file system, or dump elsewhere' : undefined,
      cause: e,
    });
  }
}
