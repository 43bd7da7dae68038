import { describe, expect, it } from 'vitest';
import { capabilityBlocker, CRIU_CAPS, foreignId, foreignProcesses, judgeCapabilities, otherUsersError, rlimitDenied } from '../../../src/criu/capabilities.js';
import { decisiveLines } from '../../../src/criu/log.js';
import { CAP_NAMES } from '../../../src/proc/caps.js';
import type { TreeProcess } from '../../../src/proc/tree.js';

const ALL = '000001ffffffffff';
/** Root on these VMs: every capability but CAP_SYS_RESOURCE. */
const NO_SYS_RESOURCE = '000001fffeffffff';
const ROOT = { uid: 0, gid: 0 };

/** The end of CRIU 4.2.1's log dumping `setpriv --reuid=65534 --regid=65534 sleep` as root without CAP_SYS_RESOURCE (here). */
const RLIMIT_LOG = [
  '(00.056128) Dumping processes (pid: 18134 comm: sleep)',
  '(00.056142) Error (criu/util.c:1534): rlimit: Can\'t setup RLIMIT_NOFILE for self: Operation not permitted',
  '(00.057939) Dumping task (pid: 18134 comm: sleep)',
  '(00.060956) Dumping core (pid: 18134)',
  '(00.061067) dumping /proc/18134/oom_score_adj',
  '(00.061076) Error (criu/cr-dump.c:389): Can\'t get rlimit 0: Operation not permitted',
  '(00.061078) ----------------------------------------',
  '(00.061079) Error (criu/cr-dump.c:1584): Dump core (pid: 18134) failed with -1',
  '(00.061344) net: Unlock network',
  '(00.061348) Unfreezing tasks into 1',
  '(00.061355) Error (criu/cr-dump.c:1975): Dumping FAILED.',
].join('\n');

function proc(pid: number, uid: number, gid = uid, over: Partial<TreeProcess> = {}): TreeProcess {
  return {
    pid, ppid: 1, comm: `p${pid}`, argv: [], session: pid, pgrp: pid, ttyNr: 0,
    ids: { uids: [uid, uid, uid, uid], gids: [gid, gid, gid, gid] }, userNs: 'user:[4026531837]', ...over,
  };
}

