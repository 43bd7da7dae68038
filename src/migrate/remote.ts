/**
 * What cedana runs on the target, over SSH, with only sh, coreutils, tar and CRIU there: a private
 * work directory, CRIU's page server, the metadata images (checked with sha256sum), the restore,
 * and the cleanup.
 */
import { randomInt } from 'node:crypto';
import { CedanaError } from '../errors.js';
import { shq, type SshSession } from '../transport/ssh.js';
import { REMOTE_PATH } from './preflight.js';

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

/** Starts `criu page-server` in the background on the target's loopback; returns its port. */
export async function startPageServer(s: SshSession, d: RemoteDir): Promise<number> {
  let last = '';
  for (let attempt = 0; attempt < 8; attempt++) {
    const port = randomInt(20000, 61000);
    const r = await s.exec(
      `${REMOTE_PATH}; criu page-server -D ${shq(d.images)} -W ${shq(d.dir)} --address 127.0.0.1 --port ${port} -d --pidfile ${shq(`${d.dir}/page-server.pid`)} -o ${shq(`${d.dir}/page-server.log`)} -v2`,
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
export async function openRestore(s: SshSession, d: RemoteDir, criuFlags: string[], networkLock: string): Promise<PendingRestore> {
  const log = `${d.dir}/restore.log`;
  const pidFile = `${d.dir}/restored.pid`;
  const script = [
    REMOTE_PATH,
    `cd ${shq(d.images)} || exit 99`,
    `tar -xf - || exit ${CHECKSUM_FAILED}`,
    `sha256sum -c --quiet --strict cedana.sha256 >&2 || exit ${CHECKSUM_FAILED}`,
    `criu restore -D ${shq(d.images)} -W ${shq(d.dir)} -o ${shq(log)} -v4 --network-lock ${networkLock} --restore-detached --pidfile ${shq(pidFile)} ${criuFlags.map(shq).join(' ')}`,
    'rc=$?',
    `if [ $rc -eq 0 ]; then echo "pid=$(cat ${shq(pidFile)})"; else grep -E '(Error|BUG) ' ${shq(log)} | grep -v RLIMIT_NOFILE | tail -n 8 | sed 's/^/criu=/'; fi`,
    'exit $rc',
  ].join('; ');
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

/** Best effort: stops the page server, ends restored PIDs (when asked) and removes the work directory. */
export async function cleanupRemote(s: SshSession, d: RemoteDir, killPids: number[] = []): Promise<boolean> {
  if (!s.isOpen) return false;
  const kill = killPids.length > 0 ? `kill -9 ${killPids.join(' ')} 2>/dev/null; ` : '';
  const r = await s
    .exec(`${kill}p=$(cat ${shq(`${d.dir}/page-server.pid`)} 2>/dev/null) && kill "$p" 2>/dev/null; rm -rf ${shq(d.dir)} && [ ! -e ${shq(d.dir)} ]`)
    .catch(() => undefined);
  return r?.code === 0;
}
