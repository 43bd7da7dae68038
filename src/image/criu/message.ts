/**
 * Decodes and encodes one protobuf message by its schema (schema/index.ts).
 *
 * Decoded values: 32-bit integers and floats are numbers, 64-bit integers are bigints (addresses,
 * rlimits and signal masks need all 64 bits), bools are booleans, bytes are Buffers (views of the
 * input), enums are their names (or the number when the schema has no name for it), strings are
 * strings — or Buffers when the bytes are not valid UTF-8 (file names are bytes to the kernel), so
 * that nothing is lost. Fields the image does not hold are absent. Fields the schema does not know
 * are kept, as they are on the wire, in `$unknown` and written back at the end of the message.
 */
import type { FieldInfo, MessageInfo } from './schema/index.js';
import { WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT, WireError, WireReader, WireWriter } from './wire.js';

export type Message = { [field: string]: unknown };

/** The key under which a decoded message keeps the fields its schema does not know (raw wire bytes). */
export const UNKNOWN_FIELDS = '$unknown';

/** Messages in CRIU nest a few levels (cgroup directories nest themselves); damaged input must not recurse deeper. */
export const MAX_DEPTH = 64;

/** A value that cannot be encoded: `path` names the field (e.g. 'file_entry.reg.name'). */
export class EncodeError extends Error {
  constructor(
    readonly path: string,
    message: string,
  ) {
    super(`${path}: ${message}`);
    this.name = 'EncodeError';
  }
}

const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

function wireTypeOf(f: FieldInfo): number {
  switch (f.kind) {
    case 'fixed64': case 'sfixed64': case 'double': return WIRE_FIXED64;
    case 'fixed32': case 'sfixed32': case 'float': return WIRE_FIXED32;
    case 'string': case 'bytes': case 'message': return WIRE_LEN;
    default: return WIRE_VARINT;
  }
}

/** Decodes buf[start, end) as a message of type `info`. Throws WireError with an absolute offset. */
export function decodeMessage(info: MessageInfo, buf: Buffer, start: number, end: number, depth = 0): Message {
  const out: Message = {};
  decodeInto(info, new WireReader(buf, start, end), out, depth);
  return out;
}

function decodeInto(info: MessageInfo, r: WireReader, out: Message, depth: number): void {
  if (depth > MAX_DEPTH) throw new WireError(`messages nested deeper than ${MAX_DEPTH}`, r.pos);
  const unknown: Buffer[] = [];
  while (!r.done) {
    const tagAt = r.pos;
    const tag = r.varintNumber();
    const id = Math.floor(tag / 8);
    const wire = tag % 8;
    if (id === 0 || id > 0x1fffffff) throw new WireError(`invalid field number ${id} in ${info.name}`, tagAt);
    const f = info.byId.get(id);
    if (!f) {
      r.skip(wire, tagAt);
      unknown.push(r.buf.subarray(tagAt, r.pos));
      continue;
    }
    if (f.repeated && wire === WIRE_LEN && wireTypeOf(f) !== WIRE_LEN) {
      // A packed run of scalars: protobuf readers must accept it whatever the schema says.
      const { start, end } = r.lengthDelimited();
      const pr = new WireReader(r.buf, start, end);
      const list = repeatedOf(out, f);
      while (!pr.done) list.push(readScalar(f, pr));
      continue;
    }
    if (wire !== wireTypeOf(f)) throw new WireError(`${info.name}.${f.name} (field ${id}) has wire type ${wire}, expected ${wireTypeOf(f)}`, tagAt);
    if (f.kind === 'message') {
      const { start, end } = r.lengthDelimited();
      const sub = new WireReader(r.buf, start, end);
      if (f.repeated) {
        const m: Message = {};
        decodeInto(f.message!, sub, m, depth + 1);
        repeatedOf(out, f).push(m);
      } else {
        // A singular message seen twice merges into the first, as protobuf specifies.
        const prev = out[f.name];
        const m: Message = prev !== undefined ? (prev as Message) : {};
        decodeInto(f.message!, sub, m, depth + 1);
        out[f.name] = m;
      }
    } else if (f.repeated) repeatedOf(out, f).push(readScalar(f, r));
    else out[f.name] = readScalar(f, r);
  }
  for (const f of info.fields) {
    if (f.required && out[f.name] === undefined) throw new WireError(`${info.name} lacks its required field ${f.name}`, r.end);
  }
  if (unknown.length > 0) {
    const prev = out[UNKNOWN_FIELDS] as Buffer | undefined;
    out[UNKNOWN_FIELDS] = Buffer.concat(prev ? [prev, ...unknown] : unknown);
  }
}

function repeatedOf(out: Message, f: FieldInfo): unknown[] {
  let list = out[f.name] as unknown[] | undefined;
  if (!list) out[f.name] = list = [];
  return list;
}

function readScalar(f: FieldInfo, r: WireReader): unknown {
  switch (f.kind) {
    case 'uint32': return r.varint32();
    case 'int32': return r.varint32() | 0;
    case 'sint32': {
      const n = r.varint32();
      return (n >>> 1) ^ -(n & 1);
    }
    case 'enum': {
      const n = r.varint32() | 0;
      return f.enumInfo!.byNumber.get(n) ?? n;
    }
    case 'bool': return r.varint64() !== 0n;
    case 'uint64': return r.varint64();
    case 'int64': return BigInt.asIntN(64, r.varint64());
    case 'sint64': {
      const u = r.varint64();
      return (u >> 1n) ^ -(u & 1n);
    }
    case 'fixed32': return r.fixed32();
    case 'sfixed32': return r.fixed32() | 0;
    case 'float': return r.float();
    case 'fixed64': return r.fixed64();
    case 'sfixed64': return BigInt.asIntN(64, r.fixed64());
    case 'double': return r.double();
    case 'bytes': {
      const { start, end } = r.lengthDelimited();
      return r.buf.subarray(start, end);
    }
    case 'string': {
      const { start, end } = r.lengthDelimited();
      const bytes = r.buf.subarray(start, end);
      try {
        return utf8.decode(bytes);
      } catch {
        return bytes;
      }
    }
    case 'message':
      // Only reached for a packed run, which cannot hold messages.
      throw new WireError(`${f.name}: messages cannot be packed`, r.pos);
  }
}

