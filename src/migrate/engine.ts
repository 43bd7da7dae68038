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
import { rm } from 'node:fs/promises';
import { locateCriu, networkLockBackend } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { requireRoot } from '../host.js';
import { processExists } from '../proc/procfs.js';
import { validateTarget } from '../proc/tree.js';
import { silentReporter } from '../cli/reporter.js';
import { releaseSourceLocks, resetPeers } from './netlock.js';
import { cleanupRemote, dropRounds, makeRemoteDir, undoOnTarget } from './remote.js';
import { SshSession } from '../transport/ssh.js';
import { checkLazySource } from './postcopy.js';
import { privateTempDir } from '../util/paths.js';
import { GpuSuspension } from '../gpu/cuda.js';
import { DEFAULT_GPU_LOCK_TIMEOUT_MS } from '../commands/dump.js';
import { type MigrateArgs, type MigrateResult, type Progress, interrupted } from './context.js';
import { prepare } from './prepare.js';
import { choosePrecopy, contentFinalLoses, precopyRounds, precopyRoundsByContent } from './precopy/rounds.js';
import { PAGE_SIZE } from '../criu/page-server/protocol.js';
import { stopAndCopy } from './stop-and-copy.js';
import { postCopy } from './postcopy-mode.js';
import { openPageLinks } from './page-proxy.js';

export async function migrate(args: MigrateArgs): Promise<MigrateResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('migrate');
  await validateTarget(args.pid);
  const criu = await locateCriu();
  const networkLock = await networkLockBackend();
  if (!networkLock) throw new CedanaError('HOST_UNSUPPORTED', 'neither iptables nor nft is installed here', { hint: 'install iptables (scripts/setup does)' });
  if (args.postcopy) await checkLazySource();
  if (args.postcopy && args.transport === 'openssh') throw new CedanaError('USAGE', '--transport openssh is for the page streams of stop-and-copy and pre-copy; post-copy pulls its pages through ssh2', { hint: 'leave --transport out with --postcopy' });
  const precopy = await choosePrecopy(args, criu);

  report.phase(`connecting to ${args.to}`);
  const session = await SshSession.connect(args.to, { acceptNewHostKey: args.acceptNewHostKey, sshDir: args.sshDir });
  const work = await privateTempDir('cedana-migrate-');
  const state: Progress = { committed: false, treePids: [], shippedPaths: [] };
  // The page streams' connection comes up while the preflight runs (post-copy pulls through ssh2).
  const links = args.postcopy ? Promise.reject(new Error('post-copy opens no page links')) : openPageLinks(session, work, args.transport ?? 'auto', args.to);
  links.catch(() => undefined);
  try {
    const prep = await prepare({ args, session, links, work, report, criu, networkLock }, state);
    if (args.signal?.aborted) throw interrupted();
    if (!args.postcopy) prep.decisions.notes.push((await links).note);
    state.remote = await makeRemoteDir(session, args.targetDir);
    let pre = precopy === 'content' ? await precopyRoundsByContent(prep, state) : precopy ? await precopyRounds(prep, state) : undefined;
    // Rounds by content that show the final step cannot win: it goes stop-and-copy (the rounds' directories there are removed with the rest).
    const lost = precopy === 'content' && pre ? contentFinalLoses(pre.rounds) : undefined;
    const abandoned = lost ? pre : undefined;
    if (lost) {
      prep.decisions.notes.push(`pre-copy by content: ${lost}`);
      pre = undefined;
      await dropRounds(session, state.remote);
    }
    // GPU memory cannot be pre-copied: it is moved into host memory just before the final freeze.
    if (prep.gpu) {
      state.gpu = await GpuSuspension.suspend(prep.gpu.plan.cc, prep.gpu.plan.pids, {
        lockTimeoutMs: args.gpuLockTimeoutMs ?? DEFAULT_GPU_LOCK_TIMEOUT_MS, supportsTimeout: prep.gpu.plan.lockTimeout, progress: (m) => report.phase(m), states: prep.gpu.plan.states,
      });
    }
    const moved = args.postcopy ? await postCopy(prep, state) : await stopAndCopy(prep, state, pre);
    if (abandoned) {
      moved.precopy = { rounds: abandoned.rounds, finalPagesWritten: Math.round(moved.memoryBytes / PAGE_SIZE), finalPagesInParent: 0 };
      moved.memoryBytes += abandoned.rounds.reduce((a, r) => a + r.pagesWritten * PAGE_SIZE, 0);
    }
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
    await (await links.catch(() => undefined))?.close();
    session.close();
    await rm(work, { recursive: true, force: true });
  }
}
