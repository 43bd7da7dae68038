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
