import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { arch as osArch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { parseVersionText, type Version } from '../../../src/criu/version.js';
import type { Footprint as FullFootprint } from '../../../src/migrate/footprint.js';

type Footprint = Pick<FullFootprint, 'pids' | 'rssBytes' | 'paths'>;
import { diskNeeded, judgePreflight, parsePreflight, portConflicts, preflightScript, REMOTE_PATH, type Needs, type TargetFacts } from '../../../src/migrate/preflight.js';
import { createServer, type AddressInfo, type Server } from 'node:net';

const MiB = 1024 * 1024;
const v = (text: string): Version => parseVersionText(text)!;

/** Runs a script the way the target does: `sh -s` with the script on stdin. */
function runSh(script: string): { stdout: string; stderr: string; status: number | null } {
  const r = spawnSync('sh', ['-s'], { input: script, encoding: 'utf8', timeout: 20_000 });
  return { stdout: r.stdout, stderr: r.stderr, status: r.status };
}

describe('preflightScript', () => {
  const fp: Footprint = { pids: [4242, 17], rssBytes: 10 * MiB, paths: ['/srv/app/data.db', '/usr/bin/python3'] };

  it('starts with the PATH line and ends with exit 0', () => {
    const s = preflightScript(fp, '/var/tmp');
    const lines = s.split('\n');
    expect(lines[0]).toBe(REMOTE_PATH);
    expect(lines.at(-1)).toBe('exit 0');
  });

  it('contains every pid and every path, one path per line inside the heredoc', () => {
    const s = preflightScript(fp, '/var/tmp');
    expect(s).toContain('for p in 4242 17; do');
    const lines = s.split('\n');
    const start = lines.findIndex((l) => l.endsWith("<<'CEDANA_PATHS'"));
    const end = lines.lastIndexOf('CEDANA_PATHS');
    expect(start).toBeGreaterThan(0);
    expect(lines.slice(start + 1, end)).toEqual(['/srv/app/data.db', '/usr/bin/python3']);
  });

  it('quotes the target directory for the shell', () => {
    expect(preflightScript(fp, "/tmp/it's here")).toContain(`df -P -B1 '/tmp/it'\\''s here'`);
  });

  it('leaves out a path with a newline (it would split into two lines)', () => {
    const s = preflightScript({ ...fp, paths: ['/ok', '/bad\nname', '/also-ok'] }, '/tmp');
    expect(s).toContain('\n/ok\n/also-ok\nCEDANA_PATHS\n');
    expect(s).not.toContain('/bad');
  });

  it('a path equal to the heredoc terminator cannot end the heredoc early', () => {
    const s = preflightScript({ ...fp, paths: ['CEDANA_PATHS', '/ok', '/CEDANA_PATHS'] }, '/tmp');
    const lines = s.split('\n');
    expect(lines.filter((l) => l === 'CEDANA_PATHS')).toHaveLength(1);
    expect(lines[lines.indexOf('CEDANA_PATHS') - 1]).toBe('/CEDANA_PATHS'); // the last path, then the terminator
    expect(lines).toContain('/CEDANA_PATHS');
  });

  it('leaves out relative paths (footprint paths are absolute)', () => {
    const s = preflightScript({ ...fp, paths: ['relative/file', 'socket:[123]', '/abs'] }, '/tmp');
    expect(s).not.toContain('relative/file');
    expect(s).not.toContain('socket:');
    expect(s).toContain('\n/abs\nCEDANA_PATHS\n');
  });

  it('no path can inject a command after the heredoc (run with sh)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cedana-pf-'));
    try {
      const marker = join(dir, 'pwned');
      const evil = ['CEDANA_PATHS', `touch ${marker}`, `/x\`touch ${marker}\``, `/$(touch ${marker})`, "/'quoted'", '/back\\slash'];
      const r = runSh(preflightScript({ pids: [], rssBytes: 0, paths: evil }, dir));
      expect(r.status).toBe(0);
      const facts = parsePreflight(r.stdout);
      // Only absolute paths are checked, literally: none of them exists, nothing was run.
      expect(facts.missingPaths).toEqual([`/x\`touch ${marker}\``, `/$(touch ${marker})`, "/'quoted'", '/back\\slash']);
      expect(spawnSync('test', ['-e', marker]).status).not.toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('with no pids and no paths it is still valid sh', () => {
    const r = runSh(preflightScript({ pids: [], rssBytes: 0, paths: [] }, tmpdir()));
    expect(r.status).toBe(0);
    expect(r.stderr).toBe('');
    const facts = parsePreflight(r.stdout);
    expect(facts.pidsTaken).toEqual([]);
    expect(facts.missingPaths).toEqual([]);
    expect(facts.pageSize).toBe(Number(spawnSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).stdout));
  });
});

