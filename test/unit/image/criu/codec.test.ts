import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../../src/errors.js';
import { decodeImage, encodeImage, type DecodedImage, type MessageEntry } from '../../../../src/image/criu/codec.js';
import { IMG_COMMON, IMG_SERVICE, MAGICS, PE_LAZY, PE_PRESENT } from '../../../../src/image/criu/kinds.js';
import type { Message } from '../../../../src/image/criu/message.js';

const SEEDS = fileURLToPath(new URL('../../../fixtures/criu-images/', import.meta.url));

const u32 = (...ns: number[]): Buffer => Buffer.concat(ns.map((n) => Buffer.from(Uint32Array.of(n).buffer)));
const bytes = (hex: string): Buffer => Buffer.from(hex.replace(/\s+/g, ''), 'hex');
/** An image as CRIU lays it out: the magics, then each entry as u32 length + message (+ data). */
const image = (magics: number[], ...entries: (Buffer | [Buffer, Buffer])[]): Buffer =>
  Buffer.concat([u32(...magics), ...entries.flatMap((e) => (Array.isArray(e) ? [u32(e[0].length), e[0], e[1]] : [u32(e.length), e]))]);
const common = (kind: keyof typeof MAGICS, ...entries: (Buffer | [Buffer, Buffer])[]): Buffer => image([IMG_COMMON, MAGICS[kind]], ...entries);

const msg = (type: string, value: Message, extra?: Buffer): MessageEntry => (extra ? { type, value, extra } : { type, value });
const valueOf = (img: DecodedImage, i = 0): Message => (img.entries[i] as MessageEntry).value;

/** pstree_entry { pid 1234, ppid 1, pgid 1234, sid 1234, threads [1234] }: 1234 is the varint d2 09. */
const PSTREE_MSG = bytes('08d209 1001 18d209 20d209 28d209');
const PSTREE = { pid: 1234, ppid: 1, pgid: 1234, sid: 1234, threads: [1234] };

function invalid(fn: () => unknown): CedanaError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(CedanaError);
    expect((e as CedanaError).code).toBe('IMAGE_INVALID');
    return e as CedanaError;
  }
  throw new Error('expected IMAGE_INVALID, nothing was thrown');
}

