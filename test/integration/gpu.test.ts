/**
 * GPU processes, with a STAND-IN for NVIDIA's cuda-checkpoint and nvidia-smi (these machines have no
 * GPU; see test/fixtures/gpu-standin). The stand-in CUDA program keeps its "device memory" outside
 * its own memory and holds a descriptor CRIU cannot dump, so a dump only works when cedana moved its
 * GPU state into host memory first; after a restore the program itself reports whether its device
 * memory is what it last wrote and whether it computes on. The real CRIU dumps and restores it.
 */
import { execa } from 'execa';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { FIXTURES, Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';

const owned = new Owned();
let shared: string;
beforeAll(async () => {
  // Where test-bed hosts see the same files (their /tmp is private).
  shared = await mkdtemp('/var/lib/cedana-test-gpu-');
});
afterAll(async () => {
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const H100 = 'NVIDIA H100 80GB HBM3';
const GPU_A = 'GPU-0a1b2c3d-0000-4000-8000-00000000000a';
const GPU_B = 'GPU-0a1b2c3d-0000-4000-8000-00000000000b';

interface Standin {
  dir: string;
  cc: string;
  calls(): string[];
  fail(...rules: string[]): void;
  /** This host's GPUs (uuid, model); with `on`, one test-bed host's own. */
  gpus(rows: [string, string][], on?: string): void;
  driver(v: string): void;
  busy(on: boolean): void;
}

/** A fresh copy of the stand-in with its own state: one H100 (GPU_A), driver 580. */
async function standin(): Promise<Standin> {
  const dir = await owned.tempDir('standin-', shared);
  const g = join(dir, 'gpu');
  cpSync(join(FIXTURES, 'gpu-standin'), g, { recursive: true });
  rmSync(join(g, 'state'), { recursive: true, force: true });
  mkdirSync(join(g, 'state', 'procs'), { recursive: true });
  const st = (n: string): string => join(g, 'state', n);
  const s: Standin = {
    dir,
    cc: join(g, 'cuda-checkpoint'),
    calls: () => (readText(st('calls.log')) ?? '').split('\n').filter(Boolean),
    fail: (...rules) => writeFileSync(st('fail'), rules.join('\n')),
    gpus: (rows, on) => writeFileSync(st(on ? `gpus@${on}.csv` : 'gpus.csv'), rows.map(([uuid, name], i) => `${i}, ${uuid}, ${name}, 81559\n`).join('')),
    driver: (v) => writeFileSync(st('driver'), v),
    busy: (on) => (on ? writeFileSync(st('busy'), '') : rmSync(st('busy'), { force: true })),
  };
  s.gpus([[GPU_A, H100]]);
  return s;
}

interface AppStatus {
  pid: number;
  steps: number;
  locked: boolean;
  onDevice: boolean;
  deviceOk: boolean;
  deviceSha: string;
}

/** The stand-in CUDA program with 8 MiB of device memory, once it computes. */
async function cudaApp(s: Standin, extra: string[] = []): Promise<{ pid: number; status: () => AppStatus }> {
  const path = join(s.dir, 'status');
  const pid = owned.start('python3', [join(s.dir, 'gpu', 'fake-cuda-app.py'), '8', path, ...extra]);
  const status = (): AppStatus => JSON.parse(readText(path) ?? '{}') as AppStatus;
  await waitFor('the program computing on its GPU', () => (readText(path) ? status().steps > 3 : false));
  return { pid, status };
}

/** The program runs on its GPU, its device memory intact, and computes on. */
async function expectComputing(status: () => AppStatus): Promise<void> {
  const s0 = status();
  await waitFor('more steps', () => status().steps > s0.steps + 5);
  expect(status()).toMatchObject({ locked: false, onDevice: true, deviceOk: true });
}

describe('GPU processes (stand-in cuda-checkpoint)', () => {
  it('the stand-in is a real obstacle: plain CRIU cannot dump the program while its GPU state is on the device', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    const img = await owned.tempDir();
    const r = await execa('criu', ['dump', '-t', String(app.pid), '-D', img, '--shell-job', '--leave-running', '-o', 'dump.log'], { reject: false });
    expect(r.exitCode).not.toBe(0);
    expect(readFileSync(join(img, 'dump.log'), 'utf8')).toMatch(/userfaultfd/);
    await expectComputing(app.status);
  });

  it('dump: lock, checkpoint, CRIU; restore: CRIU, restore, unlock — the program finds its device memory intact and computes on', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    const img = join(await owned.tempDir(), 'img');
    const d = await cedanaOk(['dump', String(app.pid), '-o', img, '--cuda-checkpoint', s.cc, '--json']);
    expect(d.gpu).toEqual({ pids: [app.pid], memoryUsedMiB: 8, driverVersion: '580.65.06', checkpointMs: expect.any(Number) });
    expect(d.decisions.join('\n')).toMatch(/8 MiB of device memory/);
    await waitGone(app.pid);
    const atDump = app.status();
    expect(atDump).toMatchObject({ locked: true, onDevice: false, deviceOk: true });
    expect(s.calls()).toEqual([`get-state ${app.pid}`, `lock ${app.pid} --timeout 10000`, `checkpoint ${app.pid}`]);

    const ins = await cedanaOk(['inspect', img, '--json']);
    expect(ins.gpu).toEqual({
      driverVersion: '580.65.06', memoryUsedMiB: 8,
      devices: [{ uuid: GPU_A, name: H100, memoryTotalMiB: 81559 }],
      processes: [{ pid: app.pid, uuids: [GPU_A], memoryUsedMiB: 8 }],
    });

    const r = await cedanaOk(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    owned.own(r.pid);
    expect(r.gpu).toEqual({ pids: [app.pid], deviceMap: { [GPU_A]: GPU_A }, restoreMs: expect.any(Number) });
    expect(s.calls().slice(3)).toEqual([`get-state ${app.pid}`, `restore ${app.pid}`, `unlock ${app.pid}`]);
    await expectComputing(app.status);
    expect(app.status().steps).toBeGreaterThan(atDump.steps);
  });

  it('--leave-running: the program is back on its GPU after the dump, and the image restores the state of the dump', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    const img = join(await owned.tempDir(), 'img');
    const d = await cedanaOk(['dump', String(app.pid), '-o', img, '--leave-running', '--cuda-checkpoint', s.cc, '--json']);
    // The job's pause: from the lock to the unlock, CRIU's freeze in the middle of it.
    expect(d.gpu.pausedMs).toBeGreaterThanOrEqual(d.gpu.checkpointMs);
    expect(d.gpu.pausedMs).toBeGreaterThanOrEqual(d.frozenMs);
    expect(s.calls()).toEqual([`get-state ${app.pid}`, `lock ${app.pid} --timeout 10000`, `checkpoint ${app.pid}`, `get-state ${app.pid}`, `restore ${app.pid}`, `unlock ${app.pid}`]);
    expect(alive(app.pid)).toBe(true);
    await expectComputing(app.status);
  });

  it('--leave-running whose GPU restore fails after the dump: GPU_FAILED, the image kept and restorable', async () => {
    const s = await standin();
    s.fail('restore:1');
    const app = await cudaApp(s);
    const img = join(await owned.tempDir(), 'img');
    const r = await cedana(['dump', String(app.pid), '-o', img, '--leave-running', '--cuda-checkpoint', s.cc, '--json']);
    expect(r.exitCode).toBe(41);
    expect(r.json?.error).toMatchObject({ code: 'GPU_FAILED', image: img, gpuStep: 'restore' });
    // It runs on the CPU, its GPU work held: exactly what the error says; the image restores it.
    expect(app.status()).toMatchObject({ locked: true, onDevice: false, deviceOk: true });
    await cedanaOk(['inspect', img, '--json']);
    process.kill(app.pid, 'SIGKILL');
    await waitGone(app.pid);
    const back = await cedanaOk(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    owned.own(back.pid);
    await expectComputing(app.status);
  });

  describe('a failure at any step brings the program back to running on its GPU; no image is left', () => {
    const cases: { name: string; fail?: string; undumpable?: boolean; code: string; calls: string[] }[] = [
      { name: 'lock fails', fail: 'lock', code: 'GPU_FAILED', calls: ['get-state', 'lock', 'get-state'] },
      { name: 'checkpoint fails', fail: 'checkpoint', code: 'GPU_FAILED', calls: ['get-state', 'lock', 'checkpoint', 'get-state', 'unlock'] },
      { name: 'CRIU fails after the checkpoint', undumpable: true, code: 'CRIU_FAILED', calls: ['get-state', 'lock', 'checkpoint', 'get-state', 'restore', 'unlock'] },
    ];
    for (const c of cases) {
      it(c.name, async () => {
        const s = await standin();
        if (c.fail) s.fail(c.fail);
        const app = await cudaApp(s, c.undumpable ? ['--undumpable'] : []);
        const img = join(await owned.tempDir(), 'img');
        const r = await cedana(['dump', String(app.pid), '-o', img, '--cuda-checkpoint', s.cc, '--json']);
        expect(r.json?.ok).toBe(false);
        expect(r.json?.error.code).toBe(c.code);
        expect(r.exitCode).toBe(c.code === 'GPU_FAILED' ? 41 : 8);
        expect(r.json?.error.processRunning).toBe(true);
        expect(r.json?.error.gpuNotResumed).toBeUndefined();
        expect(s.calls().map((l) => l.split(' ')[0])).toEqual(c.calls);
        expect(existsSync(img)).toBe(false);
        await expectComputing(app.status);
      });
    }
  });

  it('a process that cannot be locked in time (a long kernel) is left computing: GPU_FAILED after --gpu-lock-timeout', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    s.busy(true);
    const t = performance.now();
    const r = await cedana(['dump', String(app.pid), '--cuda-checkpoint', s.cc, '--gpu-lock-timeout', '300', '-o', join(await owned.tempDir(), 'img'), '--json']);
    expect(r.json?.error.code).toBe('GPU_FAILED');
    expect(r.json?.error.message).toMatch(/timed out/);
    expect(performance.now() - t).toBeLessThan(10_000);
    expect(s.calls()).toEqual([`get-state ${app.pid}`, `lock ${app.pid} --timeout 300`, `get-state ${app.pid}`]);
    s.busy(false);
    await expectComputing(app.status);
  });

  it('a process that maps libcuda without a CUDA context is dumped as a CPU process', async () => {
    const s = await standin();
    const lib = join(s.dir, 'gpu', 'libcuda.so.1');
    const pid = owned.start('python3', ['-c', `import mmap, time\nf = open(${JSON.stringify(lib)}, 'rb')\nm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\ntime.sleep(600)`]);
    await waitFor('libcuda mapped', () => (readText(`/proc/${pid}/maps`) ?? '').includes('libcuda.so.1'));
    const d = await cedanaOk(['dump', String(pid), '-o', join(await owned.tempDir(), 'img'), '--leave-running', '--cuda-checkpoint', s.cc, '--json']);
    expect(d.gpu).toBeUndefined();
    expect(d.decisions.join('\n')).toMatch(/maps libcuda but cuda-checkpoint knows no CUDA context in it: dumped as a CPU process/);
    expect(s.calls()).toEqual([`get-state ${pid}`]);
  });

  it('refuses before touching the process: no cuda-checkpoint, a driver without --action', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    const out = join(await owned.tempDir(), 'img');
    const none = await cedana(['dump', String(app.pid), '-o', out, '--json'], { env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' } });
    expect(none.json?.error.code).toBe('GPU_UNSUPPORTED');
    expect(none.exitCode).toBe(40);
    expect(none.json?.error.hint).toMatch(/--cuda-checkpoint/);
    s.driver('550.54.15');
    const old = await cedana(['dump', String(app.pid), '-o', out, '--cuda-checkpoint', s.cc, '--json']);
    expect(old.json?.error.code).toBe('GPU_UNSUPPORTED');
    expect(old.json?.error.message).toMatch(/550/);
    expect(s.calls()).toEqual([]);
    expect(existsSync(out)).toBe(false);
    await expectComputing(app.status);
  });

  it('restore onto another GPU of the model passes --device-map; another model or driver branch is refused before CRIU', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    const img = join(await owned.tempDir(), 'img');
    await cedanaOk(['dump', String(app.pid), '-o', img, '--cuda-checkpoint', s.cc, '--json']);
    await waitGone(app.pid);

    s.gpus([[GPU_B, 'NVIDIA A100-SXM4-40GB']]);
    const model = await cedana(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    expect(model.json?.error.code).toBe('GPU_MISMATCH');
    expect(model.exitCode).toBe(42);
    s.gpus([[GPU_B, H100]]);
    s.driver('570.86.15');
    const branch = await cedana(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    expect(branch.json?.error.code).toBe('GPU_MISMATCH');
    expect(branch.json?.error.message).toMatch(/570/);
    expect(alive(app.pid)).toBe(false);

    s.driver('580.95.05');
    const r = await cedanaOk(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    owned.own(r.pid);
    expect(r.gpu.deviceMap).toEqual({ [GPU_A]: GPU_B });
    expect(s.calls().slice(3)).toEqual([`get-state ${app.pid}`, `restore ${app.pid} --device-map ${GPU_A}=${GPU_B}`, `unlock ${app.pid}`]);
    const smi = await execa(join(s.dir, 'gpu', 'nvidia-smi'), ['--query-compute-apps=pid,gpu_uuid,used_memory', '--format=csv,noheader,nounits']);
    expect(smi.stdout.trim()).toBe(`${app.pid}, ${GPU_B}, 8`);
    await expectComputing(app.status);
  });

  it('restore: a failed GPU restore ends the restored tree; the image is intact and restores again', async () => {
    const s = await standin();
    const app = await cudaApp(s);
    const img = join(await owned.tempDir(), 'img');
    await cedanaOk(['dump', String(app.pid), '-o', img, '--cuda-checkpoint', s.cc, '--json']);
    await waitGone(app.pid);
    s.fail('restore');
    const bad = await cedana(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    expect(bad.json?.error.code).toBe('GPU_FAILED');
    expect(bad.json?.error.restoredTreeEnded).toBe(true);
    await waitGone(app.pid);
    const r = await cedanaOk(['restore', img, '--cuda-checkpoint', s.cc, '--json']);
    owned.own(r.pid);
    await expectComputing(app.status);
  });

  it('check reports cuda-checkpoint, the driver and the GPUs', async () => {
    const s = await standin();
    const r = await cedanaOk(['check', '--cuda-checkpoint', s.cc, '--json']);
    const f = r.features.find((x: { name: string }) => x.name === 'cuda-checkpoint');
    expect(f).toMatchObject({ available: true, gpu: { cudaCheckpoint: s.cc, driverVersion: '580.65.06', gpus: [{ uuid: GPU_A, name: H100, memoryTotalMiB: 81559 }] } });
    const none = await cedanaOk(['check', '--json'], { env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' } });
    expect(none.features.find((x: { name: string }) => x.name === 'cuda-checkpoint')).toMatchObject({ available: false });
  });
});

describe('migrating a GPU process (stand-in cuda-checkpoint, test bed)', () => {
  let bed: Bed;
  beforeAll(async () => {
    bed = await startBed([19]);
  });
  afterAll(async () => {
    await bed?.destroy();
  });

  it('locked and checkpointed here, restored and unlocked there; a failed GPU restore there resumes the source on its GPU', async () => {
    const host = bed.hosts[0]!;
    const s = await standin();
    const app = await cudaApp(s);

    // The target's GPU restore fails once: the target is cleaned up, the source back on its GPU.
    s.fail('restore:1');
    const bad = await cedana(['migrate', String(app.pid), '--to', host.name, '--cuda-checkpoint', s.cc, '--json'], { env: bed.env });
    expect(bad.json?.error.code).toBe('GPU_FAILED');
    expect(bad.json?.error.sourceResumed).toBe(true);
    expect(bad.json?.error.targetCleanedUp).toBe(true);
    expect(s.calls().map((l) => l.split(' ')[0])).toEqual(['get-state', 'lock', 'checkpoint', 'get-state', 'restore', 'get-state', 'restore', 'unlock']);
    expect(alive(app.pid)).toBe(true);
    await expectComputing(app.status);

    rmSync(join(s.dir, 'gpu', 'state', 'calls.log'));
    const r = await cedanaOk(['migrate', String(app.pid), '--to', host.name, '--cuda-checkpoint', s.cc, '--json'], { env: bed.env });
    expect(r.gpu).toEqual({ pids: [app.pid], memoryUsedMiB: 8, deviceMap: { [GPU_A]: GPU_A } });
    expect(r.decisions.join('\n')).toMatch(/GPU memory cannot be pre-copied: 8 MiB/);
    expect(s.calls()).toEqual([`get-state ${app.pid}`, `lock ${app.pid} --timeout 10000`, `checkpoint ${app.pid}`, `get-state ${app.pid}`, `restore ${app.pid}`, `unlock ${app.pid}`]);
    await waitGone(app.pid);
    // It computes on the target, on its GPU, its device memory intact (its own report, in the shared directory).
    await expectComputing(app.status);
    const there = await bed.onHost(host, `kill -9 ${app.pid}`);
    expect(there.exitCode, there.stderr).toBe(0);
  });

  it('refuses post-copy for a GPU process, and a target without a free GPU of the model, before freezing', async () => {
    const host = bed.hosts[0]!;
    const s = await standin();
    const app = await cudaApp(s);
    const post = await cedana(['migrate', String(app.pid), '--to', host.name, '--postcopy', '--cuda-checkpoint', s.cc, '--json'], { env: bed.env });
    expect(post.json?.error.code).toBe('GPU_UNSUPPORTED');
    // The target has only an A100: the H100's state has nowhere to go.
    s.gpus([[GPU_B, 'NVIDIA A100-SXM4-40GB']], host.name);
    const nogpu = await cedana(['migrate', String(app.pid), '--to', host.name, '--cuda-checkpoint', s.cc, '--json'], { env: bed.env });
    expect(nogpu.json?.error.code).toBe('GPU_MISMATCH');
    // Only questions were asked: nothing was locked or moved.
    expect(s.calls().length).toBeGreaterThan(0);
    expect(s.calls().every((l) => l.startsWith('get-state '))).toBe(true);
    await expectComputing(app.status);
  });
});
