/**
 * Containers: `cedana dump --container ID`, `cedana restore IMAGE --container [NEW-ID]`. The OCI
 * runtime (runc or crun, found by the id) checkpoints and restores — it drives CRIU, so namespaces,
 * cgroups and mounts are handled as it expects — and cedana adds what it gives processes: the
 * manifest and checksums, private files, archives and streams, the JSON and exit-code contract, and
 * the transaction. A dump pauses the container (its cgroup frozen), checkpoints it leaving it
 * paused, writes the image with the bundle's config.json and, with --rootfs, its root file system;
 * only when all of that is stored does it end the container (or resume it, --leave-running). Any
 * failure before resumes it as it was.
 */
import { execa } from 'execa';
import { copyFile, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { decideDumpOptions, type CriuDecisions, type TcpMode } from '../criu/options.js';
import { locateCriu } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { hostFacts, requireRoot } from '../host.js';
import { checksumDir } from '../image/checksum.js';
import { MANIFEST_NAME, type ManifestContainer } from '../image/manifest.js';
import { makeManifest, pagesBytes } from '../dump/manifest.js';
import { parseOutput } from '../dump/output.js';
import { examineTree, type TreeFacts } from '../proc/tree.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { pathExists, privateTempDir } from '../util/paths.js';
import { checkpointArgs, findContainer, Runtime, type RuntimeName } from './runtime.js';
import { commitImageDir, partialArchive, partialImagesDir, privateFiles, refuseExistingOutput, storeImage } from '../commands/dump.js';
import { CHANGES_IMAGE, CONFIG_IMAGE, ROOTFS_IMAGE, forgetRestoreBundle, overlayAt, readBundle } from './bundle.js';
import { archiveImagesDir, writeArchiveLayout, type DumpFormat } from './archive-export.js';
import { CK_DIR, CK_SPEC } from './ckpt-archive.js';

export interface ContainerDumpArgs {
  id: string;
  runtime?: string;
  output?: string;
  leaveRunning: boolean;
  tcp: TcpMode;
  fileLocks: boolean;
  force: boolean;
  /** Carry the whole root file system in the image. */
  rootfs: boolean;
  /** cedana's image (default), or the layout Kubernetes, CRI-O and Podman share. */
  format?: DumpFormat;
  /** With format checkpointctl: the image the container runs over, for Podman's restore. */
  baseImage?: { name: string; id: string };
  stream?: Writable;
  reporter?: Reporter;
  signal?: AbortSignal;
}

export interface ContainerDumpResult {
  command: 'dump';
  container: string;
  runtime: RuntimeName;
  pid: number;
  image: string;
  bytes: number;
  memoryBytes: number;
  processes: number;
  durationMs: number;
  leftRunning: boolean;
  rootfs: 'none' | 'full' | 'changes';
  format: DumpFormat;
  decisions: string[];
}

/** Where the CRIU images and the container's files are written, then packed, while the container is paused. */
/**
 * Drops every packet in the container's network namespace, so that its established connections stay
 * exactly as the image has them (CRIU lifts its own lock when a --leave-running checkpoint ends, and
 * the paused container's kernel sockets would go on acknowledging data the image does not hold).
 * Returns the undo; a container that ends takes the rules with its namespace.
 */
export async function lockContainerNetwork(pid: number): Promise<() => Promise<void>> {
  const rule = (op: '-I' | '-D', chain: string): string[] => [op, chain, ...(op === '-I' ? ['1'] : []), '-m', 'comment', '--comment', 'cedana: container being checkpointed', '-j', 'DROP'];
  const run = (tool: string, args: string[]): Promise<unknown> => execa('nsenter', ['-t', String(pid), '-n', tool, '-w', ...args], { reject: false });
  const done: [string, string][] = [];
  for (const tool of ['iptables', 'ip6tables']) {
    for (const chain of ['INPUT', 'OUTPUT']) {
      const r = (await execa('nsenter', ['-t', String(pid), '-n', tool, '-w', ...rule('-I', chain)], { reject: false, all: true })) as { exitCode?: number; all?: string };
      if (r.exitCode !== 0) {
        for (const [t, c] of done) await run(t, rule('-D', c));
        throw new CedanaError('HOST_UNSUPPORTED', `cannot lock the container's network (${tool}): ${String(r.all ?? '').trim()}`, { hint: 'install iptables (scripts/setup does)' });
      }
      done.push([tool, chain]);
    }
  }
  return async () => {
    for (const [t, c] of done) await run(t, rule('-D', c));
  };
}

/** What a container checkpoint is of: the container, what goes with it, and whether it ends here after. */
export interface CheckpointRequest {
  runtime: Runtime;
  id: string;
  pid: number;
  rootfs: boolean;
  tcp: TcpMode;
  fileLocks: boolean;
  bundle: string;
  ends: boolean;
  format?: DumpFormat;
  baseImage?: { name: string; id: string };
}

export async function checkpointContainer(
  c: CheckpointRequest,
  imagesDir: string,
  work: string,
  report: Reporter,
): Promise<{ manifestExtra: ManifestContainer; facts: TreeFacts; decisions: CriuDecisions; unlockNetwork?: () => Promise<void> }> {
  const facts = await examineTree(c.pid);
  const decisions = decideDumpOptions(facts, { tcp: c.tcp, fileLocks: c.fileLocks, leaveRunning: true });
  const bundle = await readBundle(c.bundle);
  // A container that will end here keeps its connections frozen until it does (or until the undo).
  const unlockNetwork = c.ends && decisions.tcpEstablished ? await lockContainerNetwork(c.pid) : undefined;
  if (unlockNetwork) decisions.notes.push('its network stays locked from the checkpoint until it ends here, so its connections are exactly as the image has them');
  try {
    return { manifestExtra: await writeContainerImage(c, bundle, facts, decisions, imagesDir, work, report), facts, decisions, unlockNetwork };
  } catch (e) {
    await unlockNetwork?.();
    throw e;
  }
}

/** The runtime's checkpoint, the bundle's config and (--rootfs) the root file system, into imagesDir; returns the manifest's part. */
export async function writeContainerImage(
  c: CheckpointRequest,
  bundle: { config: Record<string, any>; rootfs: string },
  facts: TreeFacts,
  decisions: CriuDecisions,
  imagesDir: string,
  work: string,
  report: Reporter,
): Promise<ManifestContainer> {
  report.phase(`checkpointing container ${c.id} (${c.runtime.name}; ${facts.processes.length} process(es))`);
  const log = join(work, 'dump.log');
  // The checkpointctl layout keeps CRIU's images under checkpoint/.
  const criuImages = c.format === 'checkpointctl' ? await archiveImagesDir(imagesDir) : imagesDir;
  await c.runtime.run(checkpointArgs(c.id, { imagesDir: criuImages, workDir: work, leaveRunning: true, tcpEstablished: decisions.tcpEstablished, fileLocks: decisions.fileLocks, externalUnix: decisions.externalUnix.length > 0 }), {
    log, label: `${c.runtime.name}-dump-${c.id}`,
  });
  if (c.format === 'checkpointctl') {
    report.phase('writing the checkpointctl layout (config.dump, spec.dump, the root file system\'s changes)');
    const layout = await writeArchiveLayout({ runtime: c.runtime, id: c.id, bundle, rootfs: c.rootfs, base: c.baseImage, criuWork: work }, imagesDir);
    decisions.notes.push(...layout.notes);
    return { id: c.id, runtime: c.runtime.name, bundle: c.bundle, config: CK_SPEC, rootfs: { mode: layout.rootfs, path: bundle.rootfs } };
  }
  await mkdir(join(imagesDir, 'container'), { mode: 0o700 });
  await copyFile(join(c.bundle, 'config.json'), join(imagesDir, CONFIG_IMAGE));
  const extra: ManifestContainer = { id: c.id, runtime: c.runtime.name, bundle: c.bundle, config: CONFIG_IMAGE, rootfs: { mode: 'none', path: bundle.rootfs } };
  const overlay = c.rootfs ? overlayAt(await readFile('/proc/self/mountinfo', 'utf8'), bundle.rootfs) : undefined;
  if (overlay) {
    report.phase(`packing the container's changes to its root file system (${overlay.upper})`);
    // An overlay: its upper directory holds everything the container changed (whiteouts included).
    const tar = join(imagesDir, CHANGES_IMAGE);
    const r = await execa('tar', ['--create', '--file', tar, '--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '-C', overlay.upper, '.'], { reject: false, all: true });
    if (r.exitCode !== 0) throw new CedanaError('IO_ERROR', `packing ${overlay.upper} failed: ${String(r.all).trim().split('\n').slice(-2).join(' ')}`);
    extra.rootfs = { mode: 'changes', path: bundle.rootfs, image: CHANGES_IMAGE, bytes: (await stat(tar)).size, ...overlay };
    decisions.notes.push(`--rootfs: ${bundle.rootfs} is an overlay: its changes (${(extra.rootfs.bytes! / 1048576).toFixed(1)} MiB) travel in the image; the base ${overlay.base.join(':')} must be where it is restored`);
  } else if (c.rootfs) {
    report.phase(`packing the root file system ${bundle.rootfs}`);
    // The container is paused: the files are as its processes left them at the checkpoint.
    const tar = join(imagesDir, ROOTFS_IMAGE);
    const r = await execa('tar', ['--create', '--file', tar, '--numeric-owner', '--xattrs', '--xattrs-include=*', '--acls', '--one-file-system', '-C', bundle.rootfs, '.'], { reject: false, all: true });
    if (r.exitCode !== 0) throw new CedanaError('IO_ERROR', `packing ${bundle.rootfs} failed: ${String(r.all).trim().split('\n').slice(-2).join(' ')}`);
    extra.rootfs = { mode: 'full', path: bundle.rootfs, image: ROOTFS_IMAGE, bytes: (await stat(tar)).size };
    decisions.notes.push(`--rootfs: the root file system ${bundle.rootfs} travels in the image (${(extra.rootfs.bytes! / 1048576).toFixed(1)} MiB)`);
  } else {
    decisions.notes.push(`the root file system stays where it is (${bundle.rootfs}): a restore needs it there (--rootfs carries it)`);
  }
  return extra;
}

export function refuseTcpClose(tcp: TcpMode): void {
  if (tcp === 'close') {
    throw new CedanaError('USAGE', '--tcp-close is not available for containers: their runtime restores connections as they were, or fails', { hint: 'drop --tcp-close' });
  }
}

export async function dumpContainer(args: ContainerDumpArgs): Promise<ContainerDumpResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  refuseTcpClose(args.tcp);
  requireRoot('dump');
  const criu = await locateCriu();
  const { runtime, state } = await findContainer(args.id, args.runtime);
  const target = parseOutput(args.output, state.pid);
  await refuseExistingOutput(target, args.force);
  const work = await privateTempDir('cedana-ctr-');
  const imagesDir = await partialImagesDir(target, work);
  const wasPaused = state.status === 'paused';
  let paused = false;
  let committed = false;
  let unlockNetwork: (() => Promise<void>) | undefined;
  try {
    if (!wasPaused) {
      report.phase(`pausing container ${args.id}`);
      await runtime.pause(args.id);
      paused = true;
    }
    const format = args.format ?? 'cedana';
    const ck = await checkpointContainer({ runtime, id: args.id, pid: state.pid, rootfs: args.rootfs, tcp: args.tcp, fileLocks: args.fileLocks, bundle: state.bundle, ends: !args.leaveRunning, format, baseImage: args.baseImage }, imagesDir, join(work, 'criu'), report);
    unlockNetwork = ck.unlockNetwork;
    if (args.signal?.aborted) throw new CedanaError('INTERRUPTED', 'dump interrupted; the container was resumed');
    report.phase('writing the manifest and checksums (container paused)');
    const files = await checksumDir(imagesDir);
    const memoryBytes = pagesBytes(files, format === 'checkpointctl' ? CK_DIR : '');
    const manifest = makeManifest({
      criuVersion: criu.version.text, host: await hostFacts(), pid: state.pid, facts: ck.facts, decisions: ck.decisions, leaveRunning: args.leaveRunning,
      networkLock: 'iptables', files, memoryBytes, container: ck.manifestExtra, ...(format === 'checkpointctl' ? { layout: 'checkpointctl' as const } : {}),
    });
    await writeFile(join(imagesDir, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
    await privateFiles(imagesDir);
    // checkpointctl needs the checkpoint/ directory's own entry in the archive.
    const stored = await storeImage(target, imagesDir, args.stream, report, args.signal, format === 'checkpointctl' ? [CK_DIR] : []);
    if (target.kind === 'dir') await commitImageDir(imagesDir, target.path);
    // The commit point: the image is stored. Now the container ends, or goes on.
    committed = true;
    if (args.leaveRunning) {
      if (paused) await runtime.resume(args.id);
    } else {
      report.phase(`ending container ${args.id}`);
      await runtime.destroy(args.id);
      await forgetRestoreBundle(state.bundle);
    }
    return {
      command: 'dump',
      container: args.id,
      runtime: runtime.name,
      pid: state.pid,
      image: stored.image,
      bytes: stored.bytes,
      memoryBytes,
      processes: ck.facts.processes.length,
      durationMs: Math.round(performance.now() - started),
      leftRunning: args.leaveRunning,
      rootfs: ck.manifestExtra.rootfs.mode,
      format,
      decisions: ck.decisions.notes,
    };
  } catch (e) {
    const err = toCedanaError(e);
    if (!committed) {
      await unlockNetwork?.().catch(() => undefined);
      if (paused) await runtime.resume(args.id).catch(() => undefined);
      const s = await runtime.state(args.id);
      err.details.containerRunning = s?.status === (wasPaused ? 'paused' : 'running');
      if (target.kind === 'archive') await rm(partialArchive(target.path), { force: true });
    }
    throw err;
  } finally {
    report.stop();
    if (target.kind !== 'stream' && (await pathExists(imagesDir))) await rm(imagesDir, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}