describe('encodeImage / decodeImage on handcrafted images', () => {
  it('writes a pstree image exactly as CRIU does and reads it back', () => {
    const img: DecodedImage = { kind: 'PSTREE', head: IMG_COMMON, magic: MAGICS.PSTREE, entries: [msg('pstree_entry', PSTREE)] };
    const buf = encodeImage(img);
    expect(buf.toString('hex')).toBe(`19435654 30302750 0e000000 ${PSTREE_MSG.toString('hex')}`.replace(/ /g, ''));
    expect(decodeImage(buf, 'pstree.img')).toEqual(img);
  });

  it('inventory has no IMG_COMMON head', () => {
    const buf = image([MAGICS.INVENTORY], bytes('0802 1001'));
    const img = decodeImage(buf);
    expect(img).toEqual({ kind: 'INVENTORY', magic: MAGICS.INVENTORY, entries: [msg('inventory_entry', { img_version: 2, fdinfo_per_id: true })] });
    expect(encodeImage(img)).toEqual(buf);
  });

  it('knows the kind from the magic, not from the file name', () => {
    expect(decodeImage(common('PSTREE', PSTREE_MSG), 'core-1.img').kind).toBe('PSTREE');
    expect(decodeImage(image([IMG_SERVICE, MAGICS.STATS], bytes('')), 'x').kind).toBe('STATS');
  });

  it('64-bit integers are bigints, negative int32 and sint32 keep their sign, enums are names', () => {
    const core = {
      mtype: 'X86_64',
      tc: {
        task_state: 1, exit_code: 0, personality: 0, flags: 0x400000, blk_sigset: 2n ** 64n - 1n, comm: 'python3',
        oom_score_adj: -1000, old_seccomp_mode: 'filter',
      },
      thread_core: { futex_rla: 0x7f00_0000_1000n, futex_rla_len: 24, sched_nice: -5 },
    };
    const buf = encodeImage({ kind: 'CORE', head: IMG_COMMON, magic: MAGICS.CORE, entries: [msg('core_entry', core)] });
    // blk_sigset 2^64-1: ten bytes ff…01; oom_score_adj -1000: ten bytes, as int32 is sign-extended.
    expect(buf.toString('hex')).toContain('28ffffffffffffffffff01');
    expect(buf.toString('hex')).toContain('7098f8ffffffffffffff01');
    expect(buf.toString('hex')).toContain('1809'); // sched_nice -5, zigzag: 9
    expect(valueOf(decodeImage(buf))).toEqual(core);
  });

  it('reads pagemap as a head and then page runs', () => {
    const buf = encodeImage({
      kind: 'PAGEMAP', head: IMG_COMMON, magic: MAGICS.PAGEMAP,
      entries: [
        msg('pagemap_head', { pages_id: 1 }),
        msg('pagemap_entry', { vaddr: 0x5560f5eeb000n, compat_nr_pages: 0, flags: PE_PRESENT, nr_pages: 1n }),
        msg('pagemap_entry', { vaddr: 0x7ffd00000000n, compat_nr_pages: 0, flags: PE_PRESENT | PE_LAZY, nr_pages: 33n }),
      ],
    });
    const img = decodeImage(buf, 'pagemap-1.img');
    expect(img.entries.map((e) => e.type)).toEqual(['pagemap_head', 'pagemap_entry', 'pagemap_entry']);
    expect(valueOf(img, 2)).toMatchObject({ vaddr: 0x7ffd00000000n, nr_pages: 33n, flags: 6 });
    expect(encodeImage(img)).toEqual(buf);
  });

  it('keeps the data that follows an entry: pipe data, TCP queues, ghost file contents', () => {
    const pipe = common('PIPES_DATA', [bytes('0807 1005 18808004'), Buffer.from('hello')], [bytes('0808 1000'), Buffer.alloc(0)]);
    const p = decodeImage(pipe);
    expect(p.entries).toEqual([msg('pipe_data_entry', { pipe_id: 7, bytes: 5, size: 65536 }, Buffer.from('hello')), msg('pipe_data_entry', { pipe_id: 8, bytes: 0 }, Buffer.alloc(0))]);
    expect(encodeImage(p)).toEqual(pipe);

    const tcp = { inq_len: 3, inq_seq: 1, outq_len: 2, outq_seq: 2, opt_mask: 7, snd_wscale: 7, mss_clamp: 65495 };
    const t = encodeImage({ kind: 'TCP_STREAM', head: IMG_COMMON, magic: MAGICS.TCP_STREAM, entries: [msg('tcp_stream_entry', tcp, Buffer.from('inqoq'))] });
    expect(t.subarray(-5).toString()).toBe('inqoq');
    expect(decodeImage(t).entries[0]).toEqual(msg('tcp_stream_entry', tcp, Buffer.from('inqoq')));

    // A ghost file whole (its data runs to the end of the file), or in chunks.
    const whole = common('GHOST_FILE', [bytes('0800 1000 18a483 02'), Buffer.from('deleted but open\n')]);
    expect(decodeImage(whole).entries[0]).toMatchObject({ extra: Buffer.from('deleted but open\n') });
    expect(encodeImage(decodeImage(whole))).toEqual(whole);
    const chunked = common('GHOST_FILE', bytes('0800 1000 18a48302 4801'), [bytes('0803 1000'), Buffer.from('abc')], [bytes('0802 1080 20'), Buffer.from('yz')]);
    const c = decodeImage(chunked);
    expect(c.entries.map((e) => [e.type, (e as MessageEntry).extra?.toString()])).toEqual([
      ['ghost_file_entry', ''], ['ghost_chunk_entry', 'abc'], ['ghost_chunk_entry', 'yz'],
    ]);
    expect(valueOf(c, 2)).toEqual({ len: 2n, off: 4096n });
    expect(encodeImage(c)).toEqual(chunked);
  });

  it('keeps fields it does not know, through a change of the entry', () => {
    // pstree_entry with field 99 (varint 5) and field 100 (bytes "zz") that a newer CRIU might write.
    const unknown = bytes('98 06 05 a2 06 02 7a7a');
    const buf = common('PSTREE', Buffer.concat([PSTREE_MSG.subarray(0, 5), unknown, PSTREE_MSG.subarray(5)]));
    const img = decodeImage(buf);
    expect(valueOf(img)).toEqual({ ...PSTREE, $unknown: unknown });
    expect(encodeImage(img)).toEqual(buf); // unchanged: the original bytes, field order and all
    valueOf(img).sid = 99;
    const changed = decodeImage(encodeImage(img));
    expect(valueOf(changed)).toEqual({ ...PSTREE, sid: 99, $unknown: unknown });
  });

  it('writes an unchanged entry back as it was even when not encoded canonically, a changed one canonically', () => {
    // pid 1234 as an overlong varint (d2 89 80 00), and ppid written twice (the last one counts).
    const odd = bytes('08d2898000 1005 1001 18d209 20d209 28d209');
    const buf = common('PSTREE', odd, PSTREE_MSG);
    const img = decodeImage(buf);
    expect(img.entries.map((e) => (e as MessageEntry).value)).toEqual([PSTREE, PSTREE]);
    expect(encodeImage(img)).toEqual(buf);
    valueOf(img).threads = [1234, 1235];
    expect(encodeImage(img)).toEqual(common('PSTREE', Buffer.concat([PSTREE_MSG, bytes('28d309')]), PSTREE_MSG));
  });

  it('a replaced entry, or one whose value is edited, is encoded from its value', () => {
    const buf = readFileSync(join(SEEDS, 'sleep', 'files.img'));
    const img = decodeImage(buf, 'files.img');
    const reg = img.entries.map((e) => (e as MessageEntry).value).find((f) => f.type === 'REG')!.reg as Message;
    const before = reg.name as string;
    reg.name = '/new/place/of/the/file';
    const again = decodeImage(encodeImage(img));
    const names = again.entries.map((e) => ((e as MessageEntry).value.reg as Message | undefined)?.name);
    expect(names).toContain('/new/place/of/the/file');
    expect(names).not.toContain(before);
    expect(again.entries.length).toBe(img.entries.length);
    reg.name = before;
    expect(encodeImage(img)).toEqual(buf);
  });

  it('a string that is not UTF-8 stays its bytes', () => {
    const name = Buffer.from([0x2f, 0x74, 0xff, 0xfe, 0x2e, 0x6c]); // "/t\xff\xfe.l": a legal Linux file name
    const fown = { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 };
    const entry = { type: 'REG', id: 3, reg: { id: 3, flags: 1, pos: 0n, fown, name } };
    const buf = encodeImage({ kind: 'FILES', head: IMG_COMMON, magic: MAGICS.FILES, entries: [msg('file_entry', entry)] });
    expect((valueOf(decodeImage(buf)).reg as Message).name).toEqual(name);
    expect(encodeImage({ ...decodeImage(buf), entries: [msg('file_entry', entry)] })).toEqual(buf);
  });

  it('an image of a kind it does not know decodes to opaque entries and round-trips', () => {
    const framed = image([IMG_COMMON, 0x12345678], bytes('0801'), bytes(''), bytes('ffff'));
    const img = decodeImage(framed);
    expect(img).toEqual({ kind: 'UNKNOWN', head: IMG_COMMON, magic: 0x12345678, entries: [{ type: null, bytes: bytes('0801') }, { type: null, bytes: bytes('') }, { type: null, bytes: bytes('ffff') }] });
    expect(encodeImage(img)).toEqual(framed);
    // Entries followed by data it cannot size: kept as one body.
    const unframed = Buffer.concat([u32(IMG_COMMON, 0x12345678, 2), bytes('0801 abcdef')]);
    expect(decodeImage(unframed)).toMatchObject({ kind: 'UNKNOWN', entries: [], body: unframed.subarray(8) });
    expect(encodeImage(decodeImage(unframed))).toEqual(unframed);
    // Known kinds without a schema here (mount points) are opaque too.
    const mnts = common('MNTS', bytes('0801'));
    expect(decodeImage(mnts).entries).toEqual([{ type: null, bytes: bytes('0801') }]);
    expect(encodeImage(decodeImage(mnts))).toEqual(mnts);
  });

  it('raw images are known by their name only', () => {
    const pages = Buffer.from('any bytes of memory, even ones that look like a magic');
    expect(decodeImage(pages, '/img/pages-1.img')).toEqual({ kind: 'RAW', entries: [], body: pages });
    expect(encodeImage(decodeImage(pages, 'pages-1.img'))).toEqual(pages);
    expect(decodeImage(Buffer.alloc(0), 'pages-2.img').kind).toBe('RAW');
    expect(invalid(() => decodeImage(pages)).message).toMatch(/not a CRIU image: unknown magic 0x20796e61 at offset 0/);
  });

  it('the checked-in seed images (real CRIU 4.2 dumps) all round-trip', () => {
    let n = 0;
    for (const dir of readdirSync(SEEDS, { withFileTypes: true }).filter((d) => d.isDirectory())) {
      for (const name of readdirSync(join(SEEDS, dir.name))) {
        const buf = readFileSync(join(SEEDS, dir.name, name));
        const img = decodeImage(buf, name);
        expect(img.kind, name).not.toMatch(/UNKNOWN|RAW/);
        expect(encodeImage(img).equals(buf), `${dir.name}/${name}`).toBe(true);
        expect(encodeImage({ ...img, entries: img.entries.map((e) => ({ ...e })) }).equals(buf), `${dir.name}/${name} re-encoded`).toBe(true);
        n++;
      }
    }
    expect(n).toBeGreaterThan(30);
  });
});

