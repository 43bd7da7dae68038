/**
 * What cedana runs on the target, over SSH, with only sh, coreutils, tar and CRIU there: a private
 * work directory, CRIU's page server, the metadata images (checked with sha256sum), the restore,
 * and the cleanup.
 */
import { randomInt } from 'node:crypto';
import { CedanaError } from '../errors.js';
import { shq, SshSession } from '../transport/ssh.js';
import { REMOTE_PATH } from './preflight.js';
import { posix } from 'node:path';
import { destination, type ShippedEntry } from '../image/ship.js';
import type { PathMap } from '../image/remap.js';

export interface RemoteDir {
  dir: string;
  images: string;
}

export async function makeRemoteDir(s: SshSession, parent: string): Promise<RemoteDir> {
  const r = await s.exec(`umask 077; d=$(mktemp -d ${shq(`${parent}/cedana-migrate.XXXXXX`)}) && mkdir "$d/img" && echo "$d"`);
  const dir = r.stdout.trim();
  if (r.code !== 0 || !dir.startsWith('/')) {
    throw new CedanaError('TARGET_NO_SPACE', `cannot create a work directory in ${parent} on ${s.target}: ${r.stderr.trim()}`, { hint: 'choose another --target-dir' });
  }
  return { dir, images: `${dir}/img` };
}

/**
 * Starts `criu page-server` in the background on the target's loopback; returns its port. For a
 * pre-copy round, `into` names the round's directory (under the work directory; created) and `prev`
 * the one before, which CRIU links to as the parent of the pages it writes.
 */
export async function startPageServer(s: SshSession, d: RemoteDir, round?: { into: string; prev?: string }): Promise<number> {
  let last = '';
  const into = round ? `${d.dir}/${round.into}` : d.images;
  const prev = round?.prev ? ` --prev-images-dir ${shq(`../${round.prev}`)}` : '';
  for (let attempt = 0; attempt < 8; attempt++) {
    const port = randomInt(20000, 61000);
    const r = await s.exec(
      `${REMOTE_PATH}; rm -f ${shq(`${d.dir}/page-server.pid`)}; mkdir -p ${shq(into)} && criu page-server -D ${shq(into)} -W ${shq(d.dir)}${prev} --address 127.0.0.1 --port ${port} -d --pidfile ${shq(`${d.dir}/page-server.pid`)} -o ${shq(`${d.dir}/page-server.log`)} -v2`,
    );
    if (r.code === 0) return port;
    last = r.stderr.trim() || `exit ${r.code}`;
  }
  throw new CedanaError('TARGET_UNSUPPORTED', `criu page-server does not start on ${s.target}: ${last}`, { hint: `see ${d.dir}/page-server.log there` });
}

export interface RemoteRestore {
  pid: number;
}

/** Exit status of the remote script when the images do not match cedana.sha256. */
const CHECKSUM_FAILED = 98;
/** …when a shipped file cannot be put in place (something else is there). */
const PLACE_FAILED = 96;

/** The target's list of what it put in place, to undo after a failure. */
const placedList = (d: RemoteDir): string => `${d.dir}/placed`;

/** Shell that removes what the placement created, newest first. */
const undoPlaced = (d: RemoteDir): string =>
  `[ -f ${shq(placedList(d))} ] && tac ${shq(placedList(d))} | while IFS= read -r p; do if [ -d "$p" ]; then rmdir -- "$p"; else rm -f -- "$p"; fi; done; rm -f ${shq(placedList(d))}`;

const touchTime = (ms: number): string => `@${Math.floor(ms / 1000)}.${String(ms % 1000).padStart(3, '0')}`;

/**
 * Shell lines (run in the images directory) that put shipped entries in place at their destination
 * where nothing is, recording each one created: directories first, files through a temporary name
 * and a rename. Something else already there (another size, another kind) exits PLACE_FAILED. Pure.
 */
