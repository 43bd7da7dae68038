import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, truncate, unlink, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { checksumDir, listImageFiles, sha256File, verifyDir } from '../../../src/image/checksum.js';
import type { Manifest } from '../../../src/image/manifest.js';

let dir: string;

const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

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

describe('listImageFiles', () => {
  it('lists regular files recursively, sorted; reports others', async () => {
    await symlink('/etc/passwd', join(dir, 'sub/link'));
    const { files, others } = await listImageFiles(dir);
    expect(files).toEqual(['cedana.json', 'core-4242.img', 'empty.img', 'inventory.img', 'pages-1.img', 'sub/x.img']);
    expect(others).toEqual(['sub/link']);
  });
});

describe('checksumDir', () => {
  it('has size and sha256 of every file except the manifest', async () => {
    const files = await checksumDir(dir);
    expect(Object.keys(files).sort()).toEqual(Object.keys(FILES).sort());
    for (const [name, data] of Object.entries(FILES)) {
      expect(files[name]).toEqual({ size: data.length, sha256: sha(data) });
    }
    expect(files).not.toHaveProperty('cedana.json');
  });
});

describe('verifyDir', () => {
  it('a good image passes', async () => {
    await expect(verifyDir(dir, await manifest())).resolves.toBeUndefined();
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
    for (let i = 0; i < 7; i++) m.files[`gone-${i}.img`] = { size: 1, sha256: '0'.repeat(64) };
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
