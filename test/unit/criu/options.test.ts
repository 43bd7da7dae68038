import { describe, expect, it } from 'vitest';
import {
  buildDumpArgs,
  buildRestoreArgs,
  decideDumpOptions,
  ptsIndex,
  type CommonArgs,
  type CriuDecisions,
  type DumpRequest,
} from '../../../src/criu/options.js';
import type { TreeFacts, TreeProcess } from '../../../src/proc/tree.js';
import type { TcpSocket } from '../../../src/proc/sockets.js';
import type { HeldLock } from '../../../src/proc/locks.js';

/** A tree of two processes that is its own session and process group, with no terminal. */
function proc(pid: number, over: Partial<TreeProcess> = {}): TreeProcess {
  return { pid, ppid: pid === 100 ? 1 : 100, comm: 'p', argv: ['p'], session: 100, pgrp: 100, ttyNr: 0, ...over };
}

function facts(over: Partial<TreeFacts> = {}): TreeFacts {
  return { root: 100, processes: [proc(100), proc(101)], tcp: [], externalUnix: [], fileLocks: 0, locks: [], ptys: [], ptyMasters: [], boundUnix: [], unixChecked: true, ...over };
}

const AUTO: DumpRequest = { tcp: 'auto', fileLocks: false, leaveRunning: false };

const est = (local: string, remote: string, inode = 1): TcpSocket => ({ inode, state: 'ESTABLISHED', local, remote });
const listen = (local: string, inode = 2): TcpSocket => ({ inode, state: 'LISTEN', local, remote: '0.0.0.0:0' });

