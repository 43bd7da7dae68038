import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import type { HeldLock } from '../../../src/proc/locks.js';
import { judgeSharedLocks, placeProbes, removeProbes } from '../../../src/migrate/shared-locks.js';

function lock(path: string, type: string, over: Partial<HeldLock> = {}): HeldLock {
  return { pid: 4242, fd: 3, path, kind: 'POSIX', type, start: '0', end: 'EOF', file: 'fe:00:100', mapped: false, ...over };
}

function thrown(f: () => unknown): CedanaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CedanaError);
    return e as CedanaError;
  }
  throw new Error('did not throw');
}

describe('judgeSharedLocks', () => {
  const shared = new Set(['/nfs/app/db.sqlite', '/nfs/app/db.sqlite-shm']);

  it('a write lock on a shared file refuses the migration (SHARED_FILE_LOCKED), naming the file', () => {
    const locks = [lock('/nfs/app/db.sqlite', 'READ'), lock('/nfs/app/db.sqlite-shm', 'WRITE', { kind: 'FLOCK', pid: 4243 }), lock('/local/x', 'WRITE')];
    const e = thrown(() => judgeSharedLocks(locks, shared, 'root@b'));
    expect(e.code).toBe('SHARED_FILE_LOCKED');
    expect(e.exitCode).toBe(18);
    expect(e.message).toContain('FLOCK WRITE lock on /nfs/app/db.sqlite-shm (bytes 0-EOF) held by PID 4243');
    expect(e.message).toContain('root@b');
    expect(e.message).not.toContain('/local/x'); // not shared: not the reason
    expect(e.details.files).toEqual(['/nfs/app/db.sqlite-shm']);
  });

  it('lists each written file once', () => {
    const locks = [lock('/nfs/app/db.sqlite', 'WRITE', { start: '0', end: '0' }), lock('/nfs/app/db.sqlite', 'WRITE', { start: '10', end: '20' }), lock('/nfs/app/db.sqlite-shm', 'WRITE')];
    expect(thrown(() => judgeSharedLocks(locks, shared, 'b')).details.files).toEqual(['/nfs/app/db.sqlite', '/nfs/app/db.sqlite-shm']);
  });

  it('read locks only: one note naming the shared paths (each once)', () => {
    const locks = [lock('/nfs/app/db.sqlite', 'READ'), lock('/nfs/app/db.sqlite', 'READ', { pid: 4243 }), lock('/nfs/app/db.sqlite-shm', 'READ'), lock('/local/y', 'READ')];
    const notes = judgeSharedLocks(locks, shared, 'root@b');
    expect(notes).toHaveLength(1);
    expect(notes[0]).toContain('root@b');
    expect(notes[0]).toContain('/nfs/app/db.sqlite, /nfs/app/db.sqlite-shm (');
    expect(notes[0]).not.toContain('/local/y');
    expect(notes[0]!.match(/\/nfs\/app\/db\.sqlite,/g)).toHaveLength(1);
  });

  it('locks on files the target does not see: nothing to say', () => {
    expect(judgeSharedLocks([lock('/local/a', 'WRITE'), lock('/local/b', 'READ')], shared, 'b')).toEqual([]);
    expect(judgeSharedLocks([], shared, 'b')).toEqual([]);
    expect(judgeSharedLocks([lock('/nfs/app/db.sqlite', 'WRITE')], new Set(), 'b')).toEqual([]);
  });
});

describe('placeProbes and removeProbes (a real directory)', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-probe-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('writes a probe beside each locked file, holding its token, mode 0600', async () => {
    await mkdir(join(dir, 'sub dir'));
    const a = join(dir, 'db.sqlite');
    const b = join(dir, 'sub dir', 'b.lock');
    await writeFile(a, '');
    await writeFile(b, '');
    const probes = await placeProbes([a, b]);
    expect(probes.map((p) => p.path)).toEqual([a, b]);
    for (const p of probes) {
      expect(dirname(p.probe)).toBe(dirname(p.path));
      expect(p.probe).toMatch(/\/\.cedana-probe-[0-9a-f]{12}$/);
      expect(p.token).toMatch(/^[0-9a-f]{32}$/);
      expect(p.probe.endsWith(p.token.slice(0, 12))).toBe(true);
      expect(readFileSync(p.probe, 'utf8')).toBe(p.token);
      expect(statSync(p.probe).mode & 0o777).toBe(0o600);
    }
    expect(probes[0]!.token).not.toBe(probes[1]!.token);
  });

  it('one probe per file, however many locks it has; two files in one directory get two', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    const probes = await placeProbes([a, a, b, a]);
    expect(probes.map((p) => p.path)).toEqual([a, b]);
    expect(readdirSync(dir).filter((n) => n.startsWith('.cedana-probe-'))).toHaveLength(2);
  });

  it('skips a directory it cannot write to (absent, or /proc)', async () => {
    const ok = join(dir, 'ok');
    const probes = await placeProbes([join(dir, 'absent', 'x.lock'), '/proc/x.lock', ok]);
    expect(probes.map((p) => p.path)).toEqual([ok]);
    expect(existsSync(join(dir, 'absent'))).toBe(false);
  });

  it('removeProbes removes them (and an already gone one is fine)', async () => {
    const probes = await placeProbes([join(dir, 'a'), join(dir, 'b')]);
    await rm(probes[1]!.probe);
    await removeProbes(probes);
    expect(readdirSync(dir)).toEqual([]);
    await expect(removeProbes([])).resolves.toBeUndefined();
  });
});
