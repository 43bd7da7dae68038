/**
 * cedana restore: verifies an image and lets CRIU restore it, detached from cedana. Before CRIU
 * runs: the manifest, the set of files, every file's size and every metadata image's checksum
 * (BLAKE3; sha256 in an image of format 1) — CRIU parses those, and a short pages image makes it
 * spin. The contents of the pages images — the process memory, nearly all of the bytes, raw data
 * CRIU only copies — are hashed while CRIU restores, and the restored tree is held at CRIU's
 * post-restore point (restored, not one instruction run) until they check out; if they do not, CRIU
 * kills it. A damaged or tampered image never runs.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildRestoreArgs, type TcpMode } from '../criu/options.js';
import { decideConnections, localAddresses } from '../image/connections.js';
import { decodeImage } from '../image/criu/codec.js';
import { placeShipped } from '../image/ship.js';
import { keepLog, locateCriu, spawnCriu, type Criu } from '../criu/criu.js';
import { ActionGate } from '../criu/gate.js';
import { imageLocks, locksLost, type ExpectedLock } from '../image/file-locks.js';
import { describeLock, localFileOf, localPathOf, lostLocks } from '../proc/locks.js';
import { compareVersions, parseVersionText } from '../criu/version.js';
import { CedanaError } from '../errors.js';
import { hostFacts, requireRoot, type HostFacts } from '../host.js';
import { isPagesImage, verifyDir } from '../image/checksum.js';
import { imageConnections, writeRemappedImage, type PathMap, type PortMap } from '../image/remap.js';
import type { Manifest } from '../image/manifest.js';
import { openImage, readManifest } from '../image/open.js';
import { isCheckpointArchiveDir } from '../container/ckpt-archive.js';
import { readRestoreStats } from '../image/criu/stats.js';
import { processExists } from '../proc/procfs.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { privateTempDir } from '../util/paths.js';
import type { CudaCheckpoint } from '../gpu/cuda.js';

function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // already gone
  }
}

export interface RestoreArgs {
  image: string;
  pidFile?: string;
  /** auto: keep each established connection whose local address exists here, close the rest. */
  tcp: TcpMode;
  /** How long to wait for the image's PIDs to become free (a just-dumped tree may not be reaped yet). */
  pidWaitMs: number;
  stdin?: Readable;
  reporter?: Reporter;
  signal?: AbortSignal;
  /** --map-path: files under `from` are restored from `to`. */
  mapPaths?: PathMap[];
  /** --map-port: listening TCP sockets on `from` come back on `to`. */
  mapPorts?: PortMap[];
  /** --cuda-checkpoint PATH, for an image with GPU state (else found on PATH). */
  cudaCheckpoint?: string;
  /** Run the tree even if CRIU did not take all of its file locks again. */
  allowLostLocks?: boolean;
}

export interface RestoreResult {
  command: 'restore';
  /** The restored root PID. */
  pid: number;
  image: string;
  processes: number;
  restoreMs: number;
  durationMs: number;
  /** Files restored from another path (--map-path). */
  remapped: { from: string; to: string }[];
  /** Listening ports moved (--map-port). */
  remappedPorts: { from: number; to: number }[];
  /** Files and directories the image carried that were put in place (they were missing here). */
  placed: string[];
  /** What was decided for the established connections, and why. */
  decisions: string[];
  /** The CUDA processes whose GPU state went back onto the GPU, and onto which GPUs. */
  /** restoreMs: cuda-checkpoint's restore and unlock, after CRIU's restore (restoreMs above is CRIU's only). */
  gpu?: { pids: number[]; deviceMap: Record<string, string>; restoreMs: number };
}

