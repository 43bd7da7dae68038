/**
 * Progress for people: a spinner on stderr, only when stderr is a TTY and the output is not JSON
 * or CI. Everywhere else progress is silent, so stdout and stderr stay clean for scripts.
 */
import ora, { type Ora } from 'ora';

export interface Reporter {
  /** A new phase began ("freezing and dumping", "verifying checksums", …). */
  phase(text: string): void;
  /** The command ended; clears any live display. */
  stop(): void;
}

export const silentReporter: Reporter = { phase: () => undefined, stop: () => undefined };

export function chooseReporter(opts: { json: boolean; env?: NodeJS.ProcessEnv; stream?: NodeJS.WriteStream }): Reporter {
  const env = opts.env ?? process.env;
  const stream = opts.stream ?? process.stderr;
  const ci = env.CI !== undefined && env.CI !== '' && env.CI !== 'false' && env.CI !== '0';
  if (opts.json || ci || !stream.isTTY) return silentReporter;
  let spinner: Ora | undefined;
  return {
    phase(text) {
      if (!spinner) spinner = ora({ text, stream, discardStdin: false }).start();
      else spinner.text = text;
    },
    stop() {
      spinner?.stop();
      spinner = undefined;
    },
  };
}
