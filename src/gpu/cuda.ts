/**
 * GPU processes: NVIDIA's cuda-checkpoint moves a process's GPU state (device memory, contexts) into
 * its host memory and back; in between, CRIU sees an ordinary process. This module finds the CUDA
 * processes of a tree, drives cuda-checkpoint through its per-process state machine
 *
 *   running --lock--> locked --checkpoint--> checkpointed --restore--> locked --unlock--> running
 *
 * and reads the GPUs and the driver from nvidia-smi. Everything that decides is pure and unit-tested;
 * what runs commands takes an `Exec` so the same code serves this host and a migration target.
 */
import { execFileResult } from '../util/exec.js';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { CedanaError } from '../errors.js';
import { findOnPath } from '../util/paths.js';


/** Where cuda-checkpoint comes from: not every driver install has it (the H200 image tried had none). */
export const CUDA_CHECKPOINT_SOURCE = "NVIDIA publishes it at github.com/NVIDIA/cuda-checkpoint, bin/x86_64_Linux or bin/aarch64_Linux; it drives driver ≥ 555, which some driver installs ship it with";
export type CudaState = 'running' | 'locked' | 'checkpointed' | 'failed';
export type CudaAction = 'lock' | 'checkpoint' | 'restore' | 'unlock';

/** Runs a command and returns its exit status and output (stdout and stderr together). */
export type Exec = (file: string, args: string[], timeoutMs: number) => Promise<{ code: number; out: string; timedOut: boolean }>;

export const localExec: Exec = async (file, args, timeoutMs) => {
  const r = await execFileResult(file, args, { timeout: timeoutMs, killSignal: 'SIGKILL' });
  return { code: r.exitCode ?? -1, out: r.all.trim(), timedOut: r.timedOut };
};

/** The driver that brought `--action` (lock/checkpoint/restore/unlock). */
export const DRIVER_ACTIONS = 555;
/** The driver that brought lock timeouts and whole process trees. */
export const DRIVER_TREES = 570;
/** The driver that brought `--device-map` (restoring on other GPUs). */
export const DRIVER_DEVICE_MAP = 580;

/** How long cedana waits for one checkpoint or restore (GPU memory is copied; ~GB/s). */
const ACTION_GUARD_MS = 10 * 60_000;

export interface Gpu {
  index: number;
  uuid: string;
  name: string;
  memoryTotalMiB: number;
  memoryUsedMiB: number;
  memoryFreeMiB: number;
}

export interface GpuApp {
  pid: number;
  uuid: string;
  usedMiB: number;
}

export const GPU_QUERY = ['--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,driver_version', '--format=csv,noheader,nounits'];
export const APPS_QUERY = ['--query-compute-apps=pid,gpu_uuid,used_memory', '--format=csv,noheader,nounits'];

const num = (s: string | undefined): number => {
  const n = Number((s ?? '').trim());
  return Number.isFinite(n) ? n : 0;
};

/** Parses `nvidia-smi --query-gpu=…` (GPU_QUERY). Pure. */
export function parseGpus(csv: string): { gpus: Gpu[]; driver?: string } {
  const gpus: Gpu[] = [];
  let driver: string | undefined;
  for (const line of csv.split('\n')) {
    const f = line.split(',').map((x) => x.trim());
    if (f.length < 7 || !/^\d+$/.test(f[0]!) || !f[1]) continue;
    gpus.push({ index: num(f[0]), uuid: f[1]!, name: f[2]!, memoryTotalMiB: num(f[3]), memoryUsedMiB: num(f[4]), memoryFreeMiB: num(f[5]) });
    driver ??= f[6];
  }
  return { gpus, driver };
}

/** Parses `nvidia-smi --query-compute-apps=…` (APPS_QUERY). Pure. */
export function parseApps(csv: string): GpuApp[] {
  const out: GpuApp[] = [];
  for (const line of csv.split('\n')) {
    const f = line.split(',').map((x) => x.trim());
    if (f.length < 3 || !/^\d+$/.test(f[0]!)) continue;
    out.push({ pid: num(f[0]), uuid: f[1]!, usedMiB: num(f[2]) });
  }
  return out;
}

/** The major number of a driver version ("570.86.15" → 570). Pure. */
export function driverMajor(v: string | undefined): number {
  const m = /^(\d+)/.exec(v ?? '');
  return m ? Number(m[1]) : 0;
}

/** Whether /proc/PID/maps text maps NVIDIA's CUDA driver library. Pure. */
export function mapsLibcuda(maps: string): boolean {
  return /\/libcuda\.so(\.[\d.]+)?$/m.test(maps);
}

