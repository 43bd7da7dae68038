/**
 * A client of CRIU's page server (4.2 wire protocol, see protocol.ts): cedana sends pages to a stock
 * `criu page-server` as `criu dump --page-server` would. One session per pagemap:
 *   OPEN2(dst_id)            → 1 byte has_parent
 *   ADD_F PE_PRESENT + data  (no answer)
 *   ADD_F PE_PARENT, no data (no answer; the server checks the range against its parent's pagemap)
 *   CLOSE                    → int32 status (0: all received)
 * Entries of one pagemap must come in ascending address order; the server drops the connection on
 * any error, which rejects every pending and later call here.
 */
import type { Duplex } from 'node:stream';
import { CedanaError } from '../../errors.js';
import { encodeDstId, encodeHeader, PAGE_SIZE, PE_PARENT, PE_PRESENT, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID } from './protocol.js';

/** Bytes written but not yet taken by the socket before a write waits (two 4 MiB runs). */
const QUEUED = 8 << 20;

export class PageServerClient {
  private lastFlush: Promise<void> = Promise.resolve();
  private received: Buffer[] = [];
  private receivedBytes = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failed: Error | undefined;
  private dstId: bigint | undefined;
  /** End of the last entry sent in the open pagemap (entries must ascend). */
  private lastEnd = 0;
  /** CLOSE was answered: the session is over. */
  private closed = false;
  /** Bytes of page data written. */
  bytesSent = 0;

  constructor(private readonly sock: Duplex) {
    sock.on('data', (d: Buffer) => {
      this.received.push(d);
      this.receivedBytes += d.length;
      this.serve();
    });
    const fail = (e: Error): void => {
      if (!this.failed) this.failed = this.closed ? new Error('the page-server session is closed') : e;
      const w = this.want;
      this.want = undefined;
      w?.reject(this.failed);
    };
    sock.on('error', (e) => fail(new CedanaError('IO_ERROR', `page server connection failed: ${e.message}`)));
    sock.on('close', () => fail(new CedanaError('IO_ERROR', 'the page server closed the connection (it refused a command, or it ended; see its log)')));
    sock.on('end', () => fail(new CedanaError('IO_ERROR', 'the page server ended the connection (it refused a command, or it ended; see its log)')));
  }

  /**
   * Opens the pagemap of the process CRIU will name `pid` (the one open before ends here, as in
   * `criu dump`'s stream: a session holds a pagemap per process and one CLOSE); resolves to has_parent.
   */
  async open(pid: number): Promise<boolean> {
    return this.openDst(encodeDstId(PS_TYPE_PID, pid));
  }

  /** Opens any pagemap by its dst_id (a process's, or shared memory's: type 2); resolves to has_parent. */
  async openDst(dstId: bigint): Promise<boolean> {
    if (this.closed) throw new Error('the page-server session is closed');
    this.dstId = dstId;
    this.lastEnd = 0;
    await this.write(encodeHeader({ op: PS_IOV_OPEN2, dstId: this.dstId }));
    const b = await this.read(1);
    return b[0] === 1;
  }

  /**
   * An ADD_F entry with any pagemap flags, as `criu dump` sends it: `data` (whole pages, the
   * caller's own buffer: it may wait in the socket's queue) exactly when the flags hold PE_PRESENT.
   */
  async entry(vaddr: number, nrPages: number, flags: number, data?: Buffer): Promise<void> {
    if ((flags & PE_PRESENT) !== 0 !== (data !== undefined)) throw new Error('page data goes with PE_PRESENT, and only with it');
    if (data && data.length !== nrPages * PAGE_SIZE) throw new Error(`${data.length} bytes of page data for ${nrPages} pages`);
    this.check(vaddr, nrPages);
    const h = encodeHeader({ op: PS_IOV_ADD_F, flags, nrPages, vaddr, dstId: this.dstId });
    if (!data) return this.write(h);
    this.bytesSent += data.length;
    return this.write(h, data);
  }

  /** Pages at `vaddr` with their bytes (`data.length` a multiple of the page size). */
  async add(vaddr: number, data: Buffer): Promise<void> {
    const nrPages = data.length / PAGE_SIZE;
    this.check(vaddr, nrPages);
    if (!Number.isInteger(nrPages)) throw new Error(`page data of ${data.length} bytes is not whole pages`);
    this.bytesSent += data.length;
    await this.write(encodeHeader({ op: PS_IOV_ADD_F, flags: PE_PRESENT, nrPages, vaddr, dstId: this.dstId }), data);
  }

