/**
 * Runs a short command and collects its output: what cedana needs of execa (`reject: false`), on
 * plain child_process. execa costs ~100 ms to import, more than most commands it runs take; the
 * commands of dump, restore and check run through here (see "Fixed costs" in the README).
 */
import { spawn } from 'node:child_process';

export interface ExecResult {
  /** undefined when the command could not be started, or was killed by a signal. */
  exitCode: number | undefined;
  signal: NodeJS.Signals | undefined;
  /** As execa gives them: one final newline stripped. */
  stdout: string;
  stderr: string;
  /** stdout and stderr interleaved as they came. */
  all: string;
  timedOut: boolean;
  /** Not started (ENOENT, EACCES…), with the reason. */
  spawnError?: Error;
}

export interface ExecOptions {
  timeout?: number;
  killSignal?: NodeJS.Signals;
  env?: NodeJS.ProcessEnv;
}

const stripFinalNewline = (s: string): string => s.replace(/\r?\n$/, '');

export function execFileResult(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    let all = '';
    let timedOut = false;
    let spawnError: Error | undefined;
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env });
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => ((stdout += d), (all += d)));
    child.stderr.on('data', (d: string) => ((stderr += d), (all += d)));
    const timer = opts.timeout
      ? setTimeout(() => {
          timedOut = true;
          child.kill(opts.killSignal ?? 'SIGTERM');
        }, opts.timeout)
      : undefined;
    child.once('error', (e) => {
      spawnError = e;
    });
    child.once('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({
        exitCode: spawnError ? undefined : code ?? undefined,
        signal: signal ?? undefined,
        stdout: stripFinalNewline(stdout),
        stderr: stripFinalNewline(stderr),
        all: stripFinalNewline(all),
        timedOut,
        spawnError,
      });
    });
  });
}
