/**
 * cedana restore: verifies an image and lets CRIU restore it, detached from cedana. Before CRIU
 * runs: the manifest, the set of files, every file's size and every metadata image's sha256 (CRIU
 * parses those, and a short pages image makes it spin). The contents of the pages images — the
 * process memory, nearly all of the bytes, raw data CRIU only copies — are hashed while CRIU
 * restores, and the restored tree is held at CRIU's post-restore point (restored, not one
 * instruction run) until they check out; if they do not, CRIU kills it. A damaged or tampered image
 * never runs.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { buildRestoreArgs } from '../criu/options.js';
import { keepLog, locateCriu, spawnCriu, type Criu } from '../criu/criu.js';
import { ActionGate } from '../criu/gate.js';
import { compareVersions, parseVersionText } from '../criu/version.js';
import { CedanaError } from '../errors.js';
import { hostFacts, requireRoot, type HostFacts } from '../host.js';
import { isPagesImage, verifyDir } from '../image/checksum.js';
import { writeRemappedImage, type PathMap, type PortMap } from '../image/remap.js';
import type { Manifest } from '../image/manifest.js';
import { openImage, readManifest } from '../image/open.js';
import { readRestoreStats } from '../image/criu/stats.js';
import { processExists } from '../proc/procfs.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { privateTempDir } from '../util/paths.js';

export interface RestoreArgs {
  image: string;
  pidFile?: string;
  tcpClose: boolean;
  /** How long to wait for the image's PIDs to become free (a just-dumped tree may not be reaped yet). */
  pidWaitMs: number;
  stdin?: Readable;
  reporter?: Reporter;
  signal?: AbortSignal;
  /** --map-path: files under `from` are restored from `to`. */
  mapPaths?: PathMap[];
  /** --map-port: listening TCP sockets on `from` come back on `to`. */
  mapPorts?: PortMap[];
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
}

export async function restore(args: RestoreArgs): Promise<RestoreResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('restore');
  const criu = await locateCriu();
  const work = await privateTempDir('cedana-restore-');
  try {
    const { dir, label } = await openImage(args.image, work, report, args.stdin);
    report.phase('verifying the manifest, the file sizes and the metadata images');
    const manifest = await readManifest(dir);
    await verifyDir(dir, manifest, (name) => !isPagesImage(name));
    checkCompatible(manifest, await hostFacts(), criu);
    report.phase('waiting for the image\'s PIDs to be free');
    await waitPidsFree(manifest.processes.map((p) => p.pid), args.pidWaitMs);

    let criuDir = dir;
    let remapped: { from: string; to: string }[] = [];
    let remappedPorts: { from: number; to: number }[] = [];
    if ((args.mapPaths?.length ?? 0) + (args.mapPorts?.length ?? 0) > 0) {
      report.phase('remapping paths and ports');
      const r = await writeRemappedImage(dir, join(work, 'remapped'), args.mapPaths ?? [], args.mapPorts ?? []);
      criuDir = r.dir;
      remapped = [...new Map(r.changed.map((c) => [c.from, { from: c.from, to: c.to }])).values()];
      remappedPorts = [...new Map(r.changedPorts.map((c) => [c.from, { from: c.from, to: c.to }])).values()];
    }
    report.phase(`restoring ${manifest.processes.length} process(es) and verifying their memory`);
    const pidFile = join(work, 'restored.pid');
    const logFile = join(work, 'restore.log');
    const gate = await ActionGate.create(work, 'post-restore');
    const o = manifest.options;
    const criuArgs = buildRestoreArgs(
      { shellJob: o.shellJob, tcpEstablished: o.tcpEstablished, tcpClose: o.tcpClose || args.tcpClose, fileLocks: o.fileLocks, externalUnix: o.externalUnix.length > 0 },
      { imagesDir: criuDir, workDir: work, logFile, networkLock: o.networkLock === 'nftables' ? 'nftables' : 'iptables', pidFile, actionScript: gate.script },
    );
    const t = performance.now();
    const run = spawnCriu(criu, criuArgs, { logFile, label: `restore-${manifest.pid}` });
    // The same check as before CRIU ran, now hashing the pages images only.
    const pagesBad = verifyDir(dir, manifest, isPagesImage).then(
      () => undefined,
      (e: unknown) => e,
    );
    // An interrupt before the tree runs: CRIU kills it at the gate and nothing is restored.
    const interrupted = new Promise<CedanaError>((resolve) => {
      const fire = (): void => resolve(new CedanaError('INTERRUPTED', 'restore interrupted; the restored tree was ended before it ran'));
      if (args.signal?.aborted) fire();
      else args.signal?.addEventListener('abort', fire, { once: true });
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
    await gate.commit();
    await run.done;
    const restoreMs = Math.round(performance.now() - t);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    if (!Number.isSafeInteger(pid) || pid <= 0) throw new CedanaError('CRIU_FAILED', `criu restore wrote no PID to ${pidFile}`);
    if (args.pidFile) await writeFile(resolve(args.pidFile), `${pid}\n`);
    const stats = await readRestoreStats(join(work, 'stats-restore'));
    return {
      command: 'restore',
      pid,
      image: label,
      processes: manifest.processes.length,
      restoreMs: stats ? Math.round(stats.restoreUs / 1000) : restoreMs,
      durationMs: Math.round(performance.now() - started),
      remapped,
      remappedPorts,
    };
  } finally {
    report.stop();
    await rm(work, { recursive: true, force: true });
  }
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
      hint: 'install the same or a newer CRIU on this host (scripts/setup)',
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
