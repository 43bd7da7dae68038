/**
 * Reads CRIU's stats-dump / stats-restore images (written to the work directory).
 * Layout: u32 service magic, u32 stats magic, then one entry: u32 length + protobuf message.
 * Schema from CRIU's images/stats.proto.
 */
import protobuf from 'protobufjs';
import { TASK_SCHEMA } from './schema/task.js';
import { readFile } from 'node:fs/promises';

/** CRIU's images/stats.proto, among the task images' schemas of the codec. */
export const STATS_SCHEMA = TASK_SCHEMA;

const STATS_MAGIC = 0x57093306;
const SERVICE_MAGIC = 0x55105940;
const StatsEntry = protobuf.parse(STATS_SCHEMA, { keepCase: true }).root.lookupType('stats_entry');

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
  dump?: Record<string, number | protobuf.Long>;
  restore?: Record<string, number | protobuf.Long>;
}

export function decodeStats(buf: Buffer): RawStats {
  if (buf.length < 12) throw new Error('stats image too short');
  if (buf.readUInt32LE(0) !== SERVICE_MAGIC || buf.readUInt32LE(4) !== STATS_MAGIC) throw new Error('not a CRIU stats image');
  const len = buf.readUInt32LE(8);
  if (12 + len > buf.length) throw new Error('stats entry truncated');
  const msg = StatsEntry.decode(buf.subarray(12, 12 + len));
  return StatsEntry.toObject(msg, { longs: Number }) as RawStats;
}

const n = (v: number | protobuf.Long | undefined): number => (v === undefined ? 0 : Number(v));

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
