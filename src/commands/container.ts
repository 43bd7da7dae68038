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
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { decideDumpOptions, type CriuDecisions, type TcpMode } from '../criu/options.js';
import { locateCriu } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { hostFacts, requireRoot } from '../host.js';
import { checksumDir, checksumDirForTransfer, listImageFiles, verifyDir } from '../image/checksum.js';
import { MANIFEST_NAME, type ManifestContainer } from '../image/manifest.js';
import { openImage, readManifest } from '../image/open.js';
import { makeManifest, pagesBytes } from '../dump/manifest.js';
import { parseOutput } from '../dump/output.js';
import { examineTree, type TreeFacts } from '../proc/tree.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { pathExists, privateTempDir } from '../util/paths.js';
import { checkContainerId, checkpointArgs, findContainer, restoreArgs, Runtime, type RuntimeName } from '../container/runtime.js';
import { commitImageDir, partialArchive, partialImagesDir, privateFiles, refuseExistingOutput, storeImage } from './dump.js';
import { Transform } from 'node:stream';
import { SshSession, shq } from '../transport/ssh.js';
import { REMOTE_PATH } from '../migrate/preflight.js';
import { awaitRestore, Lifeline, lifeline, undoOnTarget, WAIT_R_GONE } from '../migrate/remote.js';
import { freezeTimeoutFor, frozenWindow, type FrozenWindow } from '../migrate/frozen.js';
import { packImage } from '../image/archive.js';
import { checkCompatible } from './restore.js';

export const CONFIG_IMAGE = 'container/config.json';
export const ROOTFS_IMAGE = 'container/rootfs.tar';
export const CHANGES_IMAGE = 'container/rootfs-changes.tar';

/** Unescapes a mountinfo field (\040 for a space…). Pure. */
const unescapeMount = (s: string): string => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Where an overlay mounted at `path` keeps its layers, from /proc/self/mountinfo text. Pure. */
export function overlayAt(mountinfo: string, path: string): { base: string[]; upper: string; work: string } | undefined {
  let found: { base: string[]; upper: string; work: string } | undefined;
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    if (unescapeMount(pre.split(' ')[4] ?? '') !== path) continue;
    const [fstype, , opts = ''] = post.split(' ');
    if (fstype !== 'overlay') {
      found = undefined; // a later mount over it hides the overlay
      continue;
    }
    const o = new Map(opts.split(',').map((kv) => [kv.split('=')[0]!, unescapeMount(kv.slice(kv.indexOf('=') + 1))]));
    const lower = o.get('lowerdir');
    const upper = o.get('upperdir');
    const work = o.get('workdir');
    found = lower && upper && work ? { base: lower.split(':'), upper, work } : undefined;
  }
  return found;
}
/** Where a restored container's runtime bundle lives: its config for the restore (see restoreConfig). */
export const RESTORE_BUNDLES = '/run/cedana/bundles';
/** In a migration's image: the config the target restores with. */
export const RESTORE_CONFIG_IMAGE = 'container/restore.json';
const LO_HOOK_MARK = 'cedana: network namespace back up after a restore';

/** A bundle cedana made for a restore goes with its container (the image keeps its config). */
async function forgetRestoreBundle(bundle: string): Promise<void> {
  if (dirname(bundle) === RESTORE_BUNDLES) await rm(bundle, { recursive: true, force: true });
}

/**
 * The config a container is restored with. runc never checkpoints the network namespace's
 * configuration ("runc doesn't manage network devices": it always passes CRIU --empty-ns network),
 * so CRIU restores the container into a new network namespace whose loopback is down, and every TCP
 * socket on it fails to come back ("Network is unreachable"). A prestart hook — runc runs those when
 * CRIU has made the namespaces, before it restores the sockets — brings loopback up. The root file
 * system is named by its absolute path (the restore bundle lives elsewhere). Pure.
 */