/** Whether a descriptor's link names an NVIDIA device node. Pure. */
export function isNvidiaDevice(link: string): boolean {
  return /^\/dev\/nvidia(\d+|ctl|-uvm(-tools)?|-caps\/.*)$/.test(link);
}

/** Whether the process holds an NVIDIA device node open. */
export async function holdsNvidiaDevice(pid: number): Promise<boolean> {
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    if (isNvidiaDevice(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))) return true;
  }
  return false;
}

/** The processes of the tree that may use CUDA: libcuda mapped, or an NVIDIA device open. */
export async function cudaProcesses(pids: number[]): Promise<number[]> {
  const out: number[] = [];
  for (const pid of pids) {
    const maps = await readFile(`/proc/${pid}/maps`, 'utf8').catch(() => '');
    if (mapsLibcuda(maps) || (await holdsNvidiaDevice(pid))) out.push(pid);
  }
  return out;
}

/** What one host offers: its cuda-checkpoint, driver and GPUs. */
export interface GpuHost {
  cudaCheckpoint?: string;
  /** `cuda-checkpoint --help`: what this utility supports. */
  help: string;
  driver?: string;
  gpus: Gpu[];
  apps: GpuApp[];
}

/**
 * Where cuda-checkpoint is: --cuda-checkpoint PATH, else on PATH. nvidia-smi: on PATH, else beside
 * cuda-checkpoint.
 */
export async function locateGpuTools(explicit?: string): Promise<{ cudaCheckpoint?: string; nvidiaSmi?: string }> {
  const cudaCheckpoint = await findOnPath(explicit ?? 'cuda-checkpoint');
  if (explicit !== undefined && !cudaCheckpoint) {
    throw new CedanaError('GPU_UNSUPPORTED', `--cuda-checkpoint ${explicit}: not an executable file`, { hint: `give the path of NVIDIA's cuda-checkpoint (${CUDA_CHECKPOINT_SOURCE})` });
  }
  const nvidiaSmi = (await findOnPath('nvidia-smi')) ?? (cudaCheckpoint ? await findOnPath(join(dirname(cudaCheckpoint), 'nvidia-smi')) : undefined);
  return { cudaCheckpoint, nvidiaSmi };
}

/** Reads this host's GPU facts (nvidia-smi; the driver from /proc when nvidia-smi is missing). */
export async function localGpuHost(explicit?: string, exec: Exec = localExec): Promise<GpuHost> {
  const tools = await locateGpuTools(explicit);
  const host: GpuHost = { cudaCheckpoint: tools.cudaCheckpoint, help: '', gpus: [], apps: [] };
  if (tools.cudaCheckpoint) host.help = (await exec(tools.cudaCheckpoint, ['--help'], 10_000)).out;
  if (tools.nvidiaSmi) {
    const g = await exec(tools.nvidiaSmi, GPU_QUERY, 20_000);
    if (g.code === 0) Object.assign(host, parseGpus(g.out));
    const a = await exec(tools.nvidiaSmi, APPS_QUERY, 20_000);
    if (a.code === 0) host.apps = parseApps(a.out);
  }
  if (!host.driver) {
    host.driver = /Kernel Module\s+([\d.]+)/.exec(await readFile('/proc/driver/nvidia/version', 'utf8').catch(() => ''))?.[1];
  }
  return host;
}

/** The GPU part of an image's manifest. */
export interface ManifestGpu {
  driverVersion: string;
  /** The GPUs the tree used, as nvidia-smi named them on the dumping host. */
  devices: { uuid: string; name: string; memoryTotalMiB: number }[];
  /** Per CUDA process: the GPUs it used and its device memory then. */
  processes: { pid: number; uuids: string[]; memoryUsedMiB: number }[];
  /** The device memory moved through host memory, in all. */
  memoryUsedMiB: number;
}

/**
 * Refuses a dump of CUDA processes this host cannot checkpoint, and describes what it will move.
 * Pure.
 */