describe('decideDumpOptions', () => {
  it('needs nothing special for a detached tree with no sockets or locks', () => {
    const d = decideDumpOptions(facts(), AUTO);
    expect(d).toEqual({ shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], notes: [] });
  });

  it('uses --shell-job when a process has a controlling terminal', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100), proc(101, { ttyNr: 34816 })] }), AUTO);
    expect(d.shellJob).toBe(true);
    expect(d.notes).toHaveLength(1);
    expect(d.notes[0]).toMatch(/^--shell-job: PID 101 has a controlling terminal/);
  });

  it('uses --shell-job when the session leader is outside the tree', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100, { session: 50 }), proc(101, { session: 50 })] }), AUTO);
    expect(d.shellJob).toBe(true);
    expect(d.notes[0]).toMatch(/^--shell-job: PID 100's session or process group leader is outside the tree/);
  });

  it('uses --shell-job when the process group leader is outside the tree', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100), proc(101, { pgrp: 77 })] }), AUTO);
    expect(d.shellJob).toBe(true);
    expect(d.notes[0]).toContain('PID 101');
  });

  it('names the terminal (not the session) when both apply', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100, { ttyNr: 1, session: 9 })] }), AUTO);
    expect(d.shellJob).toBe(true);
    expect(d.notes.filter((n) => n.startsWith('--shell-job'))).toHaveLength(1);
    expect(d.notes[0]).toContain('controlling terminal');
  });

  it('tcp auto: no flag when only listening sockets exist', () => {
    const d = decideDumpOptions(facts({ tcp: [listen('0.0.0.0:8080')] }), AUTO);
    expect(d.tcpEstablished).toBe(false);
    expect(d.tcpClose).toBe(false);
    expect(d.notes).toEqual([]);
  });

  it('tcp auto: --tcp-established when an established connection exists', () => {
    const d = decideDumpOptions(facts({ tcp: [listen('0.0.0.0:8080'), est('127.0.0.1:8080', '127.0.0.1:40000'), est('127.0.0.1:8080', '127.0.0.1:40001', 3)] }), AUTO);
    expect(d.tcpEstablished).toBe(true);
    expect(d.tcpClose).toBe(false);
    expect(d.notes).toEqual(['--tcp-established: 2 established TCP connection(s), e.g. 127.0.0.1:8080 ↔ 127.0.0.1:40000']);
  });

  it('tcp established requested without any connection still sets the flag', () => {
    const d = decideDumpOptions(facts(), { ...AUTO, tcp: 'established' });
    expect(d.tcpEstablished).toBe(true);
    expect(d.tcpClose).toBe(false);
    expect(d.notes).toEqual(['--tcp-established: requested (0 established connection(s))']);
  });

  it('tcp established requested with connections counts them', () => {
    const d = decideDumpOptions(facts({ tcp: [est('a:1', 'b:2')] }), { ...AUTO, tcp: 'established' });
    expect(d.tcpEstablished).toBe(true);
    expect(d.notes).toEqual(['--tcp-established: requested (1 established connection(s))']);
  });

  it('tcp close requested with established connections: close only, not established', () => {
    const d = decideDumpOptions(facts({ tcp: [est('a:1', 'b:2')] }), { ...AUTO, tcp: 'close' });
    expect(d.tcpClose).toBe(true);
    expect(d.tcpEstablished).toBe(false);
    expect(d.notes).toEqual(['--tcp-close: requested; 1 established connection(s) will be restored closed']);
  });

  it('tcp close requested without connections', () => {
    const d = decideDumpOptions(facts(), { ...AUTO, tcp: 'close' });
    expect(d.tcpClose).toBe(true);
    expect(d.tcpEstablished).toBe(false);
    expect(d.notes[0]).toContain('0 established');
  });

  it('file locks held: --file-locks automatically', () => {
    const d = decideDumpOptions(facts({ fileLocks: 2 }), AUTO);
    expect(d.fileLocks).toBe(true);
    expect(d.notes).toEqual(['--file-locks: 2 file lock(s) held']);
  });

  it('file locks requested without locks', () => {
    const d = decideDumpOptions(facts(), { ...AUTO, fileLocks: true });
    expect(d.fileLocks).toBe(true);
    expect(d.notes).toEqual(['--file-locks: requested']);
  });

  it('file locks requested and held: one note, about the locks', () => {
    const d = decideDumpOptions(facts({ fileLocks: 1 }), { ...AUTO, fileLocks: true });
    expect(d.fileLocks).toBe(true);
    expect(d.notes).toEqual(['--file-locks: 1 file lock(s) held']);
  });

  it('external unix sockets are passed through as a copy', () => {
    const ext = [4242, 4343];
    const f = facts({ externalUnix: ext });
    const d = decideDumpOptions(f, AUTO);
    expect(d.externalUnix).toEqual([4242, 4343]);
    expect(d.externalUnix).not.toBe(ext);
    expect(d.notes).toEqual(['--external unix[…]: 2 unix socket(s) connected to a peer outside the tree']);
  });

  it('notes that unix peers were not examined when ss is missing', () => {
    const d = decideDumpOptions(facts({ unixChecked: false }), AUTO);
    expect(d.externalUnix).toEqual([]);
    expect(d.notes).toEqual(['unix socket peers not examined (`ss` from iproute2 not found)']);
  });

  it('combines every decision with notes in a stable order', () => {
    const d = decideDumpOptions(
      facts({ processes: [proc(100, { ttyNr: 5 })], tcp: [est('a:1', 'b:2')], fileLocks: 1, externalUnix: [7], unixChecked: false }),
      AUTO,
    );
    expect(d).toMatchObject({ shellJob: true, tcpEstablished: true, tcpClose: false, fileLocks: true, externalUnix: [7] });
    expect(d.notes.map((n) => n.split(':')[0])).toEqual([
      '--shell-job',
      '--tcp-established',
      '--file-locks',
      '--external unix[…]',
      'unix socket peers not examined (`ss` from iproute2 not found)',
    ]);
  });
});

/** tty_nr (/proc/PID/stat) of MAJOR:MINOR: the kernel's new_encode_dev. */
const ttyNr = (major: number, minor: number): number => (minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12);

