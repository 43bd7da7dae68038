import { existsSync, lstatSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import {
  ancestors, CRIU_GHOST_LIMIT, destination, ghostLimit, isShippablePath, isSystemPath, placeShipped, planShipping, SHIP_FILE_LIMIT, shippingNotes,
  type Candidate, type ShippedEntry,
} from '../../../src/image/ship.js';

const MiB = 1024 * 1024;
const file = (path: string, size: number, use: Candidate['use'] = 'open'): Candidate => ({ path, kind: 'file', size, use, source: path, root: '' });
const dir = (path: string): Candidate => ({ path, kind: 'dir', size: 0, use: 'cwd', source: path, root: '' });

describe('planShipping', () => {
  const cands = [file('/tmp/job/big.bin', 100 * MiB), file('/tmp/job/log', 10), dir('/tmp/job'), file('/usr/lib/libx.so', 1000, 'mapped'), file('/tmp/job/log', 10)];

  it('auto: non-system files up to the per-file limit, directories, each path once', () => {
    const p = planShipping(cands, 'auto');
    expect(p.ship.map((c) => c.path)).toEqual(['/tmp/job', '/tmp/job/log']);
    expect(p.left.map((c) => c.path)).toEqual(['/tmp/job/big.bin']);
  });

  it('auto: stops at the total limit, smallest first', () => {
    const many = Array.from({ length: 5 }, (_, i) => file(`/data/f${i}`, 60 * MiB + i));
    const p = planShipping(many, 'auto');
    expect(p.ship.map((c) => c.path)).toEqual(['/data/f0', '/data/f1', '/data/f2', '/data/f3']);
    expect(p.left.map((c) => c.path)).toEqual(['/data/f4']);
  });

  it('all: everything shippable, system paths and large files included; none: nothing', () => {
    expect(planShipping(cands, 'all').ship.map((c) => c.path).sort()).toEqual(['/tmp/job', '/tmp/job/big.bin', '/tmp/job/log', '/usr/lib/libx.so']);
    const none = planShipping(cands, 'none');
    expect(none.ship).toEqual([]);
    expect(none.left.length).toBe(3);
  });

  it('never plans a pseudo file or a path a shell line would break on', () => {
    const odd = [file('/proc/1/status', 1), file('/dev/null', 1), file('/dev/pts/0', 1), file('/tmp/a\nb', 1), file('/tmp/../etc/x', 1), file('relative', 1)];
    expect(planShipping(odd, 'all').ship).toEqual([]);
  });

  it('says what it plans, in words', () => {
    const notes = shippingNotes(planShipping(cands, 'auto'));
    expect(notes[0]).toMatch(/^shipping 1 file\(s\) \(0\.00 MiB\) and 1 dir\(s\) with the image: \/tmp\/job\/, \/tmp\/job\/log/);
    expect(notes[1]).toMatch(/not shipped .*\/tmp\/job\/big\.bin \(100 MiB\)/);
  });
});

describe('paths', () => {
  it.each([['/usr/bin/python3', true], ['/lib64/ld.so', true], ['/etc/hosts', true], ['/opt/app/x', true], ['/tmp/usr', false], ['/srv/data', false], ['/usrdata/x', false]])('isSystemPath(%s) is %s', (p, want) => {
    expect(isSystemPath(p)).toBe(want);
  });
  it('isShippablePath', () => {
    expect(isShippablePath('/tmp/x')).toBe(true);
    expect(isShippablePath('/dev/shm/seg')).toBe(true);
    for (const p of ['/', '/sys/x', '/tmp/x/', '/tmp//x', 'x', '/a\0b']) expect(isShippablePath(p)).toBe(false);
  });
  it('ancestors, outermost first, without /', () => {
    expect(ancestors('/a/b/c')).toEqual(['/a', '/a/b']);
    expect(ancestors('/a')).toEqual([]);
  });
  it('destination follows --map-path', () => {
    const e: ShippedEntry = { path: '/old/x/y', kind: 'file', mode: 0o644, uid: 0, gid: 0, size: 1, mtimeMs: 0, image: 'shipped/0' };
    expect(destination(e, [{ from: '/old', to: '/new' }])).toBe('/new/x/y');
    expect(destination(e, [])).toBe('/old/x/y');
  });
});

describe('ghostLimit', () => {
  it('is the per-file limit by default, the largest file with --ship-files, CRIU\'s own with --no-ship-files', () => {
    expect(ghostLimit([], 'auto')).toBe(SHIP_FILE_LIMIT);
    expect(ghostLimit([{ path: '/x', size: 300 * MiB }], 'all')).toBe(300 * MiB);
    expect(ghostLimit([], 'none')).toBe(CRIU_GHOST_LIMIT);
  });
  it('refuses a deleted file over the limit before anything is frozen, with a hint', () => {
    for (const [size, policy] of [[SHIP_FILE_LIMIT + 1, 'auto'], [2 * MiB, 'none']] as const) {
      try {
        ghostLimit([{ path: '/tmp/gone', size }], policy);
        expect.unreachable();
      } catch (e) {
        expect((e as CedanaError).code).toBe('FILE_TOO_LARGE');
        expect((e as CedanaError).message).toContain('/tmp/gone');
        expect((e as CedanaError).hint).toMatch(/ship-files/);
      }
    }
  });
});

describe('placeShipped (on a real file system)', () => {
  let root: string;
  let img: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'cedana-place-'));
    img = join(root, 'img');
    await mkdir(join(img, 'shipped'), { recursive: true });
    await writeFile(join(img, 'shipped', '0'), 'hello\n');
    await writeFile(join(img, 'shipped', '1'), 'world!!\n');
  });
  afterEach(() => rm(root, { recursive: true, force: true }));

  const entries = (): ShippedEntry[] => [
    { path: join(root, 'job'), kind: 'dir', mode: 0o750, uid: 0, gid: 0, size: 0, mtimeMs: 0 },
    { path: join(root, 'job', 'a.txt'), kind: 'file', mode: 0o640, uid: 0, gid: 0, size: 6, mtimeMs: 1_600_000_000_123, image: 'shipped/0' },
    { path: join(root, 'job', 'b.txt'), kind: 'file', mode: 0o600, uid: 0, gid: 0, size: 8, mtimeMs: 1_600_000_000_000, image: 'shipped/1' },
  ];

  it('creates what is missing with its mode and mtime, and undo removes exactly that', async () => {
    const p = await placeShipped(img, entries(), []);
    expect(p.created).toEqual([join(root, 'job'), join(root, 'job', 'a.txt'), join(root, 'job', 'b.txt')]);
    expect(readFileSync(join(root, 'job', 'a.txt'), 'utf8')).toBe('hello\n');
    expect(statSync(join(root, 'job')).mode & 0o777).toBe(0o750);
    expect(statSync(join(root, 'job', 'a.txt')).mode & 0o777).toBe(0o640);
    expect(Math.round(statSync(join(root, 'job', 'a.txt')).mtimeMs)).toBe(1_600_000_000_123);
    await p.undo();
    expect(existsSync(join(root, 'job'))).toBe(false);
  });

  it('keeps a file already there with the same size, and follows --map-path', async () => {
    await mkdir(join(root, 'new'));
    await writeFile(join(root, 'new', 'a.txt'), 'HELLO\n');
    const p = await placeShipped(img, entries(), [{ from: join(root, 'job'), to: join(root, 'new') }]);
    expect(p.present).toEqual([join(root, 'new', 'a.txt')]);
    expect(p.created).toEqual([join(root, 'new', 'b.txt')]);
    expect(readFileSync(join(root, 'new', 'a.txt'), 'utf8')).toBe('HELLO\n'); // never overwritten
  });

  it('a file of another size is FILE_CONFLICT, and what was created before is removed', async () => {
    await mkdir(join(root, 'job'));
    await writeFile(join(root, 'job', 'b.txt'), 'other size');
    const e = await placeShipped(img, entries(), []).catch((x: unknown) => x as CedanaError);
    expect(e).toBeInstanceOf(CedanaError);
    expect((e as CedanaError).code).toBe('FILE_CONFLICT');
    expect((e as CedanaError).message).toContain('b.txt exists with 10 bytes; the image carries it with 8');
    expect(existsSync(join(root, 'job', 'a.txt'))).toBe(false);
    expect(readFileSync(join(root, 'job', 'b.txt'), 'utf8')).toBe('other size');
    expect(lstatSync(join(root, 'job')).isDirectory()).toBe(true); // it was there before: kept
  });

  it('a missing parent under a --map-path destination is FILE_CONFLICT with the path', async () => {
    const e = await placeShipped(img, entries(), [{ from: join(root, 'job'), to: join(root, 'no', 'such') }]).catch((x: unknown) => x as CedanaError);
    expect((e as CedanaError).code).toBe('FILE_CONFLICT');
    expect((e as CedanaError).message).toContain(`the parent directory of ${join(root, 'no', 'such')} does not exist`);
  });
});
