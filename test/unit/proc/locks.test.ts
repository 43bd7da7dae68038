import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { realpathSync, statSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeLock, localFileOf, lockFileId, lostLocks, mappedFiles, parseLockLine, treeLocks, type HeldLock } from '../../../src/proc/locks.js';

/** Lines as a 6.x kernel writes them (/proc/locks, then fdinfo), copied from a real run. */
const PROC_LOCKS = [
  '1: OFDLCK ADVISORY  WRITE -1 fe:00:2155265 0 9',
  '2: FLOCK  ADVISORY  WRITE 26256 fe:00:2155266 0 EOF',
  '3: POSIX  ADVISORY  READ 26256 fe:00:2155265 128 128',
  '3: -> POSIX  ADVISORY  WRITE 26297 fe:00:2155265 0 EOF',
  '',
].join('\n');

describe('parseLockLine', () => {
  it('reads an fdinfo lock: line', () => {
    expect(parseLockLine('lock:\t1: POSIX  ADVISORY  READ 1234 fe:00:5678 128 128')).toEqual({
      kind: 'POSIX',
      type: 'READ',
      pid: 1234,
      file: 'fe:00:5678',
      start: '128',
      end: '128',
      waiting: false,
    });
  });

  it('reads the /proc/locks lines of each kind', () => {
    const [ofd, flock, posix] = PROC_LOCKS.split('\n').map(parseLockLine);
    expect(ofd).toEqual({ kind: 'OFDLCK', type: 'WRITE', pid: -1, file: 'fe:00:2155265', start: '0', end: '9', waiting: false });
    expect(flock).toEqual({ kind: 'FLOCK', type: 'WRITE', pid: 26256, file: 'fe:00:2155266', start: '0', end: 'EOF', waiting: false });
    expect(posix).toMatchObject({ kind: 'POSIX', type: 'READ', pid: 26256, start: '128', end: '128', waiting: false });
  });

  it('reads a waiter line (the arrow) as waiting, with the waiter’s own fields', () => {
    expect(parseLockLine('3: -> POSIX  ADVISORY  WRITE 26297 fe:00:2155265 0 EOF')).toEqual({
      kind: 'POSIX',
      type: 'WRITE',
      pid: 26297,
      file: 'fe:00:2155265',
      start: '0',
      end: 'EOF',
      waiting: true,
    });
    // A deeper waiter is indented further.
    expect(parseLockLine('3:  -> FLOCK  ADVISORY  WRITE 9 fe:00:1 0 EOF')).toMatchObject({ kind: 'FLOCK', pid: 9, waiting: true });
  });

  it('reads a three-digit major and a large minor', () => {
    expect(parseLockLine('7: POSIX  ADVISORY  WRITE 42 103:105:99 0 EOF')?.file).toBe('103:105:99');
  });

  it('reads a lease line', () => {
    expect(parseLockLine('4: LEASE  ACTIVE    READ 77 fe:00:12 0 EOF')).toMatchObject({ kind: 'LEASE', type: 'READ', pid: 77, file: 'fe:00:12' });
  });

  it.each([
    [''],
    ['pos:\t0'],
    ['flags:\t02100002'],
    ['lock:\t'],
    ['POSIX  ADVISORY  READ 1234 fe:00:5678 128 128'], // no index
    ['1: POSIX  ADVISORY  READ 1234 fe:00:5678 128'], // a field short
    ['1: -> POSIX  ADVISORY  READ 1234 fe:00:5678'], // a waiter a field short
    ['1: POSIX  ADVISORY  READ 1234 <none>:0 0 EOF'], // no inode
    ['1: POSIX  ADVISORY  READ 1234 fe:00 0 EOF'],
    ['x: POSIX  ADVISORY  READ 1234 fe:00:5678 0 EOF'],
  ])('%j is not a lock', (line) => {
    expect(parseLockLine(line)).toBeUndefined();
  });
});

