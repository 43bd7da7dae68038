/**
 * cedana migrate: moves a running process tree to another host over SSH.
 *
 * Preflight checks the target before anything is frozen. Stop-and-copy (the default) is a
 * transaction: CRIU dumps with its pages sent straight to a page server on the target (through an
 * SSH channel: nothing of the memory is written on the source's disk) and stops at the post-dump gate
 * with the tree frozen. The small metadata images follow as a tar stream, are checked against their
 * sha256 there, and the target restores. Only when the target confirms a running process is the gate
 * committed and the source ended; any failure or interrupt before that aborts the gate, CRIU resumes
 * the source, and the target is cleaned up.
 *
 * Post-copy (--postcopy) moves everything but the memory while frozen, lets the tree run on the
 * target at once and pulls the memory after it, on demand. Until the target runs, a failure resumes
 * the source as above; from then on the source is ended and cannot come back: if the page stream
 * breaks, the process is lost.
 */
import { execa } from 'execa';
import { readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDumpArgs, restoreFlagArgs, type CriuDecisions, type NetworkLock, type TcpMode } from '../criu/options.js';
import { decideDumpOptions } from '../criu/options.js';
import { refuseOtherUsers } from '../criu/capabilities.js';
import { criuFeature, keepLog, locateCriu, networkLockBackend, spawnCriu, type Criu } from '../criu/criu.js';
import { readDumpStats } from '../image/criu/stats.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { hostFacts, requireRoot, type HostFacts } from '../host.js';
import { packImage } from '../image/archive.js';
import { checksumDirForTransfer, listImageFiles } from '../image/checksum.js';
import { MANIFEST_NAME } from '../image/manifest.js';
import { processExists } from '../proc/procfs.js';
import { examineTree, validateTarget, type TreeFacts } from '../proc/tree.js';
import { silentReporter, type Progress as ProgressEvent, type Reporter } from '../cli/reporter.js';
import { ActionGate } from '../criu/gate.js';
import { makeManifest } from '../dump/manifest.js';
import { footprint } from '../migrate/footprint.js';
import { releaseSourceLocks, resetPeers } from '../migrate/netlock.js';
import { openPageChannel, type PageBridge } from '../migrate/page-proxy.js';
import { judgePreflight, runPreflight, type TargetFacts } from '../migrate/preflight.js';
import { judgeSharedLocks, placeProbes, removeProbes } from '../migrate/shared-locks.js';
import { freezeTimeoutFor, frozenWindow, type FrozenWindow } from '../migrate/frozen.js';
import { dropKeptSocketFiles, keepSocketFiles, putBackSocketFiles, type KeptSocket } from '../migrate/keep-sockets.js';
import { cleanupRemote, makeRemoteDir, openRestore, startPageServer, undoOnTarget, type PendingRestore, type RemoteDir } from '../migrate/remote.js';
import { SshSession } from '../transport/ssh.js';
import { addressOf, decideConnections, type Connection } from '../image/connections.js';
import { remapPath, writeRemappedImage, type PathMap, type PortMap } from '../image/remap.js';
import { copyShipped, deletedOpenFiles, describeShipped, ghostLimit, planShipping, shipCandidates, shippingNotes, type Candidate, type ShipPolicy } from '../image/ship.js';
import { bridgeLazyPages, checkLazySource, freeLoopbackPort, makeTls, measureThroughput } from '../migrate/postcopy.js';
import { copyFile } from 'node:fs/promises';
import { placementScript } from '../migrate/remote.js';
import type { TcpSocket } from '../proc/sockets.js';
import { describeLock } from '../proc/locks.js';
import { expectedLocksFile, imageLocks, LOCK_CHECK_SCRIPT } from '../image/file-locks.js';
import { privateTempDir } from '../util/paths.js';
import type { Duplex } from 'node:stream';
import type { PageSource } from '../criu/page-server/source.js';
import type { ProxyResult } from '../migrate/precopy/proxy.js';
import type { RoundPages, TreeRoundResult } from '../migrate/precopy/round.js';
import { CudaCheckpoint, deviceMapArg, GpuSuspension, planGpuRestore, resumeRestored } from '../gpu/cuda.js';
import { remoteGpuHost, sshExec } from '../gpu/remote.js';
import { DEFAULT_GPU_LOCK_TIMEOUT_MS, planGpu, type GpuPlan } from './dump.js';

export interface MigrateArgs {
  pid: number;
  to: string;
  acceptNewHostKey: boolean;
  /** Where the target keeps the image while it restores (removed afterwards). */
  targetDir: string;
  tcp: TcpMode;
  fileLocks: boolean;
  sshDir?: string;
  /** --map-path: on the target, files under `from` are used from `to`. */
  mapPaths?: PathMap[];
  /** --map-port: listening TCP sockets on `from` listen on `to` there. */
  mapPorts?: PortMap[];
  /** Files missing on the target that travel with the image (default auto: up to the size limits). */
  ship?: ShipPolicy;
  /** Post-copy: the tree runs on the target before its memory has moved (CRIU lazy pages). */
  postcopy?: boolean;
  /** Pre-copy rounds while the tree runs: true forces (an error without soft-dirty), false refuses, undefined picks when supported. */
  precopy?: boolean;
  /** Pre-copy stops after this many rounds at most (default 8). */
  maxRounds?: number;
  /** Post-copy is refused on a link slower than this (bytes per second). */
  minThroughput?: number;
  /** Run with sh -c here at `pre-restore`, `post-restore` and, after a failure past pre-restore, `rollback` (CEDANA_HOOK). */
  hook?: string;
  reporter?: Reporter;
  signal?: AbortSignal;
  /** --cuda-checkpoint PATH, here and (the same path) on the target; else on PATH on each. */
  cudaCheckpoint?: string;
  gpuLockTimeoutMs?: number;
  /** The longest the source may stay frozen (ms); default freezeTimeoutFor(its memory). */
  freezeTimeoutMs?: number;
  /** Run on the target even if CRIU does not take all of the tree's file locks again. */
  allowLostLocks?: boolean;
}

export interface MigrateResult {
  command: 'migrate';
  pid: number;
  target: string;
  targetPid: number;
  processes: number;
  downtimeMs: number;
  durationMs: number;
  bytesSent: number;
  memoryBytes: number;
  decisions: string[];
  /** Files and directories shipped because the target lacked them (their source paths). */
  shipped: string[];
  mode: 'stop-and-copy' | 'precopy' | 'postcopy';
  /** Pre-copy: each round while the tree ran, then the final (frozen) dump's share. */
  precopy?: { rounds: PrecopyRound[]; finalPagesWritten: number; finalPagesInParent: number };
  /** Post-copy: the link measured in preflight, and how long the memory took to follow the tree. */
  postcopy?: { linkBytesPerSec: number; pullMs: number };
  /** The tree's CUDA processes: their device memory (moved while frozen) and the GPUs they went to. */
  gpu?: { pids: number[]; memoryUsedMiB: number; deviceMap: Record<string, string> };
}

