/**
 * CRIU's page-server protocol (criu/page-xfer.c, CRIU 4.2), as `criu dump --page-server` speaks it:
 * a header, `struct page_server_iov { u32 cmd; u64 nr_pages; u64 vaddr; u64 dst_id; }`, sent raw in
 * host byte order (little-endian here) — 32 bytes, 4 of them padding after cmd — followed by
 * nr_pages * 4096 bytes of page data when the command carries PE_PRESENT.
 *
 * `cmd = flags << 16 | op`; `dst_id = id << 8 | type` (type 1: a process's pagemap, id its pid;
 * type 2: shared memory, id the mapping's inode). Answers go the other way: OPEN2 gets one byte
 * (has_parent), PARENT an int32, CLOSE / FORCE_CLOSE an int32 status (0: all received).
 *
 * Pure: the decoder takes the stream in chunks of any size and hands out headers and page data,
 * the data always in whole pages.
 */
export const PS_IOV_ADD = 1;
export const PS_IOV_HOLE = 2;
export const PS_IOV_OPEN = 3;
export const PS_IOV_OPEN2 = 4;
export const PS_IOV_PARENT = 5;
export const PS_IOV_ADD_F = 6;
export const PS_IOV_GET = 7;
export const PS_IOV_CLOSE = 0x1023;
export const PS_IOV_FORCE_CLOSE = 0x1024;

export const PS_TYPE_PID = 1;
export const PS_TYPE_SHMEM = 2;

/** pagemap_entry.flags, as CRIU sends them in ADD_F (and images store them). */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

export const HEADER_SIZE = 32;
export const PAGE_SIZE = 4096;

const CMD_BITS = 16;
const CMD_MASK = (1 << CMD_BITS) - 1;
const TYPE_BITS = 8n;
const TYPE_MASK = (1n << TYPE_BITS) - 1n;

export interface PsHeader {
  /** The raw cmd word. */
  cmd: number;
  /** cmd & 0xffff: PS_IOV_*. */
  op: number;
  /** cmd >> 16 (ADD_F only). */
  flags: number;
  nrPages: number;
  vaddr: number;
  dstId: bigint;
}

export const encodeCmd = (op: number, flags = 0): number => ((flags << CMD_BITS) | op) >>> 0;
export const decodeOp = (cmd: number): number => cmd & CMD_MASK;
export const decodeFlags = (cmd: number): number => cmd >>> CMD_BITS;
export const encodeDstId = (type: number, id: number | bigint): bigint => (BigInt(id) << TYPE_BITS) | BigInt(type);
export function decodeDstId(dstId: bigint): { type: number; id: number } {
  return { type: Number(dstId & TYPE_MASK), id: Number(dstId >> TYPE_BITS) };
}

/** The pagemap flags an add-type command stands for (ADD: present; HOLE: in the parent); undefined for others. */
export function addFlags(h: Pick<PsHeader, 'op' | 'flags'>): number | undefined {
  if (h.op === PS_IOV_ADD_F) return h.flags;
  if (h.op === PS_IOV_ADD) return PE_PRESENT;
  if (h.op === PS_IOV_HOLE) return PE_PARENT;
  return undefined;
}

/** Bytes of page data that follow this header. */
export function dataBytes(h: PsHeader): number {
  const f = addFlags(h);
  return f !== undefined && f & PE_PRESENT ? h.nrPages * PAGE_SIZE : 0;
}

export function parseHeader(buf: Buffer, off = 0): PsHeader {
  const cmd = buf.readUInt32LE(off);
  return {
    cmd,
    op: decodeOp(cmd),
    flags: decodeFlags(cmd),
    nrPages: Number(buf.readBigUInt64LE(off + 8)),
    vaddr: Number(buf.readBigUInt64LE(off + 16)),
    dstId: buf.readBigUInt64LE(off + 24),
  };
}

