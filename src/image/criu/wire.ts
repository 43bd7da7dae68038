/**
 * Protobuf wire primitives over a Buffer, bounds-checked at every read. Offsets are absolute in the
 * image file so that an error can say where the damage is. protobufjs parses the schemas (when
 * schema/compiled.ts is generated); the wire format is read here because images come from anywhere
 * and every malformed byte must become a precise WireError (protobufjs throws bare RangeErrors
 * without an offset).
 */

/** A malformed byte sequence at `offset` (absolute in the image). The codec turns it into IMAGE_INVALID. */
export class WireError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(message);
    this.name = 'WireError';
  }
}

export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LEN = 2;
export const WIRE_FIXED32 = 5;

export class WireReader {
  pos: number;

  constructor(
    readonly buf: Buffer,
    start: number,
    readonly end: number,
  ) {
    this.pos = start;
  }

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint of up to 64 bits, as an unsigned bigint. */
  varint64(): bigint {
    const start = this.pos;
    // The first 7 bytes (49 bits) fit a double exactly; only longer varints go through BigInt.
    let lo = 0;
    let mul = 1;
    for (let i = 0; i < 7; i++) {
      const b = this.byte(start);
      lo += (b & 0x7f) * mul;
      if (b < 0x80) return BigInt(lo);
      mul *= 128;
    }
    let v = BigInt(lo);
    for (let i = 7; i < 10; i++) {
      const b = this.byte(start);
      if (i === 9 && b > 1) throw new WireError('varint does not fit in 64 bits', start);
      v |= BigInt(b & 0x7f) << BigInt(7 * i);
      if (b < 0x80) return v;
    }
    throw new WireError('varint longer than 10 bytes', start);
  }

  /** A varint that must be a safe integer (tags, lengths), as a number. */
  varintNumber(): number {
    const start = this.pos;
    const first = this.buf[start];
    if (start < this.end && first !== undefined && first < 0x80) {
      this.pos++; // the common case: one byte
      return first;
    }
    const v = this.varint64();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError(`varint ${v} is too large here`, start);
    return Number(v);
  }

  /** A varint's low 32 bits as an unsigned number (protobuf truncates wider values). */
  varint32(): number {
    const start = this.pos;
    let v = 0;
    for (let i = 0; i < 10; i++) {
      const b = this.byte(start);
      if (i < 5) v |= (b & 0x7f) << (7 * i); // shifts past 31 bits drop out, as the truncation wants
      else if (i === 9 && b > 1) throw new WireError('varint does not fit in 64 bits', start);
      if (b < 0x80) return v >>> 0;
    }
    throw new WireError('varint longer than 10 bytes', start);
  }

  fixed32(): number {
    this.need(4, 'fixed32');
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }

  fixed64(): bigint {
    this.need(8, 'fixed64');
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    return v;
  }

  float(): number {
    this.need(4, 'float');
    const v = this.buf.readFloatLE(this.pos);
    this.pos += 4;
    return v;
  }

  double(): number {
    this.need(8, 'double');
    const v = this.buf.readDoubleLE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A length-delimited payload: [start, end) in the buffer, bounded by this reader's end. */
  lengthDelimited(): { start: number; end: number } {
    const at = this.pos;
    const len = this.varintNumber();
    const left = this.end - this.pos;
    if (len > left) throw new WireError(`length ${len} runs past the end of its message (${left} bytes left)`, at);
    const start = this.pos;
    this.pos += len;
    return { start, end: this.pos };
  }

  /** Skips a field's value of the given wire type (for unknown fields). */
  skip(wireType: number, tagOffset: number): void {
    switch (wireType) {
      case WIRE_VARINT:
        this.varint64();
        return;
      case WIRE_FIXED64:
        this.need(8, 'fixed64');
        this.pos += 8;
        return;
      case WIRE_LEN:
        this.lengthDelimited();
        return;
      case WIRE_FIXED32:
        this.need(4, 'fixed32');
        this.pos += 4;
        return;
      default:
        // 3 and 4 are proto2 groups, which CRIU never writes; 6 and 7 do not exist.
        throw new WireError(`unsupported wire type ${wireType}`, tagOffset);
    }
  }

  private byte(start: number): number {
    if (this.pos >= this.end) throw new WireError('varint runs past the end of its message', start);
    return this.buf[this.pos++]!;
  }

  private need(n: number, what: string): void {
    if (this.end - this.pos < n) throw new WireError(`${what} runs past the end of its message`, this.pos);
  }
}

/** Appends protobuf wire data into a list of chunks; finish() joins them once. */
export class WireWriter {
  private readonly chunks: Buffer[] = [];
  private scratch: number[] = [];
  private length = 0;

  tag(id: number, wireType: number): void {
    this.varint(id * 8 + wireType); // not id << 3: field numbers reach 2^29
  }

  /** A varint from a non-negative number below 2^53 (tags, lengths, uint32s). */
  varint(v: number): void {
    while (v >= 0x80) {
      this.scratch.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    this.scratch.push(v);
  }

  /** A varint from a bigint taken as 64 bits two's complement (negative int64/int32 take 10 bytes). */
  varint64(v: bigint): void {
    let u = BigInt.asUintN(64, v);
    if (u < 0x20000000000000n) return this.varint(Number(u));
    while (u >= 0x80n) {
      this.scratch.push(Number(u & 0x7fn) | 0x80);
      u >>= 7n;
    }
    this.scratch.push(Number(u));
  }

  fixed32(v: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v >>> 0);
    this.bytes(b);
  }

  fixed64(v: bigint): void {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt.asUintN(64, v));
    this.bytes(b);
  }

  float(v: number): void {
    const b = Buffer.alloc(4);
    b.writeFloatLE(v);
    this.bytes(b);
  }

  double(v: number): void {
    const b = Buffer.alloc(8);
    b.writeDoubleLE(v);
    this.bytes(b);
  }

  bytes(b: Uint8Array): void {
    this.flush();
    const buf = Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    this.chunks.push(buf);
    this.length += buf.length;
  }

  finish(): Buffer {
    this.flush();
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.length);
  }

  private flush(): void {
    if (this.scratch.length === 0) return;
    const b = Buffer.from(this.scratch);
    this.chunks.push(b);
    this.length += b.length;
    this.scratch = [];
  }
}