  /** Pages at `vaddr` the target's parent image holds unchanged: no data. */
  async parent(vaddr: number, nrPages: number): Promise<void> {
    this.check(vaddr, nrPages);
    await this.write(encodeHeader({ op: PS_IOV_ADD_F, flags: PE_PARENT, nrPages, vaddr, dstId: this.dstId }));
  }

  /**
   * Ends the session; resolves once the page server confirmed (status 0), else rejects. Then ends
   * the connection: a page server listening on TCP waits, after answering CLOSE, for its peer to
   * close first (so that TIME_WAIT stays on the client's side), and exits only then.
   */
  async close(): Promise<void> {
    const status = await this.finish();
    if (status !== 0) throw new CedanaError('IO_ERROR', `the page server answered CLOSE with status ${status}`);
  }

  /**
   * Sends CLOSE (or FORCE_CLOSE) and resolves to the page server's status, whatever it is (a proxy
   * relays it); ends the connection after (see close()).
   */
  async finish(op: typeof PS_IOV_CLOSE | typeof PS_IOV_FORCE_CLOSE = PS_IOV_CLOSE): Promise<number> {
    await this.write(encodeHeader({ op }));
    const status = (await this.read(4)).readInt32LE(0);
    this.dstId = undefined;
    this.closed = true;
    this.sock.end();
    return status;
  }

  /**
   * Settles once everything written so far has left cedana (handed to the kernel, or dropped with a
   * failed connection): page data given to add() or entry() may be reused from then on.
   */
  flushed(): Promise<void> {
    return this.lastFlush;
  }

  /** Drops the connection mid-session (a failed round): the page server sees it end and exits with an error. */
  abort(): void {
    this.sock.destroy();
  }

  private check(vaddr: number, nrPages: number): void {
    if (this.failed) throw this.failed;
    if (this.dstId === undefined) throw new Error('no pagemap is open');
    if (nrPages <= 0 || vaddr % PAGE_SIZE !== 0) throw new Error(`bad page range ${vaddr.toString(16)} +${nrPages}`);
    if (vaddr < this.lastEnd) throw new Error(`page range ${vaddr.toString(16)} is below the last one sent (${this.lastEnd.toString(16)}): entries must ascend`);
    this.lastEnd = vaddr + nrPages * PAGE_SIZE;
  }

  /** Writes the buffers as one (writev), resolving when the socket can take more. */
  private write(...bufs: Buffer[]): Promise<void> {
    if (this.failed) return Promise.reject(this.failed);
    const s = this.sock;
    if (s.destroyed || !s.writable) return Promise.reject(new CedanaError('IO_ERROR', 'the page server connection is closed'));
    s.cork();
    let ok = true;
    for (const b of bufs.slice(0, -1)) ok = s.write(b) && ok;
    // The stream calls back in order: the last buffer's callback means all of them are out.
    this.lastFlush = new Promise<void>((resolve) => (ok = s.write(bufs[bufs.length - 1]!, () => resolve()) && ok));
    s.uncork();
    // Up to QUEUED bytes may wait in the socket's queue: the next run is read and hashed meanwhile,
    // and the socket never runs dry between two writes.
    if (ok || s.writableLength <= QUEUED) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = (e?: Error): void => {
        s.off('drain', onDrain);
        s.off('close', onClose);
        if (e) reject(e);
        else resolve();
      };
      const onDrain = (): void => done();
      const onClose = (): void => done(this.failed ?? new CedanaError('IO_ERROR', 'the page server closed the connection'));
      s.on('drain', onDrain);
      s.on('close', onClose);
    });
  }

  private read(n: number): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error('an answer is already awaited'));
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.serve();
      if (this.want && this.failed) {
        this.want = undefined;
        reject(this.failed);
      }
    });
  }

  private serve(): void {
    const w = this.want;
    if (!w || this.receivedBytes < w.n) return;
    const all = Buffer.concat(this.received);
    this.received = all.length > w.n ? [all.subarray(w.n)] : [];
    this.receivedBytes -= w.n;
    this.want = undefined;
    w.resolve(all.subarray(0, w.n));
  }
}
