/**
 * Stop-and-copy (also the final step after pre-copy): the memory moves while the tree is frozen;
 * the source ends once the target runs.
 */
import { join } from 'node:path';
import { keepLog, spawnCriu } from '../criu/criu.js';
import { readDumpStats } from '../image/criu/stats.js';
import { CedanaError } from '../errors.js';
import { packImage } from '../image/archive.js';
import type { PageBridge } from './page-proxy.js';
import { freezeTimeoutFor, frozenWindow } from './frozen.js';
import { dropKeptSocketFiles, keepSocketFiles, type KeptSocket } from './keep-sockets.js';
import { openRestore, startPageServer } from './remote.js';
import type { Duplex } from 'node:stream';
import type { PageSource } from '../criu/page-server/source.js';
import type { ProxyResult } from './precopy/proxy.js';
import type { RoundPages } from './precopy/round.js';
import { deviceMapArg, resumeRestored } from '../gpu/cuda.js';
import { type Moved, type Prepared, type Progress, imagesSize, interrupted, progressTicker, runHook } from './context.js';
import type { PrecopyDone } from './precopy/rounds.js';
import { abandonFrozen, finalDump, finishImage, frozenAtGate } from './final.js';
import { PAGE_SIZE } from '../criu/page-server/protocol.js';

/**
 * The final dump's page stream after pre-copy by content: CRIU's stream (its socket's other end is
 * its fd 0) through cedana's proxy to the target's page server, which keeps the pages the last round
 * holds unchanged as PE_PARENT (proxy.ts). `result` settles with the proxy's counts.
 */
export async function contentBridge(src: PageSource, target: Duplex, held: Map<number, RoundPages>, keepWhole: Map<number, [number, number][]> | undefined): Promise<PageBridge & { result: Promise<ProxyResult> }> {
  const { servePageProxy } = await import('./precopy/proxy.js');
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
    bytes: () => (done ? done.pagesForwarded * PAGE_SIZE : 0),
    failed,
    result,
    close() {
      src.destroy();
      target.destroy();
    },
  };
}

/** Stop-and-copy: the memory moves while the tree is frozen; the source ends once the target runs. */
export async function stopAndCopy(p: Prepared, state: Progress, pre?: PrecopyDone): Promise<Moved> {
  const { args, session, work, report } = p;
  const remote = state.remote!;
  // After pre-copy, the final dump sends only what changed since the last round: by CRIU's parent
  // link (soft-dirty), or by content through cedana's proxy (the target keeps the rest as PE_PARENT).
  const psPort = await startPageServer(session, remote, pre ? { into: 'img', prev: pre.prev } : undefined);
  const held = pre?.held;
  const links = await p.links;
  const stream = held ? undefined : await links.forCriu(psPort);
  const toTarget = held ? await links.open(psPort) : undefined;
  const keepWhole = held ? await (await import('../proc/maps.js')).hugetlbRanges(state.treePids) : undefined;
  state.pending = await openRestore(session, remote, p.restoreFlags, p.targetLock, { treePids: state.treePids });

  const { images, gate, logFile, criuArgs } = await finalDump(p, held ? ['--page-server', '--ps-socket', '0'] : [
    ...stream!.args,
    ...(pre ? ['--track-mem', '--prev-images-dir', `../${pre.prev}`] : []),
  ]);
  const pair = held ? await (await import('../criu/page-server/source.js')).socketPair(work) : undefined;
  const frozenAt = performance.now();
  report.phase(`freezing ${p.facts.processes.length} process(es) and sending ${pre ? 'what changed since the last round' : 'memory'}`);
  const w = frozenWindow({ signal: args.signal, timeoutMs: args.freezeTimeoutMs ?? freezeTimeoutFor(p.dumpBytes), interrupted });
  const run = spawnCriu(p.criu, criuArgs, { logFile, label: `migrate-${args.pid}`, ...(pair ? { stdinSocket: pair.criuEnd } : stream!.spawn) });
  const proxy: PageBridge & { result?: Promise<ProxyResult> } = held ? await contentBridge(pair!.source, toTarget!, held, keepWhole) : stream!.attach(run);
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
      memoryBytes = proxy.settle ? await proxy.settle() : proxy.bytes();
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
      throw await abandonFrozen(p, state, e, hookRan, kept, () => gate.abortAndWait(run.done));
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
