/**
 * OCI runtimes (runc, crun): cedana drives a container through its runtime's own commands — state,
 * pause, checkpoint, restore, kill, delete — so that the runtime sets up and tears down namespaces,
 * cgroups and mounts as it expects, and CRIU (which the runtime drives) does the rest. Both runtimes
 * take the same arguments for these commands.
 */
import { execa } from 'execa';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { CedanaError } from '../errors.js';
import { decisiveLines } from '../criu/log.js';
import { keepLog } from '../criu/criu.js';
import { findOnPath } from '../util/paths.js';

import { RUNTIMES, type RuntimeName } from './runtimes.js';

export { RUNTIMES, type RuntimeName } from './runtimes.js';

/** What `<runtime> state <id>` says. */
export interface ContainerState {
  id: string;
  pid: number;
  status: 'created' | 'running' | 'paused' | 'stopped' | string;
  bundle: string;
}

/** A container id as OCI runtimes accept it (and safe in a path and a shell word). Pure. */
export function validContainerId(id: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id);
}

export function checkContainerId(id: string): void {
  if (!validContainerId(id)) {
    throw new CedanaError('USAGE', `${JSON.stringify(id)} is not a container id`, { hint: 'ids are letters, digits, _ . - (up to 128), starting with a letter or digit' });
  }
}

/** Parses `state` output. Pure. */
export function parseState(json: string): ContainerState | undefined {
  try {
    const s = JSON.parse(json) as Record<string, unknown>;
    if (typeof s.id !== 'string' || typeof s.status !== 'string' || typeof s.bundle !== 'string') return undefined;
    return { id: s.id, pid: typeof s.pid === 'number' ? s.pid : 0, status: s.status, bundle: s.bundle };
  } catch {
    return undefined;
  }
}

export interface CheckpointOptions {
  imagesDir: string;
  workDir: string;
  leaveRunning: boolean;
  tcpEstablished: boolean;
  fileLocks: boolean;
  externalUnix: boolean;
}

/** The runtime's checkpoint arguments. Pure. */
export function checkpointArgs(id: string, o: CheckpointOptions): string[] {
  const a = ['checkpoint', '--image-path', o.imagesDir, '--work-path', o.workDir];
  if (o.leaveRunning) a.push('--leave-running');
  if (o.tcpEstablished) a.push('--tcp-established');
  if (o.fileLocks) a.push('--file-locks');
  if (o.externalUnix) a.push('--ext-unix-sk');
  return [...a, id];
}

/** The runtime's restore arguments (detached: the container outlives cedana). Pure. */
export function restoreArgs(id: string, o: { imagesDir: string; workDir: string; bundle: string; tcpEstablished: boolean; fileLocks: boolean; externalUnix: boolean }): string[] {
  const a = ['restore', '--detach', '--image-path', o.imagesDir, '--work-path', o.workDir, '--bundle', o.bundle];
  if (o.tcpEstablished) a.push('--tcp-established');
  if (o.fileLocks) a.push('--file-locks');
  if (o.externalUnix) a.push('--ext-unix-sk');
  return [...a, id];
}

export class Runtime {
  constructor(
    readonly name: RuntimeName,
    readonly path: string,
  ) {}

  /** The runtimes installed here: the one asked for, or every known one found on PATH. */
  static async available(wanted?: string): Promise<Runtime[]> {
    if (wanted !== undefined && !(RUNTIMES as readonly string[]).includes(wanted)) {
      throw new CedanaError('USAGE', `--runtime ${wanted}: cedana knows ${RUNTIMES.join(' and ')}`, { hint: `--runtime ${RUNTIMES.join(' or --runtime ')}` });
    }
    const out: Runtime[] = [];
    for (const name of wanted ? [wanted as RuntimeName] : RUNTIMES) {
      const path = await findOnPath(name);
      if (path) out.push(new Runtime(name, path));
    }
    if (out.length === 0) {
      throw new CedanaError('HOST_UNSUPPORTED', wanted ? `${wanted} is not installed here` : 'no OCI runtime (runc, crun) is installed here', { hint: 'install runc (scripts/setup does) or crun' });
    }
    return out;
  }