describe('ptsIndex', () => {
  it('/dev/pts/0 (136:0, tty_nr 34816) is 0', () => {
    expect(ttyNr(136, 0)).toBe(34816);
    expect(ptsIndex(34816)).toBe(0);
  });

  it('/dev/pts/3 (136:3) is 3', () => {
    expect(ptsIndex(34819)).toBe(3);
  });

  it('/dev/pts/300 is 300, as 136:300 (the kernel now) or 137:44 (the old 256-minor majors)', () => {
    expect(ptsIndex(ttyNr(136, 300))).toBe(300);
    expect(ptsIndex(ttyNr(137, 44))).toBe(300);
    expect(ptsIndex(ttyNr(143, 255))).toBe(7 * 256 + 255);
    expect(ptsIndex(ttyNr(136, 70000))).toBe(70000);
  });

  it('another kind of terminal is no pts', () => {
    expect(ptsIndex(ttyNr(4, 1))).toBeUndefined(); // /dev/tty1 (1025)
    expect(ptsIndex(1025)).toBeUndefined();
    expect(ptsIndex(ttyNr(4, 64))).toBeUndefined(); // /dev/ttyS0
    expect(ptsIndex(ttyNr(5, 0))).toBeUndefined(); // /dev/tty
    expect(ptsIndex(ttyNr(144, 0))).toBeUndefined();
    expect(ptsIndex(0)).toBeUndefined();
  });
});

describe('decideDumpOptions: terminals and locks', () => {
  const heldLock = (over: Partial<HeldLock> = {}): HeldLock => ({ pid: 101, fd: 5, path: '/srv/app.db-shm', kind: 'POSIX', type: 'READ', start: '128', end: '128', file: 'fe:00:7', mapped: false, ...over });

  it('a pts whose master the tree holds (tmux): restored with the tree, no terminal needed', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100), proc(101, { ttyNr: ttyNr(136, 3) })], ptys: [3], ptyMasters: [3] }), AUTO);
    expect(d.shellJob).toBe(true);
    expect(d.notes).toEqual(['--shell-job: PID 101 has a controlling terminal (pts/3) whose master the tree holds: it is restored with the tree']);
    expect(d.notes.join('\n')).not.toContain('restore needs a terminal too');
  });

  it('a large pts index is matched against the masters too', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100, { ttyNr: ttyNr(136, 300) })], ptyMasters: [300] }), AUTO);
    expect(d.notes[0]).toContain('(pts/300) whose master the tree holds');
  });

  it('a terminal from outside (a login’s pts): the restore needs a terminal too', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100), proc(101, { ttyNr: ttyNr(136, 0) })], ptys: [0], ptyMasters: [] }), AUTO);
    expect(d.shellJob).toBe(true);
    expect(d.notes).toEqual(['--shell-job: PID 101 has a controlling terminal from outside the tree (restore needs a terminal too)']);
  });

  it('the tree holds another pty’s master than this one’s: outside', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100, { ttyNr: ttyNr(136, 0) })], ptyMasters: [1] }), AUTO);
    expect(d.notes[0]).toContain('from outside the tree (restore needs a terminal too)');
  });

  it('one process inside, another on an outside terminal: the outside one is named', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100, { ttyNr: ttyNr(136, 3) }), proc(101, { ttyNr: ttyNr(136, 0) })], ptyMasters: [3] }), AUTO);
    expect(d.notes.filter((n) => n.startsWith('--shell-job'))).toEqual(['--shell-job: PID 101 has a controlling terminal from outside the tree (restore needs a terminal too)']);
  });

  it('a console terminal is never taken for the pts of the same number', () => {
    const d = decideDumpOptions(facts({ processes: [proc(100, { ttyNr: ttyNr(4, 1) })], ptyMasters: [1] }), AUTO);
    expect(d.notes[0]).toContain('restore needs a terminal too');
  });

  it('a lock on a file the process also maps: a note that CRIU 4.2 does not restore it', () => {
    const d = decideDumpOptions(facts({ fileLocks: 2, locks: [heldLock({ mapped: true }), heldLock({ path: '/srv/app.db', type: 'WRITE', mapped: false })] }), AUTO);
    expect(d.fileLocks).toBe(true);
    expect(d.notes).toHaveLength(2);
    expect(d.notes[0]).toBe('--file-locks: 2 file lock(s) held');
    expect(d.notes[1]).toBe(
      "PID 101's POSIX READ lock on /srv/app.db-shm is on a file it also maps: CRIU 4.2 does not restore such a lock (a restore fails with LOCK_LOST unless --allow-lost-locks)",
    );
  });

  it('locks on files not mapped: no such note', () => {
    const d = decideDumpOptions(facts({ fileLocks: 1, locks: [heldLock()] }), AUTO);
    expect(d.notes.some((n) => n.includes('also maps'))).toBe(false);
  });
});