describe('preflightScript run locally with sh -s (what the target runs)', () => {
  let dir: string;
  let facts: TargetFacts;
  let raw: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-pf-'));
    await writeFile(join(dir, 'exists with space.txt'), 'x');
    const fp: Footprint = {
      pids: [process.pid, 2 ** 22 + 1], // the second is above any pid_max: free
      rssBytes: 1,
      paths: [join(dir, 'exists with space.txt'), join(dir, 'absent'), '/proc/self'],
    };
    const r = runSh(preflightScript(fp, dir));
    expect(r.status).toBe(0);
    raw = r.stdout;
    facts = parsePreflight(raw);
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reports uid 0 (these tests run as root) and this machine', () => {
    expect(facts.uid).toBe(process.getuid!());
    expect(facts.uid).toBe(0);
    expect(facts.arch).toBe(spawnSync('uname', ['-m'], { encoding: 'utf8' }).stdout.trim());
    expect(facts.arch).toBe(osArch() === 'x64' ? 'x86_64' : facts.arch);
  });

  it('lists only the absent path as missing', () => {
    expect(facts.missingPaths).toEqual([join(dir, 'absent')]);
  });

  it('finds this process’s pid taken, and not the free one', () => {
    expect(facts.pidsTaken).toEqual([process.pid]);
  });

  it('measures free disk and available memory', () => {
    expect(facts.diskAvailBytes).toBeGreaterThan(0);
    expect(facts.memAvailBytes).toBeGreaterThan(0);
    // Exact bytes, not awk's %.6g ("2.41625e+10"): a whole number of KiB, close to MemAvailable now.
    expect(facts.memAvailBytes % 1024).toBe(0);
    const now = Number(/^MemAvailable:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
    expect(Math.abs(facts.memAvailBytes - now) / now).toBeLessThan(0.2);
  });

  it('reports CRIU as this host sees it', () => {
    const criu = spawnSync('sh', ['-c', 'command -v criu'], { encoding: 'utf8' });
    if (criu.status !== 0) {
      expect(facts.criuVersion).toBeUndefined();
      expect(facts.criuCheck).toBeUndefined();
      return;
    }
    const out = spawnSync('criu', ['--version'], { encoding: 'utf8' }).stdout;
    expect(facts.criuVersion).toBe(/^Version: *(.*)$/m.exec(out)?.[1]);
    expect(typeof facts.criuCheck).toBe('number');
    expect(facts.criuCheckOutput.length).toBeGreaterThan(0);
    expect(facts.criuCheckOutput.length).toBeLessThanOrEqual(5);
  });

  it('reports a network lock backend when iptables or nft is there', () => {
    const has = (tool: string): boolean => spawnSync('sh', ['-c', `${REMOTE_PATH}; command -v ${tool}`]).status === 0;
    expect(facts.networkLock).toBe(has('iptables') ? 'iptables' : has('nft') ? 'nftables' : undefined);
  });

  it('prints nothing but key=value lines', () => {
    for (const line of raw.split('\n').filter(Boolean)) expect(line).toMatch(/^[a-z]+=/);
  });
});

