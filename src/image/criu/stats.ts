/**
 * Reads CRIU's stats-dump / stats-restore images (written to the work directory).
 * Layout: u32 service magic, u32 stats magic, then one entry: u32 length + protobuf message.
 * Schema from CRIU's images/stats.proto.
 */
import protobuf from 'protobufjs';
import { readFile } from 'node:fs/promises';

/** CRIU's images/stats.proto. */
export const STATS_SCHEMA = `
syntax = "proto2";
message dump_stats_entry {
  required uint32 freezing_time = 1;
  required uint32 frozen_time = 2;
  required uint32 memdump_time = 3;
  required uint32 memwrite_time = 4;
  required uint64 pages_scanned = 5;
  required uint64 pages_skipped_parent = 6;
  required uint64 pages_written = 7;
  optional uint32 irmap_resolve = 8;
  required uint64 pages_lazy = 9;
  optional uint64 page_pipes = 10;
  optional uint64 page_pipe_bufs = 11;
  optional uint64 shpages_scanned = 12;
  optional uint64 shpages_skipped_parent = 13;
  optional uint64 shpages_written = 14;
}
message restore_stats_entry {
  required uint64 pages_compared = 1;
  required uint64 pages_skipped_cow = 2;
  required uint32 forking_time = 3;
  required uint32 restore_time = 4;
  optional uint64 pages_restored = 5;
}
message stats_entry {
  optional dump_stats_entry dump = 1;
  optional restore_stats_entry restore = 2;
}`;

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
