/**
 * cedana migrate: moves a running process tree to another host over SSH, as a transaction.
 *
 * Preflight checks the target before anything is frozen. Then CRIU dumps with its pages sent
 * straight to a page server on the target (through an SSH channel: nothing of the memory is written
 * on the source's disk) and stops at the post-dump gate with the tree frozen. The small metadata
 * images follow as a tar stream, are checked against their sha256 there, and the target restores.
 * Only when the target confirms a running process is the gate committed and the source ended; any
 * failure or interrupt before that aborts the gate, CRIU resumes the source, and the target is
 * cleaned up.
 */
import { execa } from 'execa';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildDumpArgs, restoreFlagArgs, type TcpMode } from '../criu/options.js';
import { decideDumpOptions } from '../criu/options.js';
import { keepLog, locateCriu, networkLockBackend, spawnCriu } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { hostFacts, requireRoot } from '../host.js';
import { packImage } from '../image/archive.js';
import { checksumDir, listImageFiles } from '../image/checksum.js';
import { MANIFEST_NAME } from '../image/manifest.js';
import { processExists } from '../proc/procfs.js';
import { examineTree, validateTarget } from '../proc/tree.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { ActionGate } from '../criu/gate.js';
import { makeManifest } from '../dump/manifest.js';
import { footprint } from '../migrate/footprint.js';
import { releaseSourceLocks } from '../migrate/netlock.js';
import { openPageChannel, type PageBridge } from '../migrate/page-proxy.js';
import { judgePreflight, runPreflight } from '../migrate/preflight.js';
import { cleanupRemote, makeRemoteDir, openRestore, startPageServer, type PendingRestore, type RemoteDir } from '../migrate/remote.js';
import { SshSession } from '../transport/ssh.js';
import { addressOf, decideConnections, type Connection } from '../image/connections.js';
import { remapPath, writeRemappedImage, type PathMap, type PortMap } from '../image/remap.js';
import { copyShipped, deletedOpenFiles, describeShipped, ghostLimit, planShipping, shipCandidates, shippingNotes, type ShipPolicy } from '../image/ship.js';
import { placementScript } from '../migrate/remote.js';
import type { TcpSocket } from '../proc/sockets.js';
import { privateTempDir } from '../util/paths.js';

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
  /** Run with sh -c here at `pre-restore`, `post-restore` and, after a failure past pre-restore, `rollback` (CEDANA_HOOK). */
  hook?: string;
  reporter?: Reporter;
  signal?: AbortSignal;
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

  report.phase(`connecting to ${args.to}`);
  const session = await SshSession.connect(args.to, { acceptNewHostKey: args.acceptNewHostKey, sshDir: args.sshDir });
  const work = await privateTempDir('cedana-migrate-');
  let remote: RemoteDir | undefined;
  let proxy: PageBridge | undefined;
  let pending: PendingRestore | undefined;
  let committed = false;
  let restoredPid: number | undefined;
  let treePids: number[] = [];
  let shippedPaths: string[] = [];
  try {
    report.phase(`preflight on ${args.to}`);
    const facts = await examineTree(args.pid);
    const decisions = decideDumpOptions(facts, { tcp: args.tcp, fileLocks: args.fileLocks, leaveRunning: false });
    const pids = facts.processes.map((p) => p.pid);
    const fp = await footprint(pids);
    treePids = fp.pids;
    const maps = args.mapPaths ?? [];
    const ports = args.mapPorts ?? [];
    const policy = args.ship ?? 'auto';
    const ghost = ghostLimit(await deletedOpenFiles(pids), policy);
    const cands = await shipCandidates(pids);
    const dest = (p: string): string => remapPath(p, maps) ?? p;
    const listening = checkPortMaps(facts.tcp, ports);
    const host = await hostFacts();
    await execa(criu.path, ['cpuinfo', 'dump', '-D', work, '-o', join(work, 'cpuinfo.log')]);
    const target = await runPreflight(session, fp, args.targetDir, await readFile(join(work, 'cpuinfo.img')), {
      paths: fp.paths.map(dest),
      sized: cands.filter((c) => c.kind === 'file' && remapPath(c.path, maps) !== undefined).map((c) => ({ path: dest(c.path), size: c.size })),
    });
    const missing = new Set(target.missingPaths);
    const plan = planShipping(cands.filter((c) => missing.has(dest(c.path))), policy);
    const conns: Connection[] = facts.tcp.filter((t) => t.state === 'ESTABLISHED').map((t) => ({ ino: t.inode, local: t.local, remote: t.remote }));
    const tcpPlan = decideConnections(conns, {
      mode: args.tcp, addresses: target.addresses && new Set(target.addresses), moving: true, where: `on ${args.to}`, hook: !!args.hook,
    });
    judgePreflight(target, {
      target: args.to, arch: host.arch, localCriu: criu.version, footprint: fp, tcpEstablished: tcpPlan.keep.length > 0,
      shipping: plan.ship.map((c) => dest(c.path)), listening,
    });
    decisions.notes.push(...tcpPlan.notes, ...shippingNotes({ ship: plan.ship, left: [] }));
    if (plan.ship.length > 0) report.phase(`will ship to ${args.to}: ${plan.ship.slice(0, 3).map(describeShipped).join(', ')}${plan.ship.length > 3 ? ` and ${plan.ship.length - 3} more` : ''}`);
    // --tcp-close: CRIU's own (reads see EOF). Decided per connection: those sockets are rewritten as
    // unconnected ones (reads fail with ENOTCONN, as after a reset).
    const closeAll = args.tcp === 'close';
    const closeSome = closeAll ? new Set<number>() : new Set(tcpPlan.close.map((c) => c.ino));
    if (args.signal?.aborted) throw interrupted();

    remote = await makeRemoteDir(session, args.targetDir);
    const psPort = await startPageServer(session, remote);
    const bridge = await openPageChannel(session, psPort);
    const restoreFlags = restoreFlagArgs({ ...decisions, tcpEstablished: tcpPlan.keep.length > 0, tcpClose: closeAll, externalUnix: decisions.externalUnix.length > 0 });
    pending = await openRestore(session, remote, restoreFlags, target.networkLock ?? 'iptables');

    const images = join(work, 'img');
    await execa('mkdir', ['-m', '700', images]);
    const gate = await ActionGate.create(work, 'post-dump');
    const logFile = join(work, 'dump.log');
    const criuArgs = [
      ...buildDumpArgs(args.pid, decisions, { imagesDir: images, workDir: work, logFile, networkLock, actionScript: gate.script, leaveRunning: false, ghostLimit: ghost }),
      '--page-server', '--ps-socket', '3',
    ];
    const frozenAt = performance.now();
    report.phase(`freezing ${facts.processes.length} process(es) and sending memory`);
    const run = spawnCriu(criu, criuArgs, { logFile, label: `migrate-${args.pid}`, pageServerSocket: true });
    proxy = bridge(run.psSocket!);
    const ticker = progressTicker(report, proxy, fp.rssBytes);
    // An interrupt or a dead link while CRIU streams pages: cut the page stream; CRIU then fails and resumes the tree.
    const onAbort = (): void => proxy?.close();
    args.signal?.addEventListener('abort', onAbort, { once: true });
    let event: 'ready' | 'exited';
    try {
      event = await Promise.race([gate.waitReady(run.done), session.lost(), proxy.failed]);
    } catch (e) {
      proxy.close();
      await gate.abortAndWait(run.done);
      throw e;
    } finally {
      clearInterval(ticker);
      args.signal?.removeEventListener('abort', onAbort);
    }
    if (event === 'exited') {
      await run.done.catch((e: unknown) => {
        throw args.signal?.aborted ? interrupted() : e;
      });
      throw new CedanaError('CRIU_FAILED', 'criu dump exited before its post-dump step', { hint: `log: ${await keepLog(logFile, `migrate-${args.pid}`)}` });
    }

    // The tree is frozen here, and stays so until commit or abort.
    let downtimeMs: number;
    let memoryBytes: number;
    let hookRan = false;
    try {
      if (args.signal?.aborted) throw interrupted();
      if (args.hook) {
        report.phase('running the pre-restore hook');
        hookRan = true;
        await runHook(args, 'pre-restore');
      }
      // Copied while frozen, so they match the offsets CRIU recorded; placed there before CRIU runs.
      const shipped = await copyShipped(plan.ship, images);
      shippedPaths = shipped.filter((e) => plan.ship.some((c) => c.path === e.path)).map((e) => e.path);
      if (shipped.length > 0) await writeFile(join(images, 'place.sh'), `${placementScript(shipped, maps, remote).join('\n')}\n`, { mode: 0o600 });
      // The target's paths were checked in preflight; the image is rewritten in place (a transient copy).
      if (maps.length + ports.length + closeSome.size > 0) await writeRemappedImage(images, undefined, maps, ports, closeSome, () => true);
      const files = await checksumDir(images);
      memoryBytes = proxy.bytes();
      const manifest = makeManifest({ criuVersion: criu.version.text, host, pid: args.pid, facts, decisions, leaveRunning: false, networkLock, files, memoryBytes, shipped });
      await writeFile(join(images, MANIFEST_NAME), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
      const sums = Object.entries(files).map(([name, f]) => `${f.sha256}  ${name}\n`).join('');
      await writeFile(join(images, 'cedana.sha256'), sums, { mode: 0o600 });
      const names = (await listImageFiles(images)).files;
      const ordered = [MANIFEST_NAME, ...names.filter((n) => n !== MANIFEST_NAME)];
      report.phase(`sending the metadata and restoring on ${args.to}`);
      // Not abortable: once CRIU restores there, cedana must know the outcome to undo it.
      const restored = await pending.send((dest) => packImage(images, ordered, dest as never, 'none', true));
      restoredPid = restored.pid;
      if (args.hook) {
        report.phase('running the post-restore hook');
        await runHook(args, 'post-restore');
      }
      downtimeMs = Math.round(performance.now() - frozenAt);
      // An interrupt that came while the target restored still wins: nothing is committed yet.
      if (args.signal?.aborted) throw interrupted();
    } catch (e) {
      // The rollback hook runs before the source resumes: what pre-restore moved must be back first.
      if (hookRan) await runHook(args, 'rollback').catch(() => undefined);
      await gate.abortAndWait(run.done);
      throw e;
    }
    await gate.commit();
    committed = true;
    report.phase('ending the source');
    await run.done;
    // The connections live on the target now: lift the lock CRIU left on them here.
    if (decisions.tcpEstablished) await releaseSourceLocks(facts.tcp.filter((t) => t.state === 'ESTABLISHED'));
    if (process.env.CEDANA_KEEP_LOGS) await keepLog(logFile, `migrate-${args.pid}`);
    return {
      command: 'migrate',
      pid: args.pid,
      target: args.to,
      targetPid: restoredPid,
      processes: facts.processes.length,
      downtimeMs,
      durationMs: Math.round(performance.now() - started),
      bytesSent: memoryBytes + (await imagesSize(images)),
      memoryBytes,
      decisions: decisions.notes,
      shipped: shippedPaths,
    };
  } catch (e) {
    const err = toCedanaError(e);
    if (!committed) {
      if (!restoredPid) pending?.cancel();
      err.details.sourceResumed = await processExists(args.pid);
      if (remote) err.details.targetCleanedUp = await cleanUpAfterFailure(session, remote, restoredPid ? treePids : [], args);
    }
    throw err;
  } finally {
    report.stop();
    proxy?.close();
    if (committed && remote) await cleanupRemote(session, remote);
    session.close();
    await rm(work, { recursive: true, force: true });
  }
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

/** Cleans the target after a failure, over a new connection if the first one is gone. */
async function cleanUpAfterFailure(session: SshSession, remote: RemoteDir, kill: number[], args: MigrateArgs): Promise<boolean> {
  if (session.isOpen && (await cleanupRemote(session, remote, kill, true))) return true;
  let fresh: SshSession;
  try {
    fresh = await SshSession.connect(args.to, { acceptNewHostKey: false, sshDir: args.sshDir, connectTimeoutMs: 5000 });
  } catch {
    return false;
  }
  try {
    return await cleanupRemote(fresh, remote, kill, true);
  } finally {
    fresh.close();
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

function progressTicker(report: Reporter, proxy: PageBridge, total: number): NodeJS.Timeout {
  const t0 = performance.now();
  return setInterval(() => {
    const bytes = proxy.bytes();
    const secs = (performance.now() - t0) / 1000;
    const rate = secs > 0 ? bytes / secs : 0;
    report.progress({
      phase: 'memory',
      bytes,
      totalBytes: total,
      bytesPerSec: Math.round(rate),
      etaMs: rate > 0 && total > bytes ? Math.round(((total - bytes) / rate) * 1000) : undefined,
    });
  }, 250);
}