describe('parsePreflight', () => {
  it('reads every key', () => {
    const out = [
      'uid=0',
      'arch=x86_64',
      'criu=4.2.1',
      'criucheck=0',
      'criucheckout=Looks good.',
      'lock=nftables',
      'disk=1073741824',
      'mem=2147483648',
      'pidtaken=100',
      'missing=/srv/a',
    ].join('\n');
    expect(parsePreflight(out)).toEqual({
      uid: 0,
      arch: 'x86_64',
      criuVersion: '4.2.1',
      criuCheck: 0,
      criuCheckOutput: ['Looks good.'],
      networkLock: 'nftables',
      diskAvailBytes: 1073741824,
      memAvailBytes: 2147483648,
      pidsTaken: [100],
      missingPaths: ['/srv/a'],
      listening: [],
      badSizes: [],
      sharedProbes: [],
      ptysTaken: [],
    });
  });

  it('has safe defaults for empty output (not root, nothing known)', () => {
    expect(parsePreflight('')).toEqual({ uid: -1, arch: '', criuCheckOutput: [], diskAvailBytes: 0, memAvailBytes: 0, pidsTaken: [], missingPaths: [], listening: [], badSizes: [], sharedProbes: [], ptysTaken: [] });
  });

  it('collects repeated pidtaken, missing and criucheckout lines in order', () => {
    const f = parsePreflight('pidtaken=7\nmissing=/a\npidtaken=9\nmissing=/b c\ncriucheckout=one\ncriucheckout=two\n');
    expect(f.pidsTaken).toEqual([7, 9]);
    expect(f.missingPaths).toEqual(['/a', '/b c']);
    expect(f.criuCheckOutput).toEqual(['one', 'two']);
  });

  it('keeps everything after the first = in a value', () => {
    const f = parsePreflight('missing=/odd=name\ncriucheckout=Error (a=b): x\n');
    expect(f.missingPaths).toEqual(['/odd=name']);
    expect(f.criuCheckOutput).toEqual(['Error (a=b): x']);
  });

  it('ignores garbage, unknown keys, banners and unknown lock names', () => {
    const f = parsePreflight('Welcome to host!\n*** motd ***\nfoo=bar\nuid=0\nlock=pf\n=x\n\n');
    expect(f.uid).toBe(0);
    expect(f.networkLock).toBeUndefined();
    expect(f).toMatchObject({ arch: '', pidsTaken: [], missingPaths: [] });
  });

  it('an empty criu= (criu present, version unreadable) leaves the version unset', () => {
    expect(parsePreflight('criu=\n').criuVersion).toBeUndefined();
  });

  it('empty or non-numeric disk and mem read as 0', () => {
    const f = parsePreflight('disk=\nmem=abc\n');
    expect(f.diskAvailBytes).toBe(0);
    expect(f.memAvailBytes).toBe(0);
  });

  it('the last value of a single-valued key wins', () => {
    expect(parsePreflight('uid=1000\nuid=0\n').uid).toBe(0);
  });
});

describe('diskNeeded', () => {
  it('is the RSS plus 5 % plus 64 MiB, rounded up', () => {
    expect(diskNeeded(0)).toBe(64 * MiB);
    expect(diskNeeded(100 * MiB)).toBe(105 * MiB + 64 * MiB);
    expect(diskNeeded(1)).toBe(2 + 64 * MiB);
    expect(Number.isInteger(diskNeeded(12345))).toBe(true);
  });
});