export function placementScript(entries: ShippedEntry[], maps: PathMap[], d: RemoteDir): string[] {
  const rec = shq(placedList(d));
  const lines: string[] = [];
  const dirs = entries.filter((e) => e.kind === 'dir').sort((a, b) => a.path.split('/').length - b.path.split('/').length);
  for (const e of dirs) {
    const to = shq(destination(e, maps));
    lines.push(
      `if [ ! -d ${to} ]; then { [ ! -e ${to} ] && mkdir -- ${to} && echo ${to} >> ${rec} && chown ${e.uid}:${e.gid} ${to} && chmod ${(e.mode & 0o7777).toString(8)} ${to}; } || { echo "cannot create the directory "${to} >&2; exit ${PLACE_FAILED}; }; fi`,
    );
  }
  for (const e of entries.filter((x) => x.kind === 'file')) {
    const dest = destination(e, maps);
    const to = shq(dest);
    const tmp = shq(`${posix.dirname(dest)}/.cedana-placing`);
    lines.push(
      `if [ -e ${to} ]; then { [ -f ${to} ] && [ "$(stat -c %s ${to})" = ${e.size} ]; } || { echo ${to}" exists there with another size or kind" >&2; exit ${PLACE_FAILED}; }; ` +
        `else { cp -- ${shq(e.image!)} ${tmp} && chown ${e.uid}:${e.gid} ${tmp} && chmod ${(e.mode & 0o7777).toString(8)} ${tmp} && touch -d ${touchTime(e.mtimeMs)} ${tmp} && mv -- ${tmp} ${to} && echo ${to} >> ${rec}; } || { rm -f -- ${tmp}; echo "cannot put "${to}" in place" >&2; exit ${PLACE_FAILED}; }; fi`,
    );
  }
  return lines;
}

/** A restore waiting on the target for its metadata images: `send` them and it runs, or `cancel` it. */
export interface PendingRestore {
  send(tar: (dest: NodeJS.WritableStream) => Promise<void>): Promise<RemoteRestore>;
  /** Ends the waiting command without restoring anything (it sees an empty archive). */
  cancel(): void;
}

/**
 * Starts, before the source is frozen, the command that will restore on the target: it waits for
 * the metadata images as a tar stream on stdin, checks them against cedana.sha256 there, and runs
 * CRIU. Starting it early keeps the remote shell's start-up (and the user's shell rc files, which
 * can take hundreds of milliseconds) out of the downtime.
 */
export interface LazyRestore {
  /** The target's loopback port that leads to the source's page server. */
  port: number;
  /** Image-relative names of the TLS CA, client certificate and key. */
  ca: string;
  cert: string;
  key: string;
}

/** Exit status of the remote script when the lazy-pages daemon does not start. */
const LAZY_FAILED = 95;

