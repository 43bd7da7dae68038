import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import {
  decodeDstId, encodeCmd, encodeDstId, encodeHeader, HEADER_SIZE, PAGE_SIZE, parseHeader, PE_LAZY, PE_PRESENT, PS_IOV_ADD_F, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PS_TYPE_SHMEM, PsDecoder, type PsEvent,
} from '../../../src/criu/page-server/protocol.js';
import { FIRST_PAGES_ID, servePageSink } from '../../../src/criu/page-server/sink.js';
import { decodeImage, type MessageEntry } from '../../../src/image/criu/codec.js';
import { hashBytes } from '../../../src/image/checksum.js';
import { decodeIndex, PAGE_INDEX } from '../../../src/image/incremental.js';
import { PE_PARENT } from '../../../src/image/criu/kinds.js';

/**
 * Recorded from `criu dump --page-server --ps-socket 3 --leave-running` (CRIU 4.2.1) of `sleep 600`
 * (PID 13927), the recorder answering has_parent 0 and status 0: OPEN2, 12 ADD_F with PE_PRESENT (some
 * PE_LAZY too), FORCE_CLOSE.
 */
const STREAM = gunzipSync(readFileSync(join(__dirname, '../../fixtures/page-server/sleep-dump.stream.gz')));
const PID = 13927;

/** Decodes `buf` fed in chunks of the given sizes (cycled). */
function decodeChunked(buf: Buffer, sizes: number[]): PsEvent[] {
  const d = new PsDecoder();
  const out: PsEvent[] = [];
  let off = 0;
  for (let i = 0; off < buf.length; i++) {
    const n = sizes[i % sizes.length]!;
    out.push(...d.push(buf.subarray(off, off + n)));
    off += n;
  }
  expect(d.idle).toBe(true);
  return out;
}

/** Commands with their data reassembled. */
function summary(events: PsEvent[]): { op: number; flags: number; nrPages: number; vaddr: number; data: string }[] {
  const out: { op: number; flags: number; nrPages: number; vaddr: number; data: Buffer[] }[] = [];
  for (const e of events) {
    if (e.kind === 'command') out.push({ op: e.header.op, flags: e.header.flags, nrPages: e.header.nrPages, vaddr: e.header.vaddr, data: [] });
    else {
      expect(e.data.length % PAGE_SIZE).toBe(0);
      out.at(-1)!.data.push(e.data);
    }
  }
  return out.map((c) => ({ ...c, data: hashBytes('sha256', Buffer.concat(c.data)) }));
}

describe('page-server protocol', () => {
  it('headers are 32 bytes: cmd, 4 bytes padding, nr_pages, vaddr, dst_id', () => {
    const h = encodeHeader({ op: PS_IOV_ADD_F, flags: PE_PRESENT | PE_LAZY, nrPages: 3, vaddr: 0x7ffd43f68000, dstId: encodeDstId(PS_TYPE_PID, 4321) });
    expect(h.length).toBe(HEADER_SIZE);
    expect(h.readUInt32LE(0)).toBe(0x60006);
    expect(h.readUInt32LE(4)).toBe(0);
    expect(h.readBigUInt64LE(8)).toBe(3n);
    expect(h.readBigUInt64LE(24)).toBe((4321n << 8n) | 1n);
    const p = parseHeader(h);
    expect(p).toMatchObject({ op: PS_IOV_ADD_F, flags: 6, nrPages: 3, vaddr: 0x7ffd43f68000 });
    expect(decodeDstId(p.dstId)).toEqual({ type: PS_TYPE_PID, id: 4321 });
    expect(decodeDstId(encodeDstId(PS_TYPE_SHMEM, 0x12345678))).toEqual({ type: PS_TYPE_SHMEM, id: 0x12345678 });
    expect(encodeCmd(PS_IOV_FORCE_CLOSE)).toBe(0x1024);
  });

  it('decodes a recorded criu dump stream', () => {
    const events = decodeChunked(STREAM, [STREAM.length]);
    const cmds = summary(events);
    expect(cmds[0]).toMatchObject({ op: PS_IOV_OPEN2, nrPages: 0 });
    expect(decodeDstId((events[0] as { header: { dstId: bigint } }).header.dstId)).toEqual({ type: PS_TYPE_PID, id: PID });
    expect(cmds.at(-1)).toMatchObject({ op: PS_IOV_FORCE_CLOSE });
    const adds = cmds.slice(1, -1);
    expect(adds).toHaveLength(12);
    for (const a of adds) {
      expect(a.op).toBe(PS_IOV_ADD_F);
      expect(a.flags & PE_PRESENT).toBe(PE_PRESENT);
    }
    const pages = adds.reduce((n, a) => n + a.nrPages, 0);
    expect(HEADER_SIZE * cmds.length + pages * PAGE_SIZE).toBe(STREAM.length);
  });

  it('gives the same commands and data however the stream is split or coalesced', () => {
    const whole = summary(decodeChunked(STREAM, [STREAM.length]));
    for (const sizes of [[1], [7, 4096, 13], [31, 33], [HEADER_SIZE + PAGE_SIZE - 1], [65536], [5000, 1, 100000]]) {
      expect(summary(decodeChunked(STREAM, sizes))).toEqual(whole);
    }
  });

  it('refuses an unknown command', () => {
    const d = new PsDecoder();
    expect(() => d.push(encodeHeader({ op: 0x99 }))).toThrow(/unknown page-server command/);
  });
});