describe('judgePreflight', () => {
  const good: TargetFacts = {
    uid: 0,
    arch: 'x86_64',
    criuVersion: '4.2.1',
    criuCheck: 0,
    criuCheckOutput: ['Looks good.'],
    networkLock: 'iptables',
    diskAvailBytes: 10 * 1024 * MiB,
    memAvailBytes: 8 * 1024 * MiB,
    pidsTaken: [],
    missingPaths: [],
    listening: [],
    badSizes: [],
    sharedProbes: [],
    ptysTaken: [],
  };
  const needs: Needs = {
    target: 'root@b',
    arch: 'x86_64',
    localCriu: v('4.2'),
    footprint: { pids: [100, 101], rssBytes: 512 * MiB, paths: ['/srv/x'] },
    tcpEstablished: false,
  };

  function fail(t: Partial<TargetFacts>, n: Partial<Needs> = {}): CedanaError {
    try {
      judgePreflight({ ...good, ...t }, { ...needs, ...n });
    } catch (e) {
      expect(e).toBeInstanceOf(CedanaError);
      return e as CedanaError;
    }
    throw new Error('judgePreflight accepted');
  }

  it('accepts a target that has everything', () => {
    expect(() => judgePreflight(good, needs)).not.toThrow();
    expect(() => judgePreflight({ ...good, criuVersion: '4.3' }, { ...needs, localCriu: v('4.2.1') })).not.toThrow();
    expect(() => judgePreflight({ ...good, networkLock: 'nftables' }, { ...needs, tcpEstablished: true })).not.toThrow();
  });

  it('TARGET_NOT_ROOT', () => {
    const e = fail({ uid: 1000 });
    expect(e.code).toBe('TARGET_NOT_ROOT');
    expect(e.message).toContain('uid 1000');
    expect(e.message).toContain('root@b');
    expect(fail({ uid: -1 }).code).toBe('TARGET_NOT_ROOT'); // nothing reported at all
  });

  it('CPU_INCOMPATIBLE for another page size (a 16K-page arm64 kernel against a 4K one); unknown on either side is not refused', () => {
    const e = fail({ pageSize: 16384 }, { pageSize: 4096 });
    expect(e.code).toBe('CPU_INCOMPATIBLE');
    expect(e.message).toContain('16384-byte memory pages, this host 4096-byte ones');
    expect(() => judgePreflight({ ...good, pageSize: 4096 }, { ...needs, pageSize: 4096 })).not.toThrow();
    expect(() => judgePreflight({ ...good, pageSize: undefined }, { ...needs, pageSize: 4096 })).not.toThrow();
  });

  it('CPU_INCOMPATIBLE for another architecture', () => {
    const e = fail({ arch: 'aarch64' });
    expect(e.code).toBe('CPU_INCOMPATIBLE');
    expect(e.message).toBe('root@b is aarch64, this host is x86_64');
  });

  it('TARGET_CRIU_MISSING when criu is absent', () => {
    expect(fail({ criuVersion: undefined, criuCheck: undefined }).code).toBe('TARGET_CRIU_MISSING');
    expect(fail({ criuVersion: 'garbage' }).code).toBe('TARGET_CRIU_MISSING');
  });

  it('TARGET_CRIU_MISSING when criu is older than 4.2', () => {
    const e = fail({ criuVersion: '4.1.1' });
    expect(e.code).toBe('TARGET_CRIU_MISSING');
    expect(e.message).toContain('criu 4.1.1 on root@b is too old');
    expect(e.details).toEqual({ targetCriu: '4.1.1' });
    expect(fail({ criuVersion: '3.19' }).code).toBe('TARGET_CRIU_MISSING');
  });

  it('TARGET_CRIU_MISSING when criu is older than this host’s', () => {
    const e = fail({ criuVersion: '4.2' }, { localCriu: v('4.2.1') });
    expect(e.code).toBe('TARGET_CRIU_MISSING');
    expect(e.message).toContain("this host's 4.2.1");
    expect(() => judgePreflight({ ...good, criuVersion: '4.2.1' }, { ...needs, localCriu: v('4.2.1') })).not.toThrow();
  });

  it('TARGET_UNSUPPORTED when criu check fails, quoting its output', () => {
    const e = fail({ criuCheck: 1, criuCheckOutput: ['Error (cr-check.c:1): no userfaultfd', 'Looks bad.'] });
    expect(e.code).toBe('TARGET_UNSUPPORTED');
    expect(e.message).toContain('no userfaultfd | Looks bad.');
    expect(fail({ criuCheck: undefined }).code).toBe('TARGET_UNSUPPORTED');
  });

  it('TARGET_UNSUPPORTED when established TCP needs a lock backend and there is none', () => {
    const e = fail({ networkLock: undefined }, { tcpEstablished: true });
    expect(e.code).toBe('TARGET_UNSUPPORTED');
    expect(e.message).toContain('neither iptables nor nft');
    expect(() => judgePreflight({ ...good, networkLock: undefined }, needs)).not.toThrow();
  });

  it('TARGET_NO_SPACE below diskNeeded, with the numbers', () => {
    const need = diskNeeded(needs.footprint.rssBytes);
    const e = fail({ diskAvailBytes: need - 1 });
    expect(e.code).toBe('TARGET_NO_SPACE');
    expect(e.details).toEqual({ availableBytes: need - 1, neededBytes: need });
    expect(() => judgePreflight({ ...good, diskAvailBytes: need }, needs)).not.toThrow();
  });

  it('TARGET_NO_MEMORY below the RSS, with the numbers', () => {
    const e = fail({ memAvailBytes: 100 * MiB });
    expect(e.code).toBe('TARGET_NO_MEMORY');
    expect(e.message).toContain('100 MiB of memory available, the tree uses 512 MiB');
    expect(e.details).toEqual({ availableBytes: 100 * MiB, neededBytes: 512 * MiB });
    expect(() => judgePreflight({ ...good, memAvailBytes: 512 * MiB }, needs)).not.toThrow();
  });

  it('TARGET_PID_IN_USE with the pids', () => {
    const one = fail({ pidsTaken: [101] });
    expect(one.code).toBe('TARGET_PID_IN_USE');
    expect(one.message).toContain('PID 101 needed by the tree is taken');
    expect(one.details).toEqual({ pids: [101] });
    const two = fail({ pidsTaken: [100, 101] });
    expect(two.message).toContain('PID 100, 101 needed by the tree are taken');
  });

  it('FILES_MISSING_ON_TARGET with all the paths in details and 10 in the message', () => {
    const missing = Array.from({ length: 12 }, (_, i) => `/srv/f${i}`);
    const e = fail({ missingPaths: missing });
    expect(e.code).toBe('FILES_MISSING_ON_TARGET');
    expect(e.details).toEqual({ missing });
    expect(e.message).toContain('/srv/f9 and 2 more');
    expect(e.message).not.toContain('/srv/f10');
    expect(fail({ missingPaths: ['/a'] }).message).toMatch(/: \/a$/);
  });

  it('reports the first failure, in a fixed order', () => {
    const all: Partial<TargetFacts> = {
      uid: 1000,
      arch: 'aarch64',
      criuVersion: '4.0',
      criuCheck: 1,
      networkLock: undefined,
      diskAvailBytes: 0,
      memAvailBytes: 0,
      pidsTaken: [100],
      missingPaths: ['/x'],
    };
    const order: [string, Partial<TargetFacts>][] = [
      ['TARGET_NOT_ROOT', { uid: 0 }],
      ['CPU_INCOMPATIBLE', { arch: 'x86_64' }],
      ['TARGET_CRIU_MISSING', { criuVersion: '4.2' }],
      ['TARGET_UNSUPPORTED', { criuCheck: 0 }],
      ['TARGET_UNSUPPORTED', { networkLock: 'iptables' }],
      ['TARGET_NO_SPACE', { diskAvailBytes: 1e12 }],
      ['TARGET_NO_MEMORY', { memAvailBytes: 1e12 }],
      ['TARGET_PID_IN_USE', { pidsTaken: [] }],
      ['FILES_MISSING_ON_TARGET', { missingPaths: [] }],
    ];
    let facts: Partial<TargetFacts> = all;
    for (const [code, fix] of order) {
      expect(fail(facts, { tcpEstablished: true }).code).toBe(code);
      facts = { ...facts, ...fix };
    }
    expect(() => judgePreflight({ ...good, ...facts }, { ...needs, tcpEstablished: true })).not.toThrow();
  });

  it('every failure has a hint', () => {
    for (const t of [{ uid: 1 }, { arch: 'x' }, { criuVersion: undefined }, { criuCheck: 2 }, { diskAvailBytes: 0 }, { memAvailBytes: 0 }, { pidsTaken: [1] }, { missingPaths: ['/'] }]) {
      expect(fail(t).hint).toBeTruthy();
    }
  });
});