describe('lockFileId', () => {
  it.each([
    [0xfe00, 5678, 'fe:00:5678'], // 254:0, /dev/vda on a virtio host
    [0x0801, 12, '08:01:12'], // 8:1, /dev/sda1
    [0x0803, 0, '08:03:0'],
    [0x2d, 1, '00:2d:1'], // 0:45, an anonymous device (tmpfs, overlay)
    // 0:261: the minor's bits above 0xff sit at bits 20.. of st_dev (new_encode_dev)
    [0x100005, 77, '00:105:77'],
    // 259:3 (nvme partitions): the major needs three digits
    [0x10303, 9, '103:03:9'],
    // 136:300: both halves of a large minor
    [(300 & 0xff) | (136 << 8) | ((300 & ~0xff) << 12), 1, '88:12c:1'],
  ])('dev %i, inode %i → %s', (dev, ino, want) => {
    expect(lockFileId(dev, ino)).toBe(want);
  });

  it('writes the inode in decimal, from a bigint too (stat with bigint: true)', () => {
    expect(lockFileId(0xfe00n, 2155265n)).toBe('fe:00:2155265');
    expect(lockFileId(0xfe00n, 2n ** 53n + 1n)).toBe(`fe:00:${2n ** 53n + 1n}`); // beyond a double
    expect(lockFileId(0xfe00, 255)).toBe('fe:00:255'); // not ff
  });

  it('agrees with how the kernel writes this file’s device in /proc/self/maps', async () => {
    // maps prints MAJOR:MINOR with %02x:%02x, as /proc/locks does.
    const maps = await readFile('/proc/self/maps', 'utf8');
    const exe = realpathSync(process.execPath);
    const line = maps.split('\n').find((l) => l.endsWith(` ${exe}`));
    if (!line) return; // node mapped through another name (a symlink): nothing to compare
    const f = line.trim().split(/\s+/);
    const st = statSync(exe, { bigint: true });
    expect(lockFileId(st.dev, st.ino)).toBe(`${f[3]}:${f[4]}`);
  });
});

describe('mappedFiles', () => {
  const maps = [
    '55d0c0a00000-55d0c0a28000 r--p 00000000 fe:00 1835021                    /usr/bin/python3.11',
    '7f3a1c000000-7f3a1c008000 rw-s 00000000 fe:00 2155265                    /srv/data/app.db-shm',
    '7f3a1c200000-7f3a1c300000 r--s 00001000 103:02 44                        /srv/my data/model weights.bin',
    '7f3a1c400000-7f3a1c421000 rw-p 00000000 00:00 0 ',
    '7f3a1c500000-7f3a1c521000 rw-p 00000000 00:00 0                          [heap]',
    '7ffd5a2e1000-7ffd5a302000 rw-p 00000000 00:00 0                          [stack]',
    '7f3a1c600000-7f3a1c700000 rw-s 00000000 00:01 1031                       /memfd:shm (deleted)',
    '',
  ].join('\n');

  it('lists each file mapping as dev:inode, in /proc/locks’ form', () => {
    expect([...mappedFiles(maps)].sort()).toEqual(['00:01:1031', '103:02:44', 'fe:00:1835021', 'fe:00:2155265']);
  });

  it('leaves out anonymous mappings (inode 0)', () => {
    const s = mappedFiles(maps);
    expect([...s].some((k) => k.endsWith(':0'))).toBe(false);
    expect(s.has('00:00:0')).toBe(false);
  });

  it('is empty for nothing', () => {
    expect(mappedFiles('').size).toBe(0);
  });

  it('matches a lock’s file id from the same device and inode', () => {
    expect(mappedFiles(maps).has(lockFileId(0xfe00, 2155265))).toBe(true);
  });
});