  async state(id: string): Promise<ContainerState | undefined> {
    const r = await execa(this.path, ['state', id], { reject: false, timeout: 30_000 });
    return r.exitCode === 0 ? parseState(String(r.stdout)) : undefined;
  }

  /**
   * Runs one command; a failure quotes the runtime (and the CRIU log it names, kept). `output`: a
   * file for the runtime's stdout and stderr instead of pipes (a restored container inherits them).
   */
  async run(args: string[], opts: { log?: string; label?: string; timeoutMs?: number; output?: string } = {}): Promise<void> {
    let code: number | undefined;
    let said: string;
    if (opts.output) {
      const fd = openSync(opts.output, 'a', 0o600);
      try {
        code = (await execa(this.path, args, { reject: false, stdin: 'ignore', stdout: fd as never, stderr: fd as never, timeout: opts.timeoutMs ?? 600_000 })).exitCode;
      } finally {
        closeSync(fd);
      }
      said = code === 0 ? '' : (await readFile(opts.output, 'utf8').catch(() => '')).split('\n').slice(-4).join('\n');
    } else {
      const r = await execa(this.path, args, { reject: false, all: true, stdin: 'ignore', timeout: opts.timeoutMs ?? 600_000 });
      code = r.exitCode;
      said = String(r.all ?? '');
    }
    if (code === 0) return;
    const kept = opts.log ? await keepLog(opts.log, opts.label ?? `${this.name}-${args[0]}`) : undefined;
    const criuLines = opts.log ? decisiveLines(await readFile(opts.log, 'utf8').catch(() => ''), 4) : [];
    throw new CedanaError('RUNTIME_FAILED', `${this.name} ${args[0]} failed: ${said.trim().split('\n').slice(-3).join(' ') || `exit ${code}`}${criuLines.length ? `\n  ${criuLines.join('\n  ')}` : ''}`, {
      hint: kept ? `CRIU's log: ${kept}` : undefined,
      details: { runtime: this.name, ...(kept ? { log: kept } : {}) },
    });
  }

  pause(id: string): Promise<void> {
    return this.run(['pause', id]);
  }

  resume(id: string): Promise<void> {
    return this.run(['resume', id]);
  }

  /** Ends the container (a paused one too: the signal is taken before any of it runs again) and deletes it. */
  async destroy(id: string): Promise<void> {
    await this.run(['kill', id, 'KILL']).catch(() => undefined);
    for (let i = 0; i < 100; i++) {
      const s = await this.state(id);
      if (!s || s.status === 'stopped') break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.run(['delete', '--force', id]);
  }
}

/** Refuses an id some installed runtime already has a container under (CONTAINER_EXISTS). */
export async function refuseExistingContainer(id: string): Promise<void> {
  for (const r of await Runtime.available().catch(() => [] as Runtime[])) {
    if (await r.state(id)) throw new CedanaError('CONTAINER_EXISTS', `a container ${id} exists already (${r.name})`, { hint: 'restore under another id: --container NEW-ID, or delete that one' });
  }
}

/**
 * Finds a container by id among the runtimes (or the one given). Refuses an unknown id
 * (CONTAINER_NOT_FOUND) and one that is not running or paused (CONTAINER_NOT_RUNNING).
 */
export async function findContainer(id: string, wanted?: string): Promise<{ runtime: Runtime; state: ContainerState }> {
  checkContainerId(id);
  const runtimes = await Runtime.available(wanted);
  for (const runtime of runtimes) {
    const state = await runtime.state(id);
    if (!state) continue;
    if (state.status !== 'running' && state.status !== 'paused') {
      throw new CedanaError('CONTAINER_NOT_RUNNING', `container ${id} (${runtime.name}) is ${state.status}, not running`, {
        hint: state.status === 'stopped' ? 'a stopped container has no process to checkpoint; start it again' : `start it first (${runtime.name} start ${id})`,
        details: { status: state.status },
      });
    }
    if (!state.pid) throw new CedanaError('CONTAINER_NOT_RUNNING', `container ${id} has no process`);
    return { runtime, state };
  }
  throw new CedanaError('CONTAINER_NOT_FOUND', `no container ${id} (looked in ${runtimes.map((r) => r.name).join(', ')})`, {
    hint: `list them with ${runtimes.map((r) => `\`${r.name} list\``).join(' or ')}; --runtime picks one`,
  });
}