export async function restore(args: RestoreArgs): Promise<RestoreResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('restore');
  const criu = await locateCriu();
  const work = await privateTempDir('cedana-restore-');
  let gate: Promise<ActionGate> | undefined;
  try {
    const { dir, label, digests } = await openImage(args.image, work, report, args.stdin);
    if (await isCheckpointArchiveDir(dir)) {
      throw new CedanaError('USAGE', `${label} is a container checkpoint archive (Kubernetes, CRI-O, Podman): it is restored as a container`, {
        hint: `cedana restore ${args.image} --container [NEW-ID] --rootfs IMAGE-ROOTFS-DIR`,
      });
    }
    report.phase('verifying the manifest, the file sizes and the metadata images');
    const manifest = await readManifest(dir);
    if (manifest.container) {
      throw new CedanaError('USAGE', `this is an image of container ${manifest.container.id}: it is restored as a container`, { hint: `cedana restore ${args.image} --container` });
    }
    // From an archive or a stream the pages were hashed as they were extracted: every file is verified
    // now, before CRIU runs, at no extra read. From a directory the pages are hashed while CRIU reads them.
    const pagesVerified = digests !== undefined && Object.entries(manifest.files).every(([name, e]) => !isPagesImage(name) || (e.blake3 !== undefined && digests.has(name)));
    // Meanwhile, what does not depend on the image's contents: the host's facts, and the gate CRIU will wait at.
    const facts = hostFacts();
    gate = ActionGate.create(work, 'post-restore');
    facts.catch(() => undefined);
    gate.catch(() => undefined);
    await verifyDir(dir, manifest, (name) => pagesVerified || !isPagesImage(name), digests);
    if (manifest.parent) {
      if (label === '-' || dir !== label) {
        throw new CedanaError('IMAGE_INVALID', 'an incremental checkpoint is restored from its directory, where its parent is linked, not from an archive or a stream', {
          hint: 'restore the checkpoint directory itself (its parents beside it)',
        });
      }
      report.phase('verifying the parent checkpoints');
      await (await import('../image/incremental.js')).verifyChain(dir, manifest);
    }
    checkCompatible(manifest, await facts, criu);
    let gpu: { cc: CudaCheckpoint; deviceMap: Map<string, string>; notes: string[]; restoreMs?: number } | undefined;
    if (manifest.gpu) {
      report.phase('checking the GPUs and the driver against the image');
      const { CudaCheckpoint, localGpuHost, planGpuRestore } = await import('../gpu/cuda.js');
      const host = await localGpuHost(args.cudaCheckpoint);
      gpu = { cc: new CudaCheckpoint(host.cudaCheckpoint ?? ''), ...planGpuRestore(manifest.gpu, host) };
    }
    report.phase('waiting for the image\'s PIDs to be free');
    await waitPidsFree(manifest.processes.map((p) => p.pid), args.pidWaitMs);

    const maps = args.mapPaths ?? [];
    const ports = args.mapPorts ?? [];
    const o = manifest.options;
    const conns = imageConnections(decodeImage(await readFile(join(dir, 'files.img')), 'files.img'));
    const plan = decideConnections(conns, { mode: o.tcpClose ? 'close' : args.tcp, addresses: localAddresses(), moving: false, where: 'here' });
    // --tcp-close: CRIU's own (reads see EOF). Decided per connection: those sockets are rewritten as
    // unconnected ones (reads fail with ENOTCONN, as after a reset).
    const closeAll = o.tcpClose || args.tcp === 'close';
    const closeSome = closeAll ? new Set<number>() : new Set(plan.close.map((c) => c.ino));

    if (manifest.shipped?.length) report.phase('putting the files the image carries in place');
    const placement = await placeShipped(dir, manifest.shipped ?? [], maps);
    try {
      let criuDir = dir;
      let remapped: { from: string; to: string }[] = [];
      let remappedPorts: { from: number; to: number }[] = [];
      if (maps.length + ports.length + closeSome.size > 0) {
        report.phase('remapping paths, ports and connections');
        const r = await writeRemappedImage(dir, join(work, 'remapped'), maps, ports, closeSome);
        criuDir = r.dir;
        remapped = [...new Map(r.changed.map((c) => [c.from, { from: c.from, to: c.to }])).values()];
        remappedPorts = [...new Map(r.changedPorts.map((c) => [c.from, { from: c.from, to: c.to }])).values()];
      }
      report.phase(`restoring ${manifest.processes.length} process(es) and verifying their memory`);
      const tcp = { tcpEstablished: o.tcpEstablished && !closeAll, tcpClose: closeAll };
      const restored = await runRestore({ criu, manifest, dir, criuDir, work, gate: await gate, tcp, locks: await imageLocks(dir), allowLostLocks: !!args.allowLostLocks, signal: args.signal, pagesVerified });
      if (gpu && manifest.gpu) {
        const pids = manifest.gpu.processes.map((p) => p.pid);
        try {
          const { deviceMapArg, resumeRestored } = await import('../gpu/cuda.js');
          const t0 = performance.now();
          gpu.notes.push(...(await resumeRestored(gpu.cc, pids, deviceMapArg(gpu.deviceMap), (m) => report.phase(m))));
          gpu.restoreMs = Math.round(performance.now() - t0);
        } catch (e) {
          // A tree whose GPU state did not come back would hang on its first CUDA call: end it; the image is intact.
          for (const p of manifest.processes) killQuietly(p.pid);
          throw new CedanaError('GPU_FAILED', (e as Error).message, {
            hint: 'the restored tree was ended (the image is intact): fix what cuda-checkpoint reports and restore again',
            details: { ...(e as CedanaError).details, restoredTreeEnded: true },
            cause: e,
          });
        }
      }
      if (args.pidFile) await writeFile(resolve(args.pidFile), `${restored.pid}\n`);
      // The dump's network lock still drops the closed connections' packets here: lift it, so their peers get a reset.
      if (plan.close.length > 0) await (await import('../migrate/netlock.js')).releaseSourceLocks(plan.close);
      return {
        command: 'restore',
        pid: restored.pid,
        image: label,
        processes: manifest.processes.length,
        restoreMs: restored.restoreMs,
        durationMs: Math.round(performance.now() - started),
        remapped,
        remappedPorts,
        placed: placement.created,
        decisions: [...plan.notes, ...restored.notes, ...(gpu?.notes ?? [])],
        ...(gpu && manifest.gpu ? { gpu: { pids: manifest.gpu.processes.map((p) => p.pid), deviceMap: Object.fromEntries(gpu.deviceMap), restoreMs: gpu.restoreMs ?? 0 } } : {}),
      };
    } catch (e) {
      await placement.undo();
      throw e;
    }
  } finally {
    report.stop();
    await gate?.catch(() => undefined); // written into work: done before work is removed
    await rm(work, { recursive: true, force: true });
  }
}