export async function openRestore(s: SshSession, d: RemoteDir, criuFlags: string[], networkLock: string, lazy?: LazyRestore): Promise<PendingRestore> {
  const log = `${d.dir}/restore.log`;
  const pidFile = `${d.dir}/restored.pid`;
  // Post-copy: the daemon that pulls the pages from the source starts first; the restore hands it
  // the restored tree's userfaultfds through a socket in the shared work directory.
  const daemon = lazy
    ? [
        `criu lazy-pages --page-server --address 127.0.0.1 --port ${lazy.port} --tls --tls-no-cn-verify --tls-cacert ${shq(`${d.images}/${lazy.ca}`)} --tls-cert ${shq(`${d.images}/${lazy.cert}`)} --tls-key ${shq(`${d.images}/${lazy.key}`)} -D ${shq(d.images)} -W ${shq(d.dir)} -o ${shq(`${d.dir}/lazy-pages.log`)} -v2 -d --pidfile ${shq(`${d.dir}/lazy-pages.pid`)} || { ${undoPlaced(d)}; exit ${LAZY_FAILED}; }`,
      ]
    : [];
  // The shipped files' placement is only known once the tree is frozen: it comes first in the
  // stream, as place.sh, and runs after every file has been checked.
  const script = [
    REMOTE_PATH,
    `cd ${shq(d.images)} || exit 99`,
    `tar -xf - || exit ${CHECKSUM_FAILED}`,
    `sha256sum -c --quiet --strict cedana.sha256 >&2 || exit ${CHECKSUM_FAILED}`,
    `if [ -f place.sh ]; then sh -e place.sh || { rc=$?; ${undoPlaced(d)}; exit $rc; }; fi`,
    ...daemon,
    `criu restore -D ${shq(d.images)} -W ${shq(d.dir)} -o ${shq(log)} -v4 --network-lock ${networkLock} --restore-detached --pidfile ${shq(pidFile)} ${lazy ? '--lazy-pages ' : ''}${criuFlags.map(shq).join(' ')}`,
    'rc=$?',
    `if [ $rc -eq 0 ]; then echo "pid=$(cat ${shq(pidFile)})"; else grep -E '(Error|BUG) ' ${shq(log)} | grep -v RLIMIT_NOFILE | tail -n 8 | sed 's/^/criu=/'; ${undoPlaced(d)}; fi`,
    'exit $rc',
  ].join('\n');
  const ch = await s.channel(`sh -c ${shq(script)}`);
  let stdout = '';
  let stderr = '';
  ch.on('data', (b: Buffer) => (stdout += b.toString()));
  ch.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => ch.on('exit', (code: number | null) => resolve(code)));
  const closed = new Promise<void>((resolve) => ch.on('close', () => resolve()));
  return {
    cancel: () => void ch.end(),
    async send(tar) {
      await Promise.race([tar(ch), s.lost()]);
      const code = await Promise.race([exited, s.lost()]);
      await Promise.race([closed, s.lost()]);
      const pid = Number(/^pid=(\d+)$/m.exec(stdout)?.[1]);
      if (code === 0 && pid > 0) return { pid };
      if (code === LAZY_FAILED) {
        throw new CedanaError('TARGET_RESTORE_FAILED', `criu lazy-pages does not start on ${s.target}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`, {
          hint: `see ${d.dir}/lazy-pages.log there; the source was resumed`,
        });
      }
      if (code === PLACE_FAILED) {
        throw new CedanaError('FILE_CONFLICT', `a file the process uses cannot be put in place on ${s.target}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`, {
          hint: 'something else is at that path there: move it away, or use --map-path OLD=NEW',
        });
      }
      if (code === CHECKSUM_FAILED) {
        throw new CedanaError('IMAGE_INVALID', `the images did not arrive intact on ${s.target}: ${stderr.trim().split('\n').slice(0, 5).join(' | ')}`, {
          hint: 'a checksum failed after the transfer: the link or the target disk corrupted data',
        });
      }
      const lines = stdout.split('\n').filter((l) => l.startsWith('criu=')).map((l) => l.slice(5).replace(/^\(\s*\d+\.\d+\)\s*/, ''));
      throw new CedanaError('TARGET_RESTORE_FAILED', `criu restore failed on ${s.target} (exit ${code})${lines.length ? `:\n  ${lines.join('\n  ')}` : ''}`, {
        hint: 'the source was resumed; the target was cleaned up',
        details: { criuLines: lines },
      });
    },
  };
}

/**
 * Best effort: stops the page server, ends restored PIDs (when asked), removes the files put in
 * place (after a failure: `undo`) and the work directory.
 */
export async function cleanupRemote(s: SshSession, d: RemoteDir, killPids: number[] = [], undo = false): Promise<boolean> {
  if (!s.isOpen) return false;
  const kill = killPids.length > 0 ? `kill -9 ${killPids.join(' ')} 2>/dev/null; ` : '';
  const unplace = undo ? `${undoPlaced(d)}; ` : '';
  const daemons = ['page-server.pid', 'lazy-pages.pid'].map((f) => `p=$(cat ${shq(`${d.dir}/${f}`)} 2>/dev/null) && kill "$p" 2>/dev/null; `).join('');
  const r = await s
    .exec(`${kill}${unplace}${daemons}rm -rf ${shq(d.dir)} && [ ! -e ${shq(d.dir)} ]`)
    .catch(() => undefined);
  return r?.code === 0;
}

/**
 * Runs an undo on the target: over the migration's own connection while it is open and the undo
 * works there, else once more over a fresh connection (the first may be what broke). True when an
 * undo reported success.
 */
export async function undoOnTarget(session: SshSession, dest: { to: string; sshDir?: string }, undo: (s: SshSession) => Promise<boolean>): Promise<boolean> {
  if (session.isOpen && (await undo(session).catch(() => false))) return true;
  let fresh: SshSession;
  try {
    fresh = await SshSession.connect(dest.to, { acceptNewHostKey: false, sshDir: dest.sshDir, connectTimeoutMs: 5000 });
  } catch {
    return false;
  }
  try {
    return await undo(fresh).catch(() => false);
  } finally {
    fresh.close();
  }
}