export function planGpuDump(cudaPids: number[], host: GpuHost): ManifestGpu {
  if (!host.cudaCheckpoint) {
    throw new CedanaError('GPU_UNSUPPORTED', `PID ${cudaPids.join(', ')} use${cudaPids.length === 1 ? 's' : ''} the GPU (CUDA), and cuda-checkpoint is not found`, {
      hint: `install NVIDIA's cuda-checkpoint on PATH (${CUDA_CHECKPOINT_SOURCE}), or give --cuda-checkpoint PATH`,
      details: { cudaPids },
    });
  }
  const major = driverMajor(host.driver);
  if (major < DRIVER_ACTIONS || !host.help.includes('--action')) {
    throw new CedanaError('GPU_UNSUPPORTED', `the NVIDIA driver ${host.driver ?? '(unknown)'} cannot checkpoint step by step (lock, checkpoint, restore, unlock need ≥ ${DRIVER_ACTIONS})`, {
      hint: `upgrade the NVIDIA driver to ${DRIVER_ACTIONS} or newer`,
    });
  }
  if (cudaPids.length > 1 && major < DRIVER_TREES) {
    throw new CedanaError('GPU_UNSUPPORTED', `${cudaPids.length} CUDA processes in the tree; driver ${host.driver} checkpoints only one (trees need ≥ ${DRIVER_TREES})`, {
      hint: `upgrade the NVIDIA driver to ${DRIVER_TREES} or newer, or dump one CUDA process at a time`,
    });
  }
  const processes = cudaPids.map((pid) => {
    const mine = host.apps.filter((a) => a.pid === pid);
    return { pid, uuids: [...new Set(mine.map((a) => a.uuid))], memoryUsedMiB: mine.reduce((s, a) => s + a.usedMiB, 0) };
  });
  const used = new Set(processes.flatMap((p) => p.uuids));
  return {
    driverVersion: host.driver ?? 'unknown',
    devices: host.gpus.filter((g) => used.has(g.uuid)).map((g) => ({ uuid: g.uuid, name: g.name, memoryTotalMiB: g.memoryTotalMiB })),
    processes,
    memoryUsedMiB: processes.reduce((s, p) => s + p.memoryUsedMiB, 0),
  };
}

/**
 * How an image's GPU state comes back on a host: which GPU takes the place of each one the image
 * used (the same UUID where it is there, else a free GPU of the same model, in order), and whether
 * that needs `--device-map`. Refuses a host without cuda-checkpoint, without enough GPUs of the
 * model, with less free memory than the state, or another driver branch. Pure.
 */
export function planGpuRestore(m: ManifestGpu, host: GpuHost, where = 'here'): { deviceMap: Map<string, string>; notes: string[] } {
  const mismatch = (msg: string, hint: string, details: Record<string, unknown> = {}): CedanaError =>
    new CedanaError('GPU_MISMATCH', msg, { hint, details });
  if (!host.cudaCheckpoint) {
    throw new CedanaError('GPU_UNSUPPORTED', `the image holds GPU state and cuda-checkpoint is not found ${where}`, {
      hint: `install NVIDIA's cuda-checkpoint on PATH (${CUDA_CHECKPOINT_SOURCE}), or give --cuda-checkpoint PATH`,
    });
  }
  if (!host.driver || driverMajor(host.driver) < DRIVER_ACTIONS) {
    throw new CedanaError('GPU_UNSUPPORTED', `no NVIDIA driver ≥ ${DRIVER_ACTIONS} ${where} (found ${host.driver ?? 'none'})`, { hint: 'restore on a host with an NVIDIA GPU and driver' });
  }
  if (driverMajor(host.driver) !== driverMajor(m.driverVersion)) {
    throw mismatch(`the image's GPU state was saved with driver ${m.driverVersion}; ${where} runs ${host.driver}`, 'restore where the same driver branch runs', {
      imageDriver: m.driverVersion, driver: host.driver,
    });
  }
  const notes: string[] = [];
  const deviceMap = new Map<string, string>();
  const taken = new Set<string>();
  const needMiB = new Map<string, number>();
  for (const p of m.processes) for (const u of p.uuids) needMiB.set(u, (needMiB.get(u) ?? 0) + (p.uuids.length ? p.memoryUsedMiB / p.uuids.length : 0));
  for (const d of m.devices) {
    const same = host.gpus.find((g) => g.uuid === d.uuid && !taken.has(g.uuid));
    const other = same ?? host.gpus.find((g) => g.name === d.name && !taken.has(g.uuid) && !m.devices.some((x) => x.uuid === g.uuid && x !== d));
    if (!other) {
      throw mismatch(`the image used a ${d.name} (${d.uuid}); ${where} has no free GPU of that model (${host.gpus.map((g) => g.name).join(', ') || 'none'})`, 'restore on a host with the same GPU models', {
        missingGpu: d,
      });
    }
    taken.add(other.uuid);
    deviceMap.set(d.uuid, other.uuid);
    const need = Math.ceil(needMiB.get(d.uuid) ?? 0);
    if (other.memoryFreeMiB < need) {
      throw mismatch(`GPU ${other.index} (${other.name}) ${where} has ${other.memoryFreeMiB} MiB free; the image's state on it needs ${need} MiB`, 'free GPU memory there, or restore elsewhere', {
        gpu: other.uuid, freeMiB: other.memoryFreeMiB, needMiB: need,
      });
    }
  }
  const moved = [...deviceMap].filter(([a, b]) => a !== b);
  if (moved.length > 0) {
    if (driverMajor(host.driver) < DRIVER_DEVICE_MAP || !host.help.includes('--device-map')) {
      throw mismatch(`the image's GPUs are not ${where} (other UUIDs), and driver ${host.driver} cannot restore onto other GPUs (--device-map needs ≥ ${DRIVER_DEVICE_MAP})`, `restore where the same GPUs are, or upgrade the driver to ${DRIVER_DEVICE_MAP}`);
    }
    notes.push(`GPU state goes to other GPUs ${where}: ${moved.map(([a, b]) => `${a} → ${b}`).join(', ')}`);
  }
  return { deviceMap, notes };
}

