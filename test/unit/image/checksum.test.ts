import { createHash } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, rm, symlink, truncate, unlink, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { blake3 } from '@napi-rs/blake-hash';
import {
  blake3File,
  checksumDir,
  checksumDirForTransfer,
  GrowingFileHash,
  hashBytes,
  hashFile,
  listImageFiles,
  sha256File,
  verifyDir,
} from '../../../src/image/checksum.js';
import type { FileEntry, Manifest } from '../../../src/image/manifest.js';

let dir: string;

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');
const b3 = (b: Buffer): string => blake3(b).toString('hex');
/** BLAKE3's published test inputs: bytes 0, 1, …, 250, 0, 1, … */
const vectorInput = (n: number): Buffer => Buffer.from(Array.from({ length: n }, (_, i) => i % 251));

const FILES: Record<string, Buffer> = {
  'inventory.img': Buffer.from([0x40, 0x59, 0x10, 0x55, 1, 2, 3, 4]),
  'core-4242.img': Buffer.from('core'.repeat(100)),
  'pages-1.img': Buffer.alloc(2 * 1024 * 1024 + 5, 0xab),
  'empty.img': Buffer.alloc(0),
  'sub/x.img': Buffer.from('nested'),
};

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cedana-checksum-test-'));
  await mkdir(join(dir, 'sub'));
  for (const [name, data] of Object.entries(FILES)) await writeFile(join(dir, name), data);
  await writeFile(join(dir, 'cedana.json'), '{}');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function manifest(): Promise<Manifest> {
  return { files: await checksumDir(dir) } as Manifest;
}

/** The manifest an image of format 1 (cedana before BLAKE3) has: sha256 of every file. */
async function manifestV1(): Promise<Manifest> {
  const files: Record<string, FileEntry> = {};
  for (const [name, data] of Object.entries(FILES)) files[name] = { size: data.length, sha256: sha(data) };
  return { formatVersion: 1, files } as Manifest;
}

async function failure(m: Manifest): Promise<CedanaError> {
  const err = await verifyDir(dir, m).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'verifyDir accepted a bad image').toBeInstanceOf(CedanaError);
  expect((err as CedanaError).code).toBe('IMAGE_INVALID');
  return err as CedanaError;
}