/** What preflight established, for either way of moving the tree. */
interface Prepared {
  args: MigrateArgs;
  session: SshSession;
  work: string;
  report: Reporter;
  criu: Criu;
  networkLock: NetworkLock;
  host: HostFacts;
  facts: TreeFacts;
  decisions: CriuDecisions;
  rssBytes: number;
  /** What CRIU will send of the tree's memory (the progress total; the freeze deadline). */
  dumpBytes: number;
  maps: PathMap[];
  ports: PortMap[];
  ghost: number;
  ship: Candidate[];
  /** CRIU restore flags for the target. */
  restoreFlags: string[];
  targetLock: string;
  closeSome: Set<number>;
  /** Connections restored closed there whose peers this host resets once the source has ended (none when the tree has a network namespace of its own: cedana cannot speak from it). */
  resetAfter: Connection[];
  linkBytesPerSec?: number;
  /** The tree uses the GPU: what moves, and how the target's cuda-checkpoint puts it back. */
  gpu?: { plan: GpuPlan; target: CudaCheckpoint; deviceMap: Map<string, string> };
}

/** What a failure must undo, filled in as the migration goes. */
interface Progress {
  remote?: RemoteDir;
  pending?: PendingRestore;
  restoredPid?: number;
  /** The source is gone for good (stop-and-copy: committed; post-copy: the target runs). */
  committed: boolean;
  treePids: number[];
  shippedPaths: string[];
  /** The source's CUDA processes, locked and checkpointed: resumed on failure. */
  gpu?: GpuSuspension;
}

export interface PrecopyRound {
  round: number;
  pagesWritten: number;
  pagesSkippedParent: number;
  frozenMs: number;
  durationMs: number;
}

interface Moved {
  precopy?: MigrateResult['precopy'];
  restoredPid: number;
  downtimeMs: number;
  memoryBytes: number;
  metadataBytes: number;
  pullMs?: number;
}

const interrupted = (): CedanaError =>
  new CedanaError('INTERRUPTED', 'migration interrupted; the source process was resumed and the target cleaned up', { hint: 'run the migration again when ready' });

export async function migrate(args: MigrateArgs): Promise<MigrateResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('migrate');
  await validateTarget(args.pid);
  const criu = await locateCriu();
  const networkLock = await networkLockBackend();
  if (!networkLock) throw new CedanaError('HOST_UNSUPPORTED', 'neither iptables nor nft is installed here', { hint: 'install iptables (scripts/setup does)' });
  if (args.postcopy) await checkLazySource();
  const precopy = await choosePrecopy(args, criu);

  report.phase(`connecting to ${args.to}`);
  const session = await SshSession.connect(args.to, { acceptNewHostKey: args.acceptNewHostKey, sshDir: args.sshDir });
  const work = await privateTempDir('cedana-migrate-');
  const state: Progress = { committed: false, treePids: [], shippedPaths: [] };
  try {
    const prep = await prepare({ args, session, work, report, criu, networkLock }, state);
    if (args.signal?.aborted) throw interrupted();
    state.remote = await makeRemoteDir(session, args.targetDir);
    const pre = precopy === 'content' ? await precopyRoundsByContent(prep, state) : precopy ? await precopyRounds(prep, state) : undefined;
    // GPU memory cannot be pre-copied: it is moved into host memory just before the final freeze.
    if (prep.gpu) {
      state.gpu = await GpuSuspension.suspend(prep.gpu.plan.cc, prep.gpu.plan.pids, {
        lockTimeoutMs: args.gpuLockTimeoutMs ?? DEFAULT_GPU_LOCK_TIMEOUT_MS, supportsTimeout: prep.gpu.plan.lockTimeout, progress: (m) => report.phase(m), states: prep.gpu.plan.states,
      });
    }
    const moved = args.postcopy ? await postCopy(prep, state) : await stopAndCopy(prep, state, pre);
    // The connections live on the target now: lift the lock CRIU left on them here.
    if (prep.decisions.tcpEstablished) await releaseSourceLocks(prep.facts.tcp.filter((t) => t.state === 'ESTABLISHED'));
    // The peers of the connections closed there learn it now, not whenever they next send.
    await resetPeers(prep.resetAfter);
    return {
      command: 'migrate',
      pid: args.pid,
      target: args.to,
      targetPid: moved.restoredPid,
      processes: prep.facts.processes.length,
      downtimeMs: moved.downtimeMs,
      durationMs: Math.round(performance.now() - started),
      bytesSent: moved.memoryBytes + moved.metadataBytes,
      memoryBytes: moved.memoryBytes,
      decisions: prep.decisions.notes,
      shipped: state.shippedPaths,
      mode: args.postcopy ? 'postcopy' : precopy ? 'precopy' : 'stop-and-copy',
      ...(moved.precopy ? { precopy: moved.precopy } : {}),
      ...(args.postcopy ? { postcopy: { linkBytesPerSec: Math.round(prep.linkBytesPerSec ?? 0), pullMs: moved.pullMs ?? 0 } } : {}),
      ...(prep.gpu ? { gpu: { pids: prep.gpu.plan.pids, memoryUsedMiB: prep.gpu.plan.manifest.memoryUsedMiB, deviceMap: Object.fromEntries(prep.gpu.deviceMap) } } : {}),
    };
  } catch (e) {
    const err = toCedanaError(e);
    if (!state.committed) {
      if (!state.restoredPid) state.pending?.cancel();
      // CRIU resumed the source tree: its GPU state goes back onto its GPUs.
      const stopped = err.details.sourceStopped !== undefined;
      const gpuErr = stopped ? undefined : await state.gpu?.resume((m) => report.phase(m)).then(() => undefined, (r: unknown) => r as Error);
      if (gpuErr) err.details.gpuNotResumed = gpuErr.message;
      if (stopped && state.gpu) err.details.gpuNotResumed = 'the source is left stopped: its GPU state stays checkpointed (cuda-checkpoint --toggle --pid PID puts it back)';
      err.details.sourceResumed = !stopped && (await processExists(args.pid));
      if (state.remote) err.details.targetCleanedUp = await undoOnTarget(session, args, (s) => cleanupRemote(s, state.remote!, state.restoredPid ? state.treePids : [], true));
    }
    throw err;
  } finally {
    report.stop();
    if (state.committed && state.remote) await cleanupRemote(session, state.remote);
    session.close();
    await rm(work, { recursive: true, force: true });
  }
}