/**
 * `--device-map` text for cuda-checkpoint: none where every GPU stays, else every pair, those that
 * stay too (cuda-checkpoint 580's help: the map "must contain all checkpointed devices if
 * specified"). Pure.
 */
export function deviceMapArg(map: Map<string, string>): string | undefined {
  if (![...map].some(([a, b]) => a !== b)) return undefined;
  return [...map].map(([a, b]) => `${a}=${b}`).join(',');
}

/** cuda-checkpoint on one host. */
export class CudaCheckpoint {
  constructor(
    readonly path: string,
    private readonly exec: Exec = localExec,
  ) {}

  async state(pid: number): Promise<CudaState> {
    const r = await this.exec(this.path, ['--get-state', '--pid', String(pid)], 30_000);
    const s = r.out.split('\n').pop()?.trim() ?? '';
    if (r.code !== 0 || !/^(running|locked|checkpointed|failed)$/.test(s)) {
      throw gpuFailed(`cuda-checkpoint --get-state --pid ${pid} failed: ${r.out || `exit ${r.code}`}`, pid, 'get-state');
    }
    return s as CudaState;
  }

  async action(pid: number, action: CudaAction, opts: { timeoutMs?: number; deviceMap?: string } = {}): Promise<void> {
    const args = ['--action', action, '--pid', String(pid)];
    if (opts.timeoutMs !== undefined) args.push('--timeout', String(opts.timeoutMs));
    if (opts.deviceMap) args.push('--device-map', opts.deviceMap);
    // Our own guard: cuda-checkpoint's lock timeout, plus time to start; a copy of GPU memory otherwise.
    const guard = opts.timeoutMs !== undefined ? opts.timeoutMs + 30_000 : ACTION_GUARD_MS;
    const r = await this.exec(this.path, args, guard);
    if (r.code !== 0) {
      const why = r.timedOut ? `did not finish in ${Math.round(guard / 1000)} s` : r.out || `exit ${r.code}`;
      throw gpuFailed(`cuda-checkpoint --action ${action} --pid ${pid} failed: ${why}`, pid, action);
    }
  }
}

function gpuFailed(message: string, pid: number, step: string): CedanaError {
  return new CedanaError('GPU_FAILED', message, { hint: 'see the message of cuda-checkpoint', details: { gpuPid: pid, gpuStep: step } });
}

/**
 * The GPU side of one dump: every CUDA process locked (with a timeout), then checkpointed. Any
 * failure brings all of them back to running on the GPU before it is thrown; `resume()` does the
 * same after the dump (--leave-running, or a dump that failed). A process the user had locked or
 * checkpointed already is left as it was found.
 */
export class GpuSuspension {
  private readonly states = new Map<number, { initial: CudaState; now: CudaState }>();
  /** When the first lock was asked for, and when the last process was back on the GPU (performance.now()). */
  private lockedAt?: number;
  private resumedAt?: number;
  /** Lock and checkpoint of every process: the GPU part of the pause before CRIU freezes the tree. */
  checkpointMs = 0;

  private constructor(
    private readonly cc: CudaCheckpoint,
    readonly pids: number[],
  ) {}