interface RunRestore {
  criu: Criu;
  manifest: Manifest;
  /** The verified image (its pages are hashed while CRIU reads them). */
  dir: string;
  /** What CRIU restores: dir, or its remapped shadow. */
  criuDir: string;
  work: string;
  tcp: { tcpEstablished: boolean; tcpClose: boolean };
  /** The image's file locks, each to be held again before the tree runs. */
  locks: ExpectedLock[];
  allowLostLocks: boolean;
  signal?: AbortSignal;
  /** The pages images were verified already (hashed as an archive was extracted). */
  pagesVerified?: boolean;
  /** The post-restore gate, in `work`. */
  gate: ActionGate;
}

/** CRIU restores; the pages are verified meanwhile, the tree held at post-restore until they check out. */
async function runRestore(r: RunRestore): Promise<{ pid: number; restoreMs: number; notes: string[] }> {
  const { criu, manifest, work } = r;
  const pidFile = join(work, 'restored.pid');
  const logFile = join(work, 'restore.log');
  const gate = r.gate;
  const o = manifest.options;
  const criuArgs = buildRestoreArgs(
    { shellJob: o.shellJob, ...r.tcp, fileLocks: o.fileLocks, externalUnix: o.externalUnix.length > 0 },
    { imagesDir: r.criuDir, workDir: work, logFile, networkLock: o.networkLock === 'nftables' ? 'nftables' : 'iptables', pidFile, actionScript: gate.script },
  );
  const t = performance.now();
  const run = spawnCriu(criu, criuArgs, { logFile, label: `restore-${manifest.pid}` });
  // The same check as before CRIU ran, now hashing the pages images only, on one core (CRIU has the other).
  const pagesBad = (r.pagesVerified ? Promise.resolve() : verifyDir(r.dir, manifest, isPagesImage, undefined, true)).then(
    () => undefined,
    (e: unknown) => e,
  );
  // An interrupt before the tree runs: CRIU kills it at the gate and nothing is restored.
  const interrupted = new Promise<CedanaError>((resolve) => {
    const fire = (): void => resolve(new CedanaError('INTERRUPTED', 'restore interrupted; the restored tree was ended before it ran'));
    if (r.signal?.aborted) fire();
    else r.signal?.addEventListener('abort', fire, { once: true });
  });
  const event = await gate.waitReady(run.done);
  const bad = await Promise.race([pagesBad, interrupted]);
  if (bad) {
    // The tree was restored but never ran: CRIU kills it when the gate aborts.
    await gate.abortAndWait(run.done);
    throw bad;
  }
  if (event === 'exited') {
    await run.done;
    throw new CedanaError('CRIU_FAILED', 'criu restore exited before its post-restore step', { hint: `log: ${await keepLog(logFile, `restore-${manifest.pid}`)}` });
  }
  // Every lock of the image held again, before the tree runs a single instruction. An image without
  // locks has nothing to check: /proc/locks is not read (its first read in a process costs ~10-17 ms
  // here — the kernel takes a lock that waits for an RCU grace period — with the tree held at the gate).
  const lost = r.locks.length === 0 ? [] : lostLocks(r.locks, await readFile('/proc/locks', 'utf8'), localFileOf).map((l) => ({ ...l, path: localPathOf(l.pid, l.fd) }));
  const lockNotes: string[] = [];
  if (lost.length > 0) {
    const err = locksLost(lost, 'here');
    if (!r.allowLostLocks) {
      await gate.abortAndWait(run.done);
      throw err;
    }
    lockNotes.push(`--allow-lost-locks: running without ${lost.map(describeLock).join('; ')}`);
  }
  await gate.commit();
  await run.done;
  const restoreMs = Math.round(performance.now() - t);
  const pid = Number((await readFile(pidFile, 'utf8')).trim());
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new CedanaError('CRIU_FAILED', `criu restore wrote no PID to ${pidFile}`);
  const stats = await readRestoreStats(join(work, 'stats-restore'));
  return { pid, restoreMs: stats ? Math.round(stats.restoreUs / 1000) : restoreMs, notes: lockNotes };
}

