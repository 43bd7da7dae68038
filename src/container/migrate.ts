/**
 * `cedana migrate --container ID --to HOST`: the container paused here, checkpointed by its
 * runtime, restored there by the same runtime through SSH; resumed here on any failure.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type TcpMode } from '../criu/options.js';
import { locateCriu } from '../criu/criu.js';
import { CedanaError, toCedanaError } from '../errors.js';
import { hostFacts, requireRoot } from '../host.js';
import { checksumDirForTransfer, listImageFiles } from '../image/checksum.js';
import { MANIFEST_NAME, type ManifestContainer } from '../image/manifest.js';
import { makeManifest, pagesBytes } from '../dump/manifest.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { privateTempDir } from '../util/paths.js';
import { findContainer, type RuntimeName } from './runtime.js';
import { Transform } from 'node:stream';
import { SshSession, shq } from '../transport/ssh.js';
import { PREFLIGHT_TIMEOUT_MS, REMOTE_PATH } from '../migrate/preflight.js';
import { awaitRestore, Lifeline, lifeline, undoOnTarget, WAIT_R_GONE } from '../migrate/remote.js';
import { freezeTimeoutFor, frozenWindow, type FrozenWindow } from '../migrate/frozen.js';
import { packImage } from '../image/archive.js';
import { CHANGES_IMAGE, CONFIG_IMAGE, RESTORE_BUNDLES, RESTORE_CONFIG_IMAGE, ROOTFS_IMAGE, forgetRestoreBundle, overlayAt, readBundle, restoreConfig } from './bundle.js';
import { checkpointContainer, refuseTcpClose } from './checkpoint.js';

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

export const containerInterrupted = (): CedanaError =>
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
    const pre = parseContainerPreflight((await session.exec('sh -s', containerPreflightScript(runtime.name, args.id, state.bundle, bundle.rootfs, args.targetDir, overlay?.base), { timeoutMs: PREFLIGHT_TIMEOUT_MS, what: 'the preflight' })).stdout);
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
