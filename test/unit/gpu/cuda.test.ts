import { describe, expect, it } from 'vitest';
import {
  CudaCheckpoint, deviceMapArg, GpuSuspension, isNvidiaDevice, mapsLibcuda, parseApps, parseGpus, planGpuDump, planGpuRestore, resumeRestored,
  type CudaState, type Exec, type GpuHost, type ManifestGpu,
} from '../../../src/gpu/cuda.js';
import { parseGpuFacts } from '../../../src/gpu/remote.js';
import { CedanaError } from '../../../src/errors.js';

const A = 'GPU-aaaa';
const B = 'GPU-bbbb';
const H100 = 'NVIDIA H100 80GB HBM3';

const host = (over: Partial<GpuHost> = {}): GpuHost => ({
  cudaCheckpoint: '/usr/bin/cuda-checkpoint',
  help: '--action --timeout --device-map',
  driver: '580.65.06',
  gpus: [{ index: 0, uuid: A, name: H100, memoryTotalMiB: 81559, memoryUsedMiB: 1000, memoryFreeMiB: 80559 }],
  apps: [{ pid: 10, uuid: A, usedMiB: 1000 }],
  ...over,
});

const code = (f: () => unknown): string | undefined => {
  try {
    f();
  } catch (e) {
    return (e as CedanaError).code;
  }
  return undefined;
};

describe('nvidia-smi and /proc parsing', () => {
  it('reads GPUs and compute apps, skipping headers and garbage', () => {
    const g = parseGpus(`0, ${A}, ${H100}, 81559, 1000, 80559, 580.65.06\n1, ${B}, ${H100}, 81559, 0, 81559, 580.65.06\nNo devices were found\n`);
    expect(g.driver).toBe('580.65.06');
    expect(g.gpus.map((x) => [x.index, x.uuid, x.memoryFreeMiB])).toEqual([[0, A, 80559], [1, B, 81559]]);
    expect(parseApps(`10, ${A}, 1000\n11, ${B}, 24\n[N/A]\n`)).toEqual([{ pid: 10, uuid: A, usedMiB: 1000 }, { pid: 11, uuid: B, usedMiB: 24 }]);
  });

  it('detects libcuda mappings and NVIDIA device nodes, not look-alikes', () => {
    expect(mapsLibcuda('7f00-7f01 r-xp 0 08:01 5 /usr/lib/x86_64-linux-gnu/libcuda.so.570.86.15\n')).toBe(true);
    expect(mapsLibcuda('7f00-7f01 r-xp 0 08:01 5 /usr/lib/libcuda.so.1\n')).toBe(true);
    expect(mapsLibcuda('7f00-7f01 r-xp 0 08:01 5 /usr/lib/libcudart.so.12\n')).toBe(false);
    expect(['/dev/nvidia0', '/dev/nvidiactl', '/dev/nvidia-uvm'].every(isNvidiaDevice)).toBe(true);
    expect(['/dev/nvidia-foo', '/tmp/dev/nvidia0', '/dev/null'].some(isNvidiaDevice)).toBe(false);
  });

  it('reads the tagged facts a target reports', () => {
    const h = parseGpuFacts(`C:/usr/bin/cuda-checkpoint\nH:usage --action\nG:0, ${A}, ${H100}, 81559, 0, 81559, 570.86.15\nA:12, ${A}, 5\n`);
    expect(h).toMatchObject({ cudaCheckpoint: '/usr/bin/cuda-checkpoint', help: 'usage --action', driver: '570.86.15', apps: [{ pid: 12 }] });
    expect(parseGpuFacts('C:\nV:NVRM version: NVIDIA UNIX x86_64 Kernel Module  560.35.03  Fri\n')).toMatchObject({ cudaCheckpoint: undefined, driver: '560.35.03', gpus: [] });
  });
});

describe('planGpuDump', () => {
  it('records the GPUs used, per process memory and the driver', () => {
    expect(planGpuDump([10], host())).toEqual({
      driverVersion: '580.65.06', memoryUsedMiB: 1000, devices: [{ uuid: A, name: H100, memoryTotalMiB: 81559 }], processes: [{ pid: 10, uuids: [A], memoryUsedMiB: 1000 }],
    });
  });
  it('refuses without cuda-checkpoint, a driver before 555, and trees before 570', () => {
    expect(code(() => planGpuDump([10], host({ cudaCheckpoint: undefined })))).toBe('GPU_UNSUPPORTED');
    expect(code(() => planGpuDump([10], host({ driver: '550.1' })))).toBe('GPU_UNSUPPORTED');
    expect(code(() => planGpuDump([10, 11], host({ driver: '560.35.03' })))).toBe('GPU_UNSUPPORTED');
    expect(code(() => planGpuDump([10, 11], host({ driver: '570.86.15' })))).toBeUndefined();
  });
});