/** Everything before the freeze: the tree, the target's facts, shipping, connections, remapping. */
async function prepare(
  c: Pick<Prepared, 'args' | 'session' | 'work' | 'report' | 'criu' | 'networkLock'>,
  state: Progress,
): Promise<Prepared> {
  const { args, session, work, report, criu } = c;
  report.phase(`preflight on ${args.to}`);
  const facts = await examineTree(args.pid);
  await refuseOtherUsers(facts.processes);
  const decisions = decideDumpOptions(facts, { tcp: args.tcp, fileLocks: args.fileLocks, leaveRunning: false });
  const doomed = facts.locks.filter((l) => l.mapped);
  if (doomed.length > 0 && !args.allowLostLocks) {
    throw new CedanaError('LOCK_LOST', `CRIU 4.2 would not restore ${doomed.map(describeLock).join('; ')}: the process also maps that file`, {
      hint: 'nothing was frozen. A program that relies on the lock (SQLite\'s -shm) can corrupt its data without it; --allow-lost-locks migrates anyway',
      details: { files: [...new Set(doomed.map((l) => l.path))], predicted: true },
    });
  }
  const pids = facts.processes.map((p) => p.pid);
  const fp = await footprint(pids);
  state.treePids = fp.pids;
  const maps = args.mapPaths ?? [];
  const ports = args.mapPorts ?? [];
  const policy = args.ship ?? 'auto';
  const ghost = ghostLimit(await deletedOpenFiles(pids), policy);
  const cands = await shipCandidates(pids);
  const dest = (p: string): string => remapPath(p, maps) ?? p;
  const listening = checkPortMaps(facts.tcp, ports);
  const gpuPlan = await planGpu(pids, args, decisions.notes);
  if (gpuPlan && args.postcopy) {
    throw new CedanaError('GPU_UNSUPPORTED', `post-copy cannot move GPU state: cuda-checkpoint restore reads all ${gpuPlan.manifest.memoryUsedMiB} MiB of it at once on the target`, {
      hint: 'migrate without --postcopy',
    });
  }
  const host = await hostFacts();
  await execa(criu.path, ['cpuinfo', 'dump', '-D', work, '-o', join(work, 'cpuinfo.log')]);
  // Is a locked file on storage the target sees too? A probe beside it here, looked for there.
  const probes = await placeProbes(facts.locks.map((l) => l.path));
  let target: TargetFacts;
  try {
    target = await runPreflight(session, fp, args.targetDir, await readFile(join(work, 'cpuinfo.img')), {
      paths: fp.paths.map(dest),
      sized: cands.filter((x) => x.kind === 'file' && remapPath(x.path, maps) !== undefined).map((x) => ({ path: dest(x.path), size: x.size })),
      lazy: !!args.postcopy,
      probes: probes.map((x) => ({ path: dest(x.probe), token: x.token })),
      ptys: facts.ptys,
    });
  } finally {
    await removeProbes(probes);
  }
  const sharedThere = new Set(target.sharedProbes);
  const sharedFiles = new Set(probes.filter((x) => sharedThere.has(dest(x.probe))).map((x) => x.path));
  const missing = new Set(target.missingPaths);
  const plan = planShipping(cands.filter((x) => missing.has(dest(x.path))), policy);
  const conns: Connection[] = facts.tcp.filter((t) => t.state === 'ESTABLISHED').map((t) => ({ ino: t.inode, local: t.local, remote: t.remote }));
  const tcpPlan = decideConnections(conns, {
    mode: args.tcp, addresses: target.addresses && new Set(target.addresses), moving: true, where: `on ${args.to}`, hook: !!args.hook,
  });
  const pageSize = Number((await execa('getconf', ['PAGESIZE'], { reject: false })).stdout) || undefined;
  judgePreflight(target, {
    target: args.to, arch: host.arch, pageSize, localCriu: criu.version, footprint: fp, tcpEstablished: tcpPlan.keep.length > 0,
    shipping: plan.ship.map((x) => dest(x.path)), listening, lazy: !!args.postcopy,
  });
  decisions.notes.push(...judgeSharedLocks(facts.locks, sharedFiles, args.to));
  decisions.notes.push(...tcpPlan.notes, ...shippingNotes({ ship: plan.ship, left: [] }));
  let gpu: Prepared['gpu'];
  if (gpuPlan) {
    report.phase(`checking the GPUs on ${args.to}`);
    const there = await remoteGpuHost(session, args.cudaCheckpoint);
    const r = planGpuRestore(gpuPlan.manifest, there, `on ${args.to}`);
    decisions.notes.push(...r.notes, `GPU memory cannot be pre-copied: ${gpuPlan.manifest.memoryUsedMiB} MiB of it move while the tree is frozen`);
    gpu = { plan: gpuPlan, target: new CudaCheckpoint(there.cudaCheckpoint!, sshExec(session)), deviceMap: r.deviceMap };
  }
  if (plan.ship.length > 0) report.phase(`will ship to ${args.to}: ${plan.ship.slice(0, 3).map(describeShipped).join(', ')}${plan.ship.length > 3 ? ` and ${plan.ship.length - 3} more` : ''}`);
  let linkBytesPerSec: number | undefined;
  if (args.postcopy) {
    report.phase(`measuring the link to ${args.to}`);
    linkBytesPerSec = await measureThroughput(session);
    const min = args.minThroughput ?? DEFAULT_MIN_THROUGHPUT;
    const mbs = (n: number): string => `${(n / 1e6).toFixed(0)} MB/s`;
    if (linkBytesPerSec < min) {
      throw new CedanaError('LINK_TOO_SLOW', `post-copy refused: the link to ${args.to} carries ${mbs(linkBytesPerSec)}, less than ${mbs(min)}`, {
        hint: 'migrate without --postcopy (the source then stays safe until the target runs), or lower --min-throughput',
        details: { linkBytesPerSec: Math.round(linkBytesPerSec), minBytesPerSec: min },
      });
    }
    decisions.notes.push(
      `post-copy: the link carries ${mbs(linkBytesPerSec)}; ~${(fp.dumpBytes / 1048576).toFixed(0)} MiB follow the tree after it starts on ${args.to} (~${(fp.dumpBytes / linkBytesPerSec).toFixed(1)} s) — if the link breaks then, the process is lost`,
    );
  }
  // --tcp-close: CRIU's own (reads see EOF). Decided per connection: those sockets are rewritten as
  // unconnected ones (reads fail with ENOTCONN, as after a reset).
  const closeAll = args.tcp === 'close';
  return {
    ...c,
    host,
    facts,
    decisions,
    rssBytes: fp.rssBytes,
    dumpBytes: fp.dumpBytes,
    maps,
    ports,
    ghost,
    ship: plan.ship,
    restoreFlags: restoreFlagArgs({ ...decisions, tcpEstablished: tcpPlan.keep.length > 0, tcpClose: closeAll, externalUnix: decisions.externalUnix.length > 0 }),
    targetLock: target.networkLock ?? 'iptables',
    closeSome: closeAll ? new Set<number>() : new Set(tcpPlan.close.map((x) => x.ino)),
    resetAfter: (await sameNetns(args.pid)) ? (closeAll ? conns : tcpPlan.close) : [],
    linkBytesPerSec,
    gpu,
  };
}

