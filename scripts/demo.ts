/**
 * The README's first command: starts a sample job, checkpoints it with `cedana dump`, shows it is
 * gone, restores it with `cedana restore` and shows it carrying on from where it was.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bin = join(root, 'bin', 'cedana');
const say = (s: string): void => void process.stdout.write(`${s}\n`);

function readState(path: string): { pid: number; tested: number; found: number; largest: number } | undefined {
  try {
    const [pid, tested, found, largest] = readFileSync(path, 'utf8').trim().split(' ').map(Number);
    return { pid: pid!, tested: tested!, found: found!, largest: largest! };
  } catch {
    return undefined;
  }
}

const show = (label: string, s: ReturnType<typeof readState>): void =>
  say(`  ${label.padEnd(22)} PID ${s?.pid}: tested ${s?.tested.toLocaleString('en')} numbers, ${s?.found.toLocaleString('en')} primes, largest ${s?.largest.toLocaleString('en')}`);

async function cedana(args: string[]): Promise<void> {
  say(`\n$ cedana ${args.join(' ')}`);
  const r = await execa('node', [bin, ...args], { reject: false, stdio: 'inherit' });
  if (r.exitCode !== 0) throw new Error(`cedana ${args[0]} failed (exit ${r.exitCode})`);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'cedana-demo-'));
  const state = join(dir, 'state');
  const image = join(dir, 'job.tar.zst');
  let pid: number | undefined;
  try {
    say('cedana demo: checkpoint a running job, end it, and bring it back where it was\n');
    const job = spawn('python3', [join(root, 'scripts', 'demo-job.py'), state], { detached: true, stdio: 'ignore' });
    pid = job.pid!;
    const exited = new Promise((r) => job.on('exit', r));
    while (!readState(state) || readState(state)!.tested < 20_000) await sleep(50);
    say(`a sample job (python, PID ${pid}) searches for primes; its progress lives only in its memory:`);
    show('running', readState(state));
    await sleep(1000);
    show('one second later', readState(state));

    await cedana(['dump', String(pid), '-o', image]);
    await exited;
    const atDump = readState(state);
    say(`\nthe job is gone (/proc/${pid} exists: ${existsSync(`/proc/${pid}`)}); its whole state is in ${image}`);
    show('saved state', atDump);
    await sleep(1000);

    await cedana(['restore', image]);
    await sleep(150);
    say('');
    show('just after restore', readState(state));
    await sleep(1000);
    show('one second later', readState(state));
    const after = readState(state)!;
    if (after.tested <= atDump!.tested) throw new Error('the restored job did not carry on');
    say(`\nthe restored job carried on from ${atDump!.tested.toLocaleString('en')} numbers tested, with its PID and memory intact.`);
  } finally {
    const s = readState(state);
    for (const p of new Set([pid, s?.pid])) {
      if (p && existsSync(`/proc/${p}`)) process.kill(p, 'SIGKILL');
    }
    await rm(dir, { recursive: true, force: true });
  }
}

main().catch((e: Error) => {
  process.stderr.write(`demo failed: ${e.message}\n`);
  process.exitCode = 1;
});