describe('planGpuRestore', () => {
  const m: ManifestGpu = { driverVersion: '580.65.06', memoryUsedMiB: 1000, devices: [{ uuid: A, name: H100, memoryTotalMiB: 81559 }], processes: [{ pid: 10, uuids: [A], memoryUsedMiB: 1000 }] };
  const g = (uuid: string, name = H100, free = 81559) => ({ index: 0, uuid, name, memoryTotalMiB: 81559, memoryUsedMiB: 81559 - free, memoryFreeMiB: free });

  it('keeps the same GPU, maps to another of the model, refuses another model, too little memory, another branch', () => {
    expect(deviceMapArg(planGpuRestore(m, host({ gpus: [g(A)] })).deviceMap)).toBeUndefined();
    const moved = planGpuRestore(m, host({ gpus: [g(B)] }));
    expect(deviceMapArg(moved.deviceMap)).toBe(`${A}=${B}`);
    expect(moved.notes[0]).toMatch(/other GPUs/);
    // Two GPUs, one of them moving: the map names both (cuda-checkpoint wants every checkpointed device).
    expect(deviceMapArg(new Map([[A, A], [B, 'GPU-cccccccc-0000-0000-0000-000000000000']]))).toBe(`${A}=${A},${B}=GPU-cccccccc-0000-0000-0000-000000000000`);
    expect(deviceMapArg(new Map([[A, A], [B, B]]))).toBeUndefined();
    expect(code(() => planGpuRestore(m, host({ gpus: [g(B, 'NVIDIA A100-SXM4-40GB')] })))).toBe('GPU_MISMATCH');
    expect(code(() => planGpuRestore(m, host({ gpus: [g(A, H100, 500)] })))).toBe('GPU_MISMATCH');
    expect(code(() => planGpuRestore(m, host({ gpus: [g(A)], driver: '570.86.15' })))).toBe('GPU_MISMATCH');
    expect(code(() => planGpuRestore(m, host({ gpus: [g(B)], help: '--action' })))).toBe('GPU_MISMATCH');
    expect(code(() => planGpuRestore(m, host({ cudaCheckpoint: undefined })))).toBe('GPU_UNSUPPORTED');
  });
});

/** A cuda-checkpoint that follows the state machine per PID and fails where told. */
function fakeTool(states: Record<number, CudaState>, failAt?: string): { exec: Exec; calls: string[] } {
  const calls: string[] = [];
  const next: Record<string, [CudaState, CudaState]> = { lock: ['running', 'locked'], checkpoint: ['locked', 'checkpointed'], restore: ['checkpointed', 'locked'], unlock: ['locked', 'running'] };
  const exec: Exec = async (_file, args) => {
    const pid = Number(args[args.indexOf('--pid') + 1]);
    const step = args[0] === '--get-state' ? 'get-state' : args[1]!;
    calls.push(`${step} ${pid}`);
    if (failAt === `${step} ${pid}`) return { code: 1, out: 'injected', timedOut: false };
    if (step === 'get-state') return { code: 0, out: states[pid]!, timedOut: false };
    const [from, to] = next[step]!;
    if (states[pid] !== from) return { code: 1, out: `bad state ${states[pid]}`, timedOut: false };
    states[pid] = to;
    return { code: 0, out: '', timedOut: false };
  };
  return { exec, calls };
}

