/**
 * The two sides of every comparison: plain CRIU given the options cedana passes (src/criu/options.ts;
 * minus --action-script, cedana's own), and the cedana CLI as a user runs it.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DumpResult } from '../src/commands/dump.js';
import type { RestoreResult } from '../src/commands/restore.js';
import { readDumpStats, readRestoreStats, type DumpStats, type RestoreStats } from '../src/image/criu/stats.js';
import { lastLine, start, type Exit, type StartOptions, type Started } from './exec.js';

/** Repository root (this file runs as dist/bench/contestants.js). */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CEDANA_BIN = join(REPO_ROOT, 'bin', 'cedana');

export interface CriuSetup {
  path: string;
  networkLock: 'iptables' | 'nftables';
}

export interface CriuDump {
  wallMs: number;
  stats?: DumpStats;
}

export interface CriuRestore {
  wallMs: number;
  pid: number;
  stats?: RestoreStats;
}

/** `criu dump` with cedana's options; the tree is killed after the dump, as cedana's is. */
export async function criuDump(c: CriuSetup, pid: number, images: string, work: string): Promise<CriuDump> {
  await mkdir(images, { recursive: true });
  await mkdir(work, { recursive: true });
  const log = join(work, 'dump.log');
  const exit = await start(c.path, ['dump', '-t', String(pid), ...criuCommon(c, images, work, log)], criuStart).done;
  await expectCriuOk(exit, 'criu dump', log);
  return { wallMs: exit.ms, stats: await readDumpStats(join(work, 'stats-dump')) };
}

/** `criu restore --restore-detached` with cedana's options. */
export async function criuRestore(c: CriuSetup, images: string, work: string): Promise<CriuRestore> {
  await mkdir(work, { recursive: true });
  const log = join(work, 'restore.log');
  const pidFile = join(work, 'restored.pid');
  const args = ['restore', ...criuCommon(c, images, work, log), '--restore-detached', '--pidfile', pidFile];
  const exit = await start(c.path, args, criuStart).done;
  await expectCriuOk(exit, 'criu restore', log);
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  return { wallMs: exit.ms, pid, stats: await readRestoreStats(join(work, 'stats-restore')) };
}

/** cedana spawns CRIU in its own session with stdin closed; so does the baseline. */
const criuStart: StartOptions = { detached: true, stdio: ['ignore', 'pipe', 'pipe'] };

function criuCommon(c: CriuSetup, images: string, work: string, log: string): string[] {
  return ['-D', images, '-W', work, '-o', log, '-v4', '--network-lock', c.networkLock];
}

async function expectCriuOk(exit: Exit, what: string, log: string): Promise<void> {
  if (exit.code === 0) return;
  let errors = '';
  try {
    errors = (await readFile(log, 'utf8')).split('\n').filter((l) => /Error|error/.test(l)).slice(-5).join('\n  ');
  } catch {
    errors = exit.stderr.trim();
  }
  throw new Error(`${what} failed (exit ${exit.code ?? exit.signal}):\n  ${errors}`);
}

export type CedanaDump = DumpResult & { ok: true };
export type CedanaRestore = RestoreResult & { ok: true };

/** Starts `node bin/cedana <args>`; TMPDIR in env decides where its work directories go. */
export function startCedana(args: string[], env: NodeJS.ProcessEnv, stdio?: StartOptions['stdio']): Started {
  return start(process.execPath, [CEDANA_BIN, ...args], { env, stdio });
}

export async function cedanaDump(pid: number, output: string, env: NodeJS.ProcessEnv): Promise<{ wallMs: number; result: CedanaDump }> {
  const exit = await startCedana(dumpArgs(pid, output), env).done;
  return { wallMs: exit.ms, result: cedanaResult<CedanaDump>(exit, 'dump', 'stdout') };
}

export async function cedanaRestore(image: string, env: NodeJS.ProcessEnv): Promise<{ wallMs: number; result: CedanaRestore }> {
  const exit = await startCedana(restoreArgs(image), env).done;
  return { wallMs: exit.ms, result: cedanaResult<CedanaRestore>(exit, 'restore', 'stdout') };
}

export const dumpArgs = (pid: number, output: string): string[] => ['dump', String(pid), '-o', output, '--json'];
/** A generous --pid-wait: the dumped process is reaped by PID 1, which may take seconds here. */
export const restoreArgs = (image: string): string[] => ['restore', image, '--json', '--pid-wait', '60000'];

/** cedana's --json line (stderr for `dump -o -`); a failure becomes an Error with cedana's message. */
export function cedanaResult<T>(exit: Exit, command: string, from: 'stdout' | 'stderr'): T {
  const line = lastLine(from === 'stdout' ? exit.stdout : exit.stderr);
  let obj: { ok?: boolean; error?: { code?: string; message?: string } };
  try {
    obj = JSON.parse(line) as typeof obj;
  } catch {
    throw new Error(`cedana ${command} printed no JSON (exit ${exit.code ?? exit.signal}): ${(exit.stderr || exit.stdout).slice(-500)}`);
  }
  if (obj.ok !== true || exit.code !== 0) {
    throw new Error(`cedana ${command} failed (exit ${exit.code ?? exit.signal}): [${obj.error?.code}] ${obj.error?.message}`);
  }
  return obj as T;
}
