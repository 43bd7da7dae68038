/** Runs the built cedana CLI (dist/, built by `npm test`) as a child process. */
import { execa, type Options } from 'execa';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const BIN = fileURLToPath(new URL('../../bin/cedana', import.meta.url));

export interface CliRun {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** The JSON object on stdout (or on stderr with `dump -o -`), when there is one. */
  json: Record<string, any> | undefined;
}

export function parseJsonLine(text: string): Record<string, any> | undefined {
  const line = text.trim().split('\n').filter((l) => l.startsWith('{')).pop();
  return line ? (JSON.parse(line) as Record<string, any>) : undefined;
}

export type CliOptions = Options & {
  /** A command that runs cedana, e.g. ['ip', 'netns', 'exec', ns] or ['setpriv', …]. */
  wrap?: string[];
  /** An installed cedana, run as a program (its shebang and npm's bin symlink included), instead of this checkout's. */
  bin?: string;
};

export async function cedana(args: string[], opts: CliOptions = {}): Promise<CliRun> {
  const { wrap = [], bin, ...execOpts } = opts;
  const argv = [...wrap, ...(bin ? [bin] : ['node', BIN]), ...args];
  const r = await execa(argv[0]!, argv.slice(1), { reject: false, timeout: 120_000, ...execOpts, env: { NO_COLOR: '1', ...execOpts.env } });
  const stdout = String(r.stdout ?? '');
  const stderr = String(r.stderr ?? '');
  return { exitCode: r.exitCode ?? -1, stdout, stderr, json: parseJsonLine(stdout) ?? parseJsonLine(stderr) };
}

/** Runs cedana with --json and fails the test with cedana's error when it did not succeed. */
export async function cedanaOk(args: string[], opts: CliOptions = {}): Promise<Record<string, any>> {
  const r = await cedana([...args, '--json'], opts);
  if (r.exitCode !== 0 || !r.json?.ok) {
    throw new Error(`cedana ${args.join(' ')} failed (exit ${r.exitCode}):\n${r.stdout}\n${r.stderr}`);
  }
  return r.json;
}