describe('the CPU check inside the preflight round trip', () => {
  it('runs criu cpuinfo check there against this host\'s cpuinfo image: the same host passes', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cedana-cpu-'));
    try {
      const dump = spawnSync('criu', ['cpuinfo', 'dump', '-D', dir, '-o', join(dir, 'log')]);
      expect(dump.status).toBe(0);
      const fp: Footprint = { pids: [], rssBytes: 1, paths: [] };
      const r = runSh(preflightScript(fp, dir, readFileSync(join(dir, 'cpuinfo.img'))));
      const facts = parsePreflight(r.stdout);
      expect(facts.cpuCheck).toBe(0);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a damaged cpuinfo image fails the check, and judgePreflight says CPU_INCOMPATIBLE', async () => {
    const fp: Footprint = { pids: [], rssBytes: 1, paths: [] };
    const facts = parsePreflight(runSh(preflightScript(fp, '/', Buffer.from('not a cpuinfo image'))).stdout);
    expect(facts.cpuCheck).toBeGreaterThan(0);
    const t: TargetFacts = { ...facts, uid: 0, criuCheck: 0, diskAvailBytes: 1 << 30, memAvailBytes: 1 << 30 };
    let err: unknown;
    try {
      judgePreflight(t, { target: 'b', arch: facts.arch, localCriu: parseVersionText('4.2')!, footprint: fp, tcpEstablished: false });
    } catch (e) {
      err = e;
    }
    expect((err as CedanaError).code).toBe('CPU_INCOMPATIBLE');
  });
});

