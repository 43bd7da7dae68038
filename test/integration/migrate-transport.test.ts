/**
 * The page streams' transport: OpenSSH's `ssh -W` through one connection pinned to the host key
 * cedana verified (the default where `ssh` is installed), or ssh2. Real sshd in the test bed, real
 * OpenSSH client, processes checked by their own checksums.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor } from '../helpers/processes.js';
import { expectSourceIntact as sourceIntact, startBed, type Bed } from '../helpers/testbed.js';
import type { TestHost } from '../../scripts/testbed/host.js';
import { SshSession } from '../../src/transport/ssh.js';
import { OpenSshLink, PIN_ALIAS } from '../../src/transport/openssh.js';

const owned = new Owned();
let bed: Bed;
let host: TestHost;
let shared: string;

beforeAll(async () => {
  bed = await startBed([27]);
  host = bed.hosts[0]!;
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(async () => {
  await bed?.destroy();
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

/** A process's arguments ([] once it is gone). */
function argv(pid: number | string): string[] {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/** PIDs of OpenSSH processes cedana started for the page streams (they carry the pin's alias). */
function pinnedSsh(): number[] {
  return readdirSync('/proc').filter((d) => /^\d+$/.test(d) && argv(d)[0] === 'ssh' && argv(d).some((a) => a.includes(PIN_ALIAS))).map(Number);
}

/** The restored copy on the target reports the checksum its memory had on the source. */
async function expectMovedIntact(dir: string, pid: number, sha0: string): Promise<void> {
  expect(alive(pid)).toBe(false);
  expect((await bed.onHost(host, `kill -USR1 ${pid}`)).exitCode).toBe(0);
  expect(await waitFor('checksum on the target', () => readText(join(dir, 'sha-1')), 30_000)).toBe(sha0);
  await bed.onHost(host, `kill -9 ${pid}`);
}

const expectSourceIntact = (dir: string, pid: number, sha0: string): Promise<void> => sourceIntact(bed, host, dir, pid, sha0);

/** A PATH holding everything this one has, except OpenSSH's client. */
function pathWithoutSsh(root: string): string {
  const bin = join(root, 'bin');
  mkdirSync(bin);
  const dirs = [dirname(process.execPath), ...(process.env.PATH ?? '').split(':')];
  for (const d of dirs) {
    let names: string[] = [];
    try {
      names = readdirSync(d);
    } catch {
      continue;
    }
    for (const n of names) {
      if (n === 'ssh') continue;
      try {
        symlinkSync(join(d, n), join(bin, n));
      } catch {
        // the first directory on PATH wins, as for the shell
      }
    }
  }
  return bin;
}

describe('migrate --transport', () => {
  it('by default carries the memory through OpenSSH, pinned to the verified host key, and leaves no ssh behind', async () => {
    const { dir, pid, sha0 } = await owned.memhog(128, await mkdtemp(join(shared, 'mem-')));
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name], { env: bed.env });
    expect(r.decisions.some((d: string) => d.startsWith('page streams: OpenSSH'))).toBe(true);
    expect(r.memoryBytes).toBeGreaterThanOrEqual(128 * 1024 * 1024);
    // The count comes from OpenSSH's reads: the memory, CRIU's page-server headers, a little of the network.
    expect(r.memoryBytes).toBeLessThan(140 * 1024 * 1024);
    await expectMovedIntact(dir, pid, sha0);
    expect(pinnedSsh()).toEqual([]);
  });

  it('--transport ssh2 carries it through ssh2', async () => {
    const { dir, pid, sha0 } = await owned.memhog(64, await mkdtemp(join(shared, 'mem-')));
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--transport', 'ssh2'], { env: bed.env });
    expect(r.decisions).toContain('page streams: ssh2 (--transport ssh2)');
    await expectMovedIntact(dir, pid, sha0);
  });

  it('pre-copy by content sends its rounds and the final step through OpenSSH', async () => {
    const { dir, pid, sha0 } = await owned.memhog(64, await mkdtemp(join(shared, 'mem-')));
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--precopy', '--max-rounds', '2'], { env: bed.env });
    expect(r.mode).toBe('precopy');
    expect(r.decisions.some((d: string) => d.startsWith('page streams: OpenSSH'))).toBe(true);
    expect(r.precopy.rounds.length).toBeGreaterThanOrEqual(1);
    await expectMovedIntact(dir, pid, sha0);
    expect(pinnedSsh()).toEqual([]);
  });

  it('without an OpenSSH client: auto falls back to ssh2; --transport openssh refuses before freezing', async () => {
    const root = await mkdtemp(join(shared, 'path-'));
    const env = { ...bed.env, PATH: pathWithoutSsh(root) };
    const a = await owned.memhog(32, await mkdtemp(join(shared, 'mem-')));
    const refused = await cedana(['migrate', String(a.pid), '--to', host.name, '--transport', 'openssh', '--json'], { env });
    expect(refused.exitCode).not.toBe(0);
    expect(refused.json!.error).toMatchObject({ code: 'SSH_FAILED', sourceResumed: true });
    expect(refused.json!.error.message).toMatch(/no OpenSSH client/);
    await expectSourceIntact(a.dir, a.pid, a.sha0);
    const r = await cedanaOk(['migrate', String(a.pid), '--to', host.name], { env });
    expect(r.decisions).toContain('page streams: ssh2 (OpenSSH not usable: no OpenSSH client (ssh) here)');
    await expectMovedIntact(a.dir, a.pid, a.sha0);
  });

  it('the OpenSSH connection lost while the memory moves: the source resumes, intact', async () => {
    const { dir, pid, sha0 } = await owned.memhog(384, await mkdtemp(join(shared, 'mem-')));
    const { spawn } = await import('node:child_process');
    const { BIN, parseJsonLine } = await import('../helpers/cedana.js');
    const child = spawn('node', [BIN, 'migrate', String(pid), '--to', host.name, '--json'], { env: { ...process.env, ...bed.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let events = '';
    let killed: number[] = [];
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      events += d.toString();
      if (killed.length === 0 && /"event":"progress","phase":"memory","bytes":[1-9]/.test(events)) {
        // The connection's master: the one OpenSSH process of the migration that runs with -M.
        killed = pinnedSsh().filter((p) => argv(p).includes('-M'));
        for (const p of killed) process.kill(p, 'SIGKILL');
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(killed.length, events.slice(-2000)).toBe(1);
    expect(code).not.toBe(0);
    const json = parseJsonLine(stdout)!;
    expect(json.ok).toBe(false);
    expect(json.error.sourceResumed).toBe(true);
    await expectSourceIntact(dir, pid, sha0);
    expect(pinnedSsh()).toEqual([]);
  });
});

describe('migrate --precopy-by', () => {
  it('content pre-copies by itself; soft-dirty is refused on this kernel (it has none) before anything is frozen; either with --no-precopy is a usage error', async () => {
    const { dir, pid, sha0 } = await owned.memhog(32, await mkdtemp(join(shared, 'mem-')));
    const soft = await cedana(['migrate', String(pid), '--to', host.name, '--precopy-by', 'soft-dirty', '--json'], { env: bed.env });
    expect(soft.exitCode).toBe(7);
    expect(soft.json!.error.code).toBe('HOST_UNSUPPORTED');
    expect(soft.json!.error.hint).toMatch(/--precopy-by content/);
    const both = await cedana(['migrate', String(pid), '--to', host.name, '--no-precopy', '--precopy-by', 'content', '--json'], { env: bed.env });
    expect(both.exitCode).toBe(2);
    expect(both.json!.error.code).toBe('USAGE');
    await expectSourceIntact(dir, pid, sha0);
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--precopy-by', 'content', '--max-rounds', '2'], { env: bed.env });
    expect(r.mode).toBe('precopy');
    expect(r.decisions.join('\n')).toMatch(/pre-copy by content: \d+ round\(s\)/);
    await expectMovedIntact(dir, pid, sha0);
  });
});

describe('OpenSSH link', () => {
  it('refuses a host that answers with another key than the one the session verified', async () => {
    const session = await SshSession.connect(host.name, { sshDir: bed.ssh.sshDir });
    try {
      expect(session.direct).toBeDefined();
      const keyDir = await mkdtemp(join(shared, 'key-'));
      execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(keyDir, 'other')]);
      const other = Buffer.from((await readFile(join(keyDir, 'other.pub'), 'utf8')).split(' ')[1]!, 'base64');
      const dir = await mkdtemp(join(shared, 'link-'));
      await expect(OpenSshLink.open({ ...session.direct!, hostKey: other }, dir, host.name)).rejects.toMatchObject({ code: 'HOST_KEY_MISMATCH' });
      // With the key the session verified, the same connection comes up.
      const dir2 = await mkdtemp(join(shared, 'link-'));
      const link = await OpenSshLink.open(session.direct!, dir2, host.name);
      expect(link.isOpen).toBe(true);
      await link.close();
      expect(pinnedSsh()).toEqual([]);
    } finally {
      session.close();
    }
  });
});