describe('CRIU_CAPS', () => {
  it('names real capabilities, each once, with what its absence prevents', () => {
    const names = CRIU_CAPS.map((n) => n.name);
    expect(new Set(names).size).toBe(names.length);
    for (const n of CRIU_CAPS) {
      expect(CAP_NAMES, n.name).toContain(n.name);
      expect(n.prevents.length, n.name).toBeGreaterThan(20);
    }
    for (const n of ['CAP_SYS_ADMIN', 'CAP_SYS_PTRACE', 'CAP_SYS_RESOURCE', 'CAP_CHECKPOINT_RESTORE', 'CAP_NET_ADMIN', 'CAP_SYS_CHROOT', 'CAP_SETUID', 'CAP_SETGID', 'CAP_DAC_OVERRIDE', 'CAP_KILL', 'CAP_FOWNER']) {
      expect(names).toContain(n);
    }
  });

  it('only what nothing works without is required', () => {
    expect(CRIU_CAPS.filter((n) => n.required).map((n) => n.name).sort()).toEqual(['CAP_SYS_ADMIN', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE']);
  });
});

describe('judgeCapabilities', () => {
  it('full root: nothing missing, every capability listed', () => {
    const r = judgeCapabilities(ALL);
    expect(r).toEqual({ capEff: ALL, effective: [...CAP_NAMES], missing: [] });
    expect(capabilityBlocker(r)).toBeUndefined();
  });

  it('root without CAP_SYS_RESOURCE: a warning naming other users and post-copy, not a blocker', () => {
    const r = judgeCapabilities(NO_SYS_RESOURCE);
    expect(r.effective).not.toContain('CAP_SYS_RESOURCE');
    expect(r.missing).toHaveLength(1);
    expect(r.missing[0]).toMatchObject({ name: 'CAP_SYS_RESOURCE', required: false });
    expect(r.missing[0]!.prevents).toMatch(/processes of other users cannot be dumped/);
    expect(r.missing[0]!.prevents).toMatch(/prlimit/);
    expect(r.missing[0]!.prevents).toMatch(/fs\.pipe-max-size >= 4 MiB/);
    expect(capabilityBlocker(r)).toBeUndefined();
  });

  it('no capabilities at all: every one CRIU uses is missing, and the required ones block', () => {
    const r = judgeCapabilities('0000000000000000');
    expect(r.effective).toEqual([]);
    expect(r.missing.map((m) => m.name)).toEqual(CRIU_CAPS.map((n) => n.name));
    const e = capabilityBlocker(r)!;
    expect(e.code).toBe('CAPABILITY_MISSING');
    expect(e.exitCode).toBe(48);
    expect(e.message).toMatch(/^cedana lacks CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_SYS_CHROOT: without CAP_SYS_ADMIN, nothing can be dumped or restored/);
    expect(e.details).toEqual({ missingCapabilities: ['CAP_SYS_ADMIN', 'CAP_SYS_PTRACE', 'CAP_SYS_CHROOT'] });
    expect(e.hint).toMatch(/container/);
  });

  it('a kernel before 5.9 (no CAP_CHECKPOINT_RESTORE) warns that CAP_SYS_ADMIN covers it', () => {
    const r = judgeCapabilities('000000ffffffffff');
    expect(r.missing.map((m) => m.name)).toEqual(['CAP_CHECKPOINT_RESTORE']);
    expect(r.missing[0]!.prevents).toMatch(/CAP_SYS_ADMIN/);
    expect(capabilityBlocker(r)).toBeUndefined();
  });
});

describe('foreignId (the kernel\'s check_prlimit_permission)', () => {
  it('none for a process with all of our ids', () => {
    expect(foreignId({ uids: [0, 0, 0, 0], gids: [0, 0, 0, 0] }, ROOT)).toBeUndefined();
  });

  it('another user: its uid', () => {
    expect(foreignId({ uids: [65534, 65534, 65534, 65534], gids: [65534, 65534, 65534, 65534] }, ROOT)).toEqual({ kind: 'user', id: 65534 });
  });

  it('root with another group counts too', () => {
    expect(foreignId({ uids: [0, 0, 0, 0], gids: [0, 33, 33, 33] }, ROOT)).toEqual({ kind: 'group', id: 33 });
  });

  it('any of real, effective and saved: a setuid-root program started by a user, a daemon that dropped only its effective uid', () => {
    expect(foreignId({ uids: [1000, 0, 0, 0], gids: [0, 0, 0, 0] }, ROOT)).toEqual({ kind: 'user', id: 1000 });
    expect(foreignId({ uids: [0, 106, 0, 106], gids: [0, 0, 0, 0] }, ROOT)).toEqual({ kind: 'user', id: 106 });
  });

  it('the file-system ids do not count', () => {
    expect(foreignId({ uids: [0, 0, 0, 1000], gids: [0, 0, 0, 1000] }, ROOT)).toBeUndefined();
  });
});

describe('foreignProcesses', () => {
  const self = { ...ROOT, userNs: 'user:[4026531837]' };

  it("lists the tree's processes of other users, in tree order", () => {
    const tree = [proc(100, 0), proc(101, 106, 113), proc(102, 0), proc(103, 65534)];
    expect(foreignProcesses(tree, self)).toEqual([
      { pid: 101, comm: 'p101', owner: { kind: 'user', id: 106 } },
      { pid: 103, comm: 'p103', owner: { kind: 'user', id: 65534 } },
    ]);
  });

  it('a tree of root only: none', () => {
    expect(foreignProcesses([proc(100, 0), proc(101, 0)], self)).toEqual([]);
  });

  it('leaves to CRIU a process in another user namespace (root may hold every capability there) or one it could not read', () => {
    const tree = [proc(100, 0), proc(101, 1000, 1000, { userNs: 'user:[4026532999]' }), proc(102, 1000, 1000, { ids: undefined }), proc(103, 1000, 1000, { userNs: undefined })];
    expect(foreignProcesses(tree, self)).toEqual([]);
  });
});

describe('otherUsersError', () => {
  it('names the process, its user, the missing capability and what to do', () => {
    const e = otherUsersError([{ pid: 4242, comm: 'sleep', owner: { kind: 'user', id: 65534, name: 'nobody' } }]);
    expect(e.code).toBe('CAPABILITY_MISSING');
    expect(e.message).toBe("cannot dump PID 4242 (sleep): it runs as user 65534 (nobody), and root here lacks CAP_SYS_RESOURCE, without which CRIU cannot read another user's process's resource limits (prlimit)");
    expect(e.hint).toMatch(/run cedana where root has CAP_SYS_RESOURCE/);
    expect(e.hint).toMatch(/`cedana check`/);
    expect(e.details).toEqual({ missingCapabilities: ['CAP_SYS_RESOURCE'], processes: [{ pid: 4242, comm: 'sleep', uid: 65534, name: 'nobody' }] });
  });

  it('counts the others, names a group, and keeps an id without a name as a number', () => {
    const e = otherUsersError([
      { pid: 10, comm: 'nginx', owner: { kind: 'group', id: 33, name: 'www-data' } },
      { pid: 11, comm: 'nginx', owner: { kind: 'user', id: 5000 } },
      { pid: 12, comm: 'nginx', owner: { kind: 'user', id: 5000 } },
    ]);
    expect(e.message).toMatch(/^cannot dump PID 10 \(nginx\): it runs with group 33 \(www-data\) \(and 2 more processes of the tree as other users\), and root here lacks CAP_SYS_RESOURCE/);
    expect(e.details.processes).toEqual([
      { pid: 10, comm: 'nginx', gid: 33, name: 'www-data' },
      { pid: 11, comm: 'nginx', uid: 5000, name: null },
      { pid: 12, comm: 'nginx', uid: 5000, name: null },
    ]);
  });

  it("explaining CRIU's failure: the log in the hint and details, CRIU's lines kept", () => {
    const e = otherUsersError([{ pid: 7, comm: '?' }], { log: '/var/log/cedana/dump-7.log', criuLines: ['Can\'t get rlimit 0: Operation not permitted'] });
    expect(e.message).toMatch(/^cannot dump PID 7 \(\?\): it belongs to another user, and root here lacks CAP_SYS_RESOURCE/);
    expect(e.hint).toMatch(/; CRIU's log: \/var\/log\/cedana\/dump-7\.log$/);
    expect(e.details).toMatchObject({ log: '/var/log/cedana/dump-7.log', criuLines: ["Can't get rlimit 0: Operation not permitted"], processes: [{ pid: 7, comm: '?' }] });
    expect(otherUsersError([]).message).toMatch(/^cannot dump a process of the tree: it belongs to another user/);
  });
});

describe('rlimitDenied', () => {
  it("recognises CRIU's real log of it, and the PID it was dumping", () => {
    const lines = decisiveLines(RLIMIT_LOG);
    expect(lines).toEqual(["Can't get rlimit 0: Operation not permitted", 'Dump core (pid: 18134) failed with -1', 'Dumping FAILED.']);
    expect(rlimitDenied(lines)).toEqual({ pid: 18134 });
  });

  it('without the PID line, still recognised', () => {
    expect(rlimitDenied(["Can't get rlimit 7: Operation not permitted", 'Dumping FAILED.'])).toEqual({});
  });

  it('other failures, and its own limit for itself (harmless), are not it', () => {
    expect(rlimitDenied(['rlimit: Can\'t setup RLIMIT_NOFILE for self: Operation not permitted'])).toBeUndefined();
    expect(rlimitDenied(['inet: Connected TCP socket, consider using --tcp-established option.', 'Dump files (pid: 4242) failed with -1'])).toBeUndefined();
    expect(rlimitDenied(["Can't get rlimit 0: No such process"])).toBeUndefined();
    expect(rlimitDenied([])).toBeUndefined();
  });
});
