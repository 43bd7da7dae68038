/**
 * Decodes a CRIU image file into its entries and encodes it back.
 *
 * encodeImage(decodeImage(x)) is x byte for byte: each decoded entry remembers the bytes it came
 * from, and an entry whose value has not changed is written back as those bytes (CRIU's encoder and
 * ours agree on field order, but a newer CRIU's fields or an odd varint would not survive a
 * re-encoding). A changed entry is encoded from its value, fields the schema does not know included.
 *
 * decodeImage trusts nothing: every length is checked against what is left, nesting is bounded, and
 * anything malformed — a bad magic, a truncated entry, trailing bytes, a broken message — is a
 * CedanaError IMAGE_INVALID that says what is wrong and at which offset of the file.
 */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { CedanaError } from '../../errors.js';
import { IMG_COMMON, IMG_SERVICE, KINDS, MAGICS, isRawImageName, type EntryRule, type ImageKind, type KindSpec } from './kinds.js';
import { EncodeError, decodeMessage, encodeMessage, type Message } from './message.js';
import { lookupMessage, type MessageInfo } from './schema/index.js';
import { WireError } from './wire.js';

/** An entry decoded by its schema. */
export interface MessageEntry {
  /** The protobuf message type, e.g. 'core_entry' (pagemap: 'pagemap_head', then 'pagemap_entry'). */
  type: string;
  value: Message;
  /** The data CRIU writes right after this message (pipe or socket queue contents, TCP queues, a ghost file's bytes). */
  extra?: Buffer;
}

/** An entry of an image kind cedana has no schema for: its message bytes, as they are. */
export interface OpaqueEntry {
  type: null;
  bytes: Buffer;
}

export type ImageEntry = MessageEntry | OpaqueEntry;

export interface DecodedImage {
  kind: ImageKind;
  /** IMG_COMMON or IMG_SERVICE, which every image but inventory and raw images starts with. */
  head?: number;
  /** The image's own magic (absent for raw images). */
  magic?: number;
  entries: ImageEntry[];
  /** Raw images, and images laid out in a way cedana does not follow: everything after the magics. */
  body?: Buffer;
}

/** The bytes each decoded entry came from, to write an unchanged entry back exactly. */
const origin = new WeakMap<MessageEntry, { type: string; bytes: Buffer }>();

const hex = (n: number): string => `0x${n.toString(16)}`;

function schemaFor(rule: EntryRule): MessageInfo {
  const info = lookupMessage(rule.message);
  if (!info) throw new Error(`kinds.ts names a message the schema lacks: ${rule.message}`);
  return info;
}

/**
 * Decodes one image file. `nameHint` (its file name or path) identifies raw images, which have no
 * magic, and names the file in errors; the kind of every other image comes from its magic.
 * The result shares memory with `buf`: do not modify `buf` while using it.
 */
export function decodeImage(buf: Buffer, nameHint?: string): DecodedImage {
  try {
    return decode(buf, nameHint);
  } catch (e) {
    if (!(e instanceof WireError)) throw e;
    const where = nameHint ? `${basename(nameHint)}: ` : '';
    throw new CedanaError('IMAGE_INVALID', `${where}${e.message} at offset ${e.offset} (${hex(e.offset)})`, {
      details: { offset: e.offset, ...(nameHint ? { file: nameHint } : {}) },
    });
  }
}

export async function readImage(path: string): Promise<DecodedImage> {
  return decodeImage(await readFile(path), path);
}

function decode(buf: Buffer, nameHint: string | undefined): DecodedImage {
  if (nameHint !== undefined && isRawImageName(nameHint)) return { kind: 'RAW', entries: [], body: buf };
  if (buf.length < 4) throw new WireError(`too short for an image magic (${buf.length} bytes)`, 0);
  const first = buf.readUInt32LE(0);
  let head: number | undefined;
  let magic = first;
  let pos = 4;
  if (first === IMG_COMMON || first === IMG_SERVICE) {
    if (buf.length < 8) throw new WireError('the file ends inside its image magic', 4);
    head = first;
    magic = buf.readUInt32LE(4);
    pos = 8;
  } else if (first !== MAGICS.INVENTORY) {
    throw new WireError(`not a CRIU image: unknown magic ${hex(first)}`, 0);
  }
  const spec = KINDS.get(magic);
  const img = (kind: ImageKind, entries: ImageEntry[], body?: Buffer): DecodedImage =>
    ({ kind, ...(head === undefined ? {} : { head }), magic, entries, ...(body ? { body } : {}) });
  if (!spec) {
    // A newer CRIU's image: its entries if it is framed like the others, else its bytes as they are.
    try {
      return img('UNKNOWN', readEntries(buf, pos, undefined));
    } catch (e) {
      if (e instanceof WireError) return img('UNKNOWN', [], buf.subarray(pos));
      throw e;
    }
  }
  if (spec.body) return img(spec.kind, [], buf.subarray(pos));
  return img(spec.kind, readEntries(buf, pos, spec));
}

