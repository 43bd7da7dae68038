/** Runs commands with wall-clock timing, watches their peak RSS, and stops them all on an abort. */
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Wall clock from spawn to exit. */
  ms: number;
  stdout: string;
  stderr: string;
}

export interface Started {
  child: ChildProcess;
  pid: number;
  done: Promise<Exit>;
}

export interface StartOptions {
  env?: NodeJS.ProcessEnv;
  stdio?: StdioOptions;
  /** In its own session, as cedana starts CRIU. */
  detached?: boolean;
}

const active = new Set<ChildProcess>();
/** Set by stopActive: an aborted run starts nothing more. */
let stopping = false;

export function start(cmd: string, args: string[], opts: StartOptions = {}): Started {
  if (stopping) throw new Error(`aborted: not starting ${cmd}`);
  const t0 = performance.now();
  const child = spawn(cmd, args, { env: opts.env, detached: opts.detached, stdio: opts.stdio ?? ['ignore', 'pipe', 'pipe'] });
  active.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<Exit>((resolve, reject) => {
    child.once('error', (e) => {
      active.delete(child);
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    child.once('exit', (code, signal) => {
      const ms = performance.now() - t0;
      active.delete(child);
      // Let the pipes drain, but do not wait for a descendant that inherited them.
      const finish = (): void => resolve({ code, signal, ms, stdout, stderr });
      const timer = setTimeout(finish, 1000);
      child.once('close', () => {
        clearTimeout(timer);
        finish();
      });
    });
  });
  return { child, pid: child.pid ?? -1, done };
}

/**
 * Polls VmHWM (the peak RSS, monotonic) of a child every `everyMs` until it exits; the last value
 * read wins. Polling stops in the child's 'exit' handler, before its PID can be reused.
 */
export function watchPeakRss(s: Started, everyMs = 10): Promise<number> {
  let bytes = 0;
  const read = (): void => {
    try {
      const m = /^VmHWM:\s+(\d+) kB/m.exec(readFileSync(`/proc/${s.pid}/status`, 'utf8'));
      if (m) bytes = Number(m[1]) * 1024;
    } catch {
      // exited between two reads
    }
  };
  read();
  const timer = setInterval(read, everyMs);
  return new Promise((resolve) => {
    const stop = (): void => {
      clearInterval(timer);
      resolve(bytes);
    };
    if (s.child.exitCode !== null || s.child.signalCode !== null) stop();
    else s.child.once('exit', stop);
  });
}

/** SIGTERMs every command still running (cedana then aborts its dump safely) and waits a little. */
export async function stopActive(waitMs = 15_000): Promise<void> {
  stopping = true;
  const children = [...active];
  for (const c of children) c.kill('SIGTERM');
  const deadline = performance.now() + waitMs;
  while (active.size > 0 && performance.now() < deadline) await sleep(50);
}

/** The last non-empty line of a command's output. */
export function lastLine(text: string): string {
  return text.trimEnd().split('\n').pop() ?? '';
}

export interface MachineState {
  /** 1-minute load average. */
  load1: number;
  /** Share of all CPUs busy during a short window, before the phase started anything. */
  busy: number;
}

/**
 * How busy the machine is with work that is not ours, sampled just before a phase starts: the
 * benchmark's figures are only comparable between runs on a quiet machine.
 */
export async function machineState(windowMs = 1000): Promise<MachineState> {
  const ticks = (): { busy: number; total: number } => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total }; // idle and iowait are not busy
  };
  const a = ticks();
  await sleep(windowMs);
  const b = ticks();
  const load1 = Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
  return { load1, busy: b.total > a.total ? (b.busy - a.busy) / (b.total - a.total) : 0 };
}

export function describeMachine(m: MachineState): string {
  const line = `machine before this phase: load average ${m.load1.toFixed(2)}, ${(m.busy * 100).toFixed(0)}% of the CPUs busy with other work`;
  return m.busy > 0.2 ? `${line}\nwarning: the machine was busy before this phase: other work competes with the contestants, the figures are noisy` : line;
}
