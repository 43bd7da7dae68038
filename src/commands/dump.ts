/**
 * cedana dump: checkpoints the process tree rooted at a PID into a verified image.
 *
 * Transaction: CRIU writes the images while the tree is frozen and stops at the post-dump gate;
 * cedana then writes the manifest and the archive or stream. Only when all of that succeeded is the
 * gate committed (CRIU ends the tree, or resumes it with --leave-running). Any failure before that
 * aborts the gate and CRIU resumes the tree: a failed dump never loses the process.
 */
import { chmod, mkdir, rename, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import type { ParentRef } from '../image/incremental.js';
import type { ParentPages } from '../image/parent-pages.js';
import type { ManifestParent } from '../image/manifest.js';
import { Transform, type Writable } from 'node:stream';
import { buildDumpArgs, decideDumpOptions, type TcpMode } from '../criu/options.js';
import { refuseOtherUsers } from '../criu/capabilities.js';
import { keepLog, locateCriu, networkLockBackend, spawnCriu } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { hostFacts, requireRoot } from '../host.js';
import { openTarOut, packImage, packImageToFd, packImageToFile, pump } from '../image/archive.js';
import { checksumDir, listImageFiles, PagesFollower } from '../image/checksum.js';
import { MANIFEST_NAME } from '../image/manifest.js';
import { makeManifest, pagesBytes } from '../dump/manifest.js';
import { processExists } from '../proc/procfs.js';
import { examineTree, validateTarget } from '../proc/tree.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { parseOutput, type OutputTarget } from '../dump/output.js';
import { ActionGate } from '../criu/gate.js';
import { servePageSink, type SinkResult } from '../criu/page-server/sink.js';
import { CudaCheckpoint, cudaProcesses, DRIVER_TREES, driverMajor, GpuSuspension, holdsNvidiaDevice, localGpuHost, planGpuDump, type CudaState, type ManifestGpu } from '../gpu/cuda.js';
import { pathExists, privateTempDir, syncDirEntry, syncTree } from '../util/paths.js';
import { copyShipped, deletedOpenFiles, ghostLimit, planShipping, shipCandidates, shippingNotes, type ShipPolicy, type ShippedEntry } from '../image/ship.js';

export interface DumpArgs {
  pid: number;
  output?: string;
  leaveRunning: boolean;
  tcp: TcpMode;
  fileLocks: boolean;
  force: boolean;
  /** Which files the process uses travel in the image (--ship-files / --no-ship-files; default auto). */
  ship?: ShipPolicy;
  /** An incremental checkpoint: store only the pages that differ from this earlier image's. */
  parent?: string;
  /** Write the page index even without a parent (the first checkpoint of a chain). */
  index?: boolean;
  /** Where `-o -` writes the tar stream (stdout in the CLI). */
  stream?: Writable;
  reporter?: Reporter;
  /** Aborted on SIGINT/SIGTERM: before the commit point the tree is resumed and nothing is kept. */
  signal?: AbortSignal;
  /** --cuda-checkpoint PATH (else found on PATH, when the tree uses the GPU). */
  cudaCheckpoint?: string;
  /** How long cuda-checkpoint may wait to lock a CUDA process (--gpu-lock-timeout). */
  gpuLockTimeoutMs?: number;
}

/** The default --gpu-lock-timeout: long enough for a running kernel to finish. */
export const DEFAULT_GPU_LOCK_TIMEOUT_MS = 10_000;

export interface DumpResult {
  command: 'dump';
  pid: number;
  /** Absolute path of the image directory or archive; "-" for stdout. */
  image: string;
  /** Bytes of the image as stored or streamed. */
  bytes: number;
  /** Bytes of process memory dumped (CRIU pages images). */
  memoryBytes: number;
  processes: number;
  frozenMs: number;
  durationMs: number;
  leftRunning: boolean;
  decisions: string[];
  /** Files and directories the image carries, by the path the process had them at. */
  shipped: string[];
  /** An incremental checkpoint: its parent, and how many pages it stores and leaves there. */
  incremental?: { parent: string; pagesWritten: number; pagesInParent: number };
  /** The tree's CUDA processes and their device memory, moved through host memory. */
  gpu?: {
    pids: number[];
    memoryUsedMiB: number;
    driverVersion: string;
    /** cuda-checkpoint's lock and checkpoint, before CRIU froze the tree (the GPU work was held from then). */
    checkpointMs: number;
    /** With --leave-running: from the first lock to the last unlock, the job's real pause (frozenMs is CRIU's part only). */
    pausedMs?: number;
  };
}

export async function dump(args: DumpArgs): Promise<DumpResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('dump');
  await validateTarget(args.pid);
  const criu = await locateCriu();
  const target = parseOutput(args.output, args.pid);
  await refuseExistingOutput(target, args.force);

  let parent: ParentRef | undefined;
  if (args.parent !== undefined) {
    if (target.kind !== 'dir') {
      throw new CedanaError('USAGE', '--parent needs a directory output (-o DIR): a checkpoint chain is directories linked to their parents', { hint: 'drop the archive ending, or dump without --parent' });
    }
    report.phase(`reading the parent checkpoint ${args.parent}`);
    // Through the page sink the pages are compared with the chain's own bytes: no index needed.
    parent = await (await import('../image/incremental.js')).openParent(args.parent, args.pid, { index: !incrementalThroughSink() });
  }

  report.phase(`examining the tree of PID ${args.pid}`);
  const facts = await examineTree(args.pid);
  await refuseOtherUsers(facts.processes);
  const decisions = decideDumpOptions(facts, { tcp: args.tcp, fileLocks: args.fileLocks, leaveRunning: args.leaveRunning });
  const pids = facts.processes.map((p) => p.pid);
  const policy = args.ship ?? 'auto';
  const ghost = ghostLimit(await deletedOpenFiles(pids), policy);
  const gpuPlan = await planGpu(pids, args, decisions.notes);
  // Open files and working directories: the program's own executable and libraries are software the
  // restoring host is expected to have (a migration, which knows what its target lacks, ships those too).
  const plan = planShipping((await shipCandidates(pids)).filter((c) => c.use === 'open' || c.use === 'cwd'), policy);
  decisions.notes.push(...shippingNotes(plan));
  const networkLock = await networkLockBackend();
  if (!networkLock) {
    throw new CedanaError('HOST_UNSUPPORTED', 'neither iptables nor nft is installed: CRIU cannot lock the network during a dump', {
      hint: 'install iptables (scripts/setup does)',
    });
  }

  const work = await privateTempDir('cedana-work-');
  const imagesDir = await partialImagesDir(target, work);

  const logFile = join(work, 'dump.log');
  let committed = false;
  let follower: PagesFollower | undefined;
  let shipped: ShippedEntry[] = [];
  let incremental: DumpResult['incremental'];
  let gpu: GpuSuspension | undefined;
  let gpuBack: Promise<unknown> | undefined;
  const sinkMode = usePageSink(target, parent !== undefined);
  // The pages stream straight into the archive or stream (see pagesIntoArchive).
  const intoArchive = pagesIntoArchive(target, args.leaveRunning);
  let tarOut: Awaited<ReturnType<typeof openTarOut>> | undefined;
  let against: ParentPages | undefined;
  let keepWhole: Map<number, [number, number][]> | undefined;
  try {
    if (sinkMode && parent) {
      // Before the freeze: the chain's pagemaps, and the mappings that must be stored whole.
      const { ParentPages } = await import('../image/parent-pages.js');
      against = await ParentPages.open(parent.dir);
      keepWhole = await (await import('../proc/maps.js')).hugetlbRanges(pids);
    }
    if (gpuPlan) {
      // Before the freeze, with the tree running: GPU work locked, then its state copied into host memory.
      gpu = await GpuSuspension.suspend(gpuPlan.cc, gpuPlan.pids, { lockTimeoutMs: args.gpuLockTimeoutMs ?? DEFAULT_GPU_LOCK_TIMEOUT_MS, supportsTimeout: gpuPlan.lockTimeout, progress: (m) => report.phase(m), states: gpuPlan.states });
    }
    const gate = await ActionGate.create(work, 'post-dump');
    const criuArgs = buildDumpArgs(args.pid, decisions, {
      imagesDir, workDir: work, logFile, networkLock, actionScript: gate.script, leaveRunning: args.leaveRunning, ghostLimit: ghost,
    });
    if (intoArchive) {
      if (target.kind === 'archive') report.phase(`writing ${target.path} as the pages arrive`);
      if (target.kind === 'stream' && !args.stream) throw new CedanaError('INTERNAL', 'no stream to write the image to');
      tarOut = await openTarOut(target.kind === 'archive' ? { path: partialArchive(target.path), compression: target.compression } : { stream: args.stream! });
    }
    // The page sink's socket: CRIU's end becomes its fd 0.
    const pair = sinkMode || intoArchive ? await (await import('../criu/page-server/source.js')).socketPair(work) : undefined;
    if (pair) criuArgs.push('--page-server', '--ps-socket', '0');
    report.phase(`freezing and dumping ${facts.processes.length} process(es)`);
    const run = spawnCriu(criu, criuArgs, { logFile, label: `dump-${args.pid}`, stdinSocket: pair?.criuEnd });
    // The page sink: CRIU streams the pages into cedana, which writes (with a parent: only the
    // changed ones) and hashes them as they arrive.
    const sinkDone: Promise<SinkResult> | undefined = pair ? servePageSink(pair.source, { dir: imagesDir, against, keepWhole, archive: tarOut?.out }) : undefined;
    sinkDone?.catch(() => undefined);
    // A reader of stdout that stops reading holds the sink, and CRIU, with the tree frozen: an
    // interrupt tears the output down, the sink fails, and CRIU resumes the tree.
    const stopOnAbort = (): void => tarOut?.stop();
    if (tarOut) args.signal?.addEventListener('abort', stopOnAbort, { once: true });
    // Hash the memory while CRIU writes it, not after with the tree frozen.
    // Not for an incremental checkpoint (its pages files are rewritten afterwards), nor with
    // --leave-running: there the tree runs again before the hashing, and hashing alongside CRIU
    // would only lengthen the freeze the running job pays for (measured: ~0.2 s per GiB here).
    follower = pair || parent || args.leaveRunning ? undefined : new PagesFollower(imagesDir);
    const event = await gate.waitReady(run.done);
    args.signal?.removeEventListener('abort', stopOnAbort);
    if (event === 'exited' && args.signal?.aborted) {
      await run.done.catch(() => undefined);
      throw interrupted();
    }
    if (event === 'exited') {
      // CRIU failed because the sink could not write (a full disk): that is the cause to report.
      const sinkErr = sinkDone && (await sinkDone.then(() => undefined, (e: unknown) => toCedanaError(e)));
      if (sinkErr?.code === 'IO_ERROR') {
        await run.done.catch(() => undefined);
        if (target.kind === 'stream') throw streamFailed(sinkErr);
        throw sinkErr;
      }
      await run.done; // rejects with CRIU_FAILED (CRIU resumed the tree)
      throw new CedanaError('CRIU_FAILED', 'criu dump exited before its post-dump step', { hint: `log: ${await keepLog(logFile, `dump-${args.pid}`)}` });
    }

    let finalized: { bytes: number; memoryBytes: number; image: string };
    try {
      report.phase('writing the manifest and checksums (tree frozen)');
      const host = await hostFacts();
      // Copied while the tree is frozen: the contents match the offsets CRIU recorded.
      shipped = await copyShipped(plan.ship, imagesDir);
      if (args.signal?.aborted) throw interrupted();
      // With --leave-running the tree survives either way: let it go before the rest.
      if (args.leaveRunning) {
        await gate.commit();
        committed = true;
        // Back onto the GPU once CRIU has let the tree go (cuda-checkpoint needs it running), while the image is finished.
        gpuBack = gpu && run.done.catch(() => undefined).then(() => gpu!.resume((m) => report.phase(m))).then(() => undefined, (e: unknown) => e);
      }
      const sunk = sinkDone && (await sinkDone);
      let known = sunk?.files ?? (await follower?.finish()) ?? {};
      let parentRef: ManifestParent | undefined;
      if (parent) {
        const { dedupeAgainstParent, PARENT_LINK } = await import('../image/incremental.js');
        // The sink wrote only the changed pages already; otherwise CRIU wrote them all, and they are dropped now.
        let r: { pagesWritten: number; pagesInParent: number };
        if (sunk) r = sunk;
        else {
          report.phase('keeping only the pages that changed since the parent');
          r = await dedupeAgainstParent(imagesDir, parent.index!);
          known = {}; // the pages files were rewritten
        }
        const linkText = relative(target.kind === 'dir' ? target.path : imagesDir, parent.dir);
        await symlink(linkText, join(imagesDir, PARENT_LINK));
        parentRef = { path: linkText, manifestBlake3: parent.manifestBlake3, pagesInParent: r.pagesInParent, pagesWritten: r.pagesWritten };
        incremental = { parent: parent.dir, pagesWritten: r.pagesWritten, pagesInParent: r.pagesInParent };
      } else if (args.index) {
        await (await import('../image/incremental.js')).dedupeAgainstParent(imagesDir);
      }
      // Pages streamed into the archive are not in the directory: their entries come from the sink.
      const files = { ...(tarOut ? sunk?.files : {}), ...(await checksumDir(imagesDir, known)) };
      const memoryBytes = pagesBytes(files);
      const manifest = makeManifest({
        criuVersion: criu.version.text, host, pid: args.pid, facts, decisions, leaveRunning: args.leaveRunning, networkLock, files, memoryBytes, shipped, parent: parentRef, gpu: gpuPlan?.manifest,
      });
      await writeFile(join(imagesDir, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
      await privateFiles(imagesDir);
      if (!committed && args.signal?.aborted) throw interrupted();
      finalized = tarOut
        ? await finishArchive(target, imagesDir, tarOut, report, committed ? undefined : args.signal)
        : await storeImage(target, imagesDir, args.stream, report, committed ? undefined : args.signal);
      if (!committed && args.signal?.aborted) throw interrupted();
      finalized.memoryBytes = memoryBytes;
      // In place, and on disk, before the commit: once CRIU ends the tree, the image must already be
      // where it belongs and survive a crash of this host.
      if (target.kind === 'dir') {
        report.phase('syncing the image to disk');
        await commitImageDir(imagesDir, target.path);
      }
    } catch (e) {
      await gate.abortAndWait(run.done);
      throw e;
    }
    if (!committed) {
      await gate.commit();
      committed = true;
    }
    report.phase(args.leaveRunning ? 'resuming the tree' : 'ending the dumped tree');
    // The stats reader loads while CRIU ends, after the commit.
    const statsReader = import('../image/criu/stats.js');
    statsReader.catch(() => undefined);
    await run.done;
    const gpuErr = await gpuBack;
    gpuBack = undefined;
    if (gpuErr) {
      const err = toCedanaError(gpuErr);
      err.details.image = finalized.image;
      throw err;
    }
    const stats = await (await statsReader).readDumpStats(join(work, 'stats-dump'));
    return {
      command: 'dump',
      pid: args.pid,
      image: finalized.image,
      bytes: finalized.bytes,
      memoryBytes: finalized.memoryBytes,
      processes: facts.processes.length,
      frozenMs: stats ? Math.round(stats.frozenUs / 1000) : 0,
      durationMs: Math.round(performance.now() - started),
      leftRunning: args.leaveRunning,
      decisions: decisions.notes,
      shipped: shipped.filter((e) => plan.ship.some((c) => c.path === e.path)).map((e) => e.path),
      ...(incremental ? { incremental } : {}),
      ...(gpuPlan ? { gpu: { pids: gpuPlan.pids, memoryUsedMiB: gpuPlan.manifest.memoryUsedMiB, driverVersion: gpuPlan.manifest.driverVersion, checkpointMs: gpu?.checkpointMs ?? 0, ...(gpu?.pausedMs !== undefined ? { pausedMs: gpu.pausedMs } : {}) } } : {}),
    };
  } catch (e) {
    const err = toCedanaError(e);
    // CRIU resumed the tree (or never froze it): its GPU state goes back onto the GPU.
    const gpuErr = committed ? await gpuBack : await gpu?.resume((m) => report.phase(m)).then(() => undefined, (r: unknown) => r);
    if (gpuErr) err.details.gpuNotResumed = (gpuErr as Error).message;
    tarOut?.stop();
    if (!committed) {
      err.details.processRunning = await processExists(args.pid);
      if (target.kind === 'archive') await rm(partialArchive(target.path), { force: true });
    }
    throw err;
  } finally {
    report.stop();
    against?.close();
    await follower?.finish().catch(() => undefined);
    if (target.kind !== 'stream' && (await pathExists(imagesDir))) await rm(imagesDir, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Whether CRIU streams the pages into cedana (the page sink) rather than writing them itself, for a
 * dump to a directory. By default, for an incremental dump (a parent): the sink writes only the
 * pages that changed, where CRIU would write all of memory to fresh page cache with the tree frozen.
 * Not for a full dump: there CRIU writing its own pages kept the tree frozen less (README, figures).
 * CEDANA_PAGE_SINK=1 uses it for every dump to a directory, =0 for none.
 */
function usePageSink(target: OutputTarget, withParent: boolean): boolean {
  return target.kind === 'dir' && (process.env.CEDANA_PAGE_SINK === '1' || (withParent && incrementalThroughSink()));
}

/**
 * Whether the pages of a dump to an archive or a stream flow from CRIU through the page sink straight
 * into it (tar framing and BLAKE3 as they arrive, nothing written to a directory and read back).
 * Not with --leave-running: the tree would stay frozen while the archive is written, where CRIU
 * writing to page cache lets it go sooner and the archive is written while it runs.
 * CEDANA_PAGE_SINK=0: never.
 */
function pagesIntoArchive(target: OutputTarget, leaveRunning: boolean): boolean {
  return target.kind !== 'dir' && !leaveRunning && process.env.CEDANA_PAGE_SINK !== '0';
}

/**
 * Ends an archive or stream whose pages went in as CRIU streamed them: the image's other files, the
 * manifest last; an archive file is then synced and renamed into place.
 */
async function finishArchive(
  target: OutputTarget,
  imagesDir: string,
  tar: Awaited<ReturnType<typeof openTarOut>>,
  report: Reporter,
  signal: AbortSignal | undefined,
): Promise<{ bytes: number; memoryBytes: number; image: string }> {
  const { files } = await listImageFiles(imagesDir);
  const ordered = [...files.filter((f) => f !== MANIFEST_NAME), MANIFEST_NAME];
  if (target.kind === 'archive') {
    report.phase(`finishing ${target.path}`);
    const tmp = partialArchive(target.path);
    await abortable(writingFailures(tar.out.finish(imagesDir, ordered, true).then(() => tar.done)), signal, tar.stop);
    return publishArchive(tmp, target.path);
  }
  report.phase('finishing the image stream on stdout');
  const sent = tar.out.finish(imagesDir, ordered, false).catch((e: unknown) => {
    throw streamFailed(e);
  });
  return { bytes: await abortable(sent, signal, tar.stop), memoryBytes: 0, image: '-' };
}

/** Whether an incremental dump (always to a directory) goes through the page sink: then it needs no page index. */
export const incrementalThroughSink = (): boolean => process.env.CEDANA_PAGE_SINK !== '0';

function interrupted(): CedanaError {
  return new CedanaError('INTERRUPTED', 'dump interrupted; the process tree was resumed and no image was kept', {
    hint: 'run the dump again when ready',
  });
}

export const partialArchive = (path: string): string => join(dirname(path), `.${basename(path)}.partial`);

export async function privateFiles(dir: string): Promise<void> {
  const { files } = await listImageFiles(dir);
  await Promise.all(files.map((f) => chmod(join(dir, f), 0o600)));
}

/** Refuses an output that exists already, unless --force. */
export async function refuseExistingOutput(target: OutputTarget, force: boolean): Promise<void> {
  if (target.kind !== 'stream' && (await pathExists(target.path)) && !force) {
    throw new CedanaError('OUTPUT_EXISTS', `${target.path} already exists`, {
      hint: 'choose another --output, or add --force to replace it',
      details: { output: target.path },
    });
  }
}

/**
 * Where the images are written: a private directory on the destination's file system (renamed into
 * place on success, see commitImageDir), or inside the work directory for a stream.
 */
export async function partialImagesDir(target: OutputTarget, work: string): Promise<string> {
  const imagesParent = target.kind === 'stream' ? work : dirname(target.path);
  await mkdir(imagesParent, { recursive: true });
  const imagesDir = target.kind === 'stream' ? join(work, 'image') : await privateTempDir(`.${basename(target.path)}.partial-`, imagesParent);
  if (target.kind === 'stream') await mkdir(imagesDir, { mode: 0o700 });
  await chmod(imagesDir, 0o700);
  return imagesDir;
}

/** A finished image directory: synced to disk, renamed into place, the rename synced. */
export async function commitImageDir(imagesDir: string, path: string): Promise<void> {
  await syncTree(imagesDir);
  await moveIntoPlace(imagesDir, path);
  await syncDirEntry(dirname(path));
}

/** Writes the archive or stream; for a directory, nothing moves yet (see commitImageDir). */
export async function storeImage(
  target: OutputTarget,
  imagesDir: string,
  stream: Writable | undefined,
  report: Reporter,
  signal: AbortSignal | undefined,
  /** Directories whose own entries the archive holds (before their files). */
  dirEntries: string[] = [],
): Promise<{ bytes: number; memoryBytes: number; image: string }> {
  const { files } = await listImageFiles(imagesDir);
  // The manifest goes first, so a reader can validate before it unpacks the pages.
  const ordered = [MANIFEST_NAME, ...dirEntries, ...files.filter((f) => f !== MANIFEST_NAME)];
  if (target.kind === 'dir') {
    const sizes = await Promise.all(files.map(async (f) => (await stat(join(imagesDir, f))).size));
    return { bytes: sizes.reduce((a, b) => a + b, 0), memoryBytes: 0, image: target.path };
  }
  if (target.kind === 'archive') {
    report.phase(`writing ${target.path}`);
    const tmp = partialArchive(target.path);
    const writing = packImageToFile(imagesDir, ordered, tmp, target.compression);
    await abortable(writingFailures(writing.done), signal, writing.stop);
    return publishArchive(tmp, target.path);
  }
  if (!stream) throw new CedanaError('INTERNAL', 'no stream to write the image to');
  report.phase('streaming the image to stdout');
  // GNU tar writes straight into the descriptor (stdout) where there is one.
  const fd = (stream as Writable & { imageFd?: number }).imageFd;
  const direct = fd === undefined ? undefined : await packImageToFd(imagesDir, ordered, fd);
  if (direct) {
    const sent = direct.done.catch((e: unknown) => {
      throw streamFailed(e);
    });
    return { bytes: await abortable(sent, signal, direct.stop), memoryBytes: 0, image: '-' };
  }
  let bytes = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      bytes += chunk.length;
      cb(null, chunk);
    },
  });
  // stdout is not ended: the JSON result or nothing follows, and the shell owns the descriptor.
  const streamed = Promise.all([pack(imagesDir, ordered, counter, 'none', true), pump(counter, stream, false)]).catch((e: unknown) => {
    throw streamFailed(e);
  });
  // A reader that stops reading blocks the stream with the tree frozen: an interrupt must still get through.
  await abortable(streamed, signal, () => {
    counter.destroy();
    stream.destroy();
  });
  return { bytes, memoryBytes: 0, image: '-' };
}

/** The partial archive `tmp`, complete: made private, synced, renamed to `path` (the rename synced too). */
async function publishArchive(tmp: string, path: string): Promise<{ bytes: number; memoryBytes: number; image: string }> {
  await chmod(tmp, 0o600);
  await syncTree(tmp);
  await rename(tmp, path);
  await syncDirEntry(dirname(path));
  return { bytes: (await stat(path)).size, memoryBytes: 0, image: path };
}

/** The stream on stdout could not be written (its reader went away). */
function streamFailed(e: unknown): CedanaError {
  return new CedanaError('IO_ERROR', `streaming the image failed: ${(e as Error).message}`, { hint: 'the reader of stdout went away', cause: e });
}

/** Rejects with INTERRUPTED as soon as signal aborts, after calling stop() to tear the writer down. */
async function abortable<T>(work: Promise<T>, signal: AbortSignal | undefined, stop: () => void): Promise<T> {
  if (!signal) return work;
  if (signal.aborted) {
    stop();
    work.catch(() => undefined);
    throw interrupted();
  }
  let onAbort: () => void = () => undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => {
      stop();
      reject(interrupted());
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([work, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
    work.catch(() => undefined);
  }
}

/** An archive that could not be written: IO_ERROR unless the error says better. */
async function writingFailures(done: Promise<void>): Promise<void> {
  try {
    await done;
  } catch (e) {
    const err = toCedanaError(e);
    if (err.code === 'INTERNAL') throw new CedanaError('IO_ERROR', `writing the image failed: ${err.message}`, { cause: e });
    throw err;
  }
}

async function pack(dir: string, files: string[], dest: Writable, compression: 'none' | 'gzip' | 'zstd', end: boolean): Promise<void> {
  try {
    await packImage(dir, files, dest, compression, end);
  } catch (e) {
    dest.destroy();
    const err = toCedanaError(e);
    if (err.code === 'INTERNAL') throw new CedanaError('IO_ERROR', `writing the image failed: ${err.message}`, { cause: e });
    throw err;
  }
}

/** Renames the finished image directory into place; with --force the old one is removed only after. */
async function moveIntoPlace(imagesDir: string, path: string): Promise<void> {
  if (await pathExists(path)) {
    const old = `${path}.old-${process.pid}`;
    await rename(path, old);
    await rename(imagesDir, path);
    await rm(old, { recursive: true, force: true });
  } else {
    await rename(imagesDir, path);
  }
}

export interface GpuPlan {
  cc: CudaCheckpoint;
  pids: number[];
  manifest: ManifestGpu;
  /** Whether this cuda-checkpoint takes --timeout for lock (driver ≥ 570). */
  lockTimeout: boolean;
  /** Each CUDA process's state as cuda-checkpoint gave it while planning. */
  states: Map<number, CudaState>;
}

/** The tree's CUDA processes, and what this host's cuda-checkpoint and driver make of them; undefined without any. */
export async function planGpu(pids: number[], args: Pick<DumpArgs, 'cudaCheckpoint'>, notes: string[]): Promise<GpuPlan | undefined> {
  const candidates = await cudaProcesses(pids);
  if (candidates.length === 0) return undefined;
  const host = await localGpuHost(args.cudaCheckpoint);
  planGpuDump(candidates, host); // refuses a host that cannot checkpoint them at all
  // A process can map libcuda without ever making a CUDA context: cuda-checkpoint does not know it,
  // and CRIU dumps it like any other. One holding an NVIDIA device is a CUDA process whatever it says.
  const cc = new CudaCheckpoint(host.cudaCheckpoint!);
  const states = new Map<number, CudaState>();
  const cudaPids: number[] = [];
  for (const pid of candidates) {
    const st = await cc.state(pid).catch((e: unknown) => e as CedanaError);
    if (typeof st === 'string') {
      states.set(pid, st);
      cudaPids.push(pid);
    } else if (await holdsNvidiaDevice(pid)) {
      throw st;
    } else {
      notes.push(`PID ${pid} maps libcuda but cuda-checkpoint knows no CUDA context in it: dumped as a CPU process`);
    }
  }
  if (cudaPids.length === 0) return undefined;
  const manifest = planGpuDump(cudaPids, host);
  notes.push(`GPU: PID ${cudaPids.join(', ')} use${cudaPids.length === 1 ? 's' : ''} CUDA (driver ${manifest.driverVersion}): ${manifest.memoryUsedMiB} MiB of device memory move through host memory (cuda-checkpoint lock, checkpoint; restore, unlock after)`);
  return { cc, pids: cudaPids, manifest, lockTimeout: driverMajor(host.driver) >= DRIVER_TREES && host.help.includes('--timeout'), states };
}
