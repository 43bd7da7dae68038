import { spawnSync } from 'node:child_process';
import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import { Header, Parser, Pax, type HeaderData } from 'tar';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { compressionForPath, packImage, packImageToFile, sniffCompression, unpackImage, type Compression } from '../../../src/image/archive.js';
import { blake3File } from '../../../src/image/checksum.js';

let root: string;
let dest: string;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cedana-archive-test-'));
  dest = join(root, 'dest');
  await mkdir(dest, { mode: 0o700 });
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

// ---- building tar streams by hand -------------------------------------------------------------

interface Entry extends HeaderData {
  body?: Buffer | string;
  /** Raw extra blocks written before this entry's header (e.g. a pax header). */
  before?: Buffer;
}

function pad512(b: Buffer): Buffer {
  const rem = b.length % 512;
  return rem === 0 ? b : Buffer.concat([b, Buffer.alloc(512 - rem)]);
}

function tarHeader(e: HeaderData): Buffer {
  const h = new Header({ mode: 0o644, uid: 0, gid: 0, mtime: new Date(1_700_000_000_000), uname: 'root', gname: 'root', type: 'File', size: 0, ...e });
  const block = Buffer.alloc(512);
  h.encode(block, 0);
  return block;
}

/** A tar archive of the given entries, with the end-of-archive marker. */
function tarOf(entries: Entry[]): Buffer {
  const parts: Buffer[] = [];
  for (const { body, before, ...h } of entries) {
    const data = body === undefined ? Buffer.alloc(0) : Buffer.from(body);
    if (before) parts.push(before);
    parts.push(tarHeader({ size: h.type === undefined || h.type === 'File' ? data.length : 0, ...h }));
    if (data.length > 0) parts.push(pad512(data));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

/** A ustar header written field by field, with its checksum computed here (independent of node-tar). */
function rawUstarHeader(name: string, size: number, typeflag: string, linkname = ''): Buffer {
  const b = Buffer.alloc(512);
  const put = (off: number, len: number, s: string): void => void b.write(s, off, len, 'latin1');
  const oct = (off: number, len: number, n: number): void => put(off, len, `${n.toString(8).padStart(len - 1, '0')}\0`);
  put(0, 100, name);
  oct(100, 8, 0o644);
  oct(108, 8, 0);
  oct(116, 8, 0);
  oct(124, 12, size);
  oct(136, 12, 1_700_000_000);
  put(148, 8, '        ');
  put(156, 1, typeflag);
  put(157, 100, linkname);
  put(257, 6, 'ustar\0');
  put(263, 2, '00');
  let sum = 0;
  for (const x of b) sum += x;
  put(148, 8, `${sum.toString(8).padStart(6, '0')}\0 `);
  return b;
}

const good = (): Entry[] => [
  { path: 'cedana.json', body: '{"format":"cedana-image"}' },
  { path: 'inventory.img', body: Buffer.from([1, 2, 3, 4]) },
];

async function unpackBuffer(buf: Buffer): Promise<void> {
  await unpackImage(Readable.from([buf]), dest);
}

async function refusal(buf: Buffer): Promise<CedanaError> {
  const err = await unpackBuffer(buf).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'unpackImage accepted a bad archive').toBeInstanceOf(CedanaError);
  expect((err as CedanaError).code).toBe('IMAGE_INVALID');
  return err as CedanaError;
}

/** Every path below dir (relative), not following links. */
async function tree(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const ent of await readdir(join(dir, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${ent.name}` : ent.name;
    out.push(p);
    if (ent.isDirectory()) out.push(...(await tree(dir, p)));
  }
  return out.sort();
}

/** Nothing appeared next to dest, and dest holds no link of any kind. */
async function expectContained(): Promise<void> {
  expect(await readdir(root)).toEqual(['dest']);
  for (const p of await tree(dest)) {
    const st = await lstat(join(dest, p));
    expect(st.isFile() || st.isDirectory(), `${p} is a regular file or directory`).toBe(true);
    if (st.isFile()) expect(st.nlink, `${p} has one link`).toBe(1);
  }
}

// ---- refusals ---------------------------------------------------------------------------------

describe('unpackImage refuses unsafe or damaged archives', () => {
  it('a sane hand-built archive unpacks (the helpers themselves are right)', async () => {
    await unpackBuffer(tarOf(good()));
    expect(await tree(dest)).toEqual(['cedana.json', 'inventory.img']);
    expect(await readFile(join(dest, 'inventory.img'))).toEqual(Buffer.from([1, 2, 3, 4]));
  });

  it("an entry '../evil'", async () => {
    const e = await refusal(tarOf([...good(), { path: '../evil', body: 'pwned' }]));
    expect(e.message).toContain('"../evil"');
    expect(e.message).toMatch(/escapes the image directory/);
    expect(e.details.entry).toBe('../evil');
    await expectContained();
  });

  it("an entry 'a/../../evil' hidden inside a directory", async () => {
    await refusal(tarOf([{ path: 'a/../../evil', body: 'pwned' }]));
    await expectContained();
  });

  it("an entry '../evil' as the very first entry", async () => {
    await refusal(tarOf([{ path: '../evil', body: 'pwned' }, ...good()]));
    await expectContained();
    expect(await readdir(dest)).not.toContain('inventory.img');
  });

  it('an absolute path', async () => {
    const target = join(root, 'abs-x');
    const e = await refusal(tarOf([...good(), { path: target, body: 'pwned' }]));
    expect(e.message).toMatch(/absolute path/);
    await expectContained();
    await expect(stat(target)).rejects.toThrow();
  });

  it("an absolute path '/tmp/x' in a header built by hand", async () => {
    const name = `/tmp/cedana-evil-${process.pid}-${Date.now()}`;
    const buf = Buffer.concat([rawUstarHeader(name, 5, '0'), pad512(Buffer.from('pwned')), Buffer.alloc(1024)]);
    const e = await refusal(buf);
    expect(e.message).toMatch(/absolute path/);
    await expect(stat(name)).rejects.toThrow();
    await expectContained();
  });

  it('a symlink entry', async () => {
    const e = await refusal(tarOf([...good(), { path: 'link', type: 'SymbolicLink', linkpath: '/etc/passwd' }]));
    expect(e.message).toMatch(/SymbolicLink entries are not allowed/);
    expect(e.message).toContain('/etc/passwd');
    await expectContained();
  });

  it('a symlink followed by a file written through it', async () => {
    await refusal(tarOf([{ path: 'link', type: 'SymbolicLink', linkpath: root }, { path: 'link/owned', body: 'pwned' }]));
    await expectContained();
  });

  it('a hardlink entry', async () => {
    const outside = join(root, 'outside');
    await writeFile(outside, 'secret');
    const e = await refusal(tarOf([...good(), { path: 'hard', type: 'Link', linkpath: outside }]));
    expect(e.message).toMatch(/Link entries are not allowed/);
    // the outside file is still the only link to its data
    expect((await stat(outside)).nlink).toBe(1);
    await rm(outside);
    await expectContained();
  });

  it('a device node and a fifo', async () => {
    await refusal(tarOf([{ path: 'dev', type: 'CharacterDevice', devmaj: 1, devmin: 3 }]));
    await refusal(tarOf([{ path: 'fifo', type: 'FIFO' }]));
    await expectContained();
  });

  it('a duplicate entry, which may not overwrite the first', async () => {
    const e = await refusal(tarOf([...good(), { path: 'inventory.img', body: 'replacement' }]));
    expect(e.message).toMatch(/duplicate entry/);
    expect(await readFile(join(dest, 'inventory.img'))).toEqual(Buffer.from([1, 2, 3, 4]));
    await expectContained();
  });

  it("a duplicate spelled './inventory.img'", async () => {
    await refusal(tarOf([...good(), { path: './inventory.img', body: 'replacement' }]));
    expect(await readFile(join(dest, 'inventory.img'))).toEqual(Buffer.from([1, 2, 3, 4]));
  });

  it("a pax header that renames a harmless entry to '../evil'", async () => {
    const pax = new Pax({ path: '../evil' }).encode();
    await refusal(tarOf([...good(), { path: 'harmless.img', body: 'pwned', before: pax }]));
    await expectContained();
  });

  it('a stream that is not a tar archive', async () => {
    const e = await refusal(Buffer.from('this is certainly not a tar archive\n'.repeat(40)));
    expect(e.message).toMatch(/archive is damaged|not a tar archive/);
    await expectContained();
  });

  it('random bytes', async () => {
    const bytes = Buffer.alloc(4096);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919 + 13) % 251;
    await refusal(bytes);
  });

  it('an empty stream', async () => {
    const e = await refusal(Buffer.alloc(0));
    expect(e.message).toMatch(/empty|damaged|not a tar/);
    await expectContained();
    expect(await readdir(dest)).toEqual([]);
  });

  it('an archive with only the end-of-archive marker', async () => {
    const e = await refusal(Buffer.alloc(1024));
    expect(e.message).toMatch(/empty|not a tar|damaged/);
  });

  it('a header whose checksum is wrong', async () => {
    const buf = tarOf(good());
    buf[10] = 0x41; // inside the first entry's name, after the checksum was computed
    await refusal(buf);
  });

  it('a truncated archive (file body cut short)', async () => {
    const buf = tarOf([{ path: 'inventory.img', body: Buffer.alloc(5000, 7) }]);
    await refusal(buf.subarray(0, 512 + 1024));
    await expectContained();
  });

  it('a damaged gzip stream', async () => {
    const gz = gzipSync(tarOf([...good(), { path: 'pages-1.img', body: Buffer.alloc(20_000, 9) }]));
    const broken = Buffer.from(gz);
    for (let i = 20; i < 40; i++) broken[i] = broken[i]! ^ 0xff;
    const e = await refusal(broken);
    expect(e.message).toMatch(/gzip|damaged/);
    await expectContained();
  });

  it('a truncated gzip stream', async () => {
    const gz = gzipSync(tarOf([...good(), { path: 'pages-1.img', body: Buffer.alloc(20_000, 9) }]));
    await refusal(gz.subarray(0, Math.floor(gz.length / 2)));
  });

  it('a gzip stream holding something that is not tar', async () => {
    await refusal(gzipSync(Buffer.from('hello, not tar\n'.repeat(100))));
  });

  it('a damaged zstd stream', async () => {
    const z = spawnSync('zstd', ['-q', '-c'], { input: tarOf([...good(), { path: 'p.img', body: Buffer.alloc(50_000, 3) }]) });
    expect(z.status).toBe(0);
    const broken = Buffer.from(z.stdout);
    for (let i = 8; i < broken.length - 4; i += 3) broken[i] = broken[i]! ^ 0x5a;
    await refusal(broken);
    await expectContained();
  });

  // These once left unpackImage waiting forever (a directory entry whose mkdir failed was never
  // resumed) or threw a raw ENOTDIR; the short timeout makes a hang fail fast.
  it('a file and a directory of the same name', async () => {
    const fresh = async (): Promise<void> => {
      await rm(dest, { recursive: true });
      await mkdir(dest);
    };
    expect((await refusal(tarOf([{ path: 'x', body: 'file' }, { path: 'x/y.img', body: 'under a file' }]))).message).toMatch(
      /"x\/y.img": a file of the archive is used as a directory/,
    );
    await fresh();
    expect((await refusal(tarOf([{ path: 'x', body: 'file' }, { path: 'x/y/z.img', body: 'under a file' }]))).message).toMatch(
      /"x\/y\/z.img": a file of the archive is used as a directory/,
    );
    await fresh();
    expect((await refusal(tarOf([{ path: 'x/y/z.img', body: 'deep' }, { path: 'x/y', body: 'file over a directory' }]))).message).toMatch(/"x\/y": duplicate entry/);
    await expectContained();
  }, 10_000);

  it('a directory entry over a file entry', async () => {
    expect((await refusal(tarOf([{ path: 'x', body: 'file' }, { path: 'x/', type: 'Directory' }, { path: 'y.img', body: 'after' }]))).message).toMatch(
      /duplicate entry/,
    );
    await rm(dest, { recursive: true });
    await mkdir(dest);
    expect((await refusal(tarOf([{ path: 'x', body: 'file' }, { path: 'x/y/', type: 'Directory' }]))).message).toMatch(/used as a directory/);
    await expectContained();
  }, 10_000);

  it('directory entries themselves are fine', async () => {
    await unpackBuffer(tarOf([{ path: './', type: 'Directory' }, { path: 'sub/', type: 'Directory' }, { path: 'sub/a.img', body: 'a' }, ...good()]));
    expect(await tree(dest)).toEqual(['cedana.json', 'inventory.img', 'sub', 'sub/a.img']);
    expect((await stat(join(dest, 'sub'))).mode & 0o777).toBe(0o700);
  });
});

// ---- round trip -------------------------------------------------------------------------------

async function makeImageDir(): Promise<{ dir: string; files: Record<string, Buffer> }> {
  const dir = join(root, 'src');
  await mkdir(join(dir, 'sub'), { recursive: true });
  const big = Buffer.alloc(3 * 1024 * 1024 + 17);
  for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
  const files: Record<string, Buffer> = {
    'cedana.json': Buffer.from('{"format":"cedana-image","formatVersion":1}\n'),
    'inventory.img': Buffer.from([0x40, 0x59, 0x10, 0x55, 0, 0, 0, 0]),
    'empty.img': Buffer.alloc(0),
    'pages-1.img': big,
    'sub/nested.img': Buffer.from('nested'),
  };
  for (const [name, data] of Object.entries(files)) {
    await writeFile(join(dir, name), data);
    await chmod(join(dir, name), 0o755);
  }
  return { dir, files };
}

async function packToFile(dir: string, names: string[], compression: Compression, file: string): Promise<void> {
  await packImage(dir, names, createWriteStream(file), compression);
}

describe('packImage and unpackImage round trip', () => {
  it.each<Compression>(['none', 'gzip', 'zstd'])('%s', async (compression) => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, `img.${compression}`);
    const names = Object.keys(files);
    await packToFile(dir, names, compression, archive);

    const head = (await readFile(archive)).subarray(0, 4);
    expect(sniffCompression(head)).toBe(compression);

    const out = join(root, 'out');
    await mkdir(out, { mode: 0o700 });
    await unpackImage(createReadStream(archive), out);

    expect(await tree(out)).toEqual(['cedana.json', 'empty.img', 'inventory.img', 'pages-1.img', 'sub', 'sub/nested.img']);
    for (const [name, data] of Object.entries(files)) {
      const p = join(out, name);
      expect((await readFile(p)).equals(data), `${name} has the same bytes`).toBe(true);
      expect((await stat(p)).mode & 0o777, `${name} is private`).toBe(0o600);
    }
  });

  it('gives the size and BLAKE3 of every file it extracted, as hashed from disk', async () => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, 'img.tar.zst');
    await packToFile(dir, Object.keys(files), 'zstd', archive);
    const out = join(root, 'out');
    await mkdir(out, { mode: 0o700 });
    const digests = await unpackImage(createReadStream(archive), out);
    expect([...digests.keys()].sort()).toEqual(Object.keys(files).sort());
    for (const name of Object.keys(files)) {
      expect(digests.get(name), name).toEqual({ size: files[name]!.length, blake3: await blake3File(join(out, name)) });
    }
  });

  it('a .tar.zst it writes is read by the system tar, and one the system writes is read by it', async () => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, 'img.tar.zst');
    await packToFile(dir, Object.keys(files), 'zstd', archive);
    const byTar = join(root, 'by-tar');
    await mkdir(byTar);
    expect(spawnSync('tar', ['--zstd', '-xf', archive, '-C', byTar]).status).toBe(0);
    for (const [name, data] of Object.entries(files)) expect((await readFile(join(byTar, name))).equals(data), name).toBe(true);
    const remade = join(root, 'remade.tar.zst');
    expect(spawnSync('sh', ['-c', `tar -c -C "${byTar}" . | zstd -q -c > "${remade}"`]).status).toBe(0);
    const out = join(root, 'out');
    await mkdir(out, { mode: 0o700 });
    await unpackImage(createReadStream(remade), out);
    for (const [name, data] of Object.entries(files)) expect((await readFile(join(out, name))).equals(data), name).toBe(true);
  });

  it.each<Compression>(['none', 'gzip', 'zstd'])('packImageToFile (%s) writes a private archive; read back by path (zstd reads the file itself)', async (compression) => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, `file.${compression}`);
    await packImageToFile(dir, Object.keys(files), archive, compression).done;
    expect((await stat(archive)).mode & 0o777).toBe(0o600);
    expect(sniffCompression((await readFile(archive)).subarray(0, 4))).toBe(compression);
    const out = join(root, 'out');
    await mkdir(out, { mode: 0o700 });
    const digests = await unpackImage(createReadStream(archive), out, { path: archive });
    for (const [name, data] of Object.entries(files)) {
      expect((await readFile(join(out, name))).equals(data), name).toBe(true);
      expect(digests.get(name)?.size).toBe(data.length);
    }
  });

  it('packImageToFile (zstd, framed by GNU tar) keeps the order given and names taken literally: a leading dash, spaces, a newline, non-ASCII, a long nested path', async () => {
    const dir = join(root, 'odd');
    const long = `shipped/${'d'.repeat(120)}/${'f'.repeat(120)}.txt`;
    const files: Record<string, Buffer> = {
      'cedana.json': Buffer.from('{"first":true}'),
      '-rf': Buffer.from('not an option'),
      'shipped/a b/c\nd': Buffer.from('newline'),
      'shipped/été.log': Buffer.from('unicode'),
      [long]: Buffer.alloc(70_000, 7),
      'pages-1.img': Buffer.alloc(1 << 20, 1),
    };
    for (const [name, data] of Object.entries(files)) {
      await mkdir(join(dir, name, '..'), { recursive: true });
      await writeFile(join(dir, name), data);
    }
    const order = Object.keys(files);
    const archive = join(root, 'odd.tar.zst');
    await packImageToFile(dir, order, archive, 'zstd').done;
    const names: string[] = [];
    const parser = new Parser({ onReadEntry: (e) => void (names.push(e.path), e.resume()) });
    parser.end(spawnSync('zstd', ['-dc', archive]).stdout); // parsed as it is written
    expect(names).toEqual(order);
    const out = join(root, 'odd-out');
    await mkdir(out, { mode: 0o700 });
    const digests = await unpackImage(createReadStream(archive), out, { path: archive });
    for (const [name, data] of Object.entries(files)) {
      expect((await readFile(join(out, name))).equals(data), name).toBe(true);
      expect(digests.get(name)?.blake3, name).toBe(await blake3File(join(dir, name)));
    }
  });

  it('packImageToFile stopped midway rejects (zstd killed)', async () => {
    const { dir, files } = await makeImageDir();
    const w = packImageToFile(dir, Object.keys(files), join(root, 'stopped.tar.zst'), 'zstd');
    w.stop();
    await expect(w.done).rejects.toBeInstanceOf(Error);
  });

  it('a truncated .tar.zst is refused, also read by path', async () => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, 'whole.tar.zst');
    await packToFile(dir, Object.keys(files), 'zstd', archive);
    const cut = join(root, 'cut.tar.zst');
    const buf = await readFile(archive);
    await writeFile(cut, buf.subarray(0, buf.length >> 1));
    const err = await unpackImage(createReadStream(cut), dest, { path: cut }).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(CedanaError);
    expect((err as CedanaError).code).toBe('IMAGE_INVALID');
  });

  it('a truncated .tar.zst is refused', async () => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, 'img.tar.zst');
    await packToFile(dir, Object.keys(files), 'zstd', archive);
    const buf = await readFile(archive);
    await refusal(buf.subarray(0, buf.length >> 1));
  });

  it('the manifest comes first in the archive, in the given order', async () => {
    const { dir } = await makeImageDir();
    const archive = join(root, 'img.tar');
    await packToFile(dir, ['cedana.json', 'inventory.img'], 'none', archive);
    const buf = await readFile(archive);
    expect(buf.subarray(0, 11).toString()).toBe('cedana.json');
  });

  it('unpacks a stream that arrives one byte at a time at first', async () => {
    const { dir, files } = await makeImageDir();
    const archive = join(root, 'img.tar.gz');
    await packToFile(dir, ['cedana.json', 'inventory.img'], 'gzip', archive);
    const buf = await readFile(archive);
    const chunks = [buf.subarray(0, 1), buf.subarray(1, 2), buf.subarray(2, 3), buf.subarray(3)];
    await unpackImage(Readable.from(chunks), dest);
    expect(await readFile(join(dest, 'inventory.img'))).toEqual(files['inventory.img']);
  });

  it('packs into a stream it does not end when asked (stdout)', async () => {
    const { dir, files } = await makeImageDir();
    const sink = new PassThrough();
    const chunks: Buffer[] = [];
    sink.on('data', (c: Buffer) => chunks.push(c));
    await packImage(dir, ['cedana.json', 'inventory.img'], sink, 'zstd', false);
    expect(sink.writableEnded).toBe(false);
    sink.end();
    await finished(sink);
    await unpackBuffer(Buffer.concat(chunks));
    expect(await readFile(join(dest, 'cedana.json'))).toEqual(files['cedana.json']);
  });
});

describe('compressionForPath', () => {
  it.each([
    ['/a/b.tar', 'none'],
    ['b.tar.gz', 'gzip'],
    ['b.tgz', 'gzip'],
    ['b.tar.zst', 'zstd'],
    ['b.tar.zstd', 'zstd'],
    ['b.tzst', 'zstd'],
    ['b', undefined],
    ['b.gz', undefined],
    ['b.tar.xz', undefined],
    ['b.tar/', undefined],
  ])('%s → %s', (p, want) => {
    expect(compressionForPath(p)).toBe(want);
  });
});

describe('sniffCompression', () => {
  it('recognises gzip and zstd magic, anything else is plain', () => {
    expect(sniffCompression(Buffer.from([0x1f, 0x8b, 8, 0]))).toBe('gzip');
    expect(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe('zstd');
    expect(sniffCompression(Buffer.from('ceda'))).toBe('none');
    expect(sniffCompression(Buffer.from([0x1f]))).toBe('none');
    expect(sniffCompression(Buffer.from([0x28, 0xb5, 0x2f]))).toBe('none');
    expect(sniffCompression(Buffer.alloc(0))).toBe('none');
  });
});

// ---- files in parts (pages streamed into an archive) ------------------------------------------

describe('files that arrive in parts (.cedana-parts/NAME/K, written as CRIU streams the pages)', () => {
  const part = (name: string, k: number, body: Buffer | string): Entry => ({ path: `.cedana-parts/${name}/${String(k).padStart(8, '0')}`, body });
  const bytes = (n: number, seed: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) % 256));

  it('are joined in order into the file, hashed as one (and an empty first part makes an empty file)', async () => {
    const a = bytes(70_000, 1);
    const b = bytes(513, 2);
    const c = bytes(4096, 3);
    const digests = await unpackImage(Readable.from([tarOf([part('pages-65537.img', 0, a), part('pages-65537.img', 1, b), part('sub/x.img', 0, ''), part('pages-65537.img', 2, c), ...good()])]), dest);
    expect(await tree(dest)).toEqual(['cedana.json', 'inventory.img', 'pages-65537.img', 'sub', 'sub/x.img']);
    const joined = Buffer.concat([a, b, c]);
    expect(await readFile(join(dest, 'pages-65537.img'))).toEqual(joined);
    expect(digests.get('pages-65537.img')).toEqual({ size: joined.length, blake3: await blake3File(join(dest, 'pages-65537.img')) });
    expect(digests.get('sub/x.img')).toMatchObject({ size: 0 });
    expect((await stat(join(dest, 'pages-65537.img'))).mode & 0o777).toBe(0o600);
  });

  it('written by TarOut, through zstd into a file, read back the same', async () => {
    const { openTarOut } = await import('../../../src/image/archive.js');
    const src = join(root, 'src');
    await mkdir(src);
    await writeFile(join(src, 'inventory.img'), 'inv');
    await writeFile(join(src, 'cedana.json'), '{}');
    const path = join(root, 'a.tar.zst');
    const t = await openTarOut({ path, compression: 'zstd' });
    const chunks = [bytes(1 << 20, 5), bytes(12_345, 6)];
    for (const c of chunks) await t.out.part('pages-65537.img', Buffer.from(c));
    const n = await t.out.finish(src, ['inventory.img', 'cedana.json'], true);
    await t.done;
    expect(n).toBeGreaterThan((1 << 20) + 12_345);
    const digests = await unpackImage(createReadStream(path), dest, { path });
    expect(await readFile(join(dest, 'pages-65537.img'))).toEqual(Buffer.concat(chunks));
    expect(await readFile(join(dest, 'inventory.img'), 'utf8')).toBe('inv');
    expect([...digests.keys()].sort()).toEqual(['cedana.json', 'inventory.img', 'pages-65537.img']);
  });

  it('a part out of order, a part before the first, a part of a file also given whole, a part of an unsafe name: refused', async () => {
    let e = await refusal(tarOf([part('pages-1.img', 0, 'a'), part('pages-1.img', 2, 'c'), ...good()]));
    expect(e.message).toMatch(/part 2 of pages-1\.img where part 1 was due/);
    await rm(dest, { recursive: true });
    await mkdir(dest);
    e = await refusal(tarOf([part('pages-1.img', 1, 'b'), ...good()]));
    expect(e.message).toMatch(/before the first part/);
    await rm(dest, { recursive: true });
    await mkdir(dest);
    e = await refusal(tarOf([...good(), part('inventory.img', 0, 'x')]));
    expect(e.message).toMatch(/duplicate entry/);
    expect(await readFile(join(dest, 'inventory.img'))).toEqual(Buffer.from([1, 2, 3, 4]));
    await rm(dest, { recursive: true });
    await mkdir(dest);
    e = await refusal(tarOf([part('pages-1.img', 0, 'a'), ...good(), { path: 'pages-1.img', body: 'whole' }]));
    expect(e.message).toMatch(/duplicate entry/);
    await rm(dest, { recursive: true });
    await mkdir(dest);
    await refusal(tarOf([part('.cedana-parts/x', 0, 'a'), ...good()]));
    await expectContained();
  });
});
