/**
 * The fixed phase: what every cedana command pays before and besides CRIU's own work — starting
 * Node, loading the CLI and the command's modules, asking CRIU its version (cached) — against the
 * floor, `node -e 0`. A small process (`sleep`, in its own session) is dumped by cedana and by
 * plain criu with cedana's options; each repetition runs every probe once, in turn (A B C …), so
 * a busy machine slows all of them alike. ~20 repetitions: these are short and noisy.
 */
import { spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { cedanaDump, criuDump, startCedana, type CriuSetup } from './contestants.js';
import { start } from './exec.js';
import { median, type Row } from './stats.js';

export interface FixedRep {
  nodeMs: number;
  versionMs: number;
  helpMs: number;
  criuSmallDumpMs: number;
  cedanaSmallDumpMs: number;
  /** cedana's own timer around the dump (its JSON durationMs): the rest is Node, module load and exit. */
  cedanaSmallDurationMs: number;
}

export interface FixedSamples {
  reps: FixedRep[];
}

/** `sleep 1000` in its own session, as a job to dump; killed by the dump (or at the end). */
function smallProcess(): { pid: number; kill: () => void } {
  const child = spawn('sleep', ['1000'], { detached: true, stdio: 'ignore' });
  child.unref();
  const pid = child.pid;
  if (pid === undefined) throw new Error('cannot start sleep');
  return {
    pid,
    kill: () => {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
  };
}

async function exitOk(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  const e = await start(cmd, args, { env }).done;
  if (e.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${e.code ?? e.signal}): ${e.stderr.slice(-300)}`);
  return e.ms;
}

export async function fixedRounds(criu: CriuSetup, reps: number, tmp: string, env: NodeJS.ProcessEnv, progress: (m: string) => void): Promise<FixedSamples> {
  const out: FixedRep[] = [];
  for (let i = 0; i < reps; i++) {
    if (i % 5 === 0) progress(`${i + 1}/${reps} fixed costs: node -e 0, cedana --version, dump --help, a small dump (criu, cedana)`);
    const nodeMs = await exitOk(process.execPath, ['-e', '0']);
    const versionExit = await startCedana(['--version'], env).done;
    if (versionExit.code !== 0) throw new Error(`cedana --version failed: ${versionExit.stderr}`);
    const helpExit = await startCedana(['dump', '--help'], env).done;
    if (helpExit.code !== 0) throw new Error(`cedana dump --help failed: ${helpExit.stderr}`);

    const a = smallProcess();
    const root = join(tmp, `fixed-criu-${i}`);
    let criuSmallDumpMs: number;
    try {
      criuSmallDumpMs = (await criuDump(criu, a.pid, join(root, 'images'), join(root, 'work'))).wallMs;
    } finally {
      a.kill();
      await rm(root, { recursive: true, force: true });
    }

    const b = smallProcess();
    const image = join(tmp, `fixed-cedana-${i}`);
    let cedana: Awaited<ReturnType<typeof cedanaDump>>;
    try {
      cedana = await cedanaDump(b.pid, image, env);
    } finally {
      b.kill();
      await rm(image, { recursive: true, force: true });
    }
    out.push({ nodeMs, versionMs: versionExit.ms, helpMs: helpExit.ms, criuSmallDumpMs, cedanaSmallDumpMs: cedana.wallMs, cedanaSmallDurationMs: cedana.result.durationMs });
  }
  return { reps: out };
}

export function fixedRows(s: FixedSamples): Row[] {
  const med = (f: (r: FixedRep) => number): number => median(s.reps.map(f));
  const node = med((r) => r.nodeMs);
  const floor = { baseline: node, baselineLabel: 'node -e 0' };
  return [
    { name: 'node -e 0 (wall): the floor', unit: 'ms', value: node },
    { name: 'cedana --version (wall)', unit: 'ms', value: med((r) => r.versionMs), ...floor },
    { name: 'cedana dump --help (wall)', unit: 'ms', value: med((r) => r.helpMs), ...floor },
    { name: 'cedana dump, small process (wall)', unit: 'ms', value: med((r) => r.cedanaSmallDumpMs), ...floor },
    { name: 'cedana dump, small process (wall)', unit: 'ms', value: med((r) => r.cedanaSmallDumpMs), baseline: med((r) => r.criuSmallDumpMs), baselineLabel: 'criu dump, same process' },
    { name: 'cedana dump, small: outside its own timer', unit: 'ms', value: med((r) => r.cedanaSmallDumpMs - r.cedanaSmallDurationMs), ...floor },
  ];
}