/** A fake CRIU end: writes the stream in chunks, collects the answers. */
function fakeCriu(stream: Buffer, chunk = 10000): { sock: Duplex; answers: () => Buffer } {
  const answers: Buffer[] = [];
  let off = 0;
  const sock = new Duplex({
    read() {
      if (off >= stream.length) return void this.push(null);
      this.push(stream.subarray(off, off + chunk));
      off += chunk;
    },
    write(c: Buffer, _e, cb) {
      answers.push(c);
      cb();
    },
  });
  return { sock, answers: () => Buffer.concat(answers) };
}

describe('page sink', () => {
  it('writes the pagemap and pages images of a recorded stream, hashed as it goes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sink-'));
    try {
      const { sock, answers } = fakeCriu(STREAM);
      const r = await servePageSink(sock, { dir });
      expect(answers()).toEqual(Buffer.from([0, 0, 0, 0, 0])); // has_parent 0, then status 0
      expect((await readdir(dir)).sort()).toEqual([`pagemap-${PID}.img`, `pages-${FIRST_PAGES_ID}.img`]);
      for (const [name, f] of Object.entries(r.files)) {
        const buf = await readFile(join(dir, name));
        expect(f).toEqual({ size: buf.length, blake3: hashBytes('blake3', buf) });
      }
      // The pages are the stream's data in order; one pagemap entry per command, as criu page-server writes.
      const events = new PsDecoder().push(STREAM);
      const data = Buffer.concat(events.flatMap((e) => (e.kind === 'pages' ? [e.data] : [])));
      expect((await readFile(join(dir, `pages-${FIRST_PAGES_ID}.img`))).equals(data)).toBe(true);
      const img = decodeImage(await readFile(join(dir, `pagemap-${PID}.img`)), 'pagemap');
      expect((img.entries[0] as MessageEntry).value.pages_id).toBe(FIRST_PAGES_ID);
      const cmds = events.flatMap((e) => (e.kind === 'command' && e.header.op === PS_IOV_ADD_F ? [e.header] : []));
      expect(img.entries.slice(1).map((e) => (e as MessageEntry).value)).toEqual(
        cmds.map((h) => ({ vaddr: BigInt(h.vaddr), compat_nr_pages: 0, flags: h.flags, nr_pages: BigInt(h.nrPages) })),
      );
      expect(r.pagesWritten * PAGE_SIZE).toBe(data.length);
      // Byte for byte what the stock `criu page-server --ps-socket 3 -D DIR` (4.2.1) wrote from this stream.
      const stock = readFileSync(join(__dirname, `../../fixtures/page-server/stock-pagemap-${PID}.img`));
      expect((await readFile(join(dir, `pagemap-${PID}.img`))).equals(stock)).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('with a parent, writes only the pages that changed and PE_PARENT for the rest', async () => {
    const dir1 = await mkdtemp(join(tmpdir(), 'sink-'));
    const dir2 = await mkdtemp(join(tmpdir(), 'sink-'));
    try {
      const first = await servePageSink(fakeCriu(STREAM).sock, { dir: dir1, index: true });
      const index = decodeIndex(await readFile(join(dir1, PAGE_INDEX)));
      expect(first.files[PAGE_INDEX]).toBeDefined();
      // Change one page of the third command's data.
      const changed = Buffer.from(STREAM);
      const events = new PsDecoder().push(STREAM);
      let off = 0;
      let target = -1;
      let n = 0;
      for (const e of events) {
        if (e.kind === 'command') {
          off += HEADER_SIZE;
          if (e.header.op === PS_IOV_ADD_F && ++n === 3) target = off;
        } else off += e.data.length;
      }
      changed[target + 100]! ^= 0xff;
      const r = await servePageSink(fakeCriu(changed, 777).sock, { dir: dir2, parent: index });
      expect(r.pagesWritten).toBe(1);
      expect(r.pagesInParent).toBe(first.pagesWritten - 1);
      expect((await readFile(join(dir2, `pages-${FIRST_PAGES_ID}.img`))).length).toBe(PAGE_SIZE);
      const img = decodeImage(await readFile(join(dir2, `pagemap-${PID}.img`)), 'pagemap');
      const entries = img.entries.slice(1).map((e) => (e as MessageEntry).value);
      const present = entries.filter((v) => (v.flags as number) & PE_PRESENT);
      expect(present).toHaveLength(1);
      expect(entries.filter((v) => v.flags === PE_PARENT).reduce((a, v) => a + Number(v.nr_pages), 0)).toBe(first.pagesWritten - 1);
      // The child's index covers every page, as dedupeAgainstParent's does.
      const idx2 = decodeIndex(await readFile(join(dir2, PAGE_INDEX)));
      expect(idx2.get(PID)!.vaddrs).toEqual(index.get(PID)!.vaddrs);
    } finally {
      await rm(dir1, { recursive: true, force: true });
      await rm(dir2, { recursive: true, force: true });
    }
  });

  it('fails, cutting the connection, when the stream ends before CLOSE', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sink-'));
    try {
      const { sock } = fakeCriu(STREAM.subarray(0, 50000));
      await expect(servePageSink(sock, { dir })).rejects.toMatchObject({ code: 'CRIU_FAILED' });
      expect(sock.destroyed).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
