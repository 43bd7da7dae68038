import { describe, expect, it } from 'vitest';
import { Duplex } from 'node:stream';
import { PageServerClient } from '../../../src/criu/page-server/client.js';
import {
  decodeDstId, PAGE_SIZE, PE_PARENT, PE_PRESENT, PS_IOV_ADD_F, PS_IOV_CLOSE, PS_IOV_OPEN2, PS_TYPE_PID, PsDecoder, type PsEvent,
} from '../../../src/criu/page-server/protocol.js';
import { isRoundVma, parseMaps, pfnOf, repeatedPfn, selectPages } from '../../../src/migrate/precopy/memory.js';

/**
 * A fake page server: everything the client writes, decoded with cedana's own decoder (the one the
 * sink uses on real CRIU streams); it answers OPEN2 with `hasParent` and CLOSE with `status`.
 */
function fakeServer(hasParent: number, status = 0): { sock: Duplex; events: PsEvent[]; drop: () => void } {
  const dec = new PsDecoder();
  const events: PsEvent[] = [];
  const sock: Duplex = new Duplex({
    read() {},
    write(c: Buffer, _e, cb) {
      for (const e of dec.push(c)) {
        events.push(e);
        if (e.kind !== 'command') continue;
        if (e.header.op === PS_IOV_OPEN2) sock.push(Buffer.from([hasParent]));
        if (e.header.op === PS_IOV_CLOSE) {
          const b = Buffer.alloc(4);
          b.writeInt32LE(status);
          sock.push(b);
        }
      }
      cb();
    },
  });
  return { sock, events, drop: () => sock.destroy() };
}

const page = (fill: number, n = 1): Buffer => Buffer.alloc(n * PAGE_SIZE, fill);

describe('page-server client', () => {
  it('encodes OPEN2, ADD_F with data, ADD_F PE_PARENT without, CLOSE as the decoder reads them', async () => {
    const srv = fakeServer(1);
    const c = new PageServerClient(srv.sock);
    expect(await c.open(4242)).toBe(true);
    await c.add(0x10000, page(7, 3));
    await c.parent(0x13000, 5);
    await c.add(0x20000, page(9));
    await c.close();
    const cmds = srv.events.filter((e) => e.kind === 'command').map((e) => e.header);
    expect(cmds.map((h) => [h.op, h.flags, h.nrPages, h.vaddr])).toEqual([
      [PS_IOV_OPEN2, 0, 0, 0],
      [PS_IOV_ADD_F, PE_PRESENT, 3, 0x10000],
      [PS_IOV_ADD_F, PE_PARENT, 5, 0x13000],
      [PS_IOV_ADD_F, PE_PRESENT, 1, 0x20000],
      [PS_IOV_CLOSE, 0, 0, 0],
    ]);
    expect(cmds.slice(0, 4).map((h) => decodeDstId(h.dstId))).toEqual(Array(4).fill({ type: PS_TYPE_PID, id: 4242 }));
    const data = Buffer.concat(srv.events.flatMap((e) => (e.kind === 'pages' ? [e.data] : [])));
    expect(data.equals(Buffer.concat([page(7, 3), page(9)]))).toBe(true);
    expect(c.bytesSent).toBe(4 * PAGE_SIZE);
  });

  it('flushed() settles only once the connection has taken every byte written so far (then the page data may be reused)', async () => {
    const dec = new PsDecoder();
    const held: (() => void)[] = [];
    let seen = 0;
    const sock = new Duplex({
      read() {},
      write(c: Buffer, _e, cb) {
        for (const e of dec.push(c)) if (e.kind === 'pages') seen += e.data.length;
        held.push(() => cb()); // the connection takes it only when released
      },
    });
    const c = new PageServerClient(sock);
    sock.push(Buffer.from([0]));
    const opened = c.open(1);
    held.shift()!();
    await opened;
    const data = page(5, 4);
    await c.add(0x10000, data); // resolves at once: well under the client's queue limit
    let flushed = false;
    const f = c.flushed().then(() => (flushed = true));
    await new Promise((r) => setImmediate(r));
    expect(flushed).toBe(false);
    while (held.length > 0) {
      held.shift()!();
      await new Promise((r) => setImmediate(r));
    }
    await f;
    expect(flushed).toBe(true);
    expect(seen).toBe(data.length);
  });

  it('reports has_parent 0, and rejects a non-zero CLOSE status', async () => {
    const srv = fakeServer(0, -1);
    const c = new PageServerClient(srv.sock);
    expect(await c.open(1)).toBe(false);
    await c.add(0x1000, page(1));
    await expect(c.close()).rejects.toThrow(/status -1/);
  });

  it('refuses entries that do not ascend, and partial pages', async () => {
    const c = new PageServerClient(fakeServer(1).sock);
    await c.open(1);
    await c.add(0x5000, page(1, 2));
    await expect(c.parent(0x6000, 1)).rejects.toThrow(/ascend/);
    await expect(c.add(0x9000, Buffer.alloc(100))).rejects.toThrow(/whole pages|bad page range/);
  });

  it('a dropped connection rejects the awaited answer and every later call', async () => {
    const srv = fakeServer(1);
    const c = new PageServerClient(srv.sock);
    srv.drop();
    await expect(c.open(1)).rejects.toThrow(/page server/);
    await expect(c.add(0x1000, page(1))).rejects.toThrow();
    const srv2 = fakeServer(1);
    const c2 = new PageServerClient(srv2.sock);
    await c2.open(1);
    await c2.add(0x1000, page(1));
    srv2.drop();
    await expect(c2.add(0x2000, page(1))).rejects.toThrow(/page server/);
    await expect(c2.close()).rejects.toThrow(/page server/);
  });
});

