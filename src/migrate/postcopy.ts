/**
 * What post-copy migration needs besides the stop-and-copy path: CRIU's lazy pages. The source's
 * CRIU dumps everything but the anonymous memory and then serves those pages on demand; the target's
 * `criu lazy-pages` daemon pulls them (on page faults through userfaultfd, and in the background)
 * while the restored tree already runs there.
 *
 * CRIU serves them on a loopback TCP port of the source (it cannot use a socket it is given: the
 * descriptor is reused by the time it serves). Any local process could connect there, so the page
 * stream is TLS with an ephemeral CA made for this migration: only the target's daemon, holding the
 * client key shipped to it inside the SSH connection, is served. A stranger connecting first makes
 * the transfer fail before the target runs — and the source then resumes, nothing lost.
 */
import { chmod, readFile } from 'node:fs/promises';
import { createServer, connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { ClientChannel } from 'ssh2';
import { CedanaError } from '../errors.js';
import { hasCap, readCapEff } from '../proc/caps.js';
import type { SshSession } from '../transport/ssh.js';

/** CRIU's lazy page server tee()s up to 4 MiB at once into a pipe it sizes with F_SETPIPE_SZ. */
export const LAZY_PIPE_BYTES = 4 * 1024 * 1024;

/** Whether CRIU can size its pipes for lazy pages here: CAP_SYS_RESOURCE, or fs.pipe-max-size ≥ 4 MiB. Pure. */
export function lazyPipesOk(capEffHex: string, pipeMaxSize: number): boolean {
  return hasCap(capEffHex, 'CAP_SYS_RESOURCE') || pipeMaxSize >= LAZY_PIPE_BYTES;
}

/** Refuses post-copy on a source where CRIU's lazy page server would fail mid-way. */
export async function checkLazySource(): Promise<void> {
  const capEff = await readCapEff();
  const pipeMax = Number((await readFile('/proc/sys/fs/pipe-max-size', 'utf8').catch(() => '0')).trim());
  if (!lazyPipesOk(capEff, pipeMax)) {
    throw new CedanaError('HOST_UNSUPPORTED', `post-copy: CRIU needs ${LAZY_PIPE_BYTES} bytes pipes for lazy pages, but fs.pipe-max-size is ${pipeMax} and cedana runs without CAP_SYS_RESOURCE`, {
      hint: `raise it: sysctl -w fs.pipe-max-size=${LAZY_PIPE_BYTES} (scripts/setup does, persistently)`,
    });
  }
}

export interface TlsMaterial {
  /** Arguments for the source's `criu dump --lazy-pages`. */
  serverArgs: string[];
  /** Files (name → path) the target's daemon needs, to ship with the images. */
  clientFiles: { ca: string; cert: string; key: string };
}

/** An ephemeral CA, a server and a client certificate (P-256, one day), in dir (0600). */
export async function makeTls(dir: string): Promise<TlsMaterial> {
  const p = (n: string): string => join(dir, n);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  const { execa } = await import('execa'); // loaded only here: `cedana check` imports this module too
  try {
    await execa('openssl', ['req', '-x509', ...ec, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-subj', '/CN=cedana-migration-ca', '-days', '1']);
    for (const n of ['server', 'client']) {
      await execa('openssl', ['req', ...ec, '-keyout', p(`${n}.key`), '-out', p(`${n}.csr`), '-subj', `/CN=cedana-${n}`]);
      await execa('openssl', ['x509', '-req', '-in', p(`${n}.csr`), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-set_serial', String(Date.now()), '-out', p(`${n}.pem`), '-days', '1']);
    }
  } catch (e) {
    throw new CedanaError('HOST_UNSUPPORTED', `post-copy: cannot make the page stream's TLS certificates with openssl: ${(e as Error).message.split('\n')[0]}`, {
      hint: 'install openssl (scripts/setup does)',
    });
  }
  for (const n of ['ca.key', 'server.key', 'client.key']) await chmod(p(n), 0o600);
  return {
    serverArgs: ['--tls', '--tls-no-cn-verify', '--tls-cacert', p('ca.pem'), '--tls-cert', p('server.pem'), '--tls-key', p('server.key')],
    clientFiles: { ca: p('ca.pem'), cert: p('client.pem'), key: p('client.key') },
  };
}

/** A free TCP port on the source's loopback for CRIU's page server. */
export async function freeLoopbackPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(0, '127.0.0.1', resolve));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/**
 * Measures what the link carries in its steady state: a new SSH channel (and TCP connection) starts
 * slowly while its windows grow — 32 MiB on a cold one measured 62–242 MB/s on a link that carries
 * 400–600 MB/s warm. So `warm` bytes go first, untimed; the target says when it has them all
 * (`head` ends), and the `bytes` after that are timed to the target's `done`. Returns bytes per second.
 */
export async function measureThroughput(session: SshSession, bytes = 64 * 1024 * 1024, warm = 32 * 1024 * 1024): Promise<number> {
  const ch = await session.channel(`echo ready; head -c ${warm} > /dev/null; echo warm; cat > /dev/null; echo done`);
  let out = '';
  ch.on('data', (d: Buffer) => (out += d.toString()));
  const closed = new Promise<void>((resolve) => ch.on('close', () => resolve()));
  const seen = async (word: string): Promise<number> => {
    for (;;) {
      if (out.includes(word)) return performance.now();
      const more = new Promise<'data'>((resolve) => ch.once('data', () => resolve('data')));
      if ((await Promise.race([more, closed.then(() => 'closed' as const), session.lost()])) === 'closed' && !out.includes(word)) {
        throw new CedanaError('SSH_FAILED', `the throughput check on ${session.target} ended early`);
      }
    }
  };
  await seen('ready');
  const chunk = Buffer.alloc(1024 * 1024, 0x5a);
  // The writer streams warm + bytes without pause; the clock starts when the target has the warm part.
  const writing = (async (): Promise<void> => {
    for (let sent = 0; sent < warm + bytes; sent += chunk.length) {
      if (!ch.write(chunk)) await new Promise<void>((resolve) => ch.once('drain', () => resolve()));
    }
    ch.end();
  })();
  const t0 = await seen('warm');
  const t1 = await seen('done');
  await writing;
  return bytes / Math.max((t1 - t0) / 1000, 1e-6);
}

export interface LazyBridge {
  /** Page bytes served to the target so far. */
  bytes(): number;
  /** Whether the target's daemon has connected. */
  connected(): boolean;
  /** Rejects when a bridged connection fails mid-way. */
  failed: Promise<never>;
  /** Cuts every connection. Before CRIU served a page, it makes CRIU fail (and resume the source). */
  close(): Promise<void>;
  port: number;
}

/**
 * The target's loopback port F (sshd's remote forwarding) leads to CRIU's page server on this
 * host's port `criuPort`: each forwarded connection is piped to a new local connection.
 */
export async function bridgeLazyPages(session: SshSession, criuPort: number): Promise<LazyBridge> {
  let bytes = 0;
  let connected = false;
  const open: { ch: ClientChannel; sock?: Socket }[] = [];
  let fail: (e: Error) => void = () => undefined;
  const failed = new Promise<never>((_, reject) => (fail = reject));
  failed.catch(() => undefined);
  const fwd = await session.forwardIn((ch) => {
    connected = true;
    const entry: { ch: ClientChannel; sock?: Socket } = { ch };
    open.push(entry);
    void connectRetry(criuPort, 3000).then(
      (sock) => {
        entry.sock = sock;
        sock.setNoDelay(true);
        sock.on('data', (d: Buffer) => {
          bytes += d.length;
          if (!ch.write(d)) {
            sock.pause();
            ch.once('drain', () => sock.resume());
          }
        });
        ch.on('data', (d: Buffer) => sock.write(d));
        sock.on('end', () => ch.end());
        ch.on('end', () => sock.end());
        sock.on('error', (e) => {
          ch.destroy();
          fail(e);
        });
        ch.on('error', (e: Error) => {
          sock.destroy();
          fail(e);
        });
      },
      (e: Error) => {
        ch.destroy();
        fail(e);
      },
    );
  });
  return {
    port: fwd.port,
    bytes: () => bytes,
    connected: () => connected,
    failed,
    async close() {
      fwd.close();
      for (const { ch, sock } of open) {
        sock?.destroy();
        ch.destroy();
      }
      if (!connected) {
        // CRIU still waits in accept(): a connection that fails its TLS handshake ends its wait.
        const s = await connectRetry(criuPort, 500).catch(() => undefined);
        s?.destroy();
      }
    },
  };
}

async function connectRetry(port: number, withinMs: number): Promise<Socket> {
  const deadline = performance.now() + withinMs;
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(port, '127.0.0.1');
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (performance.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}
