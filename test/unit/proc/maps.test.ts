import { describe, expect, it } from 'vitest';
import { hugetlbRanges, isHugetlb, nsPid, parseMaps } from '../../../src/proc/maps.js';

const MAPS = `55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
7f1c00000000-7f1c00400000 rw-s 00000000 00:0f 1234                       /anon_hugepage (deleted)
7f1c00400000-7f1c00800000 rw-s 00000000 00:2e 99                         /mnt/huge pages/buf
7f1c00800000-7f1c00900000 rw-p 00000000 08:01 77                         /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0                          [stack]
`;

describe('maps', () => {
  it('parses /proc/PID/maps lines, paths with spaces included', () => {
    const v = parseMaps(MAPS);
    expect(v).toHaveLength(5);
    expect(v[2]).toEqual({ start: 0x7f1c00400000, end: 0x7f1c00800000, perms: 'rw-s', path: '/mnt/huge pages/buf' });
  });

  it('tells hugetlb mappings: anonymous MAP_HUGETLB, or a file under a hugetlbfs mount, and nothing else', () => {
    const v = parseMaps(MAPS);
    expect(v.map((m) => isHugetlb(m, ['/mnt/huge pages']))).toEqual([false, true, true, false, false]);
    expect(v.map((m) => isHugetlb(m, []))).toEqual([false, true, false, false, false]);
    expect(isHugetlb({ path: '/mnt/huge pagesX/f' }, ['/mnt/huge pages'])).toBe(false);
  });

  it('finds none in this test process, and names it by its own PID', async () => {
    expect(await hugetlbRanges([process.pid])).toEqual(new Map());
    expect(await nsPid(process.pid)).toBeGreaterThan(0);
  });
});
