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
  try {
    report.phase(`preflight on ${args.to}`);
    const facts = await examineTree(args.pid);
    const decisions = decideDumpOptions(facts, { tcp: args.tcp, fileLocks: args.fileLocks, leaveRunning: false });
    const fp = await footprint(facts.processes.map((p) => p.pid));
    treePids = fp.pids;
    const host = await hostFacts();
    await execa(criu.path, ['cpuinfo', 'dump', '-D', work, '-o', join(work, 'cpuinfo.log')]);
    const target = await runPreflight(session, fp, args.targetDir, await readFile(join(work, 'cpuinfo.img')));
    judgePreflight(target, { target: args.to, arch: host.arch, localCriu: criu.version, footprint: fp, tcpEstablished: decisions.tcpEstablished });
    if (args.signal?.aborted) throw interrupted();

    remote = await makeRemoteDir(session, args.targetDir);
    const psPort = await startPageServer(session, remote);
    const bridge = await openPageChannel(session, psPort);
    const restoreFlags = restoreFlagArgs({ ...decisions, externalUnix: decisions.externalUnix.length > 0 });
    pending = await openRestore(session, remote, restoreFlags, target.networkLock ?? 'iptables');

    const images = join(work, 'img');
    await execa('mkdir', ['-m', '700', images]);
    const gate = await ActionGate.create(work, 'post-dump');
    const logFile = join(work, 'dump.log');
    const criuArgs = [
      ...buildDumpArgs(args.pid, decisions, { imagesDir: images, workDir: work, logFile, networkLock, actionScript: gate.script, leaveRunning: false }),
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
      const files = await checksumDir(images);
      memoryBytes = proxy.bytes();
      const manifest = makeManifest({ criuVersion: criu.version.text, host, pid: args.pid, facts, decisions, leaveRunning: false, networkLock, files, memoryBytes });
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
  if (session.isOpen && (await cleanupRemote(session, remote, kill))) return true;
  let fresh: SshSession;
  try {
    fresh = await SshSession.connect(args.to, { acceptNewHostKey: false, sshDir: args.sshDir, connectTimeoutMs: 5000 });
  } catch {
    return false;
  }
  try {
    return await cleanupRemote(fresh, remote, kill);
  } finally {
    fresh.close();
  }
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