describe('encodeImage refuses an inconsistent image', () => {
  const base = { kind: 'PSTREE', head: IMG_COMMON, magic: MAGICS.PSTREE } as const;
  it.each([
    ['an entry of the wrong type', { ...base, entries: [msg('core_entry', {})] }, /entry 0: must be a pstree_entry, not core_entry/],
    ['a required field missing', { ...base, entries: [msg('pstree_entry', { pid: 1 })] }, /pstree_entry\.ppid: required field missing/],
    ['a field the message lacks', { ...base, entries: [msg('pstree_entry', { ...PSTREE, pidd: 1 })] }, /pstree_entry has no field pidd/],
    ['a value out of range', { ...base, entries: [msg('pstree_entry', { ...PSTREE, pid: -1 })] }, /pstree_entry\.pid: expected an integer in \[0, 4294967295\]/],
    ['a 64-bit value that is not an integer', { kind: 'PAGEMAP', head: IMG_COMMON, magic: MAGICS.PAGEMAP, entries: [msg('pagemap_head', { pages_id: 1 }), msg('pagemap_entry', { vaddr: 1.5, compat_nr_pages: 0 })] }, /vaddr: expected a uint64/],
    ['an enum name that does not exist', { kind: 'FDINFO', head: IMG_COMMON, magic: MAGICS.FDINFO, entries: [msg('fdinfo_entry', { id: 1, flags: 0, type: 'NOPE', fd: 0 })] }, /fd_types has no value NOPE/],
    ['data that does not match its announced size', { kind: 'PIPES_DATA', head: IMG_COMMON, magic: MAGICS.PIPES_DATA, entries: [msg('pipe_data_entry', { pipe_id: 1, bytes: 4 }, Buffer.from('abc'))] }, /announces 4 bytes of data, the entry has 3/],
    ['a magic of another kind', { ...base, magic: MAGICS.CORE, entries: [] }, /0x55053847 does not fit a PSTREE image/],
    ['a pagemap without its head', { kind: 'PAGEMAP', head: IMG_COMMON, magic: MAGICS.PAGEMAP, entries: [] }, /needs its first entry/],
  ])('%s', (_, img, why) => {
    expect(invalid(() => encodeImage(img as DecodedImage)).message).toMatch(why);
  });
});