/**
 * Pre-copy when asked, or by default where the kernel tracks dirty pages (soft-dirty); an explicit
 * --precopy without it is an error that says what to use instead.
 */
async function choosePrecopy(args: MigrateArgs, criu: Criu): Promise<PrecopyMode | undefined> {
  if (args.precopy === false) return undefined;
  if (args.postcopy) {
    if (args.precopy) throw new CedanaError('USAGE', '--precopy and --postcopy do not go together', { hint: 'choose one' });
    return undefined;
  }
  const r = await criuFeature(criu, 'mem_dirty_track');
  if (r.ok) return 'criu';
  // No soft-dirty (this kernel, every arm64 one): pre-copy compares page contents instead, when asked.
  return args.precopy ? 'content' : undefined;
}

/**
 * The pre-copy stop rule (P.Haul, go-criu's phaul): a round of 64 pages or fewer, a round over 110%
 * of the one before (diverging), or --max-rounds; and one more, measured in the guest: a round within
 * 10% of the one before has reached the process's floor of pages it rewrites all the time (there, 90
 * pages a round, round after round), where more rounds only cost time. A reason to stop, or undefined. Pure.
 */
export function precopyStop(rounds: Pick<PrecopyRound, 'pagesWritten'>[], maxRounds: number): string | undefined {
  const n = rounds.length;
  const last = rounds[n - 1]!;
  const prev = rounds[n - 2];
  if (last.pagesWritten <= PRECOPY_SMALL_ROUND) return `round ${n} wrote ${last.pagesWritten} pages (≤ ${PRECOPY_SMALL_ROUND})`;
  if (prev && last.pagesWritten > prev.pagesWritten * 1.1) {
    return `not converging: round ${n} wrote ${last.pagesWritten} pages, over 110% of the ${prev.pagesWritten} before`;
  }
  // A floor: the pages the process rewrites all the time. More rounds would send the same again.
  if (prev && last.pagesWritten >= prev.pagesWritten * 0.9) {
    return `no longer shrinking: round ${n} wrote ${last.pagesWritten} pages, the ${prev.pagesWritten} before`;
  }
  if (n >= maxRounds) return `the last of --max-rounds ${maxRounds}`;
  return undefined;
}

const PRECOPY_SMALL_ROUND = 64;

/**
 * How pre-copy finds what changed: `criu` (its pre-dump rounds with the kernel's soft-dirty bits,
 * `--track-mem`) or `content` (cedana reads the memory of the running tree and compares each page's
 * hash with the last round's; no kernel feature needed).
 */
export type PrecopyMode = 'criu' | 'content';

/** What the rounds left on the target: the last round's directory, and (by content) the pages it holds, by process as CRIU names it. */
interface PrecopyDone {
  prev: string;
  rounds: PrecopyRound[];
  held?: Map<number, RoundPages>;
}

/**
 * Pre-copy by content: rounds while the tree runs, each into a stock `criu page-server` on the target
 * (the previous round its --prev-images-dir) with cedana as its client: round 1 sends every present
 * page; each later one only the pages whose hash changed, PE_PARENT for the rest (round.ts). Stops
 * by precopyStop. The final dump then goes through cedana's proxy (stopAndCopy).
 */
async function precopyRoundsByContent(p: Prepared, state: Progress): Promise<PrecopyDone> {
  const { args, session, report } = p;
  const remote = state.remote!;
  const maxRounds = args.maxRounds ?? 8;
  const pids = p.facts.processes.map((x) => x.pid);
  const { PageServerClient } = await import('../criu/page-server/client.js');
  const { sendTreeRound } = await import('../migrate/precopy/round.js');
  const { heldPages } = await import('../migrate/precopy/proxy.js');
  const rounds: PrecopyRound[] = [];
  let last: TreeRoundResult | undefined;
  for (let n = 1; ; n++) {
    if (args.signal?.aborted) throw interrupted();
    const into = `pre-${n}`;
    const port = await startPageServer(session, remote, { into, prev: n > 1 ? `pre-${n - 1}` : undefined });
    const ch = await session.forwardOut('127.0.0.1', port);
    const client = new PageServerClient(ch);
    const t0 = performance.now();
    report.phase(`pre-copy round ${n}: reading the memory of the running tree and sending ${n === 1 ? 'it' : 'what changed'}`);
    const ticker = progressTicker(report, () => client.bytesSent, n === 1 ? p.dumpBytes : 0);
    const onAbort = (): void => client.abort();
    args.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const prev = last ? new Map([...last.byPid].map(([pid, r]) => [pid, r.pages])) : undefined;
      last = await Promise.race([sendTreeRound(pids, client, { prev }), session.lost()]);
    } catch (e) {
      client.abort();
      throw args.signal?.aborted ? interrupted() : e;
    } finally {
      clearInterval(ticker);
      args.signal?.removeEventListener('abort', onAbort);
    }
    const r: PrecopyRound = { round: n, pagesWritten: last.pagesSent, pagesSkippedParent: last.pagesUnchanged, frozenMs: 0, durationMs: Math.round(performance.now() - t0) };
    rounds.push(r);
    const mbps = r.durationMs > 0 ? last.bytesSent / 1e6 / (r.durationMs / 1000) : 0;
    report.phase(`pre-copy round ${n}: ${r.pagesWritten} pages sent (${(r.pagesWritten / 256).toFixed(1)} MiB, ${mbps.toFixed(0)} MB/s), ${r.pagesSkippedParent} unchanged, never frozen`);
    const why = precopyStop(rounds, maxRounds);
    if (why) {
      p.decisions.notes.push(`pre-copy by content: ${rounds.length} round(s) while the tree ran (no soft-dirty here: pages compared by hash); stopped: ${why}`);
      return { prev: into, rounds, held: await heldPages(last) };
    }
  }
}