export function restoreConfig(config: Record<string, any>, rootfs: string): Record<string, any> {
  const c = structuredClone(config) as Record<string, any>;
  c.root = { ...(c.root ?? {}), path: rootfs };
  const ours = {
    path: '/bin/sh',
    args: ['sh', '-c', `# ${LO_HOOK_MARK}\npid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p'); [ -n "$pid" ] && nsenter -t "$pid" -n ip link set lo up; exit 0`],
  };
  const prestart = ((c.hooks?.prestart ?? []) as { args?: string[] }[]).filter((h) => !(h.args ?? []).some((a) => a.includes(LO_HOOK_MARK)));
  c.hooks = { ...(c.hooks ?? {}), prestart: [...prestart, ours] };
  return c;
}

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
  decisions: string[];
}

/** The bundle's config and the root file system's absolute path. */
export async function readBundle(bundle: string): Promise<{ config: Record<string, any>; rootfs: string }> {
  let config: Record<string, any>;
  try {
    config = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as Record<string, any>;
  } catch (e) {
    throw new CedanaError('IO_ERROR', `cannot read the bundle's config.json in ${bundle}: ${(e as Error).message}`, { hint: 'the container must have been started from an OCI bundle' });
  }
  const root = typeof config.root?.path === 'string' ? (config.root.path as string) : 'rootfs';
  return { config, rootfs: isAbsolute(root) ? root : resolve(bundle, root) };
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
interface CheckpointRequest {
  runtime: Runtime;
  id: string;
  pid: number;
  rootfs: boolean;
  tcp: TcpMode;
  fileLocks: boolean;
  bundle: string;
  ends: boolean;
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
async function writeContainerImage(
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
  await c.runtime.run(checkpointArgs(c.id, { imagesDir, workDir: work, leaveRunning: true, tcpEstablished: decisions.tcpEstablished, fileLocks: decisions.fileLocks, externalUnix: decisions.externalUnix.length > 0 }), {
    log, label: `${c.runtime.name}-dump-${c.id}`,
  });
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

function refuseTcpClose(tcp: TcpMode): void {
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
    const ck = await checkpointContainer({ runtime, id: args.id, pid: state.pid, rootfs: args.rootfs, tcp: args.tcp, fileLocks: args.fileLocks, bundle: state.bundle, ends: !args.leaveRunning }, imagesDir, join(work, 'criu'), report);
    unlockNetwork = ck.unlockNetwork;
    if (args.signal?.aborted) throw new CedanaError('INTERRUPTED', 'dump interrupted; the container was resumed');
    report.phase('writing the manifest and checksums (container paused)');
    const files = await checksumDir(imagesDir);
    const memoryBytes = pagesBytes(files);
    const manifest = makeManifest({
      criuVersion: criu.version.text, host: await hostFacts(), pid: state.pid, facts: ck.facts, decisions: ck.decisions, leaveRunning: args.leaveRunning,
      networkLock: 'iptables', files, memoryBytes, container: ck.manifestExtra,
    });
    await writeFile(join(imagesDir, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
    await privateFiles(imagesDir);
    const stored = await storeImage(target, imagesDir, args.stream, report, args.signal);
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

export interface ContainerRestoreArgs {
  image: string;
  /** The id to restore as (default: the image's). */
  id?: string;
  runtime?: string;
  stdin?: Readable;
  reporter?: Reporter;
}

export interface ContainerRestoreResult {
  command: 'restore';
  container: string;
  runtime: RuntimeName;
  pid: number;
  image: string;
  /** The container's bundle (its config.json and root file system), as where it was dumped. */
  bundle: string;
  /** The bundle runc restored it from (the config with the hook that brings its loopback up). */
  restoreBundle: string;
  /** What was put in place for the bundle: nothing (it was there), its config, or config and root file system. */
  bundleCreated: 'none' | 'config' | 'config+rootfs';
  processes: number;
  durationMs: number;
}

/** Whether a root file system is in place: a non-empty directory (a mounted overlay shows its base). */
async function rootfsPresent(path: string): Promise<boolean> {
  return (await readdir(path).catch(() => [] as string[])).length > 0;
}

/**
 * Puts the bundle where the image says, as far as it is not there: config.json, and the root file
 * system — unpacked from the image (full), rebuilt as an overlay of the image's changes over the base
 * that must be here (changes), or required in place (none). Returns what it created, and an undo.
 */
export async function placeBundle(dir: string, c: ManifestContainer): Promise<{ created: ContainerRestoreResult['bundleCreated']; undo: () => Promise<void> }> {
  const r = c.rootfs;
  const present = await rootfsPresent(r.path);
  if (!present && r.mode === 'none') {
    throw new CedanaError('ROOTFS_MISSING', `the container's root file system ${r.path} is not on this host (or is empty), and the image does not carry it`, { hint: 'dump with --rootfs to carry it, or put it in place first' });
  }
  if (!present && r.mode === 'changes') {
    const missing = r.base!.filter((b) => !existsSync(b));
    if (missing.length) throw new CedanaError('ROOTFS_MISSING', `the base image of the container's root file system is not here: ${missing.join(', ')}`, { hint: 'unpack the same base image there first' });
    for (const d of [r.upper!, r.work!]) {
      if ((await readdir(d).catch(() => [] as string[])).length > 0) throw new CedanaError('ROOTFS_MISSING', `the overlay's ${d} is here and not empty; cedana will not mix the image's changes into it`, { hint: 'move it away, or mount the root file system yourself' });
    }
  }
  const made: string[] = [];
  const filled: string[] = [];
  let mounted = false;
  const undo = async (): Promise<void> => {
    if (mounted) await execa('umount', [r.path], { reject: false });
    for (const d of [...made].reverse()) await rm(d, { recursive: true, force: true });
    // Directories that were there, empty: emptied again.
    for (const d of filled) for (const n of await readdir(d).catch(() => [] as string[])) await rm(join(d, n), { recursive: true, force: true });
  };
  const mk = async (d: string): Promise<void> => {
    if (existsSync(d)) return;
    // The topmost directory created is what the undo removes.
    let top = d;
    while (!existsSync(dirname(top))) top = dirname(top);
    await mkdir(d, { recursive: true, mode: 0o755 });
    made.push(top);
  };
  const unpack = async (tar: string, into: string, extra: string[] = []): Promise<void> => {
    const x = await execa('tar', ['--extract', '--file', join(dir, tar), '--numeric-owner', '--xattrs', ...extra, '--acls', '--same-permissions', '-C', into], { reject: false, all: true });
    if (x.exitCode !== 0) throw new CedanaError('IO_ERROR', `unpacking into ${into} failed: ${String(x.all).trim().split('\n').slice(-2).join(' ')}`);
  };
  let created: ContainerRestoreResult['bundleCreated'] = 'none';
  try {
    if (!existsSync(join(c.bundle, 'config.json'))) {
      await mk(c.bundle);
      await copyFile(join(dir, c.config), join(c.bundle, 'config.json'));
      if (!made.includes(c.bundle)) made.push(join(c.bundle, 'config.json'));
      created = 'config';
    }
    if (!present && r.mode === 'full') {
      if (existsSync(r.path)) filled.push(r.path);
      await mk(r.path);
      await unpack(r.image!, r.path, ['--xattrs-include=*']);
      created = 'config+rootfs';
    }
    if (!present && r.mode === 'changes') {
      for (const d of [r.upper!, r.work!]) if (existsSync(d)) filled.push(d);
      for (const d of [r.upper!, r.work!, r.path]) await mk(d);
      await unpack(r.image!, r.upper!, ['--xattrs-include=*']);
      const m = await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${r.base!.join(':')},upperdir=${r.upper},workdir=${r.work}`, r.path], { reject: false, all: true });
      if (m.exitCode !== 0) throw new CedanaError('IO_ERROR', `mounting the overlay at ${r.path} failed: ${String(m.all).trim()}`);
      mounted = true;
      created = 'config+rootfs';
    }
  } catch (e) {
    await undo();
    throw e;
  }
  return { created, undo };
}

export async function restoreContainer(args: ContainerRestoreArgs): Promise<ContainerRestoreResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('restore');
  const criu = await locateCriu();
  const work = await privateTempDir('cedana-ctr-restore-');
  try {
    const { dir, label, digests } = await openImage(args.image, work, report, args.stdin);
    report.phase('verifying the image');
    const manifest = await readManifest(dir);
    if (!manifest.container) {
      throw new CedanaError('USAGE', 'this image is of a process tree, not of a container', { hint: 'restore it without --container' });
    }
    await verifyDir(dir, manifest, undefined, digests);
    checkCompatible(manifest, await hostFacts(), criu);
    const c = manifest.container;
    const id = args.id ?? c.id;
    checkContainerId(id);
    const runtimes = await Runtime.available(args.runtime);
    const runtime = runtimes.find((r) => r.name === c.runtime) ?? runtimes[0]!;
    for (const r of await Runtime.available().catch(() => [] as Runtime[])) {
      if (await r.state(id)) throw new CedanaError('CONTAINER_EXISTS', `a container ${id} exists already (${r.name})`, { hint: 'restore under another id: --container NEW-ID, or delete that one' });
    }
    const placed = await placeBundle(dir, c);
    const restoreBundle = join(RESTORE_BUNDLES, id);
    try {
      report.phase(`restoring container ${id} (${runtime.name})`);
      const criuWork = join(work, 'criu');
      await mkdir(criuWork, { mode: 0o700 });
      await mkdir(restoreBundle, { recursive: true, mode: 0o700 });
      const config = JSON.parse(await readFile(join(dir, c.config), 'utf8')) as Record<string, any>;
      await writeFile(join(restoreBundle, 'config.json'), JSON.stringify(restoreConfig(config, c.rootfs.path), null, 1), { mode: 0o600 });
      const o = manifest.options;
      // The container inherits runc's stdio where it had pipes: a file that outlives cedana, not cedana's pipes.
      await runtime.run(restoreArgs(id, { imagesDir: dir, workDir: criuWork, bundle: restoreBundle, tcpEstablished: o.tcpEstablished, fileLocks: o.fileLocks, externalUnix: o.externalUnix.length > 0 }), {
        log: join(criuWork, 'restore.log'), label: `${runtime.name}-restore-${id}`, output: join(restoreBundle, 'stdio.log'),
      });
      const s = await runtime.state(id);
      if (!s || s.status !== 'running') throw new CedanaError('RUNTIME_FAILED', `${runtime.name} restored container ${id}, and it is ${s?.status ?? 'gone'}`);
      return {
        command: 'restore', container: id, runtime: runtime.name, pid: s.pid, image: label, bundle: c.bundle, restoreBundle, bundleCreated: placed.created,
        processes: manifest.processes.length, durationMs: Math.round(performance.now() - started),
      };
    } catch (e) {
      await runtime.run(['delete', '--force', id]).catch(() => undefined);
      await rm(restoreBundle, { recursive: true, force: true });
      await placed.undo();
      throw e;
    }
  } finally {
    report.stop();
    await rm(work, { recursive: true, force: true });
  }
}


export interface ContainerMigrateArgs {
  id: string;
  runtime?: string;
  to: string;
  acceptNewHostKey: boolean;
  sshDir?: string;
  /** Where the target keeps the image while it restores (removed afterwards). */
  targetDir: string;
  tcp: TcpMode;
  fileLocks: boolean;
  rootfs: boolean;
  reporter?: Reporter;
  signal?: AbortSignal;
  /** The longest the container may stay paused (ms); default freezeTimeoutFor(its image). */
  freezeTimeoutMs?: number;
}

export interface ContainerMigrateResult {
  command: 'migrate';
  container: string;
  runtime: RuntimeName;
  target: string;
  targetPid: number;
  processes: number;
  downtimeMs: number;
  durationMs: number;
  bytesSent: number;
  rootfs: 'none' | 'full' | 'changes';
  decisions: string[];
}

/** The target's answers before anything is paused: runtime, CRIU, the id free, the bundle and root file system there. */
export function containerPreflightScript(rt: RuntimeName, id: string, bundle: string, rootfs: string, parent: string, base: string[] = []): string {
  return [
    REMOTE_PATH,
    `echo "RT=$(command -v ${rt})"`,
    'echo "CRIU=$(criu --version 2>/dev/null | sed -n "s/^Version: *//p")"',
    `command -v ${rt} >/dev/null && ${rt} state ${shq(id)} >/dev/null 2>&1 && echo EXISTS=1`,
    `[ -f ${shq(`${bundle}/config.json`)} ] && echo BUNDLE=1`,
    `[ -n "$(ls -A ${shq(rootfs)} 2>/dev/null)" ] && echo ROOTFS=1`,
    base.length ? `${base.map((b) => `[ -d ${shq(b)} ]`).join(' && ')} && echo BASE=1` : ':',
    `umask 077; d=$(mktemp -d ${shq(`${parent}/cedana-container.XXXXXX`)}) && mkdir "$d/img" "$d/work" && echo "DIR=$d"`,
    'exit 0',
  ].join('\n');
}

/** Parses containerPreflightScript's answers. Pure. */
export function parseContainerPreflight(text: string): { runtime?: string; criu?: string; exists: boolean; bundle: boolean; rootfs: boolean; base: boolean; dir?: string } {
  const v = (k: string): string | undefined => new RegExp(`^${k}=(.*)$`, 'm').exec(text)?.[1]?.trim() || undefined;
  return { runtime: v('RT'), criu: v('CRIU'), exists: v('EXISTS') === '1', bundle: v('BUNDLE') === '1', rootfs: v('ROOTFS') === '1', base: v('BASE') === '1', dir: v('DIR') };
}

/**
 * The target's side: the image arrives as a tar on stdin, is checked against cedana.sha256, the bundle
 * is put in place where missing (each path created is listed in `created`, for the undo), and the
 * runtime restores the container detached. Prints pid=N, or the runtime's and CRIU's errors.
 */
export function containerRestoreScript(rt: RuntimeName, id: string, dir: string, c: ManifestContainer, flags: string[]): string {
  const B = shq(c.bundle);
  const R = shq(c.rootfs.path);
  const D = shq(dir);
  return [
    REMOTE_PATH,
    // The lifeline ends this script's tree (runc, CRIU) if the migration is abandoned.
    `echo $$ > ${D}/restore-sh.pid`,
    `cd ${D}/img || exit 99`,
    'tar -xf - || exit 98',
    'sha256sum -c --quiet --strict cedana.sha256 >&2 || exit 97',
    `: > ${D}/created`,
    // mkdir -p, recording the topmost directory it made (what the undo removes).
    `mkd() { t="$1"; while [ ! -e "$(dirname "$t")" ]; do t=$(dirname "$t"); done; mkdir -p "$1" && echo "$t" >> ${D}/created; }`,
    `if [ ! -f ${B}/config.json ]; then`,
    `  if [ ! -d ${B} ]; then mkd ${B} || exit 95; fi`,
    `  cp ${CONFIG_IMAGE} ${B}/config.json && echo ${B}/config.json >> ${D}/created || exit 95`,
    'fi',
    ...(c.rootfs.mode === 'changes'
      ? [
          `if [ -z "$(ls -A ${R} 2>/dev/null)" ]; then`,
          ...c.rootfs.base!.map((b) => `  [ -d ${shq(b)} ] || { echo "base image missing: ${b.replace(/["$`\\]/g, '')}" >&2; exit 96; }`),
          ...[c.rootfs.upper!, c.rootfs.work!].map((d) => `  [ -n "$(ls -A ${shq(d)} 2>/dev/null)" ] && { echo "not empty: ${d.replace(/["$`\\]/g, '')}" >&2; exit 95; }`),
          ...[c.rootfs.upper!, c.rootfs.work!, c.rootfs.path].map((d) => `  if [ -d ${shq(d)} ]; then echo contents:${shq(d)} >> ${D}/created; else mkd ${shq(d)} || exit 95; fi`),
          `  tar -xpf ${CHANGES_IMAGE} --numeric-owner --xattrs --xattrs-include='*' -C ${shq(c.rootfs.upper!)} || exit 95`,
          `  mount -t overlay overlay -o ${shq(`lowerdir=${c.rootfs.base!.join(':')},upperdir=${c.rootfs.upper},workdir=${c.rootfs.work}`)} ${R} && echo mount:${R} >> ${D}/created || exit 95`,
          'fi',
        ]
      : [
          `if [ -z "$(ls -A ${R} 2>/dev/null)" ]; then`,
          `  [ -f ${ROOTFS_IMAGE} ] || exit 96`,
          `  if [ ! -d ${R} ]; then mkd ${R} || exit 95; else echo contents:${R} >> ${D}/created; fi`,
          `  tar -xpf ${ROOTFS_IMAGE} --numeric-owner --xattrs --xattrs-include='*' --acls -C ${R} || exit 95`,
          'fi',
        ]),
    `RB=${shq(`${RESTORE_BUNDLES}/${id}`)}`,
    `mkdir -p "$RB" && echo "$RB" >> ${D}/created && cp ${RESTORE_CONFIG_IMAGE} "$RB/config.json" || exit 95`,
    // The container inherits runc's stdio where it had pipes: a file kept with its restore bundle.
    `${rt} restore --detach --image-path ${D}/img --work-path ${D}/work --bundle "$RB" ${flags.map(shq).join(' ')} ${shq(id)} </dev/null >"$RB/stdio.log" 2>&1`,
    'rc=$?',
    `if [ $rc -eq 0 ]; then ${rt} state ${shq(id)} | sed -n 's/^ *"pid": *\\([0-9]*\\).*/pid=\\1/p'; else tail -n 3 "$RB/stdio.log" | sed 's/^/rt=/'; grep -E '(Error|BUG) ' ${D}/work/restore.log 2>/dev/null | grep -v RLIMIT_NOFILE | tail -n 5 | sed 's/^/criu=/'; fi`,
    'exit $rc',
  ].join('\n');
}

/** Undoes the target's side: the container there, what was put in place for its bundle, the work directory. */
export function containerCleanupScript(rt: RuntimeName, id: string, dir: string, restored: boolean): string {
  const D = shq(dir);
  return [
    REMOTE_PATH,
    restored ? `${rt} kill ${shq(id)} KILL 2>/dev/null; sleep 0.2; ${rt} delete --force ${shq(id)} 2>/dev/null` : ':',
    `[ -f ${D}/created ] && tac ${D}/created | while IFS= read -r p; do case "$p" in mount:*) umount "\${p#mount:}";; contents:*) find "\${p#contents:}" -mindepth 1 -delete;; *) rm -rf "$p";; esac; done`,
    `rm -rf ${D} && [ ! -e ${D} ]`,
  ].join('\n');
}

const containerInterrupted = (): CedanaError =>
  new CedanaError('INTERRUPTED', 'migration interrupted; the container was resumed here and the target cleaned up', { hint: 'run the migration again when ready' });

export async function migrateContainer(args: ContainerMigrateArgs): Promise<ContainerMigrateResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  refuseTcpClose(args.tcp);
  requireRoot('migrate');
  const criu = await locateCriu();
  const { runtime, state } = await findContainer(args.id, args.runtime);
  const bundle = await readBundle(state.bundle);
  report.phase(`connecting to ${args.to}`);
  const session = await SshSession.connect(args.to, { acceptNewHostKey: args.acceptNewHostKey, sshDir: args.sshDir });
  const work = await privateTempDir('cedana-ctr-migrate-');
  const imagesDir = join(work, 'image');
  let remoteDir: string | undefined;
  let restoreStarted = false;
  let paused = false;
  let committed = false;
  let unlockNetwork: (() => Promise<void>) | undefined;
  let w: FrozenWindow | undefined;
  try {
    report.phase(`preflight on ${args.to}`);
    const overlay = args.rootfs ? overlayAt(await readFile('/proc/self/mountinfo', 'utf8'), bundle.rootfs) : undefined;
    const pre = parseContainerPreflight((await session.exec('sh -s', containerPreflightScript(runtime.name, args.id, state.bundle, bundle.rootfs, args.targetDir, overlay?.base))).stdout);
    remoteDir = pre.dir;
    if (!pre.runtime) throw new CedanaError('TARGET_UNSUPPORTED', `${runtime.name} is not installed on ${args.to}`, { hint: `install ${runtime.name} there` });
    if (!pre.criu) throw new CedanaError('TARGET_CRIU_MISSING', `CRIU is not installed on ${args.to}`, { hint: 'install CRIU 4.2 or newer there' });
    if (pre.exists) throw new CedanaError('CONTAINER_EXISTS', `a container ${args.id} exists already on ${args.to}`, { hint: `delete it there first (${runtime.name} delete ${args.id})` });
    if (!pre.rootfs && !args.rootfs) {
      throw new CedanaError('ROOTFS_MISSING', `the container's root file system ${bundle.rootfs} is not on ${args.to}`, { hint: 'add --rootfs to send it with the container' });
    }
    if (overlay && !pre.rootfs && !pre.base) {
      throw new CedanaError('ROOTFS_MISSING', `the base image of the container's overlay (${overlay.base.join(':')}) is not on ${args.to}; only its changes would be sent`, {
        hint: 'unpack the same base image there first',
      });
    }
    if (!remoteDir) throw new CedanaError('TARGET_NO_SPACE', `cannot create a work directory in ${args.targetDir} on ${args.to}`, { hint: 'choose another --target-dir' });
    const sendRootfs = args.rootfs && !pre.rootfs;

    const frozenAt = performance.now();
    if (state.status !== 'paused') {
      report.phase(`pausing container ${args.id}`);
      await runtime.pause(args.id);
      paused = true;
    }
    await mkdir(imagesDir, { mode: 0o700 });
    const ck = await checkpointContainer({ runtime, id: args.id, pid: state.pid, rootfs: sendRootfs, tcp: args.tcp, fileLocks: args.fileLocks, bundle: state.bundle, ends: true }, imagesDir, join(work, 'criu'), report);
    unlockNetwork = ck.unlockNetwork;
    if (args.rootfs && !sendRootfs) ck.decisions.notes.push(`--rootfs: ${bundle.rootfs} is on ${args.to} already; not sent`);
    if (args.signal?.aborted) throw containerInterrupted();
    await writeFile(join(imagesDir, RESTORE_CONFIG_IMAGE), JSON.stringify(restoreConfig(bundle.config, bundle.rootfs), null, 1), { mode: 0o600 });
    // BLAKE3 in the manifest; sha256 for the target's coreutils, which check the image there.
    const { files, sha256sums } = await checksumDirForTransfer(imagesDir);
    const manifest = makeManifest({
      criuVersion: criu.version.text, host: await hostFacts(), pid: state.pid, facts: ck.facts, decisions: ck.decisions, leaveRunning: false, networkLock: 'iptables',
      files, memoryBytes: pagesBytes(files), container: ck.manifestExtra,
    });
    await writeFile(join(imagesDir, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
    await writeFile(join(imagesDir, 'cedana.sha256'), sha256sums, { mode: 0o600 });
    const names = (await listImageFiles(imagesDir)).files;
    const flags = [...(ck.decisions.tcpEstablished ? ['--tcp-established'] : []), ...(ck.decisions.fileLocks ? ['--file-locks'] : []), ...(ck.decisions.externalUnix.length ? ['--ext-unix-sk'] : [])];

    report.phase(`sending container ${args.id} to ${args.to} and restoring it there`);
    restoreStarted = true;
    // The deadline counts from the pause; an interrupt or the deadline ends the restore there first.
    const imageBytes = Object.values(files).reduce((a, f) => a + f.size, 0);
    w = frozenWindow({ signal: args.signal, timeoutMs: Math.max(1, (args.freezeTimeoutMs ?? freezeTimeoutFor(imageBytes)) - (performance.now() - frozenAt)), interrupted: containerInterrupted });
    const pidFile = shq(`${remoteDir}/restore-sh.pid`);
    const life = await Lifeline.open(session, lifeline([
      // The restore script, runc and CRIU under it; then whatever it made (it may have begun just now).
      `r=$(cat ${pidFile} 2>/dev/null); [ -n "$r" ] && kill -9 $(tree_of "$r") 2>/dev/null`,
      WAIT_R_GONE,
      containerCleanupScript(runtime.name, args.id, remoteDir, true),
    ]));
    const ch = await session.channel(`sh -c ${shq(containerRestoreScript(runtime.name, args.id, remoteDir, ck.manifestExtra, flags))}`);
    let stdout = '';
    let stderr = '';
    let bytesSent = 0;
    ch.on('data', (b: Buffer) => (stdout += b.toString()));
    ch.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = new Promise<number | null>((r) => ch.on('exit', (code: number | null) => r(code)));
    const closed = new Promise<void>((r) => ch.on('close', () => r()));
    const counting = new Transform({ transform(chunk: Buffer, _e, cb) { bytesSent += chunk.length; cb(null, chunk); } });
    counting.pipe(ch);
    const code = await awaitRestore({
      send: () => packImage(imagesDir, [MANIFEST_NAME, ...names.filter((n) => n !== MANIFEST_NAME)], counting, 'none', true),
      exited,
      closed,
      lost: () => session.lost(),
      signal: w.signal,
      // No more of the image: the restore script there reads end of file, and its lifeline ends it.
      stop: async () => {
        counting.unpipe(ch);
        ch.close();
        await life.end();
      },
      reason: w.reason,
    });
    const pid = Number(/^pid=(\d+)$/m.exec(stdout)?.[1]);
    if (code !== 0 || !(pid > 0)) {
      const lines = stdout.split('\n').filter((l) => /^(rt|criu)=/.test(l)).map((l) => l.replace(/^(rt|criu)=/, '').replace(/^\(\s*\d+\.\d+\)\s*/, ''));
      const said = stderr.trim().split('\n').slice(-3).join(' | ');
      if (code === 97) throw new CedanaError('IMAGE_INVALID', `the image did not arrive intact on ${args.to}: ${said}`, { hint: 'a checksum failed after the transfer; the source was resumed' });
      if (code === 98) throw new CedanaError('TARGET_NO_SPACE', `the image could not be written on ${args.to}: ${said}`, { hint: 'free space there, or choose another --target-dir; the source was resumed' });
      if (code === 96) throw new CedanaError('ROOTFS_MISSING', `the root file system cannot be put in place on ${args.to}: ${said}`, { hint: 'the source was resumed; --rootfs sends the root file system (its changes need the base image there)' });
      if (code === 95) throw new CedanaError('FILE_CONFLICT', `the bundle could not be put in place on ${args.to}: ${said}`, { hint: 'something is in the way there (a non-empty overlay directory, a file where a directory goes); the source was resumed' });
      throw new CedanaError('TARGET_RESTORE_FAILED', `${runtime.name} restore failed on ${args.to} (exit ${code})${lines.length ? `:\n  ${lines.join('\n  ')}` : ''}`, { hint: 'the source was resumed; the target was cleaned up', details: { criuLines: lines } });
    }
    // The commit point: the container runs there (its lifeline lets it live on). Here it ends.
    await life.keep();
    committed = true;
    report.phase(`ending container ${args.id} here`);
    await runtime.destroy(args.id);
    await forgetRestoreBundle(state.bundle);
    const downtimeMs = Math.round(performance.now() - frozenAt);
    await session.exec(`rm -rf ${shq(remoteDir)}`).catch(() => undefined);
    return {
      command: 'migrate', container: args.id, runtime: runtime.name, target: args.to, targetPid: pid, processes: ck.facts.processes.length,
      downtimeMs, durationMs: Math.round(performance.now() - started), bytesSent, rootfs: ck.manifestExtra.rootfs.mode, decisions: ck.decisions.notes,
    };
  } catch (e) {
    const err = toCedanaError(e);
    if (!committed) {
      let clean = !remoteDir;
      if (remoteDir) {
        const script = containerCleanupScript(runtime.name, args.id, remoteDir, restoreStarted);
        clean = await undoOnTarget(session, args, async (t) => (await t.exec(script)).code === 0);
        err.details.targetCleanedUp = clean;
      }
      if (paused && !clean && restoreStarted) {
        // The container may be running there: resuming it here too would make two of it.
        err.details.sourceResumed = false;
        err.details.targetState = 'unknown';
        throw new CedanaError(err.code, `${err.message}\nthe target could not be reached to undo the restore there: container ${args.id} is left paused here`, {
          hint: `check ${args.to}: if ${args.id} does not run there, \`${runtime.name} resume ${args.id}\` here`,
          details: err.details,
          cause: err,
        });
      }
      await unlockNetwork?.().catch(() => undefined);
      if (paused) await runtime.resume(args.id).catch(() => undefined);
      err.details.sourceResumed = (await runtime.state(args.id))?.status === state.status;
    }
    throw err;
  } finally {
    w?.clear();
    report.stop();
    session.close();
    await rm(work, { recursive: true, force: true });
  }
}
