/**
 * The one place that prints and sets the exit status. Handlers return results or throw
 * CedanaError; everything else thrown is a bug and becomes INTERNAL.
 */
import { CedanaError, toCedanaError } from '../errors.js';
import type { Invocation } from './program.js';
import { CEDANA_VERSION } from '../version.js';

// Rendering and the reporter are loaded once a command runs, not for --version or --help; colour
// (chalk) only for output to people, not with --json.
const rendering = (): Promise<typeof import('./render.js')> => import('./render.js');
const styleFor = async (stream: NodeJS.WriteStream): Promise<import('chalk').ChalkInstance> => (await import('./style.js')).styleFor(stream);

/** The command's name for usage errors: its first word, and the subcommand of `image`. */
function commandName(argv: string[]): string {
  const words = argv.filter((a) => !a.startsWith('-'));
  if (words[0] === 'image' && words[1] === 'build') return 'image build';
  return words[0] ?? 'cedana';
}

export async function main(argv: string[]): Promise<number> {
  // `cedana --version` alone, as commander prints it, without loading commander (scripts call it often).
  if (argv.length === 1 && (argv[0] === '--version' || argv[0] === '-V')) {
    process.stdout.write(`${CEDANA_VERSION}\n`);
    return 0;
  }
  const [{ CommanderError }, { buildProgram }] = await Promise.all([import('commander'), import('./program.js')]);
  const wantsJson = argv.includes('--json');
  let invocation: Invocation | undefined;
  const usageErrors: string[] = [];
  const program = buildProgram((inv) => (invocation = inv));
  program.configureOutput({
    writeErr: (s) => {
      if (!wantsJson) process.stderr.write(s);
    },
    outputError: (s) => usageErrors.push(s.replace(/^error: /, '').trim()),
  });
  const json = (): boolean => invocation?.json ?? wantsJson;
  const out = (command: string, obj: Record<string, unknown>): void => {
    // With `dump -o -`, stdout carries the image: the JSON result goes to stderr.
    const toStderr = command === 'dump' && (argv.includes('-') || argv.includes('--output=-'));
    (toStderr ? process.stderr : process.stdout).write(`${JSON.stringify(obj)}\n`);
  };

  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return 0;
      // `cedana` without a command: commander shows help as an error (exitCode 1); that is a usage error.
      if (e.code === 'commander.help') return e.exitCode === 0 ? 0 : 2;
      const err = new CedanaError('USAGE', usageErrors[0] ?? e.message.replace(/^error: /, ''), { hint: 'see `cedana --help` or `cedana <command> --help`' });
      const cmd = commandName(argv);
      const { errorJson, renderError } = await rendering();
      if (json()) out(cmd, errorJson(cmd, err));
      else process.stderr.write(`${renderError(cmd, err, await styleFor(process.stderr))}\n`);
      return err.exitCode;
    }
    throw e;
  }
  if (!invocation) {
    program.outputHelp({ error: true });
    return 2;
  }

  const inv = invocation;
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const { errorJson, renderError, renderHuman, resultJson } = await rendering();
  const reporter = await (await import('./reporter.js')).chooseReporter({ json: inv.json, events: inv.events });
  try {
    const result = await inv.run({ reporter, signal: abort.signal });
    reporter.stop();
    if (inv.json) out(inv.command, resultJson(result));
    else process.stdout.write(`${renderHuman(result, await styleFor(process.stdout))}\n`);
    if (result.command === 'check' && !result.ok) return result.error?.exitCode ?? 7;
    if (result.command === 'inspect' && !result.ok) return result.error?.exitCode ?? 9;
    return 0;
  } catch (e) {
    reporter.stop();
    const err = toCedanaError(e);
    if (inv.json) out(inv.command, errorJson(inv.command, err));
    else process.stderr.write(`${renderError(inv.command, err, await styleFor(process.stderr))}\n`);
    if (err.code === 'INTERNAL' && process.env.CEDANA_DEBUG) process.stderr.write(`${(e as Error).stack ?? ''}\n`);
    return err.exitCode;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