const COMMON: CommonArgs = { imagesDir: '/img', workDir: '/work', logFile: '/work/dump.log', networkLock: 'iptables' };
const NONE: CriuDecisions = { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], notes: ['ignored'] };

describe('buildDumpArgs', () => {
  it('minimal dump argv', () => {
    expect(buildDumpArgs(123, NONE, { ...COMMON, leaveRunning: false })).toEqual([
      'dump', '-t', '123', '-D', '/img', '-W', '/work', '-o', '/work/dump.log', '-v4', '--network-lock', 'iptables',
    ]);
  });

  it('every flag, external sockets, leave-running, action script and nftables', () => {
    const d: CriuDecisions = { shellJob: true, tcpEstablished: true, tcpClose: false, fileLocks: true, externalUnix: [11, 22], notes: [] };
    expect(buildDumpArgs(7, d, { ...COMMON, networkLock: 'nftables', actionScript: '/usr/lib/cedana/hook', leaveRunning: true })).toEqual([
      'dump', '-t', '7',
      '-D', '/img', '-W', '/work', '-o', '/work/dump.log', '-v4', '--network-lock', 'nftables',
      '--action-script', '/usr/lib/cedana/hook',
      '--shell-job', '--tcp-established', '--file-locks',
      '--external', 'unix[11]', '--external', 'unix[22]',
      '--leave-running',
    ]);
  });

  it('tcp close at dump time is passed as --tcp-close', () => {
    const a = buildDumpArgs(7, { ...NONE, tcpClose: true }, { ...COMMON, leaveRunning: false });
    expect(a).toContain('--tcp-close');
    expect(a).not.toContain('--tcp-established');
  });

  it('no --action-script when none is given (or empty)', () => {
    expect(buildDumpArgs(7, NONE, { ...COMMON, actionScript: '', leaveRunning: false })).not.toContain('--action-script');
  });

  it('notes never reach the argv', () => {
    expect(buildDumpArgs(7, NONE, { ...COMMON, leaveRunning: false })).not.toContain('ignored');
  });
});

describe('buildRestoreArgs', () => {
  const R = { ...COMMON, logFile: '/work/restore.log', pidFile: '/work/restored.pid' };
  const base = ['restore', '-D', '/img', '-W', '/work', '-o', '/work/restore.log', '-v4', '--network-lock', 'iptables', '--restore-detached', '--pidfile', '/work/restored.pid'];

  it('minimal restore argv', () => {
    expect(buildRestoreArgs({ shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: false }, R)).toEqual(base);
  });

  it('all flags', () => {
    expect(buildRestoreArgs({ shellJob: true, tcpEstablished: true, tcpClose: false, fileLocks: true, externalUnix: true }, { ...R, actionScript: '/hook' })).toEqual([
      'restore', '-D', '/img', '-W', '/work', '-o', '/work/restore.log', '-v4', '--network-lock', 'iptables',
      '--action-script', '/hook',
      '--restore-detached', '--pidfile', '/work/restored.pid',
      '--shell-job', '--tcp-established', '--file-locks', '--ext-unix-sk',
    ]);
  });

  it('--tcp-close overrides the dump-time --tcp-established', () => {
    const a = buildRestoreArgs({ shellJob: false, tcpEstablished: true, tcpClose: true, fileLocks: false, externalUnix: false }, R);
    expect(a).toEqual([...base, '--tcp-close']);
    expect(a).not.toContain('--tcp-established');
  });

  it('never passes --leave-running or --external (external unix sockets are reconnected with --ext-unix-sk)', () => {
    const a = buildRestoreArgs({ shellJob: true, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: false }, R);
    expect(a).not.toContain('--leave-running');
    expect(a).not.toContain('--external');
    expect(a).toEqual([...base, '--shell-job']);
  });
});
