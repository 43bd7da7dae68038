/**
 * The README's first command: brings up a second host (the test bed: its own network, PID and
 * mount namespaces and a real OpenSSH server), starts a sample job here, moves it there with
 * `cedana migrate`, and shows it carrying on there from where it was. Everything is torn down after.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { createHost, createUserKey, destroyHost, type TestHost } from './testbed/host.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin', 'cedana');
const say = (s: string): void => void process.stdout.write(`${s}\n`);

interface JobState {
  pid: number;
  tested: number;
  found: number;
  largest: number;
}

function readState(path: string): JobState | undefined {
  try {
    const [pid, tested, found, largest] = readFileSync(path, 'utf8').trim().split(' ').map(Number);
    return { pid: pid!, tested: tested!, found: found!, largest: largest! };
  } catch {
    return undefined;
  }
}

const fmt = (n: number | undefined): string => (n ?? 0).toLocaleString('en');
const show = (label: string, s: JobState | undefined): void =>
  say(`  ${label.padEnd(32)} tested ${fmt(s?.tested)} numbers, ${fmt(s?.found)} primes, largest ${fmt(s?.largest)}`);

async function main(): Promise<void> {
  const home = await mkdtemp(join(tmpdir(), 'cedana-demo-home-'));
  // The job's state file lives where both hosts see it (each host's /tmp is its own).
  const shared = await mkdtemp('/var/lib/cedana-demo-');
  const state = join(shared, 'state');
  let host: TestHost | undefined;
  let pid: number | undefined;
  try {
    say('cedana demo: move a running job to another host over SSH, without stopping it for good\n');
    const ssh = await createUserKey(join(home, '.ssh'));
    host = await createHost(190, ssh);
    say(`a second host is up: ${host.name} (${host.address}), its own network, PID and mount namespaces, a real sshd`);

    // cwd /: it exists on both hosts (the checkout may not).
    const job = spawn('python3', [join(root, 'scripts', 'demo-job.py'), state], { detached: true, stdio: 'ignore', cwd: '/' });
    pid = job.pid!;
    job.unref();
    while ((readState(state)?.tested ?? 0) < 20_000) await sleep(50);
    say(`\na sample job runs here as PID ${pid}, searching for primes; its progress lives only in its memory:`);
    show('here', readState(state));
    await sleep(1000);
    show('here, one second later', readState(state));

    say(`\n$ cedana migrate ${pid} --to ${host.name}`);
    const r = await execa('node', [bin, 'migrate', String(pid), '--to', host.name], { reject: false, stdio: 'inherit', env: { HOME: home } });
    if (r.exitCode !== 0) throw new Error(`cedana migrate failed (exit ${r.exitCode})`);
    const moved = readState(state);

    const ps = await execa('ssh', ['-F', join(home, '.ssh', 'config'), '-o', `UserKnownHostsFile=${join(home, '.ssh', 'known_hosts')}`, '-o', 'BatchMode=yes', host.name, `hostname; ps -o pid=,comm= -p ${pid}`]);
    say(`\nhere, /proc/${pid} exists: ${existsSync(`/proc/${pid}`)}; on ${ps.stdout.split('\n')[0]}: ${ps.stdout.split('\n')[1]?.trim()}`);
    show(`at the move`, moved);
    await sleep(1000);
    show(`on ${host.name}, one second later`, readState(state));
    const after = readState(state)!;
    if (after.tested <= (moved?.tested ?? 0)) throw new Error('the migrated job did not carry on');
    say(`\nthe job carries on on ${host.name} with the same PID and memory: it never noticed the move.`);
  } finally {
    if (pid && existsSync(`/proc/${pid}`)) process.kill(pid, 'SIGKILL');
    if (host) await destroyHost(host); // ends the migrated job with the host's PID namespace
    await rm(home, { recursive: true, force: true });
    await rm(shared, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  process.stderr.write(`demo failed: ${e.message}\n`);
  process.exitCode = 1;
});