describe('what the preflight learns for shipping, remapping and connections (with the local sh)', () => {
  let dir: string;
  let server: Server;
  let port: number;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-pf2-'));
    await writeFile(join(dir, 'right'), '12345');
    await writeFile(join(dir, 'wrong size'), '123');
    server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('reports files of another size, the addresses and the listening ports there', () => {
    const fp: Footprint = { pids: [], rssBytes: 1, paths: [] };
    const r = runSh(preflightScript(fp, dir, undefined, {
      paths: [join(dir, 'right')],
      sized: [{ path: join(dir, 'right'), size: 5 }, { path: join(dir, 'wrong size'), size: 5 }, { path: join(dir, 'absent'), size: 5 }],
    }));
    expect(r.status).toBe(0);
    const f = parsePreflight(r.stdout);
    expect(f.badSizes).toEqual([{ path: join(dir, 'wrong size'), size: 3 }]);
    expect(f.addresses).toContain('127.0.0.1');
    expect(f.listening).toContainEqual({ addr: '127.0.0.1', port });
  });

  it('parses the lines', () => {
    const f = parsePreflight(['ipaddr=1', 'addr=10.0.0.2/24', 'addr=fd00:0::1/64', 'listen=0100007F:1F90', 'listen=00000000000000000000000000000000:0016', 'badsize=7 /a b'].join('\n'));
    expect(f.addresses).toEqual(['10.0.0.2', 'fd00::1']);
    expect(f.listening).toEqual([{ addr: '127.0.0.1', port: 8080 }, { addr: '::', port: 22 }]);
    expect(f.badSizes).toEqual([{ path: '/a b', size: 7 }]);
    expect(parsePreflight('uid=0').addresses).toBeUndefined(); // no ip there: unknown, not empty
    expect(parsePreflight('ipaddr=1').addresses).toEqual([]);
  });
});

describe('portConflicts', () => {
  it('collides on the same port when either side is a wildcard or the addresses are equal', () => {
    expect(portConflicts([{ addr: '0.0.0.0', port: 80 }], [{ addr: '10.0.0.2', port: 80 }])).toHaveLength(1);
    expect(portConflicts([{ addr: '10.0.0.2', port: 80 }], [{ addr: '::', port: 80 }])).toHaveLength(1);
    expect(portConflicts([{ addr: '10.0.0.2', port: 80 }], [{ addr: '10.0.0.2', port: 80 }])).toHaveLength(1);
    expect(portConflicts([{ addr: '10.0.0.2', port: 80 }], [{ addr: '10.0.0.3', port: 80 }])).toEqual([]);
    expect(portConflicts([{ addr: '0.0.0.0', port: 80 }], [{ addr: '0.0.0.0', port: 81 }])).toEqual([]);
  });
});

describe('judgePreflight with shipping, sizes and ports', () => {
  const good: TargetFacts = {
    uid: 0, arch: 'x86_64', criuVersion: '4.2.1', criuCheck: 0, criuCheckOutput: [], networkLock: 'iptables',
    diskAvailBytes: 10 * 1024 * MiB, memAvailBytes: 8 * 1024 * MiB, pidsTaken: [], missingPaths: [], listening: [], badSizes: [], sharedProbes: [], ptysTaken: [],
  };
  const needs: Needs = { target: 'b', arch: 'x86_64', localCriu: v('4.2'), footprint: { pids: [1], rssBytes: MiB, paths: [] }, tcpEstablished: false };
  const err = (t: Partial<TargetFacts>, n: Partial<Needs> = {}): CedanaError | undefined => {
    try {
      judgePreflight({ ...good, ...t }, { ...needs, ...n });
      return undefined;
    } catch (e) {
      return e as CedanaError;
    }
  };

  it('missing paths that will be shipped are not refused; the others are, with a hint to ship them', () => {
    expect(err({ missingPaths: ['/tmp/a'] }, { shipping: ['/tmp/a'] })).toBeUndefined();
    const e = err({ missingPaths: ['/tmp/a', '/tmp/big'] }, { shipping: ['/tmp/a'] })!;
    expect(e.code).toBe('FILES_MISSING_ON_TARGET');
    expect(e.details.missing).toEqual(['/tmp/big']);
    expect(e.hint).toMatch(/--ship-files/);
  });

  it('a --map-path target of another size is REMAP_INVALID; a taken port is TARGET_PORT_IN_USE with a --map-port hint', () => {
    const s = err({ badSizes: [{ path: '/new/log', size: 3 }] })!;
    expect(s.code).toBe('REMAP_INVALID');
    expect(s.message).toContain('/new/log (3 bytes)');
    const p = err({ listening: [{ addr: '0.0.0.0', port: 8000 }] }, { listening: [{ addr: '0.0.0.0', port: 8000 }] })!;
    expect(p.code).toBe('TARGET_PORT_IN_USE');
    expect(p.hint).toContain('--map-port 8000:NEW');
    expect(err({ listening: [{ addr: '0.0.0.0', port: 8000 }] }, { listening: [{ addr: '0.0.0.0', port: 9000 }] })).toBeUndefined();
  });
});

