/**
 * Starts fixture processes and tracks every PID a test owns (started, or restored by cedana) so
 * that cleanup() ends exactly those, by PID, even when the test failed.
 */
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));

export function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\d+ \(.*\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

export async function waitFor<T>(what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(20);
  }
}

export async function waitGone(pid: number, timeoutMs = 15_000): Promise<void> {
  // A zombie still holds its PID: wait until /proc/<pid> is gone entirely.
  await waitFor(`PID ${pid} to be gone`, () => !existsSync(`/proc/${pid}`), timeoutMs);
}

export function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

/** One line of tmpworker.py's log: its number, what it read of its data and scratch files, where in the log it starts, its cwd. */
export interface WorkerLine {
  i: number;
  data: string;
  scratch: string;
  offset: number;
  cwd: string;
}

/** The complete lines of a tmpworker.py log's text (a line being written is left out). */
function parseWorkerLog(text: string): { line: WorkerLine; bytes: number }[] {
  return text.split('\n').slice(0, -1).map((l) => {
    const f = l.split(' ');
    if (f.length !== 6 || f[0] !== 'line') throw new Error(`not a line of tmpworker.py's log: ${JSON.stringify(l)}`);
    return { line: { i: Number(f[1]), data: f[2]!, scratch: f[3]!, offset: Number(f[4]), cwd: f[5]! }, bytes: Buffer.byteLength(l) + 1 };
  });
}

/** tmpworker.py's last complete log line (undefined before there is one). */
export function workerState(log: string): WorkerLine | undefined {
  const text = readText(log);
  return text === undefined ? undefined : parseWorkerLog(text).at(-1)?.line;
}

/** The lines of a tmpworker.py log, checked to run without a gap or a repeat: line n is number n and starts where line n-1 ended. */
export function wholeWorkerLog(log: string): WorkerLine[] {
  let offset = 0;
  return parseWorkerLog(readText(log) ?? '').map(({ line, bytes }, n) => {
    if (line.i !== n || line.offset !== offset) throw new Error(`${log}: line ${n} is number ${line.i} at offset ${line.offset} (expected ${n} at ${offset})`);
    offset += bytes;
    return line;
  });
}

/** The count counter.py last wrote to its state file (0 before the first). */
export const count = (state: string): number => Number(readText(state)?.trim().split(' ')[1] ?? 0);

export class Owned {
  private readonly pids = new Set<number>();
  private readonly dirs: string[] = [];
  private readonly finalizers: (() => Promise<void> | void)[] = [];

  /** Starts a process in its own session with stdio on /dev/null (as a daemon would be). */
  start(cmd: string, args: string[], opts: { cwd?: string; wrap?: string[] } = {}): number {
    const argv = [...(opts.wrap ?? []), cmd, ...args];
    // cwd / by default: a daemon's, and one that exists on every test-bed host (a checkout may sit in a private /tmp).
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: 'ignore', cwd: opts.cwd ?? '/' });
    child.unref();
    if (!child.pid) throw new Error(`could not start ${argv.join(' ')}`);
    this.pids.add(child.pid);
    return child.pid;
  }

  python(script: string, args: string[], opts: { cwd?: string; wrap?: string[] } = {}): number {
    return this.start('python3', ['-u', join(FIXTURES, script), ...args], opts);
  }

  /** counter.py in `dir` (a new temp dir by default), once it has counted past 2. */
  async counter(dir?: string): Promise<{ dir: string; state: string; pid: number }> {
    const d = dir ?? (await this.tempDir());
    const state = join(d, 'state');
    const pid = this.python('counter.py', [state]);
    await waitFor('counting', () => count(state) > 2);
    return { dir: d, state, pid };
  }

  /** memhog.py holding `mib` MiB of random memory, reporting in `dir`, once its checksum is written. */
  async memhog(mib: number, dir?: string): Promise<{ dir: string; pid: number; sha0: string }> {
    const d = dir ?? (await this.tempDir());
    const pid = this.python('memhog.py', [String(mib), d]);
    const sha0 = await waitFor('memory filled', () => readText(join(d, 'sha0')), 60_000);
    return { dir: d, pid, sha0 };
  }

  /**
   * pager.py holding `mib` MiB, reporting in a new directory under `parent`, once its memory is
   * filled; `rewrite(pages, k)` has it rewrite that many pages (its k-th rewrite) and gives the
   * checksum of its memory after.
   */
  async pager(mib: number, parent: string): Promise<{ dir: string; pid: number; sha0: string; rewrite: (pages: number, k: number) => Promise<string> }> {
    const dir = await mkdtemp(join(parent, 'pager-'));
    const pid = this.python('pager.py', [String(mib), dir]);
    const sha0 = await waitFor('memory filled', () => readText(join(dir, 'sha0')), 30_000);
    const rewrite = async (pages: number, k: number): Promise<string> => {
      writeFileSync(join(dir, 'rewrite'), String(pages));
      process.kill(pid, 'SIGUSR2');
      return waitFor('rewritten', () => {
        const [n, sha] = (readText(join(dir, 'rewritten')) ?? '').split(' ');
        return Number(n) === k ? sha : undefined;
      });
    };
    return { dir, pid, sha0, rewrite };
  }

  /** Records a PID the test now owns (e.g. one cedana restored). */
  own(pid: number): number {
    this.pids.add(pid);
    return pid;
  }

  async tempDir(prefix = 'cedana-test-', parent = tmpdir()): Promise<string> {
    const d = await mkdtemp(join(parent, prefix));
    this.dirs.push(d);
    return d;
  }

  /**
   * A private network namespace with only loopback up, deleted at cleanup. Returns its name and the
   * command prefix that runs something in it: nsenter joins the network namespace only (`ip netns
   * exec` would also make a new mount namespace, which CRIU would then have to dump).
   */
  async netns(tag: string): Promise<{ ns: string; inNs: string[] }> {
    const ns = `cedana-${tag}${process.pid}`;
    await execa('ip', ['netns', 'add', ns]);
    this.onCleanup(async () => void (await execa('ip', ['netns', 'del', ns], { reject: false })));
    await execa('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    return { ns, inNs: ['nsenter', `--net=/run/netns/${ns}`] };
  }

  onCleanup(fn: () => Promise<void> | void): void {
    this.finalizers.push(fn);
  }

  /** Ends owned processes (their whole trees: children first) by PID, then removes directories. */
  async cleanup(): Promise<void> {
    for (const pid of this.pids) {
      for (const child of descendants(pid)) killPid(child);
      killPid(pid);
    }
    for (const pid of this.pids) await waitGone(pid, 5000).catch(() => undefined);
    this.pids.clear();
    for (const fn of this.finalizers.reverse()) await fn();
    this.finalizers.length = 0;
    for (const d of this.dirs) await rm(d, { recursive: true, force: true });
    this.dirs.length = 0;
  }
}

function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export function descendants(pid: number): number[] {
  const out: number[] = [];
  const kids = readText(`/proc/${pid}/task/${pid}/children`)?.trim().split(/\s+/).filter(Boolean).map(Number) ?? [];
  for (const k of kids) out.push(...descendants(k), k);
  return out;
}

/**
 * SIGKILLs the children of `pid` (a test host's sshd listener: its per-connection sshd processes),
 * tolerating one that ends by itself between the listing and the kill.
 */
export function killChildren(pid: number): void {
  const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
  for (const k of kids) {
    try {
      process.kill(Number(k), 'SIGKILL');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ESRCH') throw e;
    }
  }
}
