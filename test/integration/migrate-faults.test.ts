/**
 * Whatever fails during a migration, the source ends up running where it was, its memory intact,
 * and the target is cleaned up: sshd killed mid-transfer, the target's restore failing, SIGINT to
 * cedana, an unknown or changed host key, a target without CRIU.
 */
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cedana, cedanaOk, parseJsonLine } from '../helpers/cedana.js';
import { Owned, alive, killChildren, readText, waitFor } from '../helpers/processes.js';
import { expectSourceIntact as sourceIntact, startBed, type Bed } from '../helpers/testbed.js';
import type { TestHost } from '../../scripts/testbed/host.js';

const owned = new Owned();
let bed: Bed;
let host: TestHost;
let shared: string;

beforeAll(async () => {
  bed = await startBed([12]);
  host = bed.hosts[0]!;
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(async () => {
  await bed?.destroy();
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const memhog = async (mib: number) => owned.memhog(mib, await mkdtemp(join(shared, 'mem-')));

const expectSourceIntact = (dir: string, pid: number, sha0: string): Promise<void> => sourceIntact(bed, host, dir, pid, sha0);

/** Shell: "gone" when no process PID runs (a zombie, not yet reaped, counts as gone), else "there STATE". */
const presence = (pid: number): string => `s=$(sed "s/.*) //" /proc/${pid}/stat 2>/dev/null | cut -d" " -f1); case "$s" in ""|Z|X) echo gone;; *) echo "there $s";; esac`;

/** Starts a migration with JSON events and calls onMemory once memory is moving. */
function migrateWithHook(pid: number, onMemory: (cedanaPid: number) => void): Promise<{ code: number | null; json?: Record<string, any> }> {
  const child = spawn('node', [BIN, 'migrate', String(pid), '--to', host.name, '--json'], { env: { ...process.env, ...bed.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let fired = false;
  let buf = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    buf += d.toString();
    if (!fired && /"event":"progress","phase":"memory","bytes":[1-9]/.test(buf)) {
      fired = true;
      onMemory(child.pid!);
    }
  });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, json: parseJsonLine(stdout) })));
}

describe('migration faults leave the source running', () => {
  it('sshd on the target killed mid-transfer', async () => {
    const { dir, pid, sha0 } = await memhog(384);
    const r = await migrateWithHook(pid, () => {
      // The per-connection sshd processes are the children of the host's sshd listener.
      killChildren(host.initPid);
    });
    expect(r.code).not.toBe(0);
    expect(r.json!.ok).toBe(false);
    expect(['CONNECTION_LOST', 'CRIU_FAILED']).toContain(r.json!.error.code);
    expect(r.json!.error.sourceResumed).toBe(true);
    await expectSourceIntact(dir, pid, sha0);
  });

  it('SIGINT to cedana mid-migration', async () => {
    const { dir, pid, sha0 } = await memhog(384);
    const r = await migrateWithHook(pid, (cedanaPid) => process.kill(cedanaPid, 'SIGINT'));
    expect(r.code).toBe(130);
    expect(r.json!.error).toMatchObject({ code: 'INTERRUPTED', sourceResumed: true });
    await expectSourceIntact(dir, pid, sha0);
  });

  it("the target's restore failing", async () => {
    const { dir, pid, sha0 } = await memhog(16);
    // The source holds /tmp/<name> open; the target has a file of that path too, of another size:
    // preflight passes (it exists), the target's CRIU then refuses it.
    const name = `cedana-mismatch-${process.pid}`;
    writeFileSync(`/tmp/${name}`, 'on the source\n');
    owned.onCleanup(() => rm(`/tmp/${name}`, { force: true }));
    const holder = owned.python('appender.py', [`/tmp/${name}`]);
    await waitFor('holder writing', () => (readText(`/tmp/${name}`)?.length ?? 0) > 20);
    writeFileSync(bed.path(host, `/tmp/${name}`), 'x');
    const r = await cedana(['migrate', String(holder), '--to', host.name, '--json'], { env: bed.env });
    expect(r.exitCode).toBe(34);
    expect(r.json!.error).toMatchObject({ code: 'TARGET_RESTORE_FAILED', sourceResumed: true });
    expect(r.json!.error.message).toMatch(/size|File/i);
    const n = readText(`/tmp/${name}`)!.length;
    await waitFor('the source to write on', () => readText(`/tmp/${name}`)!.length > n + 20);
    await expectSourceIntact(dir, pid, sha0); // an unrelated process on the source: untouched too
  });

  it("a failure after the target restored: the target's copy is ended before the source resumes (never two of it)", async () => {
    const { dir, pid, sha0 } = await memhog(16);
    const seen = join(dir, 'seen-at-rollback');
    // The post-restore hook fails; the rollback hook, which runs just before the source resumes,
    // looks on the target for the restored copy (the same PID there): it must be gone by then.
    const ssh = `ssh -F ${join(bed.ssh.sshDir, 'config')} -o UserKnownHostsFile=${join(bed.ssh.sshDir, 'known_hosts')} -o BatchMode=yes ${host.name}`;
    const hook = `case "$CEDANA_HOOK" in post-restore) ${ssh} 'kill -0 ${pid}' && echo restored > ${join(dir, 'at-post-restore')}; exit 3;; rollback) ${ssh} '${presence(pid)}' > ${seen};; esac`;
    const r = await cedana(['migrate', String(pid), '--to', host.name, '--hook', hook, '--json'], { env: bed.env });
    expect(r.json!.error).toMatchObject({ code: 'HOOK_FAILED', sourceResumed: true, targetCleanedUp: true });
    expect(readText(join(dir, 'at-post-restore'))?.trim()).toBe('restored');
    expect(readText(seen)?.trim()).toBe('gone');
    await expectSourceIntact(dir, pid, sha0);
  });

  it('a failure after the target restored, the target then unreachable: the source is left stopped, not resumed beside a copy that may run', async () => {
    const { dir, pid, sha0 } = await memhog(16);
    const down = `ip -n ${host.netns} link set eth0 down`;
    owned.onCleanup(async () => void (await execa('ip', ['-n', host.netns, 'link', 'set', 'eth0', 'up'], { reject: false })));
    const hook = `case "$CEDANA_HOOK" in post-restore) ${down}; exit 3;; rollback) touch ${join(dir, 'rolled-back')};; esac`;
    const r = await cedana(['migrate', String(pid), '--to', host.name, '--hook', hook, '--json'], { env: bed.env });
    expect(r.json!.error).toMatchObject({ code: 'HOOK_FAILED', sourceResumed: false, sourceStopped: [pid], targetState: 'unknown', targetCleanedUp: false });
    expect(r.json!.error.hint).toContain(`kill -CONT ${pid}`);
    // Stopped, not running (its heartbeat file is no witness: the copy on the target writes it too, in the shared directory).
    const state = (): string => readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[0]!;
    expect(state()).toBe('T');
    await new Promise((res) => setTimeout(res, 300));
    expect(state()).toBe('T');
    expect(readText(join(dir, 'rolled-back'))).toBeUndefined();
    // Back on the network, the target's copy ends by itself (its lifeline sees the connection gone).
    await execa('ip', ['-n', host.netns, 'link', 'set', 'eth0', 'up']);
    await waitFor('the copy on the target to end', async () => (await bed.onHost(host, presence(pid))).stdout.trim() === 'gone', 120_000);
    // The copy ran on while the target was cut off, and counted further in the shared heartbeat file.
    writeFileSync(join(dir, 'beat'), '0');
    process.kill(pid, 'SIGCONT');
    await expectSourceIntact(dir, pid, sha0);
  });

  it('an unknown host key is refused, and recorded only with --accept-new-host-key', async () => {
    const { dir, pid, sha0 } = await memhog(16);
    const known = join(bed.ssh.sshDir, 'known_hosts');
    const original = readFileSync(known, 'utf8');
    writeFileSync(known, '');
    try {
      const r = await cedana(['migrate', String(pid), '--to', host.name, '--json'], { env: bed.env });
      expect(r.exitCode).toBe(22);
      expect(r.json!.error).toMatchObject({ code: 'HOST_KEY_UNKNOWN', hint: expect.stringMatching(/--accept-new-host-key/) });
      expect(readFileSync(known, 'utf8')).toBe('');
      await expectSourceIntact(dir, pid, sha0);
      const ok = await cedanaOk(['migrate', String(pid), '--to', host.name, '--accept-new-host-key'], { env: bed.env });
      expect(ok.targetPid).toBe(pid);
      expect(readFileSync(known, 'utf8')).toBe(`${host.hostKeyLine}\n`);
      await bed.onHost(host, `kill -9 ${pid}`);
    } finally {
      writeFileSync(known, original);
    }
  });

  it('a changed host key is always refused', async () => {
    const { dir, pid, sha0 } = await memhog(16);
    const known = join(bed.ssh.sshDir, 'known_hosts');
    const original = readFileSync(known, 'utf8');
    const other = join(bed.home, 'other_key');
    await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', other]);
    writeFileSync(known, `${host.address} ${readFileSync(`${other}.pub`, 'utf8').split(' ').slice(0, 2).join(' ')}\n`);
    try {
      for (const extra of [[], ['--accept-new-host-key']]) {
        const r = await cedana(['migrate', String(pid), '--to', host.name, '--json', ...extra], { env: bed.env });
        expect(r.exitCode).toBe(23);
        expect(r.json!.error.code).toBe('HOST_KEY_MISMATCH');
      }
      await expectSourceIntact(dir, pid, sha0);
    } finally {
      writeFileSync(known, original);
    }
  });

  it('a target without room for the image is refused in preflight', async () => {
    const { dir, pid, sha0 } = await memhog(64);
    expect((await bed.onHost(host, 'mkdir -p /run/small && mount -t tmpfs -o size=32m tmpfs /run/small')).exitCode).toBe(0);
    try {
      const r = await cedana(['migrate', String(pid), '--to', host.name, '--target-dir', '/run/small', '--json'], { env: bed.env });
      expect(r.exitCode).toBe(30);
      expect(r.json!.error).toMatchObject({ code: 'TARGET_NO_SPACE', sourceResumed: true });
      expect(r.json!.error.availableBytes).toBeLessThan(r.json!.error.neededBytes);
      await expectSourceIntact(dir, pid, sha0);
    } finally {
      await bed.onHost(host, 'umount /run/small; rmdir /run/small');
    }
  });

  it('a target without CRIU is refused in preflight', async () => {
    const { dir, pid, sha0 } = await memhog(16);
    const criu = (await execa('sh', ['-c', 'command -v criu'])).stdout.trim();
    // Hide criu in the target's own mount namespace only.
    expect((await bed.onHost(host, `mount --bind /dev/null ${criu}`)).exitCode).toBe(0);
    try {
      const r = await cedana(['migrate', String(pid), '--to', host.name, '--json'], { env: bed.env });
      expect(r.exitCode).toBe(27);
      expect(r.json!.error).toMatchObject({ code: 'TARGET_CRIU_MISSING', sourceResumed: true });
      await expectSourceIntact(dir, pid, sha0);
    } finally {
      expect((await bed.onHost(host, `umount ${criu}`)).exitCode).toBe(0);
    }
  });

  it('a target whose CRIU is older (a real one: the release\'s own, with the 24-byte page-server header) is refused in preflight, before anything is frozen', async () => {
    const old = '/var/cache/cedana-test/criu-old/usr/sbin/criu'; // scripts/setup unpacks the release's own CRIU there
    expect(existsSync(old), `${old} (scripts/setup unpacks it)`).toBe(true);
    const { dir, pid, sha0 } = await memhog(16);
    const criu = (await execa('sh', ['-c', 'command -v criu'])).stdout.trim();
    // The old CRIU in place of this one, in the target's own mount namespace only.
    expect((await bed.onHost(host, `mount --bind ${old} ${criu}`)).exitCode).toBe(0);
    try {
      const there = /Version: *(\S+)/.exec((await bed.onHost(host, 'criu --version')).stdout)?.[1];
      expect(there, 'the old CRIU runs there').toMatch(/^(3\.|4\.[01]\.)/);
      const r = await cedana(['migrate', String(pid), '--to', host.name, '--precopy', '--json'], { env: bed.env });
      expect(r.exitCode).toBe(27);
      expect(r.json!.error).toMatchObject({ code: 'TARGET_CRIU_MISSING', sourceResumed: true });
      expect(r.json!.error.message).toContain(`criu ${there} `);
      expect(r.json!.error.message).toMatch(/is too old/);
      await expectSourceIntact(dir, pid, sha0);
    } finally {
      expect((await bed.onHost(host, `umount ${criu}`)).exitCode).toBe(0);
    }
  });
});