describe('GpuSuspension', () => {
  it('locks every process, then checkpoints every one; resume restores and unlocks in reverse', async () => {
    const states: Record<number, CudaState> = { 1: 'running', 2: 'running' };
    const t = fakeTool(states);
    const s = await GpuSuspension.suspend(new CudaCheckpoint('cc', t.exec), [1, 2], { lockTimeoutMs: 5000, supportsTimeout: true });
    expect(t.calls).toEqual(['get-state 1', 'get-state 2', 'lock 1', 'lock 2', 'checkpoint 1', 'checkpoint 2']);
    expect(s.checkpointMs).toBeGreaterThanOrEqual(0);
    expect(s.pausedMs, 'held until resume() ends').toBeUndefined();
    await new Promise((r) => setTimeout(r, 30));
    await s.resume();
    expect(s.pausedMs!).toBeGreaterThanOrEqual(25);
    expect(s.pausedMs!).toBeGreaterThanOrEqual(s.checkpointMs);
    expect(t.calls.slice(6)).toEqual(['get-state 2', 'restore 2', 'unlock 2', 'get-state 1', 'restore 1', 'unlock 1']);
    expect(states).toEqual({ 1: 'running', 2: 'running' });
  });

  for (const failAt of ['lock 1', 'lock 2', 'checkpoint 1', 'checkpoint 2']) {
    it(`a failure at "${failAt}" leaves every process running`, async () => {
      const states: Record<number, CudaState> = { 1: 'running', 2: 'running' };
      const t = fakeTool(states, failAt);
      const err = await GpuSuspension.suspend(new CudaCheckpoint('cc', t.exec), [1, 2], { lockTimeoutMs: 5000, supportsTimeout: true }).catch((e: CedanaError) => e);
      expect(err).toBeInstanceOf(CedanaError);
      expect((err as CedanaError).code).toBe('GPU_FAILED');
      expect((err as CedanaError).details.gpuStep).toBe(failAt.split(' ')[0]);
      expect(states).toEqual({ 1: 'running', 2: 'running' });
    });
  }

  it('a lock that reports failure but went through (or timed out late) is still undone: resume asks where each one is', async () => {
    const states: Record<number, CudaState> = { 1: 'running' };
    const t = fakeTool(states);
    const late: Exec = async (file, args, ms) => {
      const r = await t.exec(file, args, ms);
      return args[1] === 'lock' ? { code: -1, out: '', timedOut: true } : r;
    };
    const err = await GpuSuspension.suspend(new CudaCheckpoint('cc', late), [1], { lockTimeoutMs: 100, supportsTimeout: true }).catch((e: CedanaError) => e);
    expect((err as CedanaError).code).toBe('GPU_FAILED');
    expect((err as CedanaError).message).toMatch(/did not finish/);
    expect(states[1]).toBe('running');
    expect(t.calls).toEqual(['get-state 1', 'lock 1', 'get-state 1', 'unlock 1']);
  });

  it('refuses to call a restored process running when cuda-checkpoint reports it failed', async () => {
    const t = fakeTool({ 1: 'failed' });
    await expect(resumeRestored(new CudaCheckpoint('cc', t.exec), [1], undefined)).rejects.toMatchObject({ code: 'GPU_FAILED' });
  });

  it('leaves a process the user had locked or checkpointed as it was', async () => {
    const states: Record<number, CudaState> = { 1: 'locked', 2: 'checkpointed' };
    const t = fakeTool(states);
    const s = await GpuSuspension.suspend(new CudaCheckpoint('cc', t.exec), [1, 2], { lockTimeoutMs: 5000, supportsTimeout: false });
    expect(t.calls).toEqual(['get-state 1', 'get-state 2', 'checkpoint 1']);
    await s.resume();
    expect(states).toEqual({ 1: 'locked', 2: 'checkpointed' });
  });

  it('passes --timeout only where the driver takes it', async () => {
    const seen: string[][] = [];
    const exec: Exec = async (_f, args) => {
      seen.push(args);
      return { code: 0, out: args[0] === '--get-state' ? 'running' : '', timedOut: false };
    };
    await GpuSuspension.suspend(new CudaCheckpoint('cc', exec), [7], { lockTimeoutMs: 1234, supportsTimeout: true });
    expect(seen[1]).toEqual(['--action', 'lock', '--pid', '7', '--timeout', '1234']);
    seen.length = 0;
    await GpuSuspension.suspend(new CudaCheckpoint('cc', exec), [7], { lockTimeoutMs: 1234, supportsTimeout: false });
    expect(seen[1]).toEqual(['--action', 'lock', '--pid', '7']);
  });
});

describe('resumeRestored', () => {
  it('restores (with a device map) and unlocks; leaves one CRIU\'s plugin already restored', async () => {
    const states: Record<number, CudaState> = { 1: 'checkpointed', 2: 'running' };
    const t = fakeTool(states);
    const notes = await resumeRestored(new CudaCheckpoint('cc', t.exec), [1, 2], `${A}=${B}`);
    expect(t.calls).toEqual(['get-state 1', 'restore 1', 'unlock 1', 'get-state 2']);
    expect(notes[0]).toMatch(/already restored/);
    expect(states).toEqual({ 1: 'running', 2: 'running' });
  });
});