describe('lostLocks', () => {
  type E = Pick<HeldLock, 'pid' | 'fd' | 'kind' | 'type' | 'start' | 'end'>;
  const posixRead: E = { pid: 26256, fd: 3, kind: 'POSIX', type: 'READ', start: '128', end: '128' };
  const flockWrite: E = { pid: 26256, fd: 4, kind: 'FLOCK', type: 'WRITE', start: '0', end: 'EOF' };
  const ofdWrite: E = { pid: 26256, fd: 5, kind: 'OFDLCK', type: 'WRITE', start: '0', end: '9' };
  const files: Record<string, string> = { '26256/3': 'fe:00:2155265', '26256/4': 'fe:00:2155266', '26256/5': 'fe:00:2155265' };
  const fileOf = (pid: number, fd: number): string | undefined => files[`${pid}/${fd}`];

  it('none lost when /proc/locks holds every one again (OFD matched without a PID)', () => {
    expect(lostLocks([posixRead, flockWrite, ofdWrite], PROC_LOCKS, fileOf)).toEqual([]);
  });

  it('a lock no line holds is lost', () => {
    const without = PROC_LOCKS.split('\n').filter((l) => !l.includes('FLOCK')).join('\n');
    expect(lostLocks([posixRead, flockWrite, ofdWrite], without, fileOf)).toEqual([flockWrite]);
    expect(lostLocks([posixRead, flockWrite], '', fileOf)).toEqual([posixRead, flockWrite]);
  });

  it.each([
    ['type', { type: 'WRITE' }],
    ['start', { start: '0' }],
    ['end', { end: 'EOF' }],
    ['kind', { kind: 'FLOCK' }],
    ['pid', { pid: 26257 }],
  ])('another %s is another lock', (_what, over) => {
    const e = { ...posixRead, ...over };
    const fo = (pid: number, fd: number): string | undefined => fileOf(26256, fd) ?? fileOf(pid, fd);
    expect(lostLocks([e], PROC_LOCKS, fo)).toEqual([e]);
  });

  it('another file is another lock', () => {
    expect(lostLocks([posixRead], PROC_LOCKS, () => 'fe:00:2155266')).toEqual([posixRead]);
  });

  it('an OFD lock matches whatever PID restored it; a POSIX lock does not', () => {
    const ofd = { ...ofdWrite, pid: 31000 };
    expect(lostLocks([ofd], PROC_LOCKS, () => 'fe:00:2155265')).toEqual([]);
    const posix = { ...posixRead, pid: 31000 };
    expect(lostLocks([posix], PROC_LOCKS, () => 'fe:00:2155265')).toEqual([posix]);
  });

  it('a waiter line is never a held lock', () => {
    // Only the waiter's line has this PID and range: it waits for the lock, it does not hold it.
    const waiter: E = { pid: 26297, fd: 3, kind: 'POSIX', type: 'WRITE', start: '0', end: 'EOF' };
    expect(lostLocks([waiter], PROC_LOCKS, () => 'fe:00:2155265')).toEqual([waiter]);
    // The same line without its arrow would count.
    expect(lostLocks([waiter], '3: POSIX  ADVISORY  WRITE 26297 fe:00:2155265 0 EOF\n', () => 'fe:00:2155265')).toEqual([]);
  });

  it('a lock whose restored descriptor no longer resolves is lost', () => {
    expect(lostLocks([posixRead, flockWrite], PROC_LOCKS, (pid, fd) => (fd === 3 ? undefined : fileOf(pid, fd)))).toEqual([posixRead]);
  });

  it('keeps the caller’s extra fields', () => {
    const withPath = { ...flockWrite, path: '/srv/b' };
    expect(lostLocks([withPath], '', fileOf)).toEqual([withPath]);
  });
});

describe('describeLock', () => {
  it('names kind, type, path, range and PID', () => {
    expect(describeLock({ kind: 'POSIX', type: 'READ', path: '/data/db-shm', start: '128', end: '128', pid: 42 })).toBe(
      'POSIX READ lock on /data/db-shm (bytes 128-128) held by PID 42',
    );
    expect(describeLock({ kind: 'FLOCK', type: 'WRITE', path: '/srv/my file', start: '0', end: 'EOF', pid: 7 })).toBe('FLOCK WRITE lock on /srv/my file (bytes 0-EOF) held by PID 7');
  });
});

