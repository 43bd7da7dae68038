/**
 * Reads CRIU's stats-dump / stats-restore images (written to the work directory).
 * Layout: u32 service magic, u32 stats magic, then one entry: u32 length + protobuf message.
 * Schema from CRIU's images/stats.proto (field names from the compiled schema; no protobufjs at run
 * time). Lenient where the codec is strict: a missing field reads as 0, as CRIU's numbers are only
 * reported, never acted on.
 */
import { readFile } from 'node:fs/promises';
import { lookupMessage, type MessageInfo } from './schema/index.js';
import { TASK_SCHEMA } from './schema/task.js';
import { WIRE_LEN, WIRE_VARINT, WireReader } from './wire.js';

/** CRIU's images/stats.proto, among the task images' schemas of the codec. */
export const STATS_SCHEMA = TASK_SCHEMA;

const STATS_MAGIC = 0x57093306;
const SERVICE_MAGIC = 0x55105940;

export interface DumpStats {
  freezingUs: number;
  frozenUs: number;
  memdumpUs: number;
  memwriteUs: number;
  pagesScanned: number;
  pagesSkippedParent: number;
  pagesWritten: number;
  pagesLazy: number;
}

export interface RestoreStats {
  forkingUs: number;
  restoreUs: number;
  pagesRestored: number;
}

interface RawStats {
  dump?: Record<string, number>;
  restore?: Record<string, number>;
}

const schemaOf = (name: string): MessageInfo => {
  const m = lookupMessage(name);
  if (!m) throw new Error(`schema lacks ${name}`);
  return m;
};

/** The varint fields of one stats message, by their schema names, as numbers. */
function numbers(r: WireReader, info: MessageInfo): Record<string, number> {
  const out: Record<string, number> = {};
  while (!r.done) {
    const at = r.pos;
    const tag = r.varintNumber();
    const f = info.byId.get(tag >>> 3);
    if (f && (tag & 7) === WIRE_VARINT) out[f.name] = Number(r.varint64());
    else r.skip(tag & 7, at);
  }
  return out;
}

export function decodeStats(buf: Buffer): RawStats {
  if (buf.length < 12) throw new Error('stats image too short');
  if (buf.readUInt32LE(0) !== SERVICE_MAGIC || buf.readUInt32LE(4) !== STATS_MAGIC) throw new Error('not a CRIU stats image');
  const len = buf.readUInt32LE(8);
  if (12 + len > buf.length) throw new Error('stats entry truncated');
  const out: RawStats = {};
  const r = new WireReader(buf, 12, 12 + len);
  while (!r.done) {
    const at = r.pos;
    const tag = r.varintNumber();
    const field = tag >>> 3;
    if ((field === 1 || field === 2) && (tag & 7) === WIRE_LEN) {
      const { start, end } = r.lengthDelimited();
      const values = numbers(new WireReader(buf, start, end), schemaOf(field === 1 ? 'dump_stats_entry' : 'restore_stats_entry'));
      if (field === 1) out.dump = { ...out.dump, ...values };
      else out.restore = { ...out.restore, ...values };
    } else r.skip(tag & 7, at);
  }
  return out;
}

const n = (v: number | undefined): number => v ?? 0;

export async function readDumpStats(path: string): Promise<DumpStats | undefined> {
  try {
    const d = decodeStats(await readFile(path)).dump;
    if (!d) return undefined;
    return {
      freezingUs: n(d.freezing_time), frozenUs: n(d.frozen_time), memdumpUs: n(d.memdump_time), memwriteUs: n(d.memwrite_time),
      pagesScanned: n(d.pages_scanned), pagesSkippedParent: n(d.pages_skipped_parent), pagesWritten: n(d.pages_written), pagesLazy: n(d.pages_lazy),
    };
  } catch {
    return undefined;
  }
}

export async function readRestoreStats(path: string): Promise<RestoreStats | undefined> {
  try {
    const r = decodeStats(await readFile(path)).restore;
    if (!r) return undefined;
    return { forkingUs: n(r.forking_time), restoreUs: n(r.restore_time), pagesRestored: n(r.pages_restored) };
  } catch {
    return undefined;
  }
}
