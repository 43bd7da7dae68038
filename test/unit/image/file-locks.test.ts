import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { expectedLocksFile, imageLocks, LOCK_CHECK_SCRIPT, locksLost, locksOfEntries, parseLostLocks, type ExpectedLock } from '../../../src/image/file-locks.js';
import type { MessageEntry } from '../../../src/image/criu/codec.js';
import { lockFileId } from '../../../src/proc/locks.js';

const FIXTURE = join(import.meta.dirname, '../../fixtures/criu-images/fdzoo');

/** A filelocks.img entry as the codec decodes it (int64 fields may come as bigint, number, string or a Long). */
const entry = (value: Record<string, unknown>): MessageEntry => ({ type: 'file_lock_entry', value });

describe('locksOfEntries', () => {
  it('names CRIU’s FL_* flags as /proc/locks does', () => {
    const kinds = [1, 2, 4, 8].map((flag) => locksOfEntries([entry({ flag, type: 1, pid: 10, fd: 3, start: 0, len: 0 })])[0]!.kind);
    expect(kinds).toEqual(['POSIX', 'FLOCK', 'OFDLCK', 'LEASE']);
  });

  it('names F_RDLCK READ and F_WRLCK WRITE', () => {
    const types = [0, 1, 2].map((type) => locksOfEntries([entry({ flag: 1, type, pid: 10, fd: 3, start: 0, len: 0 })])[0]!.type);
    expect(types).toEqual(['READ', 'WRITE', 'UNLCK']);
  });

  it('keeps an unknown flag or type visible', () => {
    expect(locksOfEntries([entry({ flag: 16, type: 9, pid: 1, fd: 1, start: 0, len: 0 })])[0]).toMatchObject({ kind: 'flag-16', type: 'type-9' });
  });

  it('len 0 reaches EOF; otherwise the last byte is start+len-1', () => {
    const [whole, one, range] = locksOfEntries([
      entry({ flag: 1, type: 1, pid: 42, fd: 5, start: 0, len: 0 }),
      entry({ flag: 1, type: 0, pid: 42, fd: 5, start: 128, len: 1 }),
      entry({ flag: 4, type: 1, pid: 42, fd: 6, start: 100, len: 10 }),
    ]);
    expect(whole).toEqual({ pid: 42, fd: 5, kind: 'POSIX', type: 'WRITE', start: '0', end: 'EOF' });
    expect(one).toEqual({ pid: 42, fd: 5, kind: 'POSIX', type: 'READ', start: '128', end: '128' });
    expect(range).toEqual({ pid: 42, fd: 6, kind: 'OFDLCK', type: 'WRITE', start: '100', end: '109' });
  });

  it('takes an int64 as a number, a string, a bigint or a Long-like object', () => {
    const long = (s: string): { low: number; high: number; toString(): string } => ({ low: 0, high: 0, toString: () => s });
    const big = 2n ** 40n;
    const out = locksOfEntries([
      entry({ flag: 1, type: 1, pid: 1, fd: 3, start: 1073741824, len: 4096 }),
      entry({ flag: 1, type: 1, pid: 1, fd: 3, start: '1073741824', len: '4096' }),
      entry({ flag: 1, type: 1, pid: 1, fd: 3, start: 1073741824n, len: 4096n }),
      entry({ flag: 1, type: 1, pid: 1, fd: 3, start: long('1073741824'), len: long('4096') }),
      // Past 2^53: exact, as /proc/locks writes it
      entry({ flag: 1, type: 1, pid: 1, fd: 3, start: long(String(big ** 1n * 8192n)), len: long('2') }),
    ]);
    for (const l of out.slice(0, 4)) expect(l).toMatchObject({ start: '1073741824', end: '1073745919' });
    expect(out[4]).toMatchObject({ start: String(big * 8192n), end: String(big * 8192n + 1n) });
  });

  it('decodes a real CRIU image (fixture: the fdzoo tree holds one flock)', async () => {
    expect(await imageLocks(FIXTURE)).toEqual([{ pid: 16566, fd: 22, kind: 'FLOCK', type: 'WRITE', start: '0', end: 'EOF' }]);
  });

  it('an image directory without filelocks.img has no locks', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cedana-fl-'));
    try {
      expect(await imageLocks(dir)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('expectedLocksFile and parseLostLocks', () => {
  const locks: ExpectedLock[] = [
    { pid: 4242, fd: 3, kind: 'POSIX', type: 'READ', start: '128', end: '128' },
    { pid: 4242, fd: 7, kind: 'FLOCK', type: 'WRITE', start: '0', end: 'EOF' },
    { pid: 4243, fd: 4, kind: 'OFDLCK', type: 'WRITE', start: '0', end: '9' },
  ];

  it('writes one `pid fd kind type start end` line per lock', () => {
    expect(expectedLocksFile(locks)).toBe('4242 3 POSIX READ 128 128\n4242 7 FLOCK WRITE 0 EOF\n4243 4 OFDLCK WRITE 0 9\n');
    expect(expectedLocksFile([])).toBe('');
  });

  it('round trip: the script’s lines (an expected line, then the path) come back with their paths, spaces kept', () => {
    const paths = ['/srv/data/app.db-shm', '/srv/my data/two  spaces.lock', '/tmp/x (deleted)'];
    const lostText = expectedLocksFile(locks)
      .split('\n')
      .filter(Boolean)
      .map((l, i) => `${l} ${paths[i]}\n`)
      .join('');
    expect(parseLostLocks(lostText)).toEqual(locks.map((l, i) => ({ ...l, path: paths[i] })));
  });

  it('a line whose descriptor had no path (readlink failed) names the descriptor', () => {
    expect(parseLostLocks('4242 3 POSIX READ 128 128 \n')).toEqual([{ pid: 4242, fd: 3, kind: 'POSIX', type: 'READ', start: '128', end: '128', path: 'fd 3 of PID 4242' }]);
  });

  it('nothing lost: no locks', () => {
    expect(parseLostLocks('')).toEqual([]);
    expect(parseLostLocks('\n')).toEqual([]);
  });
});

describe('locksLost', () => {
  const one = { pid: 4242, fd: 3, kind: 'POSIX', type: 'READ', start: '128', end: '128', path: '/srv/data/app.db-shm' };
  const two = { pid: 4243, fd: 7, kind: 'FLOCK', type: 'WRITE', start: '0', end: 'EOF', path: '/srv/my data/b.lock' };

  it('LOCK_LOST, exit 50, naming each lock and where', () => {
    const e = locksLost([one, two], 'on root@b');
    expect(e).toBeInstanceOf(CedanaError);
    expect(e.code).toBe('LOCK_LOST');
    expect(e.exitCode).toBe(50);
    expect(e.message).toContain('2 file locks');
    expect(e.message).toContain('on root@b');
    expect(e.message).toContain('POSIX READ lock on /srv/data/app.db-shm (bytes 128-128) held by PID 4242');
    expect(e.message).toContain('FLOCK WRITE lock on /srv/my data/b.lock (bytes 0-EOF) held by PID 4243');
    expect(e.hint).toContain('--allow-lost-locks');
    expect(e.details.lost).toEqual([one, two]);
  });

  it('one lock reads as "a file lock"', () => {
    const e = locksLost([one], 'here');
    expect(e.message).toMatch(/does not hold a file lock it held at the dump here: POSIX READ/);
    expect(e.details.lost).toEqual([one]);
  });
});

describe('LOCK_CHECK_SCRIPT', () => {
  const line = LOCK_CHECK_SCRIPT.split('\n').find((l) => l.trim().startsWith('f=$(printf'));

  /** The script's own dev → major:minor:inode line, run with sh for a st_dev (decimal, as stat -c %d prints it). */
  function shellId(dev: number, ino: number): string {
    const r = spawnSync('sh', ['-c', `d=${dev}; i=${ino}\n${line!.trim()}\nprintf '%s' "$f"`], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    return r.stdout;
  }

  it('has the arithmetic line', () => {
    expect(line).toBeDefined();
  });

  /** st_dev for MAJOR:MINOR, as the kernel's new_encode_dev gives it to stat. */
  const dev = (major: number, minor: number): number => Number((BigInt(minor) & 0xffn) | (BigInt(major) << 8n) | ((BigInt(minor) & ~0xffn) << 12n));

  it.each([
    [254, 0, 2155265, 'fe:00:2155265'],
    [8, 1, 12, '08:01:12'],
    [0, 45, 1, '00:2d:1'],
    [0, 261, 77, '00:105:77'],
    [259, 3, 9, '103:03:9'],
    [136, 300, 5, '88:12c:5'],
    [4095, 1048575, 1, 'fff:fffff:1'], // the largest kernel dev_t
  ])('agrees with lockFileId for %i:%i', (major, minor, ino, want) => {
    expect(lockFileId(dev(major, minor), ino)).toBe(want);
    expect(shellId(dev(major, minor), ino)).toBe(want);
  });

  it('agrees with lockFileId for this host’s temporary directory', () => {
    const out = spawnSync('stat', ['-L', '-c', '%d %i', tmpdir()], { encoding: 'utf8' }).stdout.trim().split(' ');
    expect(shellId(Number(out[0]), Number(out[1]))).toBe(lockFileId(Number(out[0]), Number(out[1])));
  });
});
