/**
 * Carries CRIU's page-server connection through SSH: CRIU dumps to a local TCP port (loopback,
 * ephemeral); each connection is piped into a direct-tcpip channel to the page server that listens
 * on the target's loopback. No image pages touch the source's disk. Bytes are counted for progress.
 */
import { createServer, type Server, type Socket } from 'node:net';
import type { SshSession } from '../transport/ssh.js';

export interface PageProxy {
  port: number;
  bytes(): number;
  /** Rejects when a forwarded channel fails (the dump then fails and the source resumes). */
  failed: Promise<never>;
  close(): void;
}

export async function startPageProxy(session: SshSession, remotePort: number): Promise<PageProxy> {
  let bytes = 0;
  let fail: (e: Error) => void = () => undefined;
  const failed = new Promise<never>((_, reject) => (fail = reject));
  failed.catch(() => undefined);
  const sockets = new Set<Socket>();
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.setNoDelay(true);
    sock.on('close', () => sockets.delete(sock));
    sock.pause();
    session.forwardOut('127.0.0.1', remotePort).then(
      (ch) => {
        sock.on('data', (d: Buffer) => {
          bytes += d.length;
          if (!ch.write(d)) {
            sock.pause();
            ch.once('drain', () => sock.resume());
          }
        });
        sock.on('end', () => ch.end());
        sock.on('error', () => ch.destroy());
        ch.on('data', (d: Buffer) => sock.write(d));
        ch.on('close', () => sock.destroy());
        sock.resume();
      },
      (e: Error) => {
        sock.destroy();
        fail(e);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const addr = server.address();
  if (!addr || typeof addr === 'string') throw new Error('page proxy has no port');
  return {
    port: addr.port,
    bytes: () => bytes,
    failed,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}