const hasPython = spawnSync('python3', ['-c', 'pass']).status === 0;

/** A python3 process that takes a POSIX read lock, a flock, an OFD write lock and maps the first file. */
describe.skipIf(!hasPython)('against the kernel (a python3 holder: no root)', () => {
  let dir: string;
  let holder: ChildProcess;
  let a: string;
  let b: string;
  let procLocks: string;

  const HOLD = `
import fcntl, mmap, os, struct, sys, time
a = open(sys.argv[1], 'r+b'); fcntl.lockf(a, fcntl.LOCK_SH, 1, 128)
m = mmap.mmap(a.fileno(), 4096)
b = open(sys.argv[2], 'r+b'); fcntl.flock(b, fcntl.LOCK_EX)
c = open(sys.argv[2], 'r+b'); fcntl.fcntl(c, 37, struct.pack('hhqqi', fcntl.F_WRLCK, 0, 0, 10, 0))
print(a.fileno(), b.fileno(), c.fileno(), flush=True)
time.sleep(30)
`;
  let fds: number[];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-locks-'));
    a = join(dir, 'app.db-shm');
    b = join(dir, 'with space.lock');
    await writeFile(a, Buffer.alloc(4096));
    await writeFile(b, 'x');
    holder = spawn('python3', ['-c', HOLD, a, b], { stdio: ['ignore', 'pipe', 'inherit'] });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      holder.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('\n')) resolve(out);
      });
      holder.once('exit', (code) => reject(new Error(`holder exited ${code}`)));
    });
    fds = line.trim().split(' ').map(Number);
    procLocks = await readFile('/proc/locks', 'utf8');
  });

  afterAll(async () => {
    holder?.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('lockFileId of the files is what /proc/locks writes for their locks', () => {
    const ids = procLocks.split('\n').map(parseLockLine).filter((l) => l && l.pid === holder.pid);
    const sa = statSync(a, { bigint: true });
    const sb = statSync(b, { bigint: true });
    expect(ids).toContainEqual(expect.objectContaining({ kind: 'POSIX', type: 'READ', start: '128', end: '128', file: lockFileId(sa.dev, sa.ino) }));
    expect(ids).toContainEqual(expect.objectContaining({ kind: 'FLOCK', type: 'WRITE', start: '0', end: 'EOF', file: lockFileId(sb.dev, sb.ino) }));
    const ofd = procLocks.split('\n').map(parseLockLine).find((l) => l?.kind === 'OFDLCK' && l.file === lockFileId(sb.dev, sb.ino));
    expect(ofd).toMatchObject({ type: 'WRITE', pid: -1, start: '0', end: '9' });
  });

  it('treeLocks finds the three through fdinfo, and that the POSIX one’s file is mapped', async () => {
    const locks = await treeLocks([holder.pid!]);
    const by = (kind: string): HeldLock | undefined => locks.find((l) => l.kind === kind);
    expect(locks).toHaveLength(3);
    expect(by('POSIX')).toMatchObject({ pid: holder.pid, fd: fds[0], path: a, type: 'READ', start: '128', end: '128', mapped: true });
    expect(by('FLOCK')).toMatchObject({ fd: fds[1], path: b, type: 'WRITE', start: '0', end: 'EOF', mapped: false });
    expect(by('OFDLCK')).toMatchObject({ fd: fds[2], path: b, type: 'WRITE', start: '0', end: '9', mapped: false });
  });

  it('lostLocks with localFileOf: none lost while held, a changed range lost', async () => {
    const locks = await treeLocks([holder.pid!]);
    expect(lostLocks(locks, procLocks, localFileOf)).toEqual([]);
    const other = { ...locks[0]!, end: '129' };
    expect(lostLocks([other], procLocks, localFileOf)).toEqual([other]);
    expect(localFileOf(holder.pid!, 999)).toBeUndefined();
  });
});
