import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { decodeStats, readDumpStats, readRestoreStats, STATS_SCHEMA } from '../../../../src/image/criu/stats.js';

const StatsEntry = protobuf.parse(STATS_SCHEMA, { keepCase: true }).root.lookupType('stats_entry');

const DUMP = {
  freezing_time: 1200,
  frozen_time: 87_654,
  memdump_time: 5000,
  memwrite_time: 42_000,
  pages_scanned: 25_600,
  pages_skipped_parent: 0,
  pages_written: 25_000,
  pages_lazy: 0,
  page_pipes: 3,
};

const RESTORE = { pages_compared: 0, pages_skipped_cow: 0, forking_time: 300, restore_time: 45_678, pages_restored: 25_000 };

/** A stats image as CRIU writes it: service magic, stats magic, u32 length, message. */
function statsImage(payload: Record<string, unknown>, magics: [number, number] = [0x55105940, 0x57093306]): Buffer {
  const body = Buffer.from(StatsEntry.encode(StatsEntry.fromObject(payload)).finish());
  const head = Buffer.alloc(12);
  head.writeUInt32LE(magics[0], 0);
  head.writeUInt32LE(magics[1], 4);
  head.writeUInt32LE(body.length, 8);
  return Buffer.concat([head, body]);
}

describe('decodeStats', () => {
  it('decodes dump stats with their protobuf field names', () => {
    const s = decodeStats(statsImage({ dump: DUMP }));
    expect(s.dump).toMatchObject(DUMP);
    expect(s.restore).toBeUndefined();
  });

  it('decodes restore stats', () => {
    const s = decodeStats(statsImage({ restore: RESTORE }));
    expect(s.restore).toMatchObject(RESTORE);
    expect(s.dump).toBeUndefined();
  });

  it('gives uint64 values beyond 32 bits as numbers', () => {
    const s = decodeStats(statsImage({ dump: { ...DUMP, pages_scanned: 2 ** 40 + 3 } }));
    expect(s.dump!.pages_scanned).toBe(2 ** 40 + 3);
    expect(typeof s.dump!.pages_scanned).toBe('number');
  });

  it('ignores bytes after the entry', () => {
    const buf = Buffer.concat([statsImage({ restore: RESTORE }), Buffer.from([1, 2, 3])]);
    expect(decodeStats(buf).restore).toMatchObject({ restore_time: 45_678 });
  });

  it('refuses a wrong service magic', () => {
    expect(() => decodeStats(statsImage({ dump: DUMP }, [0x54564319, 0x57093306]))).toThrow('not a CRIU stats image');
  });

  it('refuses a wrong stats magic (another CRIU image)', () => {
    expect(() => decodeStats(statsImage({ dump: DUMP }, [0x55105940, 0x58313116]))).toThrow('not a CRIU stats image');
  });

  it('refuses magics in the wrong byte order', () => {
    const buf = statsImage({ dump: DUMP });
    buf.writeUInt32BE(0x55105940, 0);
    expect(() => decodeStats(buf)).toThrow('not a CRIU stats image');
  });

  it('refuses a file shorter than its header', () => {
    expect(() => decodeStats(Buffer.alloc(0))).toThrow('stats image too short');
    expect(() => decodeStats(statsImage({ dump: DUMP }).subarray(0, 11))).toThrow('stats image too short');
  });

  it('refuses an entry cut short', () => {
    const buf = statsImage({ dump: DUMP });
    expect(() => decodeStats(buf.subarray(0, buf.length - 1))).toThrow('stats entry truncated');
    expect(() => decodeStats(buf.subarray(0, 12))).toThrow('stats entry truncated');
  });

  it('refuses a length that claims more than there is', () => {
    const buf = statsImage({ dump: DUMP });
    buf.writeUInt32LE(0xffffffff, 8);
    expect(() => decodeStats(buf)).toThrow('stats entry truncated');
  });
});

describe('readDumpStats / readRestoreStats', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-stats-test-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads stats-dump into cedana\'s names', async () => {
    await writeFile(join(dir, 'stats-dump'), statsImage({ dump: DUMP }));
    expect(await readDumpStats(join(dir, 'stats-dump'))).toEqual({
      freezingUs: 1200,
      frozenUs: 87_654,
      memdumpUs: 5000,
      memwriteUs: 42_000,
      pagesScanned: 25_600,
      pagesSkippedParent: 0,
      pagesWritten: 25_000,
      pagesLazy: 0,
    });
  });

  it('reads stats-restore into cedana\'s names', async () => {
    await writeFile(join(dir, 'stats-restore'), statsImage({ restore: RESTORE }));
    expect(await readRestoreStats(join(dir, 'stats-restore'))).toEqual({ forkingUs: 300, restoreUs: 45_678, pagesRestored: 25_000 });
  });

  it('a dump entry with fields missing reads them as 0', async () => {
    // stats_entry { dump { freezing_time: 7 } }, written by hand: field 1 (length 2) holding field 1 = 7.
    const body = Buffer.from([0x0a, 0x02, 0x08, 0x07]);
    const head = Buffer.alloc(12);
    head.writeUInt32LE(0x55105940, 0);
    head.writeUInt32LE(0x57093306, 4);
    head.writeUInt32LE(body.length, 8);
    await writeFile(join(dir, 'stats-dump'), Buffer.concat([head, body]));
    expect(await readDumpStats(join(dir, 'stats-dump'))).toEqual({
      freezingUs: 7, frozenUs: 0, memdumpUs: 0, memwriteUs: 0, pagesScanned: 0, pagesSkippedParent: 0, pagesWritten: 0, pagesLazy: 0,
    });
  });

  it('a missing optional field reads as 0', async () => {
    const { pages_restored: _, ...noPages } = RESTORE;
    await writeFile(join(dir, 'stats-restore'), statsImage({ restore: noPages }));
    expect((await readRestoreStats(join(dir, 'stats-restore')))?.pagesRestored).toBe(0);
  });

  it('undefined for a missing, damaged or other-kind file', async () => {
    expect(await readDumpStats(join(dir, 'nope'))).toBeUndefined();
    await writeFile(join(dir, 'bad'), Buffer.from('garbage garbage garbage'));
    expect(await readDumpStats(join(dir, 'bad'))).toBeUndefined();
    await writeFile(join(dir, 'restore-only'), statsImage({ restore: RESTORE }));
    expect(await readDumpStats(join(dir, 'restore-only'))).toBeUndefined();
    expect(await readRestoreStats(join(dir, 'restore-only'))).toBeDefined();
  });
});
