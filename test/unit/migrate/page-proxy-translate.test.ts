import { afterAll, describe, expect, it } from 'vitest';
import { Duplex } from 'node:stream';
import {
  encodeDstId, encodeHeader, PAGE_SIZE, PE_LAZY, PE_PARENT, PE_PRESENT, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_FORCE_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PS_TYPE_SHMEM, PsDecoder, type PsEvent,
} from '../../../src/criu/page-server/protocol.js';
import { HASH_BYTES, hashPages } from '../../../src/migrate/precopy/memory.js';
import { HashPool, servePageProxy as serve, type ProxyOptions } from '../../../src/migrate/precopy/proxy.js';
import type { RoundPages } from '../../../src/migrate/precopy/round.js';

/**
 * A fake target page server: what the proxy forwards, decoded with cedana's decoder; OPEN2 answered
 * with `hasParent`, CLOSE with `status`; `dropOn` drops the connection at the first such command.
 */
function fakeTarget(hasParent: number, status = 0, dropOn?: number): { sock: Duplex; cmds: { op: number; flags: number; nrPages: number; vaddr: number; dstId: bigint; data: Buffer }[] } {
  const dec = new PsDecoder();
  const cmds: { op: number; flags: number; nrPages: number; vaddr: number; dstId: bigint; data: Buffer }[] = [];
  const sock: Duplex = new Duplex({
    read() {},
    write(c: Buffer, _e, cb) {
      for (const e of dec.push(c)) {
        if (e.kind === 'pages') {
          const last = cmds.at(-1)!;
          last.data = Buffer.concat([last.data, e.data]);
          continue;
        }
        const h = e.header;
        if (h.op === dropOn) {
          sock.destroy();
          return cb();
        }
        cmds.push({ op: h.op, flags: h.flags, nrPages: h.nrPages, vaddr: h.vaddr, dstId: h.dstId, data: Buffer.alloc(0) });
        if (h.op === PS_IOV_OPEN2) sock.push(Buffer.from([hasParent]));
        if (h.op === PS_IOV_CLOSE || h.op === PS_IOV_FORCE_CLOSE) {
          const b = Buffer.alloc(4);
          b.writeInt32LE(status);
          sock.push(b);
        }
      }
      cb();
    },
  });
  return { sock, cmds };
}

/** CRIU's end, faked: `stream` is fed in pieces of `piece` bytes; the answers the proxy writes are collected. */
function fakeCriu(stream: Buffer, piece = 1 << 20): { sock: Duplex; answers: () => Buffer } {
  const answers: Buffer[] = [];
  const sock = new Duplex({
    read() {},
    write(c: Buffer, _e, cb) {
      answers.push(Buffer.from(c));
      cb();
    },
  });
  for (let o = 0; o < stream.length; o += piece) sock.push(stream.subarray(o, o + piece));
  sock.push(null);
  return { sock, answers: () => Buffer.concat(answers) };
}

/** A page whose bytes all are `fill` (distinct pages: distinct fills). */
const page = (fill: number): Buffer => Buffer.alloc(PAGE_SIZE, fill);
const pages = (...fills: number[]): Buffer => Buffer.concat(fills.map(page));

const PID = 42;
const dst = encodeDstId(PS_TYPE_PID, PID);
const open2 = (d = dst): Buffer => encodeHeader({ op: PS_IOV_OPEN2, dstId: d });
const add = (vaddr: number, data: Buffer, d = dst, flags = PE_PRESENT): Buffer =>
  Buffer.concat([encodeHeader({ op: PS_IOV_ADD_F, flags, nrPages: data.length / PAGE_SIZE, vaddr, dstId: d }), data]);
const close = (): Buffer => encodeHeader({ op: PS_IOV_CLOSE });

/** The round held pages at 0x10000 + i pages with fills 1..n. */
function roundOf(base: number, fills: number[]): RoundPages {
  const data = pages(...fills);
  const hashes = Buffer.alloc(fills.length * HASH_BYTES);
  hashPages(data, fills.length, hashes);
  return { count: fills.length, vaddrs: Float64Array.from(fills.map((_, i) => base + i * PAGE_SIZE)), hashes };
}