/**
 * Pre-copy: rounds of `criu pre-dump --track-mem` while the tree runs (each freezes it only to
 * collect what changed), streamed to a page server on the target, each round the parent of the
 * next; stops by precopyStop. The final dump then sends only the pages changed since.
 */
async function precopyRounds(p: Prepared, state: Progress): Promise<PrecopyDone> {
  const { args, session, work, report } = p;
  const remote = state.remote!;
  const maxRounds = args.maxRounds ?? 8;
  const rounds: PrecopyRound[] = [];
  const thp = await readFile('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').catch(() => '');
  if (thp.includes('[always]')) {
    p.decisions.notes.push('pre-copy: transparent huge pages are "always" here: memory in huge pages is tracked per 2 MiB, so a process writing all over its memory may not converge (THP "madvise" avoids it)');
  }
  for (let n = 1; ; n++) {
    if (args.signal?.aborted) throw interrupted();
    const into = `pre-${n}`;
    const prev = n > 1 ? `pre-${n - 1}` : undefined;
    const port = await startPageServer(session, remote, { into, prev });
    const bridge = await openPageChannel(session, port);
    const local = join(work, into);
    const roundWork = join(work, `${into}-work`);
    await execa('mkdir', ['-m', '700', local, roundWork]);
    const logFile = join(roundWork, 'pre-dump.log');
    const criuArgs = [
      'pre-dump', '-t', String(args.pid), '-D', local, '-W', roundWork, '-o', logFile, '-v4', '--track-mem', '--page-server', '--ps-socket', '3',
      ...(prev ? ['--prev-images-dir', `../${prev}`] : []), ...(p.decisions.shellJob ? ['--shell-job'] : []),
    ];
    const t0 = performance.now();
    report.phase(`pre-copy round ${n}: sending memory while the tree runs`);
    const run = spawnCriu(p.criu, criuArgs, { logFile, label: `precopy-${args.pid}-${n}`, pageServerSocket: true });
    const proxy = bridge(run.psSocket!);
    const ticker = progressTicker(report, () => proxy.bytes(), n === 1 ? p.dumpBytes : 0);
    const onAbort = (): void => proxy.close();
    args.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([run.done, session.lost(), proxy.failed]);
    } catch (e) {
      proxy.close();
      await run.done.catch(() => undefined);
      throw args.signal?.aborted ? interrupted() : e;
    } finally {
      clearInterval(ticker);
      args.signal?.removeEventListener('abort', onAbort);
      proxy.close();
    }
    const st = await readDumpStats(join(roundWork, 'stats-dump'));
    const r: PrecopyRound = {
      round: n, pagesWritten: st?.pagesWritten ?? 0, pagesSkippedParent: st?.pagesSkippedParent ?? 0,
      frozenMs: Math.round((st?.frozenUs ?? 0) / 1000), durationMs: Math.round(performance.now() - t0),
    };
    rounds.push(r);
    report.phase(`pre-copy round ${n}: ${r.pagesWritten} pages sent (${(r.pagesWritten / 256).toFixed(1)} MiB), ${r.pagesSkippedParent} unchanged, frozen ${r.frozenMs} ms`);
    const why = precopyStop(rounds, maxRounds);
    if (why) {
      p.decisions.notes.push(`pre-copy: ${rounds.length} round(s) while the tree ran; stopped: ${why}`);
      return { prev: into, rounds };
    }
  }
}

const PAGE_BYTES = 4096;

/**
 * The final dump's page stream after pre-copy by content: CRIU's stream (its socket's other end is
 * its fd 0) through cedana's proxy to the target's page server, which keeps the pages the last round
 * holds unchanged as PE_PARENT (proxy.ts). `result` settles with the proxy's counts.
 */
async function contentBridge(src: PageSource, target: Duplex, held: Map<number, RoundPages>, keepWhole: Map<number, [number, number][]> | undefined): Promise<PageBridge & { result: Promise<ProxyResult> }> {
  const { servePageProxy } = await import('../migrate/precopy/proxy.js');
  let done: ProxyResult | undefined;
  const result = servePageProxy(src, target, { held, keepWhole }).then((r) => {
    if (r.status !== 0) throw new CedanaError('TARGET_RESTORE_FAILED', `the page server on the target answered ${r.status} to the end of the final dump`);
    done = r;
    return r;
  });
  result.catch(() => undefined);
  const failed = result.then(() => new Promise<never>(() => undefined));
  failed.catch(() => undefined);
  return {
    bytes: () => (done ? done.pagesForwarded * PAGE_BYTES : 0),
    failed,
    result,
    close() {
      src.destroy();
      target.destroy();
    },
  };
}

/** Post-copy is refused on a link slower than this, unless --min-throughput says otherwise. */
export const DEFAULT_MIN_THROUGHPUT = 50e6;

/**
 * With the tree frozen at the post-dump gate: the shipped files, the remapped files.img, the
 * manifest (BLAKE3) and the sha256 list the target checks go into the images; returns the names to
 * send, manifest first.
 */
