/**
 * The second host the migrate and ssh phases talk to: one test-bed host (scripts/testbed/host.ts:
 * its own network, PID and mount namespaces and a real OpenSSH sshd, at 10.231.<index>.2), and a
 * private ~/.ssh that knows it. cedana runs with HOME pointing there; OpenSSH is given the same
 * config and known_hosts explicitly. Nothing else is ever contacted.
 */
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createHost, createUserKey, destroyHost, hostPath, type TestHost } from '../scripts/testbed/host.js';
import { DIRTY_MARK } from './dirty-fixture.js';
import { start, type Exit } from './exec.js';

/**
 * A link of `rate` (tc's notation: 1gbit, 500mbit) both ways between this host and the test-bed
 * host, as between two machines: a token bucket on each side of the veth pair (removed with it).
 */
async function shapeLink(h: TestHost, rate: string): Promise<void> {
  const run = async (cmd: string, args: string[]): Promise<string> => {
    const exit = await start(cmd, args).done;
    if (exit.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: exit ${exit.code ?? exit.signal}: ${exit.stderr.trim()}`);
    return exit.stdout;
  };
  const inner = await run('ip', ['-n', h.netns, '-o', 'link', 'show', 'eth0']);
  const peerIndex = /eth0@if(\d+)/.exec(inner)?.[1];
  const outer = (await run('ip', ['-o', 'link'])).split('\n').map((l) => new RegExp(`^${peerIndex}: ([^@:]+)[@:]`).exec(l)?.[1]).find(Boolean);
  if (!peerIndex || !outer) throw new Error(`CEDANA_BENCH_LINK_RATE: the veth pair of ${h.name} not found`);
  const tbf = ['root', 'tbf', 'rate', rate, 'burst', '256kb', 'latency', '100ms'];
  await run('tc', ['qdisc', 'add', 'dev', outer, ...tbf]);
  await run('ip', ['netns', 'exec', h.netns, 'tc', 'qdisc', 'add', 'dev', 'eth0', ...tbf]);
}

export interface BenchBed {
  host: TestHost;
  home: string;
  sshDir: string;
  /** Environment for cedana: HOME holds the private ~/.ssh. */
  env: NodeJS.ProcessEnv;
  /** OpenSSH's options for this bed, to put before the host name. */
  sshOpts: string[];
  /** `ssh <host> <command>` with OpenSSH; rejects unless it exits 0. */
  ssh(command: string): Promise<Exit>;
  /** Whether a PID exists in the host's PID namespace (read through its /proc, no SSH). */
  pidExists(pid: number): Promise<boolean>;
  /** Whether that PID there is a benchmark fixture (its command line carries our marker). */
  isFixture(pid: number): Promise<boolean>;
  destroy(): Promise<void>;
}

export async function startBed(index: number, parent: string): Promise<BenchBed> {
  const home = await mkdtemp(join(parent, 'home-'));
  const ssh = await createUserKey(join(home, '.ssh'));
  let host: TestHost | undefined;
  try {
    host = await createHost(index, ssh);
  } catch (e) {
    await rm(home, { recursive: true, force: true });
    throw new Error(`cannot create test-bed host ${index} (another run using it? set CEDANA_BENCH_HOST): ${(e as Error).message}`);
  }
  const h = host;
  const rate = process.env.CEDANA_BENCH_LINK_RATE;
  if (rate) {
    try {
      await shapeLink(h, rate);
    } catch (e) {
      await destroyHost(h);
      await rm(home, { recursive: true, force: true });
      throw e;
    }
  }
  const sshOpts = ['-F', join(ssh.sshDir, 'config'), '-o', `UserKnownHostsFile=${join(ssh.sshDir, 'known_hosts')}`, '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes'];
  let destroyed: Promise<void> | undefined;
  return {
    host: h,
    home,
    sshDir: ssh.sshDir,
    env: { ...process.env, HOME: home },
    sshOpts,
    async ssh(command) {
      const exit = await start('ssh', [...sshOpts, h.name, command]).done;
      if (exit.code !== 0) throw new Error(`ssh ${h.name} ${command}: exit ${exit.code ?? exit.signal}: ${exit.stderr.trim().slice(-500)}`);
      return exit;
    },
    async pidExists(pid) {
      try {
        await access(hostPath(h, `/proc/${pid}`));
        return true;
      } catch {
        return false;
      }
    },
    async isFixture(pid) {
      const cmdline = await readFile(hostPath(h, `/proc/${pid}/cmdline`), 'utf8').catch(() => '');
      return cmdline.split('\0').includes(DIRTY_MARK);
    },
    destroy: () =>
      (destroyed ??= (async () => {
        await destroyHost(h);
        await rm(home, { recursive: true, force: true });
      })()),
  };
}