const B = 0x10000;
const at = (i: number): number => B + i * PAGE_SIZE;
const summary = (cmds: ReturnType<typeof fakeTarget>['cmds']): [string, number, number, number][] =>
  cmds.map((c) => [c.op === PS_IOV_OPEN2 ? 'open2' : c.op === PS_IOV_CLOSE ? 'close' : 'add', c.flags, c.nrPages, c.vaddr]);

const pool = new HashPool(2, 1);
afterAll(() => pool.close());

describe.each([false, true])('the final-step page proxy (criu dump → cedana → the target page server), hashing in workers: %s', (workers) => {
  const servePageProxy = (src: Duplex, target: Duplex, o: ProxyOptions): ReturnType<typeof serve> => serve(src, target, workers ? { ...o, hasher: pool } : o);
  // Round 1 held pages 0..7 (fills 1..8). CRIU now sends pages 0..3 in one command (unchanged), 4..7
  // in the next (4, 5 unchanged; 6, 7 rewritten), 8..9 in a third (new since the round).
  const round = roundOf(B, [1, 2, 3, 4, 5, 6, 7, 8]);
  const stream = Buffer.concat([open2(), add(at(0), pages(1, 2, 3, 4)), add(at(4), pages(5, 6, 70, 80)), add(at(8), pages(90, 100)), close()]);

  it.each([1 << 20, 1000, 4096, 33])('unchanged pages become PE_PARENT runs (merged across commands), changed and new ones cross with their data (stream in pieces of %i bytes)', async (piece) => {
    const t = fakeTarget(1);
    const c = fakeCriu(stream, piece);
    const r = await servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]) });
    expect(summary(t.cmds)).toEqual([
      ['open2', 0, 0, 0],
      ['add', PE_PARENT, 6, at(0)],
      ['add', PE_PRESENT, 2, at(6)], // data runs are never merged across CRIU's commands (nothing is held back)
      ['add', PE_PRESENT, 2, at(8)],
      ['close', 0, 0, 0],
    ]);
    expect(t.cmds[0]!.dstId).toBe(dst);
    expect(Buffer.concat([t.cmds[2]!.data, t.cmds[3]!.data]).equals(pages(70, 80, 90, 100))).toBe(true);
    // criu dump was told has_parent = 0, then the target's status 0.
    expect([...c.answers()]).toEqual([0, 0, 0, 0, 0]);
    expect(r).toMatchObject({ status: 0, pagesReceived: 10, pagesForwarded: 4, pagesParent: 6, pagesShmem: 0, pagemaps: 1, pagemapsWithParent: 1 });
  });

  it('a page changed between two unchanged ones splits the run; entries stay ascending; PE_LAZY pages (private anonymous, as criu dump sends them) are compared too and keep their flags', async () => {
    const t = fakeTarget(1);
    const c = fakeCriu(Buffer.concat([open2(), add(at(0), pages(1, 22, 3, 4, 5, 6, 7, 8), dst, PE_PRESENT | PE_LAZY), close()]));
    await servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]) });
    expect(summary(t.cmds).slice(1, -1)).toEqual([
      ['add', PE_PARENT, 1, at(0)],
      ['add', PE_PRESENT | PE_LAZY, 1, at(1)],
      ['add', PE_PARENT, 6, at(2)],
    ]);
  });

  it('where the target has no parent (has_parent 0), everything crosses with its data', async () => {
    const t = fakeTarget(0);
    const c = fakeCriu(stream);
    const r = await servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]) });
    expect(summary(t.cmds).slice(1, -1)).toEqual([
      ['add', PE_PRESENT, 4, at(0)],
      ['add', PE_PRESENT, 4, at(4)],
      ['add', PE_PRESENT, 2, at(8)],
    ]);
    expect(r.pagesParent).toBe(0);
    expect(r.pagesForwarded).toBe(10);
  });

  it('shared memory (type 2) goes whole, and so does a hugetlb range; a process without a round too', async () => {
    const shm = encodeDstId(PS_TYPE_SHMEM, PID); // the same id as the process: must not be compared with its round
    const other = encodeDstId(PS_TYPE_PID, 43);
    const t = fakeTarget(1);
    const c = fakeCriu(Buffer.concat([
      open2(), add(at(0), pages(1, 2, 3, 4)), add(at(4), pages(5, 6, 7, 8)),
      open2(shm), add(at(0), pages(1, 2), shm),
      open2(other), add(at(0), pages(1), other),
      close(),
    ]));
    const r = await servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]), keepWhole: new Map([[PID, [[at(5), at(6)]]]]) });
    expect(summary(t.cmds)).toEqual([
      ['open2', 0, 0, 0],
      ['add', PE_PARENT, 4, at(0)],
      ['add', PE_PRESENT, 4, at(4)], // touches the hugetlb range: whole
      ['open2', 0, 0, 0],
      ['add', PE_PRESENT, 2, at(0)],
      ['open2', 0, 0, 0],
      ['add', PE_PRESENT, 1, at(0)],
      ['close', 0, 0, 0],
    ]);
    expect(t.cmds.filter((x) => x.op === PS_IOV_OPEN2).map((x) => x.dstId)).toEqual([dst, shm, other]);
    expect(r).toMatchObject({ pagesShmem: 2, pagesParent: 4, pagesForwarded: 7, pagemaps: 3 });
    expect([...c.answers()]).toEqual([0, 0, 0, 0, 0, 0, 0]);
  });

  it("relays the target's non-zero CLOSE status to criu, and fails", async () => {
    const t = fakeTarget(1, -5);
    const c = fakeCriu(stream);
    await expect(servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]) })).rejects.toThrow(/status -5/);
    expect(c.answers().subarray(1).readInt32LE(0)).toBe(-5);
  });

  it('a target that drops the connection cuts criu off too', async () => {
    const t = fakeTarget(1, 0, PS_IOV_ADD_F);
    const c = fakeCriu(stream);
    await expect(servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]) })).rejects.toThrow(/page server/);
    expect(c.sock.destroyed).toBe(true);
    expect(t.sock.destroyed).toBe(true);
  });

  it('FORCE_CLOSE is forwarded as such, its status relayed', async () => {
    const t = fakeTarget(1);
    const c = fakeCriu(Buffer.concat([open2(), add(at(0), pages(1, 2)), encodeHeader({ op: PS_IOV_FORCE_CLOSE })]));
    const r = await servePageProxy(c.sock, t.sock, { held: new Map([[PID, round]]) });
    expect(t.cmds.map((x) => x.op)).toEqual([PS_IOV_OPEN2, PS_IOV_ADD_F, PS_IOV_FORCE_CLOSE]);
    expect(r.status).toBe(0);
    expect([...c.answers()]).toEqual([0, 0, 0, 0, 0]);
  });

  it('an abort (SIGINT to cedana) cuts both connections', async () => {
    const silent = new Duplex({ read() {}, write(_c, _e, cb) { cb(); } });
    const c = fakeCriu(stream);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await expect(servePageProxy(c.sock, silent, { held: new Map([[PID, round]]), signal: ac.signal })).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(c.sock.destroyed).toBe(true);
    expect(silent.destroyed).toBe(true);
  });

  it('a target that never answers is given up on: both connections cut', async () => {
    const silent = new Duplex({ read() {}, write(_c, _e, cb) { cb(); } });
    const c = fakeCriu(stream);
    await expect(servePageProxy(c.sock, silent, { held: new Map([[PID, round]]), targetTimeoutMs: 100 })).rejects.toThrow(/did not answer/);
    expect(c.sock.destroyed).toBe(true);
    expect(silent.destroyed).toBe(true);
  });

  it('a stream that ends before CLOSE fails (criu went away), and so does a PE_PARENT hole from criu', async () => {
    const t1 = fakeTarget(1);
    await expect(servePageProxy(fakeCriu(Buffer.concat([open2(), add(at(0), pages(1))])).sock, t1.sock, { held: new Map() })).rejects.toThrow(/before its end/);
    expect(t1.sock.destroyed).toBe(true);
    const hole = encodeHeader({ op: PS_IOV_ADD_F, flags: PE_PARENT, nrPages: 1, vaddr: at(0), dstId: dst });
    await expect(servePageProxy(fakeCriu(Buffer.concat([open2(), hole, close()])).sock, fakeTarget(1).sock, { held: new Map() })).rejects.toThrow(/has_parent = 0/);
  });
});