describe('decodeImage refuses damaged images with IMAGE_INVALID, saying what and where', () => {
  const good = common('PSTREE', PSTREE_MSG);
  const cases: [string, Buffer, RegExp][] = [
    ['an empty file', Buffer.alloc(0), /too short for an image magic \(0 bytes\) at offset 0/],
    ['a file cut inside the first magic', good.subarray(0, 3), /too short for an image magic \(3 bytes\)/],
    ['a file cut inside the image magic', good.subarray(0, 6), /ends inside its image magic at offset 4/],
    ['an unknown first magic', Buffer.concat([u32(0xdeadbeef), good.subarray(4)]), /not a CRIU image: unknown magic 0xdeadbeef at offset 0/],
    ['an entry length past the end', Buffer.concat([good, u32(1000), bytes('0801')]), /entry 1: its length 1000 runs past the end of the file \(2 bytes left\) at offset 26/],
    ['a huge entry length', Buffer.concat([u32(IMG_COMMON, MAGICS.PSTREE, 0xffffffff)]), /its length 4294967295 runs past the end/],
    ['an entry cut short', good.subarray(0, good.length - 1), /entry 0: its length 14 runs past the end of the file \(13 bytes left\) at offset 8/],
    ['trailing bytes', Buffer.concat([good, bytes('0000')]), /2 trailing byte\(s\) after the last entry at offset 26/],
    ['a truncated varint', common('PSTREE', bytes('08d2')), /entry 0 \(pstree_entry\): varint runs past the end of its message at offset 13/],
    ['a varint longer than 10 bytes', common('PSTREE', bytes('08 ffffffffffffffffffff01')), /varint does not fit in 64 bits|longer than 10 bytes/],
    ['a field of the wrong wire type', common('PSTREE', bytes('0a0100')), /pstree_entry\.pid \(field 1\) has wire type 2, expected 0 at offset 12/],
    ['a group wire type', common('PSTREE', bytes('33')), /unsupported wire type 3 at offset 12/],
    ['field number 0', common('PSTREE', bytes('0001')), /invalid field number 0 in pstree_entry/],
    ['a required field missing', common('PSTREE', bytes('08d209')), /pstree_entry lacks its required field ppid at offset 15/],
    ['a length-delimited field past its message', common('FILES', bytes('0801 1001 1a 7f 00')), /entry 0 \(file_entry\): length 127 runs past the end of its message \(1 bytes left\) at offset 17/],
    ['a nested message cut short', common('CORE', bytes('0801 1a 03 0801')), /\(core_entry\): length 3 runs past the end of its message \(2 bytes left\)/],
    ['data past the end of the file', common('PIPES_DATA', [bytes('0801 1064'), Buffer.from('abc')]), /entry 0 \(pipe_data_entry\): its 100 bytes of data run past the end of the file \(3 bytes left\)/],
    ['a pagemap without its head', common('PAGEMAP'), /a PAGEMAP image needs its first entry \(pagemap_head\), it has none/],
  ];
  it.each(cases)('%s', (_, buf, why) => {
    const e = invalid(() => decodeImage(buf, 'x.img'));
    expect(e.message).toMatch(why);
    expect(e.message).toMatch(/^x\.img: .* at offset \d+ \(0x[0-9a-f]+\)$/);
    expect(e.details.offset).toEqual(expect.any(Number));
  });

  it('bounds nesting: a cgroup directory tree 100 levels deep is refused', () => {
    let dir = bytes('0a0161'); // cgroup_dir_entry { dir_name: "a" }
    for (let i = 0; i < 100; i++) dir = Buffer.concat([bytes('0a0161 12'), varint(dir.length), dir]); // children
    const controller = Buffer.concat([bytes('12'), varint(dir.length), dir]); // cg_controller_entry.dirs
    const entry = Buffer.concat([bytes('12'), varint(controller.length), controller]); // cgroup_entry.controllers
    expect(invalid(() => decodeImage(common('CGROUP', entry))).message).toMatch(/nested deeper than 64/);
  });
});

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}
