import { realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { dumpBytesFromSmapsRollup, footprint, mappedPaths, pathsToCheck, rssFromSmapsRollup } from '../../../src/migrate/footprint.js';

describe('pathsToCheck', () => {
  it('keeps absolute paths, sorted and without duplicates', () => {
    expect(pathsToCheck(['/usr/bin/python3', '/srv/data.db', '/usr/bin/python3', '/'])).toEqual(['/', '/srv/data.db', '/usr/bin/python3']);
  });

  it('drops what is not a path: sockets, pipes, anonymous inodes', () => {
    expect(pathsToCheck(['socket:[12345]', 'pipe:[678]', 'anon_inode:[eventpoll]', 'anon_inode:inotify', '', 'relative/x'])).toEqual([]);
  });

  it('drops deleted files (CRIU carries them in the image)', () => {
    expect(pathsToCheck(['/tmp/scratch (deleted)', '/tmp/kept'])).toEqual(['/tmp/kept']);
  });

  it('drops /proc, /sys, /dev/pts and memfd pseudo files', () => {
    expect(pathsToCheck(['/proc/1/status', '/proc', '/sys/fs/cgroup/x', '/sys', '/dev/pts/3', '/memfd:jit (deleted)', '/memfd:buf', '/dev/null', '/dev/urandom'])).toEqual([
      '/dev/null',
      '/dev/urandom',
    ]);
  });

  it('keeps real paths that only begin like a pseudo file system', () => {
    const real = ['/procedures/a.txt', '/system/lib/libx.so', '/sysroot/etc/hosts', '/srv/proc/x', '/dev/ptsfoo'];
    expect(pathsToCheck(real)).toEqual([...real].sort());
  });

  it('keeps paths with spaces and odd characters', () => {
    expect(pathsToCheck(['/srv/my data/file (1).txt', "/it's"])).toEqual(["/it's", '/srv/my data/file (1).txt']);
  });
});

describe('mappedPaths', () => {
  const maps = [
    '55d1c8a00000-55d1c8a2c000 r--p 00000000 fd:01 1311202                    /usr/bin/python3.11',
    '55d1c8a2c000-55d1c8d2e000 r-xp 0002c000 fd:01 1311202                    /usr/bin/python3.11',
    '55d1ca1e1000-55d1ca3a0000 rw-p 00000000 00:00 0                          [heap]',
    '7f3a2c000000-7f3a2c021000 rw-p 00000000 00:00 0 ',
    '7f3a30000000-7f3a30001000 rw-s 00000000 00:05 2066                       /dev/zero (deleted)',
    '7f3a31000000-7f3a31400000 rw-s 00000000 00:01 1033                       /memfd:jit-cache (deleted)',
    '7f3a32000000-7f3a32010000 r--p 00000000 fd:01 917549                     /srv/my data/model weights.bin',
    '7f3a33000000-7f3a33010000 rw-p 00000000 08:01 2490381                    /tmp/scratch file (deleted)',
    '7f3a34a00000-7f3a34a28000 r--p 00000000 fd:01 1315330                    /usr/lib/x86_64-linux-gnu/libc.so.6',
    '7ffd1b5e7000-7ffd1b608000 rw-p 00000000 00:00 0                          [stack]',
    '7ffd1b6f1000-7ffd1b6f5000 r--p 00000000 00:00 0                          [vvar]',
    '7ffd1b6f5000-7ffd1b6f7000 r-xp 00000000 00:00 0                          [vdso]',
    'ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]',
    '',
  ].join('\n');

  it('returns the file column, spaces included, and skips pseudo mappings', () => {
    expect(mappedPaths(maps)).toEqual([
      '/usr/bin/python3.11',
      '/usr/bin/python3.11',
      '/dev/zero (deleted)',
      '/memfd:jit-cache (deleted)',
      '/srv/my data/model weights.bin',
      '/tmp/scratch file (deleted)',
      '/usr/lib/x86_64-linux-gnu/libc.so.6',
    ]);
  });

  it('then pathsToCheck keeps what must exist on the target', () => {
    expect(pathsToCheck(mappedPaths(maps))).toEqual(['/srv/my data/model weights.bin', '/usr/bin/python3.11', '/usr/lib/x86_64-linux-gnu/libc.so.6']);
  });

  it('handles an empty file and garbage', () => {
    expect(mappedPaths('')).toEqual([]);
    expect(mappedPaths('not a maps line /etc/passwd\n')).toEqual([]);
  });

  it('reads this process’s own maps', async () => {
    const paths = mappedPaths(await readFile('/proc/self/maps', 'utf8'));
    expect(paths.length).toBeGreaterThan(0);
    expect(paths.every((p) => p.startsWith('/'))).toBe(true);
    expect(paths).toContain(realpathSync(process.execPath));
  });
});

describe('rssFromSmapsRollup', () => {
  const rollup = [
    '55d1c8a00000-7ffd1b6f7000 ---p 00000000 00:00 0                          [rollup]',
    'Rss:               45672 kB',
    'Pss:               40110 kB',
    'Pss_Anon:          30000 kB',
    'Shared_Clean:       5000 kB',
    'Anonymous:         30000 kB',
    'Swap:                  0 kB',
    'SwapPss:               0 kB',
  ].join('\n');

  it('reads Rss in bytes, not Pss or others', () => {
    expect(rssFromSmapsRollup(rollup)).toBe(45672 * 1024);
  });

  it('is 0 without an Rss line (a process that exited)', () => {
    expect(rssFromSmapsRollup('')).toBe(0);
    expect(rssFromSmapsRollup('Pss: 4 kB\n')).toBe(0);
  });

  it('reads this process’s own rollup', async () => {
    expect(rssFromSmapsRollup(await readFile('/proc/self/smaps_rollup', 'utf8'))).toBeGreaterThan(1024 * 1024);
  });
});

describe('footprint', () => {
  it('describes this process: its pid, a positive RSS, node’s executable and its working directory', async () => {
    const fp = await footprint([process.pid]);
    expect(fp.pids).toEqual([process.pid]);
    expect(fp.rssBytes).toBeGreaterThan(1024 * 1024);
    expect(fp.rssBytes % 1024).toBe(0);
    expect(fp.paths).toContain(realpathSync(process.execPath));
    expect(fp.paths).toContain(realpathSync(process.cwd()));
    expect(fp.paths).toEqual([...new Set(fp.paths)].sort());
    expect(fp.paths.every((p) => p.startsWith('/') && !p.endsWith(' (deleted)') && !p.startsWith('/proc/'))).toBe(true);
  });

  it('sorts the pids and sums the RSS of several processes; a vanished pid adds nothing', async () => {
    const one = await footprint([process.pid]);
    const gone = 2 ** 22 + 1; // above any pid_max
    const fp = await footprint([process.pid, gone, process.ppid]);
    expect(fp.pids).toEqual([process.pid, gone, process.ppid].sort((a, b) => a - b));
    expect(fp.rssBytes).toBeGreaterThan(one.rssBytes * 0.5);
    const alone = await footprint([gone]);
    expect(alone).toEqual({ pids: [gone], rssBytes: 0, dumpBytes: 0, paths: [] });
  });

  it('counts what CRIU sends (anonymous, swapped, shared memory), not the libraries in Rss', () => {
    // A Python process's rollup: 9.4 MiB resident, of which 5.1 MiB are clean library pages.
    const rollup = 'Rss:                9656 kB\nPss:                7201 kB\nPss_Shmem:            64 kB\nShared_Clean:       5188 kB\nAnonymous:          4340 kB\nSwap:                 12 kB\n';
    expect(dumpBytesFromSmapsRollup(rollup)).toBe((4340 + 12 + 64) * 1024);
    expect(rssFromSmapsRollup(rollup)).toBe(9656 * 1024);
    expect(dumpBytesFromSmapsRollup('')).toBe(0);
  });

  it('its estimate of what CRIU sends is within the tree\'s resident memory, and not zero for a live process', async () => {
    const fp = await footprint([process.pid]);
    expect(fp.dumpBytes).toBeGreaterThan(0);
    expect(fp.dumpBytes).toBeLessThanOrEqual(fp.rssBytes + 64 * 1024 * 1024);
  });
});
