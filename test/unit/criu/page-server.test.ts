import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import {
  decodeDstId, encodeCmd, encodeDstId, encodeHeader, HEADER_SIZE, PAGE_SIZE, parseHeader, PE_LAZY, PE_PRESENT, PS_IOV_ADD_F, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PS_TYPE_SHMEM, PsDecoder, type PsEvent,
} from '../../../src/criu/page-server/protocol.js';
import { FIRST_PAGES_ID, servePageSink } from '../../../src/criu/page-server/sink.js';
import type { PageSource } from '../../../src/criu/page-server/source.js';
import { decodeImage, type MessageEntry } from '../../../src/image/criu/codec.js';
import { hashBytes } from '../../../src/image/checksum.js';
import { ParentPages } from '../../../src/image/parent-pages.js';
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

/**
 * A source like the local socket's: every chunk is copied into one reused buffer, which is scribbled
 * over as soon as the sink lets go of it (returns, or its promise settles), so that anything kept
 * without a copy shows up as wrong bytes.
 */
function reusedBufferSource(stream: Buffer, sizes: number[]): { source: PageSource; answers: () => Buffer } {
  const answers: Buffer[] = [];
  const buf = Buffer.alloc(Math.max(...sizes));
  let stopped = false;
  const source: PageSource = {
    async run(onChunk) {
      for (let off = 0, i = 0; off < stream.length && !stopped; i++) {
        const n = Math.min(sizes[i % sizes.length]!, stream.length - off);
        stream.copy(buf, 0, off, off + n);
        off += n;
        const r = onChunk(buf.subarray(0, n));
        if (r) await r;
        buf.fill(0xa5);
      }
    },
    stop: () => void (stopped = true),
    write: async (b) => void answers.push(Buffer.from(b)),
    destroy: () => undefined,
  };
  return { source, answers: () => Buffer.concat(answers) };
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

  it('with a parent chain, writes only the pages whose content changed, PE_PARENT for the rest, and the chain reads back the new memory', async () => {
    const dirs = await Promise.all([0, 1, 2].map(() => mkdtemp(join(tmpdir(), 'sink-'))));
    const [dir1, dir2, dir3] = dirs as [string, string, string];
    try {
      const first = await servePageSink(fakeCriu(STREAM).sock, { dir: dir1 });
      // Where each ADD_F command's data starts in the stream.
      const starts: number[] = [];
      let off = 0;
      for (const e of new PsDecoder().push(STREAM)) {
        if (e.kind === 'command') {
          off += HEADER_SIZE;
          if (e.header.op === PS_IOV_ADD_F && e.header.nrPages > 0) starts.push(off);
        } else off += e.data.length;
      }
      // Link 2: one byte of the third command's first page changed.
      const second = Buffer.from(STREAM);
      second[starts[2]! + 100]! ^= 0xff;
      const p1 = await ParentPages.open(dir1);
      const r2 = await servePageSink(fakeCriu(second, 777).sock, { dir: dir2, against: p1 }).finally(() => p1.close());
      expect([r2.pagesWritten, r2.pagesInParent]).toEqual([1, first.pagesWritten - 1]);
      expect((await readFile(join(dir2, `pages-${FIRST_PAGES_ID}.img`))).length).toBe(PAGE_SIZE);
      const entries = decodeImage(await readFile(join(dir2, `pagemap-${PID}.img`)), 'pagemap').entries.slice(1).map((e) => (e as MessageEntry).value);
      expect(entries.filter((v) => (v.flags as number) & PE_PRESENT)).toHaveLength(1);
      expect(entries.filter((v) => v.flags === PE_PARENT).reduce((a, v) => a + Number(v.nr_pages), 0)).toBe(first.pagesWritten - 1);
      const ascending = entries.every((v, i) => i === 0 || Number(v.vaddr) >= Number(entries[i - 1]!.vaddr) + Number(entries[i - 1]!.nr_pages) * PAGE_SIZE);
      expect(ascending).toBe(true);

      // Link 3 against 2 (whose parent is 1): the same stream again, and a page of the fifth command changed.
      await symlink(dir1, join(dir2, 'parent'));
      const third = Buffer.from(second);
      third[starts[4]! + 5]! ^= 0x01;
      const p2 = await ParentPages.open(dir2);
      const r3 = await servePageSink(fakeCriu(third, 777).sock, { dir: dir3, against: p2 });
      expect([r3.pagesWritten, r3.pagesInParent]).toEqual([1, first.pagesWritten - 1]);
      // Read through the chain 2 → 1, every command's pages are the second stream's (the changed page from dir2).
      const cmds = new PsDecoder().push(second);
      let cmd: { vaddr: number; nrPages: number } | undefined;
      const want: Buffer[] = [];
      for (const e of cmds) {
        if (e.kind === 'command') cmd = e.header.nrPages > 0 && e.header.op === PS_IOV_ADD_F ? e.header : undefined;
        else want.push(e.data);
        if (e.kind === 'command' && cmd) {
          const out = Buffer.alloc(cmd.nrPages * PAGE_SIZE);
          const held = await p2.readAsync(PID, cmd.vaddr, cmd.nrPages, out);
          expect(held.every((b) => b === 1)).toBe(true);
          want.push(out);
        }
      }
      p2.close();
      // Pairs of (read back, sent): equal.
      const pairs = [];
      for (let i = 0; i + 1 < want.length; i += 2) pairs.push(want[i]!.equals(want[i + 1]!));
      expect(pairs.length).toBeGreaterThan(3);
      expect(pairs.every(Boolean)).toBe(true);
      // An address the chain never held is reported missing.
      const p3 = await ParentPages.open(dir2);
      const none = await p3.readAsync(PID, 0x1000, 2, Buffer.alloc(2 * PAGE_SIZE)).finally(() => p3.close());
      expect([...none]).toEqual([0, 0]);
    } finally {
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    }
  });

  it('a reused read buffer (the local socket) gives the very images owned chunks give: full and by content, across staging flushes and odd chunk sizes', async () => {
    // A synthetic stream of 12 MiB: four commands (two of 1024 pages), as criu dump sends them.
    const pid = 4242;
    const dst = encodeDstId(PS_TYPE_PID, pid);
    const runs = [[0x7f0000000000, 1024], [0x7f0000800000, 7], [0x7f0000a00000, 1024], [0x7f0001000000, 1017]] as const;
    const build = (mutate: (data: Buffer, cmd: number) => void): Buffer => {
      const parts: Buffer[] = [encodeHeader({ op: PS_IOV_OPEN2, dstId: dst })];
      runs.forEach(([vaddr, n], i) => {
        const data = Buffer.alloc(n * PAGE_SIZE);
        for (let k = 0; k < data.length; k += 4) data.writeUInt32LE((vaddr / PAGE_SIZE + k * 2654435761) >>> 0, k);
        mutate(data, i);
        parts.push(encodeHeader({ op: PS_IOV_ADD_F, flags: PE_PRESENT, nrPages: n, vaddr, dstId: dst }), data);
      });
      parts.push(encodeHeader({ op: PS_IOV_FORCE_CLOSE }));
      return Buffer.concat(parts);
    };
    const base = build(() => undefined);
    const next = build((data, i) => {
      if (i === 0) data[5 * PAGE_SIZE + 9]! ^= 1; // one page
      if (i === 2) data.fill(7, 100 * PAGE_SIZE, 140 * PAGE_SIZE); // a run of 40
      if (i === 3) data[1016 * PAGE_SIZE]! ^= 0x80; // the very last page
    });
    const dirs: string[] = [];
    const dirOf = async (): Promise<string> => {
      const d = await mkdtemp(join(tmpdir(), 'sink-'));
      dirs.push(d);
      return d;
    };
    const contents = async (d: string): Promise<Record<string, string>> =>
      Object.fromEntries(await Promise.all((await readdir(d)).filter((n) => n !== 'parent').map(async (n) => [n, hashBytes('blake3', await readFile(join(d, n)))])));
    try {
      const parent = await dirOf();
      await servePageSink(fakeCriu(base, 65536).sock, { dir: parent });
      for (const mode of ['full', 'content'] as const) {
        const [a, b] = [await dirOf(), await dirOf()];
        const serve = async (dir: string, src: Duplex | PageSource) => {
          const against = mode === 'content' ? await ParentPages.open(parent) : undefined;
          try {
            return await servePageSink(src, { dir, against });
          } finally {
            against?.close();
          }
        };
        const owned = await serve(a, fakeCriu(next, 65536).sock);
        const reused = reusedBufferSource(next, [4096 * 3 + 17, 31, 65536, 1, 200_000]);
        const viaReused = await serve(b, reused.source);
        expect(viaReused).toEqual(owned);
        expect(await contents(b)).toEqual(await contents(a));
        expect(reused.answers()).toEqual(Buffer.from([0, 0, 0, 0, 0]));
        if (mode === 'content') expect([owned.pagesWritten, owned.pagesInParent]).toEqual([42, 1024 + 7 + 1024 + 1017 - 42]);
        else expect(owned.pagesWritten).toBe(1024 + 7 + 1024 + 1017);
      }
    } finally {
      await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
    }
  });

  it('a pagemap of tens of thousands of entries (every other page changed) encodes whole, and the chain reads back the new memory', async () => {
    const pid = 77;
    const dst = encodeDstId(PS_TYPE_PID, pid);
    const cmds = 12; // 12 × 1024 pages, every other one changed: 12288 runs each way
    const build = (changed: boolean): Buffer => {
      const parts: Buffer[] = [encodeHeader({ op: PS_IOV_OPEN2, dstId: dst })];
      for (let c = 0; c < cmds; c++) {
        const vaddr = 0x7f0000000000 + c * 0x1000000;
        const data = Buffer.alloc(1024 * PAGE_SIZE, c + 1);
        if (changed) for (let i = 1; i < 1024; i += 2) data[i * PAGE_SIZE]! ^= 0xff;
        parts.push(encodeHeader({ op: PS_IOV_ADD_F, flags: PE_PRESENT, nrPages: 1024, vaddr, dstId: dst }), data);
      }
      parts.push(encodeHeader({ op: PS_IOV_FORCE_CLOSE }));
      return Buffer.concat(parts);
    };
    const [d1, d2] = [await mkdtemp(join(tmpdir(), 'sink-')), await mkdtemp(join(tmpdir(), 'sink-'))];
    try {
      await servePageSink(fakeCriu(build(false), 65536).sock, { dir: d1 });
      const p1 = await ParentPages.open(d1);
      const next = build(true);
      const r = await servePageSink(fakeCriu(next, 65536).sock, { dir: d2, against: p1 }).finally(() => p1.close());
      expect([r.pagesWritten, r.pagesInParent]).toEqual([cmds * 512, cmds * 512]);
      const entries = decodeImage(await readFile(join(d2, `pagemap-${pid}.img`)), 'pagemap').entries;
      expect((entries[0] as MessageEntry).value.pages_id).toBe(FIRST_PAGES_ID);
      expect(entries).toHaveLength(1 + cmds * 1024);
      await symlink(d1, join(d2, 'parent'));
      const p2 = await ParentPages.open(d2);
      try {
        let off = 0;
        for (const e of new PsDecoder().push(next)) {
          if (e.kind !== 'pages') continue;
          const out = Buffer.alloc(e.data.length);
          const held = await p2.readAsync(pid, e.header.vaddr, e.header.nrPages, out);
          expect(held.every((b) => b === 1)).toBe(true);
          expect(out.equals(e.data)).toBe(true);
          off++;
        }
        expect(off).toBe(cmds);
      } finally {
        p2.close();
      }
    } finally {
      await rm(d1, { recursive: true, force: true });
      await rm(d2, { recursive: true, force: true });
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