describe('which pages a round carries', () => {
  const maps = [
    '55d0c0000000-55d0c0021000 r--p 00000000 08:01 131 /usr/bin/python3.13',
    '55d0c0021000-55d0c0300000 r-xp 00021000 08:01 131 /usr/bin/python3.13',
    '55d0c1000000-55d0c1200000 rw-p 00000000 00:00 0 [heap]',
    '7f0000000000-7f0004000000 rw-p 00000000 00:00 0 ',
    '7f0004000000-7f0004001000 ---p 00000000 00:00 0 ',
    '7f0005000000-7f0005100000 rw-s 00000000 00:01 77 /dev/zero (deleted)',
    '7f0006000000-7f0006200000 rw-p 00000000 00:0f 88 /anon_hugepage (deleted)',
    '7f0007000000-7f0007200000 rw-p 00000000 00:2f 99 /mnt/huge/x',
    '7f0008000000-7f0008001000 rw-s 00000000 00:05 5 /SYSV00000000 (deleted)',
    '7f0009000000-7f0009001000 rw-p 00000000 00:06 6 /dev/nvidia0',
    '7ffd0000000-7ffd0021000 rw-p 00000000 00:00 0 [stack]',
    '7ffd1000000-7ffd1004000 r--p 00000000 00:00 0 [vvar]',
    '7ffd1004000-7ffd1006000 r-xp 00000000 00:00 0 [vdso]',
    'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]',
  ].join('\n');

  it('private mappings, anonymous or file-backed, any protection; not shared, hugetlb, devices, or the kernel-provided areas', () => {
    const vmas = parseMaps(maps);
    expect(vmas).toHaveLength(14);
    expect(vmas[3]).toEqual({ start: 0x7f0000000000, end: 0x7f0004000000, perms: 'rw-p', path: '' });
    const kept = vmas.filter((v) => isRoundVma(v, ['/mnt/huge'])).map((v) => v.path || v.start.toString(16));
    expect(kept).toEqual(['/usr/bin/python3.13', '/usr/bin/python3.13', '[heap]', '7f0000000000', '7f0004000000', '[stack]']);
  });

  it('present or swapped pages, not guard pages, and in a private file mapping only the copied ones', () => {
    const entries = [
      0n, // not present
      1n << 63n, // present (anon)
      1n << 62n, // swapped
      (1n << 63n) | (1n << 61n), // present, a file page (not copied on write)
      (1n << 63n) | (1n << 58n), // guard region
      (1n << 63n) | 0x1234n, // present with a PFN
    ];
    const buf = Buffer.alloc(entries.length * 8);
    entries.forEach((e, i) => buf.writeBigUInt64LE(e, i * 8));
    const pm = new Uint32Array(buf.buffer, buf.byteOffset, entries.length * 2);
    const out = new Uint8Array(entries.length);
    expect(selectPages(pm, entries.length, false, out)).toBe(4);
    expect([...out]).toEqual([0, 1, 1, 1, 0, 1]);
    expect(selectPages(pm, entries.length, true, out)).toBe(3);
    expect([...out]).toEqual([0, 1, 1, 0, 0, 1]);
  });

  it('the zero page: found as a PFN repeated on consecutive pages, and left out by PFN', () => {
    const P = 1n << 63n;
    const entries = [P | 0x500n, P | 0x77n, P | 0x77n, 0n, P | 0x1234567890n, P | 0x77n, 1n << 62n];
    const buf = Buffer.alloc(entries.length * 8);
    entries.forEach((e, i) => buf.writeBigUInt64LE(e, i * 8));
    const pm = new Uint32Array(buf.buffer, buf.byteOffset, entries.length * 2);
    expect(pfnOf(pm, 4)).toBe(0x1234567890);
    expect(repeatedPfn(pm, entries.length, new Set())).toBe(0x77);
    expect(repeatedPfn(pm, entries.length, new Set([0x77]))).toBeUndefined();
    const out = new Uint8Array(entries.length);
    expect(selectPages(pm, entries.length, false, out, 0x77)).toBe(3);
    expect([...out]).toEqual([1, 0, 0, 0, 1, 0, 1]);
    // PFNs hidden (all 0): never taken for the zero page.
    const hidden = new Uint32Array(8);
    hidden[1] = hidden[3] = hidden[5] = hidden[7] = 0x80000000;
    expect(repeatedPfn(hidden, 4, new Set())).toBeUndefined();
  });
});
