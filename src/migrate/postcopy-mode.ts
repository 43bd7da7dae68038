/**
 * Post-copy: the tree runs on the target before its memory has moved (CRIU lazy pages).
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { keepLog, spawnCriu } from '../criu/criu.js';
import { CedanaError } from '../errors.js';
import { packImage } from '../image/archive.js';
import { freezeTimeoutFor, frozenWindow } from './frozen.js';
import { dropKeptSocketFiles, keepSocketFiles, type KeptSocket } from './keep-sockets.js';
import { cleanupRemote, openRestore, undoOnTarget } from './remote.js';
import { bridgeLazyPages, freeLoopbackPort, makeTls } from './postcopy.js';
import { copyFile } from 'node:fs/promises';
import { type Moved, type Prepared, type Progress, imagesSize, interrupted, progressTicker, runHook } from './context.js';
import { abandonFrozen, finalDump, finishImage, frozenAtGate, signalTree } from './final.js';

/**
 * Post-copy: CRIU dumps all but the anonymous memory and, once the gate lets it go on, serves those
 * pages (TLS) to the target's lazy-pages daemon through an SSH remote forward. The target restores
 * at once; when it reports the tree running, the source's frozen tree is killed — from then on it
 * cannot resume — and the pages follow, pulled on demand and in the background, until CRIU on the
 * source has served them all.
 */
export async function postCopy(p: Prepared, state: Progress): Promise<Moved> {
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
      throw await abandonFrozen(p, state, e, hookRan, kept, async () => {
        await gate.abortAndWait(Promise.resolve()); // before the commit: CRIU resumes the tree
        await lazy.close(); // after it: CRIU's transfer fails, and it resumes the tree
        await run.done.catch(() => undefined);
      });
    } finally {
      w.clear();
    }
    // The point of no return: the tree runs on the target. The source must never resume, whatever
    // happens to the page stream now: its frozen tree is killed (CRIU serves from its own pipes).
    signalTree(state.treePids, 'SIGKILL');
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