  /** `states`: what cuda-checkpoint said while planning (asked again where missing). */
  static async suspend(cc: CudaCheckpoint, pids: number[], opts: { lockTimeoutMs: number; supportsTimeout: boolean; progress?: (m: string) => void; states?: Map<number, CudaState> }): Promise<GpuSuspension> {
    const s = new GpuSuspension(cc, pids);
    s.lockedAt = performance.now();
    try {
      for (const pid of pids) {
        const initial = opts.states?.get(pid) ?? (await cc.state(pid));
        if (initial === 'failed') throw gpuFailed(`cuda-checkpoint reports PID ${pid} in the failed state`, pid, 'get-state');
        s.states.set(pid, { initial, now: initial });
      }
      for (const pid of pids) {
        if (s.states.get(pid)!.now !== 'running') continue;
        opts.progress?.(`locking the GPU work of PID ${pid}`);
        await cc.action(pid, 'lock', opts.supportsTimeout ? { timeoutMs: opts.lockTimeoutMs } : {});
        s.states.get(pid)!.now = 'locked';
      }
      for (const pid of pids) {
        if (s.states.get(pid)!.now !== 'locked') continue;
        opts.progress?.(`moving the GPU state of PID ${pid} into host memory`);
        await cc.action(pid, 'checkpoint');
        s.states.get(pid)!.now = 'checkpointed';
      }
      s.checkpointMs = Math.round(performance.now() - s.lockedAt);
    } catch (e) {
      const left = await s.resume().then(
        () => undefined,
        (r: unknown) => r as CedanaError,
      );
      const err = e instanceof CedanaError ? e : gpuFailed(String(e), 0, 'suspend');
      if (left) err.details.gpuNotResumed = left.message;
      throw err;
    }
    return s;
  }

  /**
   * How long the GPU work was held, from the first lock to the last unlock: with --leave-running, the
   * job's real pause (CRIU's frozen time is only its middle part). Undefined until resume() ended.
   */
  get pausedMs(): number | undefined {
    return this.lockedAt !== undefined && this.resumedAt !== undefined ? Math.round(this.resumedAt - this.lockedAt) : undefined;
  }

  /**
   * Back to the state each process was found in: restore what is checkpointed, unlock what is locked.
   * It asks cuda-checkpoint where each one is (a step that failed or timed out may have gone through).
   */
  async resume(progress?: (m: string) => void): Promise<void> {
    const errors: CedanaError[] = [];
    for (const pid of [...this.pids].reverse()) {
      const st = this.states.get(pid);
      if (!st) continue;
      try {
        st.now = await this.cc.state(pid).catch(() => st.now);
        if (st.now === 'checkpointed' && st.initial !== 'checkpointed') {
          progress?.(`moving the GPU state of PID ${pid} back onto the GPU`);
          await this.cc.action(pid, 'restore');
          st.now = 'locked';
        }
        if (st.now === 'locked' && st.initial === 'running') {
          await this.cc.action(pid, 'unlock');
          st.now = 'running';
        }
      } catch (e) {
        errors.push(e instanceof CedanaError ? e : gpuFailed(String(e), pid, 'resume'));
      }
    }
    if (errors.length === 0) this.resumedAt = performance.now();
    if (errors.length > 0) {
      throw new CedanaError('GPU_FAILED', `the GPU state could not be brought back: ${errors.map((e) => e.message).join('; ')}`, {
        hint: 'the process runs on the CPU but its GPU work is held; try `cuda-checkpoint --action restore` / `--action unlock` on it',
        details: { gpuPid: errors[0]!.details.gpuPid, gpuStep: errors[0]!.details.gpuStep },
      });
    }
  }
}

/**
 * After CRIU restored a tree: each CUDA process's GPU state back onto the GPU (onto other GPUs with
 * --device-map), then unlocked. A process already running (CRIU's own CUDA plugin, where installed,
 * restores it itself) is left alone.
 */
export async function resumeRestored(cc: CudaCheckpoint, pids: number[], deviceMap: string | undefined, progress?: (m: string) => void): Promise<string[]> {
  const notes: string[] = [];
  for (const pid of pids) {
    let st = await cc.state(pid);
    if (st === 'failed') throw gpuFailed(`cuda-checkpoint reports PID ${pid} in the failed state after the restore`, pid, 'get-state');
    if (st === 'running') {
      notes.push(`PID ${pid}'s GPU state was already restored (CRIU's CUDA plugin)`);
      continue;
    }
    if (st === 'checkpointed') {
      progress?.(`moving the GPU state of PID ${pid} onto the GPU`);
      await cc.action(pid, 'restore', deviceMap ? { deviceMap } : {});
      st = 'locked';
    }
    if (st === 'locked') await cc.action(pid, 'unlock');
  }
  return notes;
}
