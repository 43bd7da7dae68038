/**
 * A second host for a test file (see scripts/testbed/host.ts), with a private HOME whose ~/.ssh
 * knows it. cedana runs with that HOME, so the user's real ~/.ssh is never read or written.
 */
import { execa } from 'execa';
import { afterAll, beforeAll, expect } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHost, createUserKey, destroyHost, hostPath, type SshSetup, type TestHost } from '../../scripts/testbed/host.js';

export interface Bed {
  home: string;
  ssh: SshSetup;
  hosts: TestHost[];
  /** Environment for cedana: HOME points at the private ~/.ssh. */
  env: Record<string, string>;
  /** Runs a shell command on a host through OpenSSH (with the same ~/.ssh). */
  onHost(h: TestHost, command: string): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  path(h: TestHost, p: string): string;
  destroy(): Promise<void>;
}

export async function startBed(indexes: number[], opts: { writeKnownHosts?: boolean } = {}): Promise<Bed> {
  const home = await mkdtemp(join(tmpdir(), 'cedana-home-'));
  const ssh = await createUserKey(join(home, '.ssh'));
  const hosts: TestHost[] = [];
  const bed: Bed = {
    home,
    ssh,
    hosts,
    env: { HOME: home },
    async onHost(h, command) {
      const r = await execa('ssh', ['-F', join(ssh.sshDir, 'config'), '-o', `UserKnownHostsFile=${join(ssh.sshDir, 'known_hosts')}`, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=no', h.name, command], { reject: false });
      return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
    },
    path: (h, p) => hostPath(h, p),
    async destroy() {
      for (const h of hosts.splice(0)) await destroyHost(h);
      await rm(home, { recursive: true, force: true });
    },
  };
  try {
    for (const i of indexes) hosts.push(await createHost(i, ssh, opts));
  } catch (e) {
    await bed.destroy();
    throw e;
  }
  return bed;
}

/** A test file's second host and a directory both hosts see (under /var/lib), set up before its tests and torn down after. */
export interface BedFixture {
  bed: Bed;
  host: TestHost;
  shared: string;
}

/** Registers the file's beforeAll/afterAll for a one-host bed (test-bed index `index`) and a shared directory. */
export function useBed(index: number): BedFixture {
  const f = {} as BedFixture;
  beforeAll(async () => {
    f.bed = await startBed([index]);
    f.host = f.bed.hosts[0]!;
    f.shared = await mkdtemp('/var/lib/cedana-test-');
  });
  afterAll(async () => {
    await f.bed?.destroy();
    if (f.shared) await rm(f.shared, { recursive: true, force: true });
  });
  return f;
}

/**
 * After a failed migration of a memhog reporting in `dir`: the source is alive, beating again, its
 * memory unchanged by its own checksum; the target holds no trace of it.
 */
export async function expectSourceIntact(bed: Bed, host: TestHost, dir: string, pid: number, sha0: string): Promise<void> {
  const { alive, readText, waitFor } = await import('./processes.js');
  expect(alive(pid)).toBe(true);
  const beat = Number(readText(join(dir, 'beat')));
  await waitFor('heartbeat on the source', () => Number(readText(join(dir, 'beat'))) > beat + 5);
  process.kill(pid, 'SIGUSR1');
  expect(await waitFor('checksum', () => readText(join(dir, 'sha-1')), 30_000)).toBe(sha0);
  const there = await bed.onHost(host, `ls -A /var/tmp; [ -e /proc/${pid} ] && echo running-there; true`);
  expect(there.exitCode, there.stderr).toBe(0);
  expect(there.stdout.trim(), 'left on the target').toBe('');
}