async function finishImage(p: Prepared, state: Progress, images: string, memoryBytes: number, extra: string[] = []): Promise<string[]> {
  // Copied while frozen, so they match the offsets CRIU recorded; placed there before CRIU runs.
  const shipped = await copyShipped(p.ship, images);
  state.shippedPaths = shipped.filter((e) => p.ship.some((c) => c.path === e.path)).map((e) => e.path);
  if (shipped.length > 0) await writeFile(join(images, 'place.sh'), `${placementScript(shipped, p.maps, state.remote!).join('\n')}\n`, { mode: 0o600 });
  // Every file lock held again there before the tree runs (CRIU may drop one), unless accepted.
  const locks = await imageLocks(images);
  if (locks.length > 0 && !p.args.allowLostLocks) {
    await writeFile(join(images, 'locks-check.sh'), LOCK_CHECK_SCRIPT, { mode: 0o700 });
    await writeFile(join(images, 'expected-locks'), expectedLocksFile(locks), { mode: 0o600 });
  }
  // The target's paths were checked in preflight; the image is rewritten in place (a transient copy).
  if (p.maps.length + p.ports.length + p.closeSome.size > 0) await writeRemappedImage(images, undefined, p.maps, p.ports, p.closeSome, () => true);
  // The manifest's checksums are BLAKE3; the target, which has nothing of cedana, checks the same
  // files with coreutils' sha256sum (the pages go through the page server, inside SSH's AES-GCM).
  const { files, sha256sums } = await checksumDirForTransfer(images);
  const manifest = makeManifest({
    criuVersion: p.criu.version.text, host: p.host, pid: p.args.pid, facts: p.facts, decisions: p.decisions, leaveRunning: false, networkLock: p.networkLock, files, memoryBytes, shipped,
  });
  await writeFile(join(images, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
  await writeFile(join(images, 'cedana.sha256'), sha256sums, { mode: 0o600 });
  const names = (await listImageFiles(images)).files;
  return [MANIFEST_NAME, ...names.filter((n) => n !== MANIFEST_NAME), ...extra];
}

/** Waits for CRIU at the post-dump gate; a dead link or an interrupt before that resumes the tree. */
async function frozenAtGate(p: Prepared, w: FrozenWindow, gate: ActionGate, run: { done: Promise<void> }, logFile: string, cut: () => void, extra: Promise<never>[] = []): Promise<void> {
  const onAbort = (): void => cut();
  w.signal.addEventListener('abort', onAbort, { once: true });
  let event: 'ready' | 'exited';
  try {
    event = await Promise.race([gate.waitReady(run.done), p.session.lost(), ...extra]);
  } catch (e) {
    cut();
    await gate.abortAndWait(run.done);
    // Cut by an interrupt or the deadline: that is the cause, not the broken stream it left.
    throw w.signal.aborted ? w.reason() : e;
  } finally {
    w.signal.removeEventListener('abort', onAbort);
  }
  if (event === 'exited') {
    await run.done.catch((e: unknown) => {
      throw w.signal.aborted ? w.reason() : e;
    });
    throw new CedanaError('CRIU_FAILED', 'criu dump exited before its post-dump step', { hint: `log: ${await keepLog(logFile, `migrate-${p.args.pid}`)}` });
  }
}

/** The final dump's images directory, post-dump gate and log, and CRIU's arguments with the mode's `extra` ones. */
async function finalDump(p: Prepared, extra: string[]): Promise<{ images: string; gate: ActionGate; logFile: string; criuArgs: string[] }> {
  const images = join(p.work, 'img');
  await execa('mkdir', ['-m', '700', images]);
  const gate = await ActionGate.create(p.work, 'post-dump');
  const logFile = join(p.work, 'dump.log');
  const criuArgs = [
    ...buildDumpArgs(p.args.pid, p.decisions, { imagesDir: images, workDir: p.work, logFile, networkLock: p.networkLock, actionScript: gate.script, leaveRunning: false, ghostLimit: p.ghost }),
    ...extra,
  ];
  return { images, gate, logFile, criuArgs };
}

/** Stop-and-copy: the memory moves while the tree is frozen; the source ends once the target runs. */
async function stopAndCopy(p: Prepared, state: Progress, pre?: PrecopyDone): Promise<Moved> {
  const { args, session, work, report } = p;
  const remote = state.remote!;
  // After pre-copy, the final dump sends only what changed since the last round: by CRIU's parent
  // link (soft-dirty), or by content through cedana's proxy (the target keeps the rest as PE_PARENT).
  const psPort = await startPageServer(session, remote, pre ? { into: 'img', prev: pre.prev } : undefined);
  const held = pre?.held;
  const bridge = held ? undefined : await openPageChannel(session, psPort);
  const toTarget = held ? await session.forwardOut('127.0.0.1', psPort) : undefined;
  const keepWhole = held ? await (await import('../proc/maps.js')).hugetlbRanges(state.treePids.length ? state.treePids : p.facts.processes.map((x) => x.pid)) : undefined;
  state.pending = await openRestore(session, remote, p.restoreFlags, p.targetLock, { treePids: state.treePids });

  const { images, gate, logFile, criuArgs } = await finalDump(p, held ? ['--page-server', '--ps-socket', '0'] : [
    '--page-server', '--ps-socket', '3',
    ...(pre ? ['--track-mem', '--prev-images-dir', `../${pre.prev}`] : []),
  ]);
  const pair = held ? await (await import('../criu/page-server/source.js')).socketPair(work) : undefined;
  const frozenAt = performance.now();
  report.phase(`freezing ${p.facts.processes.length} process(es) and sending ${pre ? 'what changed since the last round' : 'memory'}`);
  const w = frozenWindow({ signal: args.signal, timeoutMs: args.freezeTimeoutMs ?? freezeTimeoutFor(p.dumpBytes), interrupted });
  const run = spawnCriu(p.criu, criuArgs, { logFile, label: `migrate-${args.pid}`, ...(pair ? { stdinSocket: pair.criuEnd } : { pageServerSocket: true }) });
  const proxy: PageBridge & { result?: Promise<ProxyResult> } = held ? await contentBridge(pair!.source, toTarget!, held, keepWhole) : bridge!(run.psSocket!);
  try {
    // What the final dump sends: everything, or what pre-copy found changed (unknown ahead: no total).
    const ticker = progressTicker(report, () => proxy.bytes(), pre ? 0 : p.dumpBytes);
    // An interrupt, the deadline or a dead link while CRIU streams pages: cut the page stream; CRIU then fails and resumes the tree.
    await frozenAtGate(p, w, gate, run, logFile, () => proxy.close(), [proxy.failed]).finally(() => clearInterval(ticker));

    // The tree is frozen here, and stays so until commit or abort.
    let downtimeMs: number;
    let memoryBytes: number;
    let finalPages: { written: number; inParent: number } | undefined;
    let hookRan = false;
    let kept: KeptSocket[] = [];
    try {
      if (w.signal.aborted) throw w.reason();
      if (args.hook) {
        report.phase('running the pre-restore hook');
        hookRan = true;
        await runHook(args, 'pre-restore');
      }
      const proxied = await proxy.result;
      memoryBytes = proxied ? proxied.pagesForwarded * PAGE_BYTES : proxy.bytes();
      if (proxied) finalPages = { written: proxied.pagesForwarded, inParent: proxied.pagesParent };
      const ordered = await finishImage(p, state, images, memoryBytes);
      kept = await keepSocketFiles(p.facts.boundUnix);
      report.phase(`sending the metadata and restoring on ${args.to}`);
      // An interrupt or the deadline ends the restore there (and what it made) before the source resumes.
      const restored = await state.pending.send((dest) => packImage(images, ordered, dest as never, 'none', true), w.signal, w.reason);
      state.restoredPid = restored.pid;
      if (p.gpu) {
        // On the target: GPU state back onto its GPUs, then unlocked; a failure kills it there and resumes the source.
        await resumeRestored(p.gpu.target, p.gpu.plan.pids, deviceMapArg(p.gpu.deviceMap), (m) => report.phase(`${m} on ${args.to}`));
      }
      if (args.hook) {
        report.phase('running the post-restore hook');
        await runHook(args, 'post-restore');
      }
      // An interrupt that came while the target restored still wins: nothing is committed yet.
      if (w.signal.aborted) throw w.reason();
      // The target's lifeline lets its copy live on; only then does the source end (gate.commit below).
      await state.pending.keep();
      downtimeMs = Math.round(performance.now() - frozenAt);
    } catch (e) {
      // The target's copy ends before anything here is undone: never two of the process running.
      const targetEnded = state.restoredPid === undefined || (await endTargetCopy(p, state));
      // The rollback hook runs before the source resumes: what pre-restore moved must be back first.
      if (hookRan && targetEnded) await runHook(args, 'rollback').catch(() => undefined);
      await putBackSocketFiles(kept);
      if (!targetEnded) holdStopped(state.treePids);
      await gate.abortAndWait(run.done);
      if (!targetEnded) throw leftStopped(e, p, state, hookRan);
      throw e;
    }
    // The window closes: nothing from here on may abandon the migration.
    w.clear();
    await gate.commit();
    state.committed = true;
    await dropKeptSocketFiles(kept);
    report.phase('ending the source');
    await run.done;
    if (process.env.CEDANA_KEEP_LOGS) await keepLog(logFile, `migrate-${args.pid}`);
    const stats = pre && !finalPages ? await readDumpStats(join(work, 'stats-dump')) : undefined;
    const precopy = pre ? { rounds: pre.rounds, finalPagesWritten: finalPages?.written ?? stats?.pagesWritten ?? 0, finalPagesInParent: finalPages?.inParent ?? stats?.pagesSkippedParent ?? 0 } : undefined;
    const preBytes = (pre?.rounds ?? []).reduce((a, r) => a + r.pagesWritten * 4096, 0);
    return { restoredPid: state.restoredPid, downtimeMs, memoryBytes: memoryBytes + preBytes, metadataBytes: await imagesSize(images), precopy };
  } finally {
    w.clear();
    proxy.close();
  }
}

/**
 * Post-copy: CRIU dumps all but the anonymous memory and, once the gate lets it go on, serves those
 * pages (TLS) to the target's lazy-pages daemon through an SSH remote forward. The target restores
 * at once; when it reports the tree running, the source's frozen tree is killed — from then on it
 * cannot resume — and the pages follow, pulled on demand and in the background, until CRIU on the
 * source has served them all.
 */
async function postCopy(p: Prepared, state: Progress): Promise<Moved> {
  const { args, session, work, report } = p;
  const remote = state.remote!;
  const tlsDir = join(work, 'tls');
  await execa('mkdir', ['-m', '700', tlsDir]);
  const tls = await makeTls(tlsDir);
  const criuPort = await freeLoopbackPort();
  const lazy = await bridgeLazyPages(session, criuPort);
  try {
    state.pending = await openRestore(session, remote, p.restoreFlags, p.targetLock, {
      treePids: state.treePids, lazy: { port: lazy.port, ca: 'tls-ca.pem', cert: 'tls-client.pem', key: 'tls-client.key' },
    });
    const { images, gate, logFile, criuArgs } = await finalDump(p, ['--lazy-pages', '--address', '127.0.0.1', '--port', String(criuPort), ...tls.serverArgs]);
    const frozenAt = performance.now();
    report.phase(`freezing ${p.facts.processes.length} process(es) and dumping all but their memory`);
    const w = frozenWindow({ signal: args.signal, timeoutMs: args.freezeTimeoutMs ?? freezeTimeoutFor(p.dumpBytes), interrupted });
    const run = spawnCriu(p.criu, criuArgs, { logFile, label: `migrate-${args.pid}` });
    let hookRan = false;
    let downtimeMs: number;
    let kept: KeptSocket[] = [];
    try {
      await frozenAtGate(p, w, gate, run, logFile, () => undefined);
      // Frozen; the images hold all but the lazy pages. The TLS client files travel with them.
      if (w.signal.aborted) throw w.reason();
      if (args.hook) {
        report.phase('running the pre-restore hook');
        hookRan = true;
        await runHook(args, 'pre-restore');
      }
      await copyFile(tls.clientFiles.ca, join(images, 'tls-ca.pem'));
      await copyFile(tls.clientFiles.cert, join(images, 'tls-client.pem'));
      await copyFile(tls.clientFiles.key, join(images, 'tls-client.key'));
      const ordered = await finishImage(p, state, images, 0);
      kept = await keepSocketFiles(p.facts.boundUnix);
      // CRIU goes on to serve the pages. Until the target runs, a failure still resumes the source:
      // CRIU's lazy transfer fails (its connection cut, or a stranger's failing the TLS handshake).
      await gate.commit();
      report.phase(`sending the metadata and restoring on ${args.to}; the memory follows`);
      const restored = await state.pending.send((dest) => packImage(images, ordered, dest as never, 'none', true), w.signal, w.reason);
      state.restoredPid = restored.pid;
      if (w.signal.aborted) throw w.reason();
      await state.pending.keep();
    } catch (e) {
      // The target's copy (restored, its memory still here) ends before the source resumes.
      const targetEnded = state.restoredPid === undefined || (await endTargetCopy(p, state));
      if (hookRan && targetEnded) await runHook(args, 'rollback').catch(() => undefined);
      await putBackSocketFiles(kept);
      if (!targetEnded) holdStopped(state.treePids);
      await gate.abortAndWait(Promise.resolve()); // before the commit: CRIU resumes the tree
      await lazy.close(); // after it: CRIU's transfer fails, and it resumes the tree
      await run.done.catch(() => undefined);
      if (!targetEnded) throw leftStopped(e, p, state, hookRan);
      throw e;
    } finally {
      w.clear();
    }
    // The point of no return: the tree runs on the target. The source must never resume, whatever
    // happens to the page stream now: its frozen tree is killed (CRIU serves from its own pipes).
    for (const pid of state.treePids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    state.committed = true;
    await dropKeptSocketFiles(kept);
    downtimeMs = Math.round(performance.now() - frozenAt);
    if (args.hook) {
      report.phase('running the post-restore hook');
      await runHook(args, 'post-restore').catch((e: unknown) => p.decisions.notes.push(`the post-restore hook failed after the tree ran on the target (nothing to roll back): ${(e as Error).message}`));
    }
    report.phase(`running on ${args.to}; pulling its memory`);
    const pullStart = performance.now();
    const ticker = progressTicker(report, () => lazy.bytes(), p.dumpBytes);
    try {
      await Promise.race([run.done, session.lost(), lazy.failed]);
    } catch (e) {
      // Its memory is incomplete there: left alone, faults on what never came would read zeros once
      // the lazy-pages daemon is gone. End it, over a new connection if the first one is lost.
      const cleaned = await undoOnTarget(session, args, (t) => cleanupRemote(t, remote, state.treePids, true));
      throw new CedanaError('PROCESS_LOST', `post-copy: the page stream to ${args.to} broke after the tree started there; the process is lost (${(e as Error).message.split('\n')[0]})`, {
        hint: cleaned
          ? 'its incomplete copy on the target was ended; post-copy cannot resume the source once the target runs: use stop-and-copy (the default) where the link may fail'
          : `end PID ${state.treePids.join(', ')} on ${args.to} by hand: its memory is incomplete there`,
        details: { targetPid: state.restoredPid, targetCleanedUp: cleaned },
      });
    } finally {
      clearInterval(ticker);
    }
    if (process.env.CEDANA_KEEP_LOGS) await keepLog(logFile, `migrate-${args.pid}`);
    return {
      restoredPid: state.restoredPid!,
      downtimeMs,
      memoryBytes: lazy.bytes(),
      metadataBytes: await imagesSize(images),
      pullMs: Math.round(performance.now() - pullStart),
    };
  } finally {
    await lazy.close();
  }
}

/**
 * Ends the target's restored copy before the source resumes: through the restore's lifeline, else
 * over a fresh connection. True once the target confirmed it.
 */
async function endTargetCopy(p: Prepared, state: Progress): Promise<boolean> {
  if (await state.pending!.end().catch(() => false)) return true;
  return undoOnTarget(p.session, p.args, (s) => cleanupRemote(s, state.remote!, state.treePids, true));
}

/**
 * SIGSTOP to each task of the frozen tree: when CRIU lets it go, it stays stopped instead of running
 * beside a copy on the target that could not be ended.
 */
function holdStopped(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGSTOP');
    } catch {
      // gone
    }
  }
}

/** The error for a migration that failed after the target restored, when the target could not be reached to end its copy. */
function leftStopped(e: unknown, p: Prepared, state: Progress, hookRan: boolean): CedanaError {
  const err = toCedanaError(e);
  const pids = state.treePids.join(' ');
  return new CedanaError(err.code, `${err.message}\nthe target could not be reached to end its copy of the process: the source is left stopped here (SIGSTOP), not resumed, so that two of it never run${hookRan ? '; the rollback hook was not run' : ''}`, {
    hint: `check ${p.args.to}: if PID ${state.restoredPid} does not run there (its copy ends by itself once its connection is seen gone), \`kill -CONT ${pids}\` here`,
    details: { ...err.details, sourceStopped: state.treePids, targetState: 'unknown' },
    cause: err,
  });
}

/** Whether the process is in cedana's own network namespace (whose addresses cedana can speak from). */
async function sameNetns(pid: number): Promise<boolean> {
  const [mine, its] = await Promise.all([readlink('/proc/self/ns/net').catch(() => 'self'), readlink(`/proc/${pid}/ns/net`).catch(() => 'its')]);
  return mine === its;
}

/** Runs the user's hook; a failure at pre-restore aborts the migration (HOOK_FAILED). */
async function runHook(args: MigrateArgs, phase: 'pre-restore' | 'post-restore' | 'rollback'): Promise<void> {
  const r = await execa('sh', ['-c', args.hook!], {
    reject: false,
    all: true,
    timeout: 120_000,
    env: { CEDANA_HOOK: phase, CEDANA_PID: String(args.pid), CEDANA_TARGET: args.to },
  });
  if (r.exitCode !== 0) {
    const tail = (r.all ?? '').trim().split('\n').slice(-5).join(' | ');
    throw new CedanaError('HOOK_FAILED', `the ${phase} hook failed (exit ${r.exitCode ?? r.signal})${tail ? `: ${tail}` : ''}`, {
      hint: 'fix the --hook command; it runs with CEDANA_HOOK=pre-restore, post-restore or rollback',
    });
  }
}

/** The tree's listening TCP sockets as they will be on the target; a --map-port for a port it does not listen on is refused. */
function checkPortMaps(tcp: TcpSocket[], ports: PortMap[]): { addr: string; port: number }[] {
  const listening = tcp.filter((t) => t.state === 'LISTEN').map((t) => ({ addr: addressOf(t.local), port: Number(/:(\d+)$/.exec(t.local)?.[1] ?? 0) }));
  const unused = ports.filter((m) => !listening.some((l) => l.port === m.from));
  if (unused.length > 0) {
    throw new CedanaError('REMAP_INVALID', `--map-port: the tree has no listening TCP socket on port ${unused.map((p) => p.from).join(', ')}`, {
      hint: 'map a port the process listens on (ss -ltnp shows them)',
    });
  }
  return listening.map((l) => ({ ...l, port: ports.find((m) => m.from === l.port)?.to ?? l.port }));
}

async function imagesSize(dir: string): Promise<number> {
  let total = 0;
  for (const f of (await listImageFiles(dir)).files) total += (await stat(join(dir, f))).size;
  return total;
}

function progressTicker(report: Reporter, sent: () => number, total: number): NodeJS.Timeout {
  const t0 = performance.now();
  return setInterval(() => report.progress(progressOf(sent(), total, performance.now() - t0)), 250);
}

/**
 * One progress event: the total is an estimate (never below what was sent; absent when unknown),
 * and the ETA waits for a rate worth the name (half a second and a MiB in), so that the first tick
 * cannot promise 52 hours. Pure.
 */
export function progressOf(bytes: number, estimate: number, elapsedMs: number): ProgressEvent {
  const rate = elapsedMs > 0 ? bytes / (elapsedMs / 1000) : 0;
  const total = estimate > 0 ? Math.max(estimate, bytes) : undefined;
  const settled = elapsedMs >= 500 && bytes >= 1 << 20;
  return {
    phase: 'memory',
    bytes,
    ...(total !== undefined ? { totalBytes: total } : {}),
    bytesPerSec: Math.round(rate),
    etaMs: settled && total !== undefined && total > bytes ? Math.round(((total - bytes) / rate) * 1000) : undefined,
  };
}