/** Encodes a message canonically: fields in number order, unknown fields last. Throws EncodeError. */
export function encodeMessage(info: MessageInfo, value: Message, path = info.name, depth = 0): Buffer {
  if (depth > MAX_DEPTH) throw new EncodeError(path, `messages nested deeper than ${MAX_DEPTH}`);
  if (typeof value !== 'object' || value === null || Array.isArray(value) || Buffer.isBuffer(value)) throw new EncodeError(path, 'not a message object');
  for (const key of Object.keys(value)) {
    if (key !== UNKNOWN_FIELDS && !info.fields.some((f) => f.name === key)) throw new EncodeError(path, `${info.name} has no field ${key}`);
  }
  const w = new WireWriter();
  for (const f of info.fields) {
    const v = value[f.name];
    const at = `${path}.${f.name}`;
    if (v === undefined || v === null) {
      if (f.required) throw new EncodeError(at, 'required field missing');
      continue;
    }
    if (f.repeated) {
      if (!Array.isArray(v)) throw new EncodeError(at, 'a repeated field must be an array');
      if (f.packed && v.length > 0) {
        const pw = new WireWriter();
        v.forEach((item, i) => writeScalar(pw, f, item, `${at}[${i}]`));
        w.tag(f.id, WIRE_LEN);
        writeLen(w, pw.finish());
      } else v.forEach((item, i) => writeField(w, f, item, `${at}[${i}]`, depth));
    } else writeField(w, f, v, at, depth);
  }
  const unknown = value[UNKNOWN_FIELDS];
  if (unknown !== undefined) {
    if (!(unknown instanceof Uint8Array)) throw new EncodeError(`${path}.${UNKNOWN_FIELDS}`, 'must be a Buffer');
    w.bytes(unknown);
  }
  return w.finish();
}

function writeLen(w: WireWriter, b: Uint8Array): void {
  w.varint(b.length);
  w.bytes(b);
}

function writeField(w: WireWriter, f: FieldInfo, v: unknown, at: string, depth: number): void {
  w.tag(f.id, wireTypeOf(f));
  if (f.kind === 'message') writeLen(w, encodeMessage(f.message!, v as Message, at, depth + 1));
  else writeScalar(w, f, v, at);
}

const U32 = 0xffffffff;
const I32 = [-0x80000000, 0x7fffffff] as const;

function int(v: unknown, at: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new EncodeError(at, `expected an integer in [${min}, ${max}], got ${String(v)}`);
  return v;
}

function int64(v: unknown, at: string, signed: boolean): bigint {
  const b = typeof v === 'number' && Number.isSafeInteger(v) ? BigInt(v) : v;
  const [min, max] = signed ? [-(2n ** 63n), 2n ** 63n - 1n] : [0n, 2n ** 64n - 1n];
  if (typeof b !== 'bigint' || b < min || b > max) throw new EncodeError(at, `expected a ${signed ? '' : 'u'}int64 (bigint), got ${String(v)}`);
  return b;
}

function writeScalar(w: WireWriter, f: FieldInfo, v: unknown, at: string): void {
  switch (f.kind) {
    case 'uint32': return w.varint(int(v, at, 0, U32));
    case 'int32': return w.varint64(BigInt(int(v, at, I32[0], I32[1])));
    case 'sint32': {
      const n = int(v, at, I32[0], I32[1]);
      return w.varint(((n << 1) ^ (n >> 31)) >>> 0);
    }
    case 'enum': {
      const n = typeof v === 'string' ? f.enumInfo!.byName.get(v) : v;
      if (n === undefined) throw new EncodeError(at, `${f.enumInfo!.name} has no value ${String(v)}`);
      return w.varint64(BigInt(int(n, at, I32[0], I32[1])));
    }
    case 'bool':
      if (typeof v !== 'boolean') throw new EncodeError(at, `expected a boolean, got ${String(v)}`);
      return w.varint(v ? 1 : 0);
    case 'uint64': return w.varint64(int64(v, at, false));
    case 'int64': return w.varint64(int64(v, at, true));
    case 'sint64': {
      const n = int64(v, at, true);
      return w.varint64((n << 1n) ^ (n >> 63n));
    }
    case 'fixed32': return w.fixed32(int(v, at, 0, U32));
    case 'sfixed32': return w.fixed32(int(v, at, I32[0], I32[1]));
    case 'fixed64': return w.fixed64(int64(v, at, false));
    case 'sfixed64': return w.fixed64(int64(v, at, true));
    case 'float':
    case 'double':
      if (typeof v !== 'number') throw new EncodeError(at, `expected a number, got ${String(v)}`);
      return f.kind === 'float' ? w.float(v) : w.double(v);
    case 'string':
      if (typeof v === 'string') return writeLen(w, Buffer.from(v, 'utf8'));
      if (v instanceof Uint8Array) return writeLen(w, v);
      throw new EncodeError(at, 'expected a string (or a Buffer of its bytes)');
    case 'bytes':
      if (v instanceof Uint8Array) return writeLen(w, v);
      throw new EncodeError(at, 'expected a Buffer');
    case 'message':
      throw new EncodeError(at, 'messages cannot be packed');
  }
}