/** Refuses images from another architecture, a newer CRIU, or a CPU with features this one lacks. Pure. */
export function checkCompatible(m: Manifest, host: HostFacts, criu: Pick<Criu, 'version'>): void {
  if (m.arch !== host.arch) {
    throw new CedanaError('IMAGE_INCOMPATIBLE', `image was made on ${m.arch}, this host is ${host.arch}`, {
      hint: 'restore it on a host of the same architecture',
    });
  }
  const made = parseVersionText(m.criuVersion);
  if (made && compareVersions(made, criu.version) > 0) {
    throw new CedanaError('CRIU_TOO_OLD', `image was made by CRIU ${m.criuVersion}; this host has ${criu.version.text}`, {
      hint: `install CRIU ${m.criuVersion} or newer on this host (a distribution package, or a build from https://github.com/checkpoint-restore/criu)`,
    });
  }
  if (host.cpuFlags.length > 0) {
    const have = new Set(host.cpuFlags);
    const missing = m.cpuFlags.filter((f) => !have.has(f) && USER_VISIBLE_CPU_FLAG.test(f));
    if (missing.length > 0) {
      throw new CedanaError('IMAGE_INCOMPATIBLE', `this CPU lacks features the image's CPU had: ${missing.slice(0, 8).join(' ')}`, {
        hint: 'a program that uses them would crash here; restore on a host with a compatible CPU',
        details: { missingCpuFlags: missing },
      });
    }
  }
}

/** Instruction-set flags a program may use; flags about the hypervisor or errata do not matter. */
const USER_VISIBLE_CPU_FLAG = /^(sse\d?(_\d)?|ssse3|avx.*|fma|f16c|aes|pclmulqdq|sha_ni|bmi\d|adx|popcnt|movbe|vaes|vpclmulqdq|gfni|lzcnt|abm|rdrand|rdseed|amx.*|xsave.*|fpu|mmx|cx16|cx8)$/;

/** Waits until none of pids is taken; a PID still taken after timeoutMs is a PID_IN_USE error. */
export async function waitPidsFree(pids: number[], timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const taken: number[] = [];
    for (const pid of pids) if (await processExists(pid)) taken.push(pid);
    if (taken.length === 0) return;
    if (performance.now() >= deadline) {
      throw new CedanaError('PID_IN_USE', `PID ${taken.join(', ')} needed by the image ${taken.length === 1 ? 'is' : 'are'} in use on this host`, {
        hint: 'end that process first (is the original still running, e.g. after --leave-running?)',
        details: { pids: taken },
      });
    }
    await sleep(20);
  }
}