describe('preflightScript: shared-storage probes and pseudo-terminals', () => {
  const fp: Footprint = { pids: [4242], rssBytes: MiB, paths: ['/srv/app/db'] };
  const T1 = '0123456789abcdef0123456789abcdef';
  const T2 = 'fedcba9876543210fedcba9876543210';

  /** The lines of the probe heredoc (the loop, the probe lines, the terminator). */
  function probePart(script: string): string[] {
    const lines = script.split('\n');
    const start = lines.findIndex((l) => l.endsWith("<<'CEDANA_PROBES'"));
    if (start < 0) return [];
    return lines.slice(start, lines.indexOf('CEDANA_PROBES', start) + 1);
  }
  const ptyLine = (script: string): string | undefined => script.split('\n').find((l) => l.startsWith('for n in '));

  it('one `token path` line per probe inside a heredoc that reads them', () => {
    const s = preflightScript(fp, '/tmp', undefined, { paths: fp.paths, probes: [{ path: '/nfs/app/.cedana-probe-0123456789ab', token: T1 }, { path: '/nfs/my dir/.cedana-probe-fedcba987654', token: T2 }] });
    const part = probePart(s);
    expect(part[0]).toMatch(/^while IFS=' ' read -r t f; do .*shared=.*<<'CEDANA_PROBES'$/);
    expect(part.slice(1)).toEqual([`${T1} /nfs/app/.cedana-probe-0123456789ab`, `${T2} /nfs/my dir/.cedana-probe-fedcba987654`, 'CEDANA_PROBES']);
    expect(s.split('\n').at(-1)).toBe('exit 0');
  });

  it('skips a probe with a newline in its path, a relative path, or a token that is not lowercase hex', () => {
    const s = preflightScript(fp, '/tmp', undefined, {
      paths: fp.paths,
      probes: [
        { path: '/nfs/bad\nname', token: T1 },
        { path: 'relative/probe', token: T1 },
        { path: '/nfs/a', token: 'not hex' },
        { path: '/nfs/b', token: `${T1}\nrm -rf /` },
        { path: '/nfs/c', token: T1.toUpperCase() },
        { path: '/nfs/d', token: '' },
        { path: '/nfs/ok', token: T2 },
      ],
    });
    expect(probePart(s).slice(1)).toEqual([`${T2} /nfs/ok`, 'CEDANA_PROBES']);
    expect(s).not.toContain('/nfs/bad');
    expect(s).not.toContain('rm -rf');
  });

  it('no probes (or none valid): no probe lines at all', () => {
    expect(preflightScript(fp, '/tmp')).not.toContain('CEDANA_PROBES');
    expect(preflightScript(fp, '/tmp', undefined, { paths: [], probes: [{ path: '/x\ny', token: T1 }] })).not.toContain('CEDANA_PROBES');
  });

  it('a loop over the pty indexes the tree needs, only when there are some', () => {
    const s = preflightScript(fp, '/tmp', undefined, { paths: fp.paths, ptys: [0, 3, 300] });
    expect(ptyLine(s)).toBe('for n in 0 3 300; do [ -e /dev/pts/$n ] && echo "ptytaken=$n"; done');
    expect(ptyLine(preflightScript(fp, '/tmp', undefined, { paths: [], ptys: [] }))).toBeUndefined();
    expect(ptyLine(preflightScript(fp, '/tmp'))).toBeUndefined();
  });

  it('the probe lines, run with sh: shared= for each probe found holding its token, and only those', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cedana-pf-probe-'));
    try {
      await mkdir(join(dir, 'with space'));
      const same = join(dir, 'with space', '.cedana-probe-0123456789ab');
      const other = join(dir, '.cedana-probe-fedcba987654');
      const longer = join(dir, '.cedana-probe-aaaaaaaaaaaa');
      await writeFile(same, T1);
      await writeFile(other, T1); // another host's probe: another token
      await writeFile(longer, `${T2}x`);
      const probes = [
        { path: same, token: T1 },
        { path: other, token: T2 },
        { path: longer, token: T2 },
        { path: join(dir, 'absent'), token: T2 },
      ];
      const part = probePart(preflightScript(fp, dir, undefined, { paths: [], probes }));
      const r = runSh(part.join('\n') + '\n');
      expect(r.stderr).toBe('');
      expect(r.stdout).toBe(`shared=${same}\n`);
      expect(parsePreflight(r.stdout).sharedProbes).toEqual([same]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it.skipIf(spawnSync('python3', ['-c', 'pass']).status !== 0)('the pty line, run with sh: a pseudo-terminal open here is taken, a free index is not', async () => {
    // python3 holds a pty open (its /dev/pts/N exists while it runs).
    const holder = spawn('python3', ['-c', 'import os, time; m, s = os.openpty(); print(os.ttyname(s), flush=True); time.sleep(30)'], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const name = await new Promise<string>((resolve) => {
        let out = '';
        holder.stdout!.on('data', (b: Buffer) => {
          out += b.toString();
          if (out.includes('\n')) resolve(out.trim());
        });
      });
      const n = Number(/^\/dev\/pts\/(\d+)$/.exec(name)?.[1]);
      expect(Number.isInteger(n)).toBe(true);
      const free = 999_999;
      expect(existsSync(`/dev/pts/${free}`)).toBe(false);
      const r = runSh(`${ptyLine(preflightScript(fp, '/tmp', undefined, { paths: [], ptys: [n, free] }))}\nexit 0\n`);
      expect(parsePreflight(r.stdout).ptysTaken).toEqual([n]);
    } finally {
      holder.kill('SIGKILL');
    }
  });
});

describe('parsePreflight: probes and pseudo-terminals', () => {
  it('reads shared= (paths with spaces and =) and ptytaken= lines, in order', () => {
    const f = parsePreflight('uid=0\nshared=/nfs/app/.cedana-probe-0123456789ab\nptytaken=3\nshared=/nfs/my dir/a=b/.cedana-probe-fedcba987654\nptytaken=300\n');
    expect(f.sharedProbes).toEqual(['/nfs/app/.cedana-probe-0123456789ab', '/nfs/my dir/a=b/.cedana-probe-fedcba987654']);
    expect(f.ptysTaken).toEqual([3, 300]);
  });
});

describe('judgePreflight: pseudo-terminals', () => {
  const good: TargetFacts = {
    uid: 0, arch: 'x86_64', criuVersion: '4.2.1', criuCheck: 0, criuCheckOutput: [], networkLock: 'iptables',
    diskAvailBytes: 10 * 1024 * MiB, memAvailBytes: 8 * 1024 * MiB, pidsTaken: [], missingPaths: [], listening: [], badSizes: [], sharedProbes: [], ptysTaken: [],
  };
  const needs: Needs = { target: 'root@b', arch: 'x86_64', localCriu: v('4.2'), footprint: { pids: [1], rssBytes: MiB, paths: [] }, tcpEstablished: false };

  it('TARGET_PTY_IN_USE names each taken terminal', () => {
    let e: unknown;
    try {
      judgePreflight({ ...good, ptysTaken: [0, 3] }, needs);
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(CedanaError);
    const c = e as CedanaError;
    expect(c.code).toBe('TARGET_PTY_IN_USE');
    expect(c.exitCode).toBe(49);
    expect(c.message).toContain('/dev/pts/0, /dev/pts/3');
    expect(c.message).toContain('are in use on root@b');
    expect(c.details.ptys).toEqual([0, 3]);
  });

  it('one taken terminal reads "is"; none taken passes; shared probes alone never refuse', () => {
    expect(() => judgePreflight({ ...good, ptysTaken: [5] }, needs)).toThrow(/pseudo-terminal \/dev\/pts\/5 that the tree holds is in use/);
    expect(() => judgePreflight({ ...good, sharedProbes: ['/nfs/.cedana-probe-0123456789ab'] }, needs)).not.toThrow();
    expect(() => judgePreflight(good, needs)).not.toThrow();
  });
});
