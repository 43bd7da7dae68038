/**
 * The frozen end of a migration, shared by stop-and-copy and post-copy: the final dump's gate, the
 * image's metadata, and ending the target's copy before the source resumes.
 */
import { execa } from 'execa';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDumpArgs } from '../criu/options.js';
import { keepLog } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { checksumDirForTransfer, listImageFiles } from '../image/checksum.js';
import { MANIFEST_NAME } from '../image/manifest.js';
import { ActionGate } from '../criu/gate.js';
import { makeManifest } from '../dump/manifest.js';
import { type FrozenWindow } from './frozen.js';
import { cleanupRemote, undoOnTarget } from './remote.js';
import { writeRemappedImage } from '../image/remap.js';
import { copyShipped } from '../image/ship.js';
import { placementScript } from './remote.js';
import { expectedLocksFile, imageLocks, LOCK_CHECK_SCRIPT } from '../image/file-locks.js';
import { runHook, type Prepared, type Progress } from './context.js';
import { putBackSocketFiles, type KeptSocket } from './keep-sockets.js';

/**
 * With the tree frozen at the post-dump gate: the shipped files, the remapped files.img, the
 * manifest (BLAKE3) and the sha256 list the target checks go into the images; returns the names to
 * send, manifest first.
 */
export async function finishImage(p: Prepared, state: Progress, images: string, memoryBytes: number, extra: string[] = []): Promise<string[]> {
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
export async function frozenAtGate(p: Prepared, w: FrozenWindow, gate: ActionGate, run: { done: Promise<void> }, logFile: string, cut: () => void, extra: Promise<never>[] = []): Promise<void> {
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
export async function finalDump(p: Prepared, extra: string[]): Promise<{ images: string; gate: ActionGate; logFile: string; criuArgs: string[] }> {
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

/**
 * Ends the target's restored copy before the source resumes: through the restore's lifeline, else
 * over a fresh connection. True once the target confirmed it.
 */
async function endTargetCopy(p: Prepared, state: Progress): Promise<boolean> {
  if (await state.pending!.end().catch(() => false)) return true;
  return undoOnTarget(p.session, p.args, (s) => cleanupRemote(s, state.remote!, state.treePids, true));
}

/** `signal` to each of `pids` (one already gone is skipped). */
export function signalTree(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch {
      // gone
    }
  }
}

/**
 * A failure before the commit, the tree frozen. The target's copy ends first (when the restore got
 * that far): never two of the process running. Then the rollback hook (what pre-restore moved comes
 * back before the source resumes) and the socket files; `resume` lets CRIU resume the tree. Where
 * the target could not be reached to end its copy, the tree gets SIGSTOP first, so that it stays
 * stopped once CRIU lets it go, and the rollback hook is not run. Returns the error to throw.
 */
export async function abandonFrozen(p: Prepared, state: Progress, e: unknown, hookRan: boolean, kept: KeptSocket[], resume: () => Promise<void>): Promise<unknown> {
  const targetEnded = state.restoredPid === undefined || (await endTargetCopy(p, state));
  if (hookRan && targetEnded) await runHook(p.args, 'rollback').catch(() => undefined);
  await putBackSocketFiles(kept);
  if (!targetEnded) signalTree(state.treePids, 'SIGSTOP');
  await resume();
  return targetEnded ? e : leftStopped(e, p, state, hookRan);
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
