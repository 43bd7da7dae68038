/**
 * What cedana runs on the target, over SSH, with only sh, coreutils, tar and CRIU there: a private
 * work directory, CRIU's page server, the metadata images (checked with sha256sum), the restore,
 * and the cleanup.
 */
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CedanaError } from '../errors.js';
import { shq, SshSession } from '../transport/ssh.js';
import type { ClientChannel } from 'ssh2';
import { REMOTE_PATH, REMOTE_STEP_TIMEOUT_MS } from './preflight.js';
import type { RemoteShell } from '../transport/remote-shell.js';
import { posix } from 'node:path';
import { destination, type ShippedEntry } from '../image/ship.js';
import type { PathMap } from '../image/remap.js';
import { locksLost, parseLostLocks } from '../image/file-locks.js';

export interface RemoteDir {
  dir: string;
  images: string;
}

export async function makeRemoteDir(s: SshSession, parent: string): Promise<RemoteDir> {
  const r = await s.exec(`umask 077; d=$(mktemp -d ${shq(`${parent}/cedana-migrate.XXXXXX`)}) && mkdir "$d/img" && echo "$d"`, undefined, { timeoutMs: REMOTE_STEP_TIMEOUT_MS, what: 'making the work directory' });
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
export async function startPageServer(s: SshSession, d: RemoteDir, round?: { into: string; prev?: string }, shell?: RemoteShell): Promise<number> {
  let last = '';
  const into = round ? `${d.dir}/${round.into}` : d.images;
  const prev = round?.prev ? ` --prev-images-dir ${shq(`../${round.prev}`)}` : '';
  for (let attempt = 0; attempt < 8; attempt++) {
    const port = randomInt(20000, 61000);
    const cmd = `${REMOTE_PATH}; rm -f ${shq(`${d.dir}/page-server.pid`)}; mkdir -p ${shq(into)} && criu page-server -D ${shq(into)} -W ${shq(d.dir)}${prev} --address 127.0.0.1 --port ${port} -d --pidfile ${shq(`${d.dir}/page-server.pid`)} -o ${shq(`${d.dir}/page-server.log`)} -v2`;
    const step = { timeoutMs: REMOTE_STEP_TIMEOUT_MS, what: 'starting criu page-server' };
    // Through the long-lived shell where there is one (each round's server): no login shell each time.
    const r = shell ? await shell.run(cmd, step) : await s.exec(cmd, undefined, step);
    if (r.code === 0) return port;
    last = r.stderr.trim() || `exit ${r.code}`;
  }
  throw new CedanaError('TARGET_UNSUPPORTED', `criu page-server does not start on ${s.target}: ${last}`, { hint: `see ${d.dir}/page-server.log there` });
}

/**
 * Removes the pre-copy rounds' directories there (pre-1, pre-2, …) once the final step will not use
 * them: their pages would otherwise sit in the target's memory (a tmpfs /var/tmp) beside the copy
 * the final step sends. Before the freeze, so it costs no downtime.
 */
export async function dropRounds(s: SshSession, d: RemoteDir): Promise<void> {
  const r = await s.exec(`rm -rf ${shq(d.dir)}/pre-*`, undefined, { timeoutMs: REMOTE_STEP_TIMEOUT_MS, what: 'removing the pre-copy rounds' });
  if (r.code !== 0) throw new CedanaError('TARGET_RESTORE_FAILED', `cannot remove the pre-copy rounds on ${s.target}: ${r.stderr.trim() || `exit ${r.code}`}`);
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
  /**
   * Sends the images and waits for the restore there. `signal` (an interrupt or the freeze deadline)
   * ends it at any point: the restore and anything it made there are ended first, then it throws
   * `onAbort()`'s error.
   */
  send(tar: (dest: NodeJS.WritableStream) => Promise<void>, signal?: AbortSignal, onAbort?: () => Error): Promise<RemoteRestore>;
  /** Ends the waiting command without restoring anything (it sees an empty archive). */
  cancel(): void;
  /**
   * After a restore that succeeded, before anything is committed: ends the restored tree there and
   * what the restore made, and waits (10 s at most) for the target to confirm. True once it did.
   */
  end(): Promise<boolean>;
  /**
   * The restored tree may live on: tells the target's lifeline before the source is ended. Resolves
   * once the target confirmed it; rejects if it could not (then nothing is committed).
   */
  keep(): Promise<void>;
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
/** …when the restore waited on a file lock held by someone else (the frozen source, on shared storage). */
const LOCK_BLOCKED = 94;
/** …when the restored tree did not hold all of its file locks again (locks-check.sh failed it). */
const LOCKS_LOST = 93;

/** How long a restoring task may wait on a file lock before the restore is ended (seconds). */
export const LOCK_WAIT_LIMIT_S = 2;

/**
 * Shell function `tree_of PID`: PID and every process below it (from /proc/[pid]/stat: the part
 * after the command's closing parenthesis holds the state, then the parent's PID).
 */
const TREE_OF =
  `tree_of() { for f in /proc/[0-9]*/stat; do cat "$f" 2>/dev/null; echo; done | awk -v r="$1" '$1 ~ /^[0-9]+$/ { s = $0; sub(/.*\\) /, "", s); split(s, a, " "); pp[$1] = a[2] } END { for (p in pp) { q = p; n = 0; while ((q in pp) && q != r && n++ < 4096) q = pp[q]; if (q == r) print p } }'; }`;

/** Shell, for a lifeline's undo: waits (5 s at most) for the process whose PID is in $r to be gone. */
export const WAIT_R_GONE = 'i=0; while [ -n "$r" ] && kill -0 "$r" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done';

/**
 * The target's restore ends with the session that started it: a second channel (the lifeline) reads
 * one line. `keep` lets what was restored live. `abort`, or the end of the stream — cedana ended it,
 * was killed, or the connection was lost — runs `undo`: end the restore and everything under it,
 * and whatever it made. Without it, a restore that outlives cedana (blocked on a lock, say) could
 * complete after the source was resumed: two copies. Pure.
 */
export function lifeline(undo: string[]): string {
  return [
    REMOTE_PATH,
    // A lost connection must not stop the undo: no SIGHUP, and writes to the gone channel fail quietly.
    "trap '' HUP PIPE",
    TREE_OF,
    'IFS= read -r cmd || cmd=lost',
    `if [ "$cmd" = keep ]; then echo kept 2>/dev/null; exit 0; fi`,
    ...undo,
    'echo ended 2>/dev/null',
  ].join('\n');
}

/** A process tree's lifeline: CRIU's restore and its tasks, the restored tree, the daemons, the placed files, the work directory. Pure. */
export function lifelineScript(d: RemoteDir, treePids: number[]): string {
  const f = (n: string): string => shq(`${d.dir}/${n}`);
  return lifeline([
    `c=$(cat ${f('restore-criu.pid')} 2>/dev/null); [ -n "$c" ] && kill -9 $(tree_of "$c") 2>/dev/null`,
    // The restore finished (its pidfile is written): the tree runs detached, under its own PIDs.
    `[ -s ${f('restored.pid')} ] && kill -9 ${treePids.join(' ')} 2>/dev/null`,
    ...['page-server.pid', 'lazy-pages.pid'].map((n) => `p=$(cat ${f(n)} 2>/dev/null) && kill "$p" 2>/dev/null`),
    // The restore script undoes its placed files when CRIU fails: let it finish first (5 s at most).
    `r=$(cat ${f('restore-sh.pid')} 2>/dev/null); ${WAIT_R_GONE}`,
    `${undoPlaced(d)}; rm -rf ${shq(d.dir)}`,
  ]);
}

/** The lifeline channel of a restore on the target (see `lifeline`). */
export class Lifeline {
  private out = '';
  private readonly closed: Promise<void>;

  private constructor(private readonly s: SshSession, private readonly ch: ClientChannel) {
    ch.on('data', (b: Buffer) => (this.out += b.toString()));
    this.closed = new Promise<void>((resolve) => ch.on('close', () => resolve()));
  }

  static async open(s: SshSession, script: string): Promise<Lifeline> {
    return new Lifeline(s, await s.channel(`sh -c ${shq(script)}`));
  }

  /** What was restored may live on; resolves once the target confirmed it (else nothing is committed). */
  async keep(): Promise<void> {
    this.ch.end('keep\n');
    await Promise.race([this.closed, this.s.lost()]);
    if (!this.out.includes('kept')) {
      throw new CedanaError('CONNECTION_LOST', `${this.s.target} did not confirm that the restored process may live on`, { hint: 'the source was resumed; the target ended its copy' });
    }
  }

  /** Ends the restore there and what it made, without waiting. */
  abort(): void {
    this.ch.end('abort\n');
  }

  /** Ends the restore there and what it made, and waits (10 s at most) for the target to say so; true once it did. */
  async end(): Promise<boolean> {
    this.abort();
    // Not ref'd: a wait cut short must not hold the process open for the rest of the 10 s.
    await Promise.race([this.closed, this.s.lost().catch(() => undefined), sleep(10_000, undefined, { ref: false })]);
    return this.out.includes('ended');
  }
}

/**
 * Shell lines that run CRIU's restore in the background and wait for it, while a watcher looks for
 * a restoring task (one of `treePids`) waiting to take a file lock: CRIU takes POSIX locks with
 * F_SETLKW and flock()s without LOCK_NB, so one held there — by the frozen source itself when the
 * file is on shared storage — blocks it forever. /proc/locks cannot show that wait when the holder
 * is in another PID namespace (it hides the holder's line, and its waiters with it), so the watcher
 * reads each task's current system call instead. After LOCK_WAIT_LIMIT_S it records the task, the
 * call and the file, and ends the restore, which then fails with LOCK_BLOCKED. Pure.
 */
export function restoreLines(d: RemoteDir, criuCmd: string, treePids: number[]): string[] {
  const f = (n: string): string => shq(`${d.dir}/${n}`);
  const polls = LOCK_WAIT_LIMIT_S * 5;
  // fcntl(fd, F_SETLKW = 7) or flock(fd, LOCK_SH/LOCK_EX without LOCK_NB), by the architecture's numbers.
  const blocked = `b=; for p in ${treePids.join(' ')}; do set -- $(cat /proc/$p/syscall 2>/dev/null); if { [ "$1" = "$FCNTL" ] && [ "$3" = 0x7 ]; } || { [ "$1" = "$FLOCK" ] && [ $(( $3 & 4 )) -eq 0 ]; }; then b="$p $1 $(readlink /proc/$p/fd/$(( $2 )))"; break; fi; done`;
  const watch = `case $(uname -m) in aarch64|arm64|riscv64) FCNTL=25 FLOCK=32;; *) FCNTL=72 FLOCK=73;; esac; n=0; while sleep 0.2; do ${blocked}; if [ -n "$b" ]; then n=$((n+1)); if [ $n -ge ${polls} ]; then echo "$b" > ${f('lock-blocked')}; kill -9 $(tree_of "$c") 2>/dev/null; exit 0; fi; else n=0; fi; done`;
  return [
    `${criuCmd} &`,
    'c=$!',
    `echo $c > ${f('restore-criu.pid')}`,
    // Its output goes nowhere: a sleep it leaves behind must not hold the channel open.
    `( ${watch} ) </dev/null >/dev/null 2>&1 &`,
    'w=$!',
    'wait $c; rc=$?',
    'kill $w 2>/dev/null',
    `if [ -s ${f('lock-blocked')} ]; then echo "lock=$(cat ${f('lock-blocked')})"; ${undoPlaced(d)}; exit ${LOCK_BLOCKED}; fi`,
  ];
}

/**
 * Sends an image into a restore channel on the target and waits for the restore's exit status.
 * Once `signal` fires — before, while sending, while restoring, or as it finished — the outcome is
 * the abort, whatever the restore did meanwhile: `stop` ends it there (and what it made) first, then
 * `reason()` is thrown. Process trees and containers alike.
 */
export async function awaitRestore(o: {
  send: () => Promise<void>;
  exited: Promise<number | null>;
  closed: Promise<void>;
  lost: () => Promise<never>;
  signal?: AbortSignal;
  stop: () => Promise<void>;
  reason: () => Error;
}): Promise<number | null> {
  let fire: () => void = () => undefined;
  const aborted = new Promise<'aborted'>((resolve) => {
    fire = () => resolve('aborted');
    if (o.signal?.aborted) fire();
    else o.signal?.addEventListener('abort', fire, { once: true });
  });
  const abort = async (): Promise<never> => {
    await o.stop();
    throw o.reason();
  };
  try {
    if ((await Promise.race([o.send().then(() => 'sent' as const), o.lost(), aborted])) === 'aborted') return await abort();
    const code = await Promise.race([o.exited, o.lost(), aborted]);
    if (code === 'aborted') return await abort();
    await Promise.race([o.closed, o.lost()]);
    if (o.signal?.aborted) return await abort();
    return code;
  } finally {
    o.signal?.removeEventListener('abort', fire);
  }
}

export interface RestoreOptions {
  /** The tree's PIDs: what the restore's tasks and the restored tree are called there. */
  treePids: number[];
  lazy?: LazyRestore;
}

export async function openRestore(s: SshSession, d: RemoteDir, criuFlags: string[], networkLock: string, opts: RestoreOptions): Promise<PendingRestore> {
  const { lazy, treePids } = opts;
  const log = `${d.dir}/restore.log`;
  const pidFile = `${d.dir}/restored.pid`;
  // Post-copy: the daemon that pulls the pages from the source starts first; the restore hands it
  // the restored tree's userfaultfds through a socket in the shared work directory.
  const daemon = lazy
    ? [
        `criu lazy-pages --page-server --address 127.0.0.1 --port ${lazy.port} --tls --tls-no-cn-verify --tls-cacert ${shq(`${d.images}/${lazy.ca}`)} --tls-cert ${shq(`${d.images}/${lazy.cert}`)} --tls-key ${shq(`${d.images}/${lazy.key}`)} -D ${shq(d.images)} -W ${shq(d.dir)} -o ${shq(`${d.dir}/lazy-pages.log`)} -v2 -d --pidfile ${shq(`${d.dir}/lazy-pages.pid`)} || { ${undoPlaced(d)}; exit ${LAZY_FAILED}; }`,
      ]
    : [];
  // The image may bring locks-check.sh (a post-restore check that every file lock is held again).
  const criuCmd = `criu restore -D ${shq(d.images)} -W ${shq(d.dir)} -o ${shq(log)} -v4 --network-lock ${networkLock} --restore-detached --pidfile ${shq(pidFile)} ${lazy ? '--lazy-pages ' : ''}\${check:+--action-script "$check"} ${criuFlags.map(shq).join(' ')}`;
  // The shipped files' placement is only known once the tree is frozen: it comes first in the
  // stream, as place.sh, and runs after every file has been checked.
  const script = [
    REMOTE_PATH,
    TREE_OF,
    `echo $$ > ${shq(`${d.dir}/restore-sh.pid`)}`,
    `cd ${shq(d.images)} || exit 99`,
    `tar -xf - || exit ${CHECKSUM_FAILED}`,
    `sha256sum -c --quiet --strict cedana.sha256 >&2 || exit ${CHECKSUM_FAILED}`,
    `if [ -f place.sh ]; then sh -e place.sh || { rc=$?; ${undoPlaced(d)}; exit $rc; }; fi`,
    ...daemon,
    `check=; if [ -f locks-check.sh ]; then chmod 700 locks-check.sh && check=${shq(`${d.images}/locks-check.sh`)}; fi`,
    ...restoreLines(d, criuCmd, treePids),
    `if [ $rc -ne 0 ] && [ -s lost-locks ]; then sed 's/^/lostlock=/' lost-locks; ${undoPlaced(d)}; exit ${LOCKS_LOST}; fi`,
    `if [ $rc -eq 0 ]; then echo "pid=$(cat ${shq(pidFile)})"; else grep -E '(Error|BUG) ' ${shq(log)} | grep -v RLIMIT_NOFILE | tail -n 8 | sed 's/^/criu=/'; ${undoPlaced(d)}; fi`,
    'exit $rc',
  ].join('\n');
  const life = await Lifeline.open(s, lifelineScript(d, treePids));
  const ch = await s.channel(`sh -c ${shq(script)}`);
  let stdout = '';
  let stderr = '';
  ch.on('data', (b: Buffer) => (stdout += b.toString()));
  ch.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => ch.on('exit', (code: number | null) => resolve(code)));
  const closed = new Promise<void>((resolve) => ch.on('close', () => resolve()));
  return {
    cancel: () => {
      ch.end();
      life.abort();
    },
    keep: () => life.keep(),
    end: () => life.end(),
    async send(tar, signal, onAbort) {
      const code = await awaitRestore({
        send: () => tar(ch),
        exited,
        closed,
        lost: () => s.lost(),
        signal,
        // No more of the images: the restore script there reads end of file; the lifeline ends it.
        stop: async () => {
          ch.close();
          await life.end();
        },
        reason: () => onAbort?.() ?? new CedanaError('INTERRUPTED', 'the restore on the target was ended'),
      });
      return outcome(code);
    },
  };

  function outcome(code: number | null): RemoteRestore {
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
    if (code === LOCK_BLOCKED) throw lockBlocked(s.target, stdout);
    if (code === LOCKS_LOST) throw locksLost(parseLostLocks([...stdout.matchAll(/^lostlock=(.*)$/gm)].map((m) => m[1]).join('\n')), `on ${s.target}`);
    const lines = stdout.split('\n').filter((l) => l.startsWith('criu=')).map((l) => l.slice(5).replace(/^\(\s*\d+\.\d+\)\s*/, ''));
    throw new CedanaError('TARGET_RESTORE_FAILED', `criu restore failed on ${s.target} (exit ${code})${lines.length ? `:\n  ${lines.join('\n  ')}` : ''}`, {
      hint: 'the source was resumed; the target was cleaned up',
      details: { criuLines: lines },
    });
  }
}

/** The error for a restore that waited on a lock someone holds there; stdout has `lock=PID SYSCALL PATH`. Pure. */
export function lockBlocked(target: string, stdout: string): CedanaError {
  const m = /^lock=(\d+) (\d+) ?(.*)$/m.exec(stdout);
  const path = m?.[3] || 'a file';
  const call = m && ['72', '25'].includes(m[2]!) ? 'POSIX lock (fcntl)' : 'flock';
  return new CedanaError('TARGET_LOCK_BLOCKED', `the restore on ${target} waited for a ${call} on ${path}, held there by another process, and was ended after ${LOCK_WAIT_LIMIT_S} s`, {
    hint: 'the holder is another process there, or the frozen source itself when the file is on storage both hosts see (NFS, a shared volume): a lock on a shared file cannot move while the source holds it. Stop the other holder, or checkpoint instead (cedana dump, then cedana restore there once the source has ended)',
    details: { file: m?.[3], pid: m ? Number(m[1]) : undefined },
  });
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
