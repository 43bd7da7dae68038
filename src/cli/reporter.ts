/**
 * Progress for people and, where asked, for programs. A spinner on stderr only when stderr is a TTY
 * and the output is not JSON or CI; JSON events (one object per line on stderr) for commands that
 * emit them with --json (migrate); silence everywhere else, so stdout stays clean for scripts.
 */
import type { Ora } from 'ora';
import { colourWanted } from './colour.js';

export interface Progress {
  phase: string;
  bytes: number;
  totalBytes?: number;
  bytesPerSec?: number;
  etaMs?: number;
}

export interface Reporter {
  /** A new phase began ("freezing and dumping", "verifying checksums", …). */
  phase(text: string): void;
  /** Bytes moved in the current phase. */
  progress(p: Progress): void;
  /** The command ended; clears any live display. */
  stop(): void;
}

export const silentReporter: Reporter = { phase: () => undefined, progress: () => undefined, stop: () => undefined };

export function describeProgress(p: Progress): string {
  const mib = (n: number): string => `${(n / 1048576).toFixed(0)} MiB`;
  const parts = [`${p.phase}: ${mib(p.bytes)}${p.totalBytes ? ` of ~${mib(p.totalBytes)}` : ''}`];
  if (p.bytesPerSec) parts.push(`${(p.bytesPerSec / 1e6).toFixed(0)} MB/s`);
  if (p.etaMs !== undefined) parts.push(`ETA ${(p.etaMs / 1000).toFixed(1)} s`);
  return parts.join(', ');
}

/** Async because the spinner library is loaded only for a TTY (it costs ~85 ms of start-up). */
export async function chooseReporter(opts: { json: boolean; events?: boolean; env?: NodeJS.ProcessEnv; stream?: NodeJS.WriteStream }): Promise<Reporter> {
  const env = opts.env ?? process.env;
  const stream = opts.stream ?? process.stderr;
  if (opts.json && opts.events) {
    const emit = (o: object): void => void stream.write(`${JSON.stringify({ ...o, t: Date.now() })}\n`);
    return {
      phase: (text) => emit({ event: 'phase', phase: text }),
      progress: (p) => emit({ event: 'progress', ...p }),
      stop: () => undefined,
    };
  }
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== 'false' && env.CI !== '0';
  if (opts.json || ci || !stream.isTTY) return silentReporter;
  if (!stream.columns) {
    // A terminal that reports no width (a bare pty) breaks a live display: print phases as lines.
    let last = 0;
    const line = (text: string): void => void stream.write(`${text}\n`);
    return {
      phase: line,
      progress: (p) => {
        if (Date.now() - last < 1000) return;
        last = Date.now();
        line(describeProgress(p));
      },
      stop: () => undefined,
    };
  }
  const { default: ora } = await import('ora');
  let spinner: Ora | undefined;
  const show = (text: string): void => {
    if (!spinner) spinner = ora({ text, stream, discardStdin: false, color: colourWanted(stream, env) ? 'cyan' : false }).start();
    else spinner.text = text;
  };
  return {
    phase: show,
    progress: (p) => show(describeProgress(p)),
    stop() {
      spinner?.stop();
      spinner = undefined;
    },
  };
}