export function encodeHeader(h: { op: number; flags?: number; nrPages?: number; vaddr?: number; dstId?: bigint }): Buffer {
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(encodeCmd(h.op, h.flags ?? 0), 0);
  b.writeBigUInt64LE(BigInt(h.nrPages ?? 0), 8);
  b.writeBigUInt64LE(BigInt(h.vaddr ?? 0), 16);
  b.writeBigUInt64LE(h.dstId ?? 0n, 24);
  return b;
}

export type PsEvent =
  | { kind: 'command'; header: PsHeader }
  /** Whole pages of the command `header`; `first` is the index of data's first page among its nr_pages. */
  | { kind: 'pages'; header: PsHeader; first: number; data: Buffer };

/** Sanity bound on one command's pages (CRIU sends at most a pipe's worth, far fewer). */
const MAX_PAGES = 1 << 28;
const KNOWN = new Set([PS_IOV_ADD, PS_IOV_HOLE, PS_IOV_OPEN, PS_IOV_OPEN2, PS_IOV_PARENT, PS_IOV_ADD_F, PS_IOV_GET, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE]);

export class ProtocolError extends Error {}

/**
 * Streaming decoder: push() each chunk as it arrives, get the events it completes. Page data comes
 * out in whole pages (a partial page waits for the rest); a 'command' event precedes its pages.
 */
export class PsDecoder {
  /**
   * transient: each pushed chunk is valid only until push returns and the events are handled (a
   * reused read buffer): the part of a header or page that waits for the next chunk is copied.
   */
  constructor(private readonly opts: { transient?: boolean } = {}) {}

  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private current: PsHeader | undefined;
  /** Pages of `current` still to come. */
  private pagesLeft = 0;
  private pageIndex = 0;

  /** Whether the stream stopped at a command boundary (nothing half-received). */
  get idle(): boolean {
    return this.pendingBytes === 0 && this.pagesLeft === 0;
  }

  push(chunk: Buffer): PsEvent[] {
    const out: PsEvent[] = [];
    if (chunk.length) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
    }
    for (;;) {
      if (this.pagesLeft > 0) {
        const pages = Math.min(this.pagesLeft, Math.floor(this.pendingBytes / PAGE_SIZE));
        if (pages === 0) return this.keepRest(out);
        const data = this.take(pages * PAGE_SIZE);
        out.push({ kind: 'pages', header: this.current!, first: this.pageIndex, data });
        this.pageIndex += pages;
        this.pagesLeft -= pages;
        continue;
      }
      if (this.pendingBytes < HEADER_SIZE) return this.keepRest(out);
      const header = parseHeader(this.take(HEADER_SIZE));
      if (!KNOWN.has(header.op)) throw new ProtocolError(`unknown page-server command 0x${header.cmd.toString(16)}`);
      if (header.nrPages > MAX_PAGES) throw new ProtocolError(`page-server command with ${header.nrPages} pages`);
      out.push({ kind: 'command', header });
      this.current = header;
      this.pageIndex = 0;
      this.pagesLeft = dataBytes(header) / PAGE_SIZE;
    }
  }

  /** In transient mode, the bytes left over (less than a header or a page) become our own copy. */
  private keepRest(out: PsEvent[]): PsEvent[] {
    if (this.opts.transient && this.pendingBytes > 0) this.pending = [Buffer.concat(this.pending)]; // concat copies, even one buffer
    return out;
  }

  /** The first n pending bytes, as one buffer (no copy when one chunk holds them). */
  private take(n: number): Buffer {
    const head = this.pending[0]!;
    let out: Buffer;
    if (head.length >= n) {
      out = head.subarray(0, n);
      if (head.length === n) this.pending.shift();
      else this.pending[0] = head.subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const c = this.pending[0]!;
        const k = Math.min(c.length, n - got);
        c.copy(out, got, 0, k);
        got += k;
        if (k === c.length) this.pending.shift();
        else this.pending[0] = c.subarray(k);
      }
    }
    this.pendingBytes -= n;
    return out;
  }
}