describe('sha256File', () => {
  it('matches a sha256 computed in memory, also for large and empty files', async () => {
    expect(await sha256File(join(dir, 'pages-1.img'))).toBe(sha(FILES['pages-1.img']!));
    expect(await sha256File(join(dir, 'empty.img'))).toBe('e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });
});

describe('blake3File', () => {
  // From BLAKE3's published test vectors (test_vectors.json: input lengths 0 … 102400).
  it.each([
    [0, 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262'],
    [1, '2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213'],
    [1024, '42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7'],
    [1025, 'd00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444'],
    [102400, 'bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085'],
  ])('is BLAKE3: the published digest of %i bytes', async (n, want) => {
    await writeFile(join(dir, 'vector'), vectorInput(n));
    expect(await blake3File(join(dir, 'vector'))).toBe(want);
    expect(hashBytes('blake3', vectorInput(n))).toBe(want);
  });

  it('a file larger than one read (4 MiB, read through two buffers) hashes as its bytes do in memory', async () => {
    const big = Buffer.alloc(9 * 1024 * 1024 + 123);
    for (let i = 0; i + 4 <= big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    await writeFile(join(dir, 'big'), big);
    expect(await blake3File(join(dir, 'big'))).toBe(b3(big));
    expect(await sha256File(join(dir, 'big'))).toBe(sha(big));
  });

  it('hashFile gives several digests from one read, each as its own function does', async () => {
    const p = join(dir, 'pages-1.img');
    expect(await hashFile(p, ['blake3', 'sha256'])).toEqual([b3(FILES['pages-1.img']!), sha(FILES['pages-1.img']!)]);
    expect(await hashFile(p, ['sha256'], 10)).toEqual([sha(FILES['pages-1.img']!)]);
  });

  it('hashFile on one core (synchronous reads in slices) gives the same digests, at every size around its read size', async () => {
    for (const size of [0, 1, 4095, 256 * 1024 - 1, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024 + 7]) {
      const data = Buffer.alloc(size);
      for (let i = 0; i + 4 <= size; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
      const p = join(dir, `one-core-${size}`);
      await writeFile(p, data);
      expect(await hashFile(p, ['blake3', 'sha256'], size, true)).toEqual([b3(data), sha(data)]);
      expect(await hashFile(p, ['blake3'], undefined, true)).toEqual([b3(data)]);
    }
  });
});

describe('GrowingFileHash', () => {
  it('hashes a file while it is appended to, as the whole file hashes at the end', async () => {
    const p = join(dir, 'pages-9.img');
    const parts = [Buffer.alloc(5 << 20, 1), Buffer.alloc(0), Buffer.alloc(4097, 2), Buffer.alloc(3 << 20, 3)];
    await writeFile(p, Buffer.alloc(0));
    const h = new GrowingFileHash(p);
    for (const part of parts) {
      await appendFile(p, part);
      await h.catchUp();
    }
    await appendFile(p, 'tail');
    const whole = Buffer.concat([...parts, Buffer.from('tail')]);
    expect(await h.finish()).toEqual({ size: whole.length, blake3: b3(whole) });
  });

  it('a file rewritten under it (not only appended) is hashed again from the start', async () => {
    const p = join(dir, 'pages-8.img');
    await writeFile(p, Buffer.alloc(100_000, 7));
    const h = new GrowingFileHash(p);
    await h.catchUp();
    await writeFile(p, Buffer.alloc(50_000, 8));
    expect(await h.finish()).toEqual({ size: 50_000, blake3: b3(Buffer.alloc(50_000, 8)) });
  });
});

describe('listImageFiles', () => {
  it('lists regular files recursively, sorted; reports others', async () => {
    await symlink('/etc/passwd', join(dir, 'sub/link'));
    const { files, others } = await listImageFiles(dir);
    expect(files).toEqual(['cedana.json', 'core-4242.img', 'empty.img', 'inventory.img', 'pages-1.img', 'sub/x.img']);
    expect(others).toEqual(['sub/link']);
  });
});

describe('checksumDir', () => {
  it('has size and BLAKE3 of every file except the manifest', async () => {
    const files = await checksumDir(dir);
    expect(Object.keys(files).sort()).toEqual(Object.keys(FILES).sort());
    for (const [name, data] of Object.entries(FILES)) {
      expect(files[name]).toEqual({ size: data.length, blake3: b3(data) });
    }
    expect(files['pages-1.img']!.blake3).toBe('3004718e3dd8bb9fdfc2536ef0043e8ca05fc8cde65ab1104a485a5811a96045'); // hash-wasm's BLAKE3
    expect(files).not.toHaveProperty('cedana.json');
  });

  it('takes the entries it is given as they are', async () => {
    const known = { 'pages-1.img': { size: FILES['pages-1.img']!.length, blake3: 'f'.repeat(64) } };
    expect((await checksumDir(dir, known))['pages-1.img']).toEqual(known['pages-1.img']);
  });
});

describe('checksumDirForTransfer', () => {
  it('the manifest entries (BLAKE3), and a sha256sum -c list of the same files that coreutils accepts', async () => {
    const { files, sha256sums } = await checksumDirForTransfer(dir);
    expect(files).toEqual(await checksumDir(dir));
    const lines = sha256sums.split('\n');
    expect(lines.pop()).toBe('');
    expect(lines.sort()).toEqual(Object.entries(FILES).map(([name, data]) => `${sha(data)}  ${name}`).sort());
    await writeFile(join(dir, 'cedana.sha256'), sha256sums);
    const { execa } = await import('execa');
    const ok = await execa('sha256sum', ['-c', '--quiet', '--strict', 'cedana.sha256'], { cwd: dir, reject: false });
    expect(ok.exitCode, ok.stderr).toBe(0);
    await writeFile(join(dir, 'core-4242.img'), 'core'.repeat(99) + 'corf');
    const bad = await execa('sha256sum', ['-c', '--quiet', '--strict', 'cedana.sha256'], { cwd: dir, reject: false });
    expect(bad.exitCode).toBe(1);
    expect(bad.stdout).toContain('core-4242.img: FAILED');
  });
});

describe('verifyDir', () => {
  it('a good image passes', async () => {
    await expect(verifyDir(dir, await manifest())).resolves.toBeUndefined();
  });

  it('an image of format 1 (sha256 entries) passes, and is checked with sha256', async () => {
    const m = await manifestV1();
    await expect(verifyDir(dir, m)).resolves.toBeUndefined();
    await writeFile(join(dir, 'sub/x.img'), 'nestee');
    const e = await failure(m);
    expect(e.details).toEqual({ corrupt: ['sub/x.img (checksum mismatch)'] });
  });

  it('an entry is checked with the algorithm it names: a BLAKE3 digest given as sha256 does not hold', async () => {
    const m = await manifest();
    const f = m.files['inventory.img']!;
    m.files['inventory.img'] = { size: f.size, sha256: f.blake3! };
    const e = await failure(m);
    expect(e.details).toEqual({ corrupt: ['inventory.img (checksum mismatch)'] });
  });

  it('digests already known (hashed while extracted) are compared without reading the file; a wrong one fails', async () => {
    const m = await manifest();
    const pages = m.files['pages-1.img']!;
    // The file on disk is changed, but the known digest (taken as the bytes were written) is what counts.
    await writeFile(join(dir, 'pages-1.img'), Buffer.alloc(pages.size, 1));
    await expect(verifyDir(dir, m, undefined, new Map([['pages-1.img', { size: pages.size, blake3: pages.blake3! }]]))).resolves.toBeUndefined();
    const e = await (verifyDir(dir, m, undefined, new Map([['pages-1.img', { size: pages.size, blake3: '0'.repeat(64) }]])).then(() => undefined, (x: unknown) => x)) as CedanaError;
    expect(e.details).toEqual({ corrupt: ['pages-1.img (checksum mismatch)'] });
    // A known digest of another size is not used: the file is hashed (and now differs).
    expect((await failure(m)).details).toEqual({ corrupt: ['pages-1.img (checksum mismatch)'] });
    const other = await (verifyDir(dir, m, undefined, new Map([['pages-1.img', { size: pages.size + 1, blake3: pages.blake3! }]])).then(() => undefined, (x: unknown) => x)) as CedanaError;
    expect(other.details).toEqual({ corrupt: ['pages-1.img (checksum mismatch)'] });
  });

  it('a changed manifest does not matter (it is not listed)', async () => {
    const m = await manifest();
    await writeFile(join(dir, 'cedana.json'), '{"changed": true}');
    await expect(verifyDir(dir, m)).resolves.toBeUndefined();
  });

  it('a flipped byte is a checksum mismatch', async () => {
    const m = await manifest();
    const p = join(dir, 'pages-1.img');
    const data = await readFile(p);
    data[1_000_000] = data[1_000_000]! ^ 1;
    await writeFile(p, data);
    const e = await failure(m);
    expect(e.message).toBe('image is corrupt or tampered with: pages-1.img (checksum mismatch)');
    expect(e.details).toEqual({ corrupt: ['pages-1.img (checksum mismatch)'] });
    expect(e.hint).toMatch(/do not restore it/);
  });

  it('a truncated file is a size mismatch', async () => {
    const m = await manifest();
    await truncate(join(dir, 'core-4242.img'), 10);
    const e = await failure(m);
    expect(e.message).toBe('image is corrupt or tampered with: core-4242.img (size 10, expected 400)');
  });

  it('several damaged files are all named, sorted', async () => {
    const m = await manifest();
    await truncate(join(dir, 'pages-1.img'), 0);
    await writeFile(join(dir, 'inventory.img'), Buffer.from([0x40, 0x59, 0x10, 0x55, 1, 2, 3, 5]));
    const e = await failure(m);
    expect(e.details.corrupt).toEqual(['inventory.img (checksum mismatch)', 'pages-1.img (size 0, expected 2097157)']);
  });

  it('a missing file', async () => {
    const m = await manifest();
    await unlink(join(dir, 'sub/x.img'));
    const e = await failure(m);
    expect(e.message).toBe('image is incomplete: missing sub/x.img');
    expect(e.details).toEqual({ missing: ['sub/x.img'] });
  });

  it('many missing files are summarised', async () => {
    const m = await manifest();
    for (let i = 0; i < 7; i++) m.files[`gone-${i}.img`] = { size: 1, blake3: '0'.repeat(64) };
    const e = await failure(m);
    expect(e.message).toBe('image is incomplete: missing gone-0.img, gone-1.img, gone-2.img, gone-3.img, gone-4.img and 2 more');
    expect(e.details.missing).toHaveLength(7);
  });

  it('an extra file', async () => {
    const m = await manifest();
    await writeFile(join(dir, 'sub/added.img'), 'surprise');
    const e = await failure(m);
    expect(e.message).toBe('image contains files its manifest does not list: sub/added.img');
    expect(e.details).toEqual({ extra: ['sub/added.img'] });
  });

  it('a symlink inside the image', async () => {
    const m = await manifest();
    await symlink('/etc/shadow', join(dir, 'sub/evil'));
    const e = await failure(m);
    expect(e.message).toBe('image contains entries that are not regular files: sub/evil');
    expect(e.hint).toMatch(/only regular files/);
  });

  it('a listed file replaced by a symlink to identical content', async () => {
    const m = await manifest();
    const copy = join(dir, '..', `${dir.split('/').pop()}-copy.img`);
    await writeFile(copy, FILES['inventory.img']!);
    try {
      await unlink(join(dir, 'inventory.img'));
      await symlink(copy, join(dir, 'inventory.img'));
      const e = await failure(m);
      expect(e.message).toMatch(/not regular files: inventory\.img/);
    } finally {
      await rm(copy, { force: true });
    }
  });
});
