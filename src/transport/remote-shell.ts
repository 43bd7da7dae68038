/**
 * One long-lived `sh` on the target for a series of short commands (the page server of each
 * pre-copy round): each command over its own SSH exec channel pays the target's login shell start-up
 * (rc files, ~100 ms here with pyenv's), this pays it once. Commands run one at a time, stdin from
 * /dev/null, stderr merged into stdout; after each the shell prints a marker line with the exit
 * status, which ends that command's output.
 */
import { randomBytes } from 'node:crypto';
import type { ClientChannel } from 'ssh2';
import { CedanaError } from '../errors.js';
import type { ExecResult } from './ssh.js';

/**
 * The output and exit status of the command whose end `marker` marks, and what follows it in
 * `buf`; undefined while the marker line has not arrived whole. Pure.
 */
export function takeResult(buf: string, marker: string): { output: string; code: number; rest: string } | undefined {
  const m = new RegExp(`\\n${marker} (\\d+)\\n`).exec(buf);
  if (!m) return undefined;
  return { output: buf.slice(0, m.index), code: Number(m[1]), rest: buf.slice(m.index + m[0].length) };
}

/** TARGET_UNRESPONSIVE: `what` on `target` did not end within `timeoutMs`. Pure. */
export function unresponsive(what: string, target: string, timeoutMs: number, hint: string): CedanaError {
  const within = timeoutMs >= 1000 ? `${Math.round(timeoutMs / 1000)} s` : `${timeoutMs} ms`;
  return new CedanaError('TARGET_UNRESPONSIVE', `${what} on ${target} did not end within ${within}`, { hint });
}

/** The shell text that runs `command` and then prints its marker line. Pure. */
export function wrapCommand(command: string, marker: string): string {
  return `{\n${command}\n} </dev/null 2>&1; printf '\\n%s %s\\n' '${marker}' "$?"\n`;
}

export class RemoteShell {
  private buf = '';
  private n = 0;
  private readonly token = randomBytes(8).toString('hex');
  private failed: Error | undefined;
  private waiter: ((e?: Error) => void) | undefined;
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly ch: ClientChannel, private readonly target: string) {
    ch.on('data', (d: Buffer) => {
      this.buf += d.toString();
      this.waiter?.();
    });
    ch.stderr.on('data', () => undefined); // the shell's own complaints; each command's go to stdout
    const gone = (): void => {
      this.failed ??= new CedanaError('CONNECTION_LOST', `the shell on ${this.target} ended`);
      this.waiter?.(this.failed);
    };
    ch.on('close', gone);
    ch.on('error', gone);
  }

  /** Runs `command` there after the ones before it; TARGET_UNRESPONSIVE (the shell is then closed) when it takes over `timeoutMs`. */
  run(command: string, opts: { timeoutMs: number; what: string }): Promise<ExecResult> {
    const next = this.chain.then(() => this.runNow(command, opts));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private runNow(command: string, opts: { timeoutMs: number; what: string }): Promise<ExecResult> {
    if (this.failed) return Promise.reject(this.failed);
    const marker = `__cedana_${this.token}_${++this.n}__`;
    return new Promise<ExecResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.failed = unresponsive(opts.what, this.target, opts.timeoutMs, "nothing was frozen. Check that the target answers: a command there that hangs holds cedana's shell");
        this.close();
        done(this.failed);
      }, opts.timeoutMs);
      const done = (e?: Error): void => {
        if (e) {
          clearTimeout(timer);
          this.waiter = undefined;
          reject(e);
          return;
        }
        const r = takeResult(this.buf, marker);
        if (!r) return;
        clearTimeout(timer);
        this.waiter = undefined;
        this.buf = r.rest;
        resolve({ code: r.code, signal: null, stdout: r.output, stderr: r.output });
      };
      this.waiter = done;
      this.ch.write(wrapCommand(command, marker));
      done();
    });
  }

  close(): void {
    this.ch.end();
    this.ch.close();
  }
}
