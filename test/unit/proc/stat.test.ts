import { describe, expect, it } from 'vitest';
import { isKernelThread, parseCmdline, parseIds, parseStat, type ProcStat } from '../../../src/proc/stat.js';

const TAIL = '0 0 0 0 20 0 1 0 40672 3231744 462 18446744073709551615 94499653427200 94499653447081 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0';

describe('parseStat', () => {
  it('parses an ordinary stat line', () => {
    const s = parseStat(`10594 (cat) R 10579 10579 6817 0 -1 4194304 105 0 ${TAIL}\n`);
    expect(s).toEqual({ pid: 10594, comm: 'cat', state: 'R', ppid: 10579, pgrp: 10579, session: 6817, ttyNr: 0, flags: 4194304 });
  });

  it('keeps a comm that contains spaces and parentheses, up to the last ")"', () => {
    const s = parseStat(`4242 (my (weird) prog) ) S 4200 4242 4100 34816 4242 4194560 105 0 ${TAIL}`);
    expect(s.pid).toBe(4242);
    expect(s.comm).toBe('my (weird) prog) ');
    expect(s.state).toBe('S');
    expect(s.ppid).toBe(4200);
    expect(s.pgrp).toBe(4242);
    expect(s.session).toBe(4100);
    expect(s.ttyNr).toBe(34816);
    expect(s.flags).toBe(4194560);
  });

  it('keeps an empty comm', () => {
    const s = parseStat(`7 () S 1 7 7 0 -1 0 ${TAIL}`);
    expect(s.comm).toBe('');
    expect(s.ppid).toBe(1);
  });

  it('parses a kernel thread', () => {
    const s = parseStat(`15 (kworker/0:1-events) I 2 0 0 0 -1 69238880 0 0 ${TAIL}`);
    expect(s).toMatchObject({ pid: 15, comm: 'kworker/0:1-events', state: 'I', ppid: 2, flags: 69238880 });
  });

  it('refuses a line without parentheses', () => {
    expect(() => parseStat('1234 cat R 1 1 1 0')).toThrow(/malformed stat line/);
    expect(() => parseStat('')).toThrow(/malformed stat line/);
    expect(() => parseStat('12 ) x ( R')).toThrow(/malformed stat line/);
  });

  it('parses this very process from /proc', async () => {
    const { readFile } = await import('node:fs/promises');
    const s = parseStat(await readFile('/proc/self/stat', 'utf8'));
    expect(s.pid).toBe(process.pid);
    expect(s.ppid).toBe(process.ppid);
    expect(isKernelThread(s)).toBe(false);
  });
});

describe('isKernelThread', () => {
  const base: ProcStat = { pid: 100, comm: 'x', state: 'S', ppid: 1, pgrp: 100, session: 100, ttyNr: 0, flags: 0x400100 };

  it('a user process is not a kernel thread', () => {
    expect(isKernelThread(base)).toBe(false);
  });

  it('PF_KTHREAD in flags marks a kernel thread', () => {
    expect(isKernelThread({ ...base, flags: 0x00200000 })).toBe(true);
    expect(isKernelThread({ ...base, flags: 69238880 })).toBe(true);
  });

  it('kthreadd (PID 2) and its children are kernel threads', () => {
    expect(isKernelThread({ ...base, pid: 2, ppid: 0 })).toBe(true);
    expect(isKernelThread({ ...base, ppid: 2 })).toBe(true);
  });
});

describe('parseCmdline', () => {
  it('splits NUL-separated arguments and drops the trailing NUL', () => {
    expect(parseCmdline('python3\0-u\0counter.py\0')).toEqual(['python3', '-u', 'counter.py']);
  });

  it('keeps arguments with spaces and empty arguments', () => {
    expect(parseCmdline('sh\0-c\0echo hi there\0\0')).toEqual(['sh', '-c', 'echo hi there', '']);
  });

  it('handles a cmdline without a trailing NUL (rewritten argv)', () => {
    expect(parseCmdline('nginx: worker process')).toEqual(['nginx: worker process']);
  });

  it('an empty cmdline (kernel thread, zombie) is no arguments', () => {
    expect(parseCmdline('')).toEqual([]);
  });
});

describe('parseIds', () => {
  it('reads the real, effective, saved and file-system uids and gids of a status text', () => {
    const status = 'Name:\tpostgres\nUmask:\t0077\nState:\tS (sleeping)\nTgid:\t812\nPid:\t812\nPPid:\t1\nTracerPid:\t0\nUid:\t106\t106\t106\t106\nGid:\t113\t113\t113\t113\nFDSize:\t64\nGroups:\t113 120 \n';
    expect(parseIds(status)).toEqual({ uids: [106, 106, 106, 106], gids: [113, 113, 113, 113] });
  });

  it('keeps the four ids apart (a setuid program: real user, effective root)', () => {
    expect(parseIds('Uid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n')).toEqual({ uids: [1000, 0, 0, 0], gids: [1000, 1000, 1000, 1000] });
  });

  it('refuses a status text without them', () => {
    expect(() => parseIds('Name:\tx\nGid:\t0\t0\t0\t0\n')).toThrow(/no Uid line/);
    expect(() => parseIds('Uid:\t0\t0\t0\t0\n')).toThrow(/no Gid line/);
  });

  it('parses this very process', async () => {
    const { readFile } = await import('node:fs/promises');
    const ids = parseIds(await readFile('/proc/self/status', 'utf8'));
    expect(ids.uids[0]).toBe(process.getuid!());
    expect(ids.gids[0]).toBe(process.getgid!());
  });
});