function readEntries(buf: Buffer, pos: number, spec: KindSpec | undefined): ImageEntry[] {
  const entries: ImageEntry[] = [];
  while (pos < buf.length) {
    const i = entries.length;
    const left = buf.length - pos;
    if (left < 4) throw new WireError(`${left} trailing byte(s) after the last entry`, pos);
    const len = buf.readUInt32LE(pos);
    const start = pos + 4;
    if (len > left - 4) throw new WireError(`entry ${i}: its length ${len} runs past the end of the file (${left - 4} bytes left)`, pos);
    const end = start + len;
    pos = end;
    const rule = spec?.entry?.(i);
    if (!rule) {
      entries.push({ type: null, bytes: buf.subarray(start, end) });
      continue;
    }
    let value: Message;
    try {
      value = decodeMessage(schemaFor(rule), buf, start, end);
    } catch (e) {
      if (e instanceof WireError) throw new WireError(`entry ${i} (${rule.message}): ${e.message}`, e.offset);
      throw e;
    }
    const entry: MessageEntry = { type: rule.message, value };
    if (rule.extra) {
      const want = rule.extra(value);
      const have = buf.length - pos;
      const n = want === 'rest' ? have : want;
      if (n > have) throw new WireError(`entry ${i} (${rule.message}): its ${n} bytes of data run past the end of the file (${have} bytes left)`, pos);
      entry.extra = buf.subarray(pos, pos + Number(n));
      pos += Number(n);
    }
    origin.set(entry, { type: rule.message, bytes: buf.subarray(start, end) });
    entries.push(entry);
  }
  if (spec?.needsFirst && entries.length === 0) {
    throw new WireError(`a ${spec.kind} image needs its first entry (${spec.entry!(0).message}), it has none`, pos);
  }
  return entries;
}

/** Encodes an image: byte for byte the decoded file when nothing changed. Throws IMAGE_INVALID for an inconsistent image. */
export function encodeImage(img: DecodedImage): Buffer {
  try {
    return encode(img);
  } catch (e) {
    if (!(e instanceof EncodeError)) throw e;
    throw new CedanaError('IMAGE_INVALID', `cannot encode ${img.kind} image: ${e.message}`);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function encode(img: DecodedImage): Buffer {
  const parts: Buffer[] = [];
  if (img.kind === 'RAW') {
    if (img.entries.length > 0) throw new EncodeError('RAW', 'raw images have a body, not entries');
    return Buffer.from(img.body ?? Buffer.alloc(0));
  }
  const spec = img.kind === 'UNKNOWN' ? undefined : KINDS.get(MAGICS[img.kind]);
  if (img.kind !== 'UNKNOWN' && !spec) throw new EncodeError('kind', `unknown image kind ${String(img.kind)}`);
  const magic = spec?.magic ?? img.magic;
  if (magic === undefined || (img.magic !== undefined && img.magic !== magic)) {
    throw new EncodeError('magic', `${img.magic === undefined ? 'missing' : hex(img.magic)} does not fit a ${img.kind} image`);
  }
  if (img.head !== undefined) {
    if (img.head !== IMG_COMMON && img.head !== IMG_SERVICE) throw new EncodeError('head', `${hex(img.head)} is neither IMG_COMMON nor IMG_SERVICE`);
    parts.push(u32(img.head));
  }
  parts.push(u32(magic));
  if (img.body) {
    if (img.entries.length > 0) throw new EncodeError('body', 'an image has either a body or entries');
    parts.push(img.body);
  } else if (spec?.body) {
    throw new EncodeError('body', `a ${img.kind} image is kept as a body`);
  }
  if (spec?.needsFirst && img.entries.length === 0) throw new EncodeError('entries', `a ${img.kind} image needs its first entry`);
  img.entries.forEach((entry, i) => parts.push(...encodeEntry(entry, spec?.entry?.(i), `entry ${i}`)));
  return Buffer.concat(parts);
}

function encodeEntry(entry: ImageEntry, rule: EntryRule | undefined, at: string): Buffer[] {
  if (!rule) {
    if (entry.type !== null) throw new EncodeError(at, `this kind of image holds opaque entries, not ${entry.type}`);
    return [u32(entry.bytes.length), entry.bytes];
  }
  if (entry.type !== rule.message) throw new EncodeError(at, `must be a ${rule.message}, not ${String(entry.type)}`);
  const bytes = messageBytes(entry, schemaFor(rule), `${at} (${rule.message})`);
  const extra = entry.extra ?? Buffer.alloc(0);
  const want = rule.extra?.(entry.value) ?? 0;
  if (want !== 'rest' && BigInt(extra.length) !== BigInt(want)) {
    throw new EncodeError(at, `its message announces ${want} bytes of data, the entry has ${extra.length}`);
  }
  return [u32(bytes.length), bytes, extra];
}

/** The entry's message: the bytes it was decoded from while its value is unchanged, else a fresh encoding. */
function messageBytes(entry: MessageEntry, info: MessageInfo, at: string): Buffer {
  let fresh: Buffer;
  try {
    fresh = encodeMessage(info, entry.value);
  } catch (e) {
    if (e instanceof EncodeError) throw new EncodeError(at, e.message);
    throw e;
  }
  const from = origin.get(entry);
  if (!from || from.type !== entry.type) return fresh;
  if (fresh.equals(from.bytes)) return from.bytes;
  // The original bytes are not how cedana would write them (another field order, an overlong
  // varint): still the same value if they encode to the same canonical bytes.
  const again = encodeMessage(info, decodeMessage(info, from.bytes, 0, from.bytes.length));
  return again.equals(fresh) ? from.bytes : fresh;
}
