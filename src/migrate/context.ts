/**
 * What a migration is given, what it returns, and what its steps share: the preflight's findings
 * (Prepared), what a failure must undo (Progress), progress events and the hook.
 */
import type { PageLinks, Transport } from './page-proxy.js';
import { execa } from 'execa';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type CriuDecisions, type NetworkLock, type TcpMode } from '../criu/options.js';
import { type Criu } from '../criu/criu.js';
import { CedanaError } from '../errors.js';
import { type HostFacts } from '../host.js';
import { listImageFiles } from '../image/checksum.js';
import { type TreeFacts } from '../proc/tree.js';
import { type Progress as ProgressEvent, type Reporter } from '../cli/reporter.js';
import { type PendingRestore, type RemoteDir } from './remote.js';
import { SshSession } from '../transport/ssh.js';
import { type Connection } from '../image/connections.js';
import { type PathMap, type PortMap } from '../image/remap.js';
import { type Candidate, type ShipPolicy } from '../image/ship.js';
import { CudaCheckpoint, GpuSuspension } from '../gpu/cuda.js';
import { type GpuPlan } from '../commands/dump.js';

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
  /** What finds the changed pages in pre-copy: the kernel's soft-dirty bits (CRIU's rounds) or page contents; auto: soft-dirty where the kernel has it. */
  precopyBy?: 'auto' | 'soft-dirty' | 'content';
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
  /** Which SSH client carries the page streams (default auto: OpenSSH where usable, else ssh2). */
  transport?: Transport;
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
export interface Prepared {
  args: MigrateArgs;
  session: SshSession;
  /** The page streams' client, opening while the preflight runs. */
  links: Promise<PageLinks>;
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
export interface Progress {
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

export interface Moved {
  precopy?: MigrateResult['precopy'];
  restoredPid: number;
  downtimeMs: number;
  memoryBytes: number;
  metadataBytes: number;
  pullMs?: number;
}

export const interrupted = (): CedanaError =>
  new CedanaError('INTERRUPTED', 'migration interrupted; the source process was resumed and the target cleaned up', { hint: 'run the migration again when ready' });

/** Post-copy is refused on a link slower than this, unless --min-throughput says otherwise. */
export const DEFAULT_MIN_THROUGHPUT = 50e6;

/** Runs the user's hook; a failure at pre-restore aborts the migration (HOOK_FAILED). */
export async function runHook(args: MigrateArgs, phase: 'pre-restore' | 'post-restore' | 'rollback'): Promise<void> {
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

export async function imagesSize(dir: string): Promise<number> {
  let total = 0;
  for (const f of (await listImageFiles(dir)).files) total += (await stat(join(dir, f))).size;
  return total;
}

export function progressTicker(report: Reporter, sent: () => number, total: number): NodeJS.Timeout {
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
