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

/** Unpacks the metadata images (a tar stream) and checks them against cedana.sha256 there. */
export async function sendImages(s: SshSession, d: RemoteDir, tar: (dest: NodeJS.WritableStream & { end(): void }) => Promise<void>): Promise<void> {
  const ch = await s.channel(`${REMOTE_PATH}; cd ${shq(d.images)} && tar -xf - && sha256sum -c --quiet --strict cedana.sha256`);
  let stderr = '';
  ch.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exited = new Promise<number | null>((resolve) => ch.on('exit', (code: number | null) => resolve(code)));
  const closed = new Promise<void>((resolve) => ch.on('close', () => resolve()));
  ch.on('data', () => undefined);
  await Promise.race([tar(ch as unknown as NodeJS.WritableStream & { end(): void }), s.lost()]);
  const code = await Promise.race([exited, s.lost()]);
  await closed;
  if (code !== 0) {
    throw new CedanaError('IMAGE_INVALID', `the images did not arrive intact on ${s.target}: ${stderr.trim().split('\n').slice(0, 5).join(' | ') || `exit ${code}`}`, {
      hint: 'a checksum failed after the transfer: the link or the target disk corrupted data',
    });
  }
}

export interface RemoteRestore {
  pid: number;
}

export async function restoreRemote(s: SshSession, d: RemoteDir, criuFlags: string[], networkLock: string): Promise<RemoteRestore> {
  const script = [
    REMOTE_PATH,
    `cd ${shq(d.dir)} || exit 99`,
    `criu restore -D ${shq(d.images)} -W ${shq(d.dir)} -o ${shq(`${d.dir}/restore.log`)} -v4 --network-lock ${networkLock} --restore-detached --pidfile ${shq(`${d.dir}/restored.pid`)} ${criuFlags.map(shq).join(' ')}`,
    'rc=$?',
    `if [ $rc -eq 0 ]; then echo "pid=$(cat ${shq(`${d.dir}/restored.pid`)})"; else grep -E '(Error|BUG) ' ${shq(`${d.dir}/restore.log`)} | grep -v RLIMIT_NOFILE | tail -n 8 | sed 's/^/criu=/'; fi`,
    'exit $rc',
  ].join('\n');
  const r = await s.exec('sh -s', script);
  const pid = Number(/^pid=(\d+)$/m.exec(r.stdout)?.[1]);
  if (r.code === 0 && pid > 0) return { pid };
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('criu=')).map((l) => l.slice(5).replace(/^\(\s*\d+\.\d+\)\s*/, ''));
  throw new CedanaError('TARGET_RESTORE_FAILED', `criu restore failed on ${s.target} (exit ${r.code ?? r.signal})${lines.length ? `:\n  ${lines.join('\n  ')}` : ''}`, {
    hint: `the source was resumed; the target's log was ${d.dir}/restore.log (removed with the work directory)`,
    details: { criuLines: lines },
  });
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
