/**
 * Carries CRIU's page-server stream through SSH: CRIU writes to a unix socket cedana gave it
 * (`--ps-socket`), and cedana pipes it into a direct-tcpip channel to the page server listening on
 * the target's loopback. No image pages touch the source's disk. Bytes are counted for progress.
 */
import type { Duplex } from 'node:stream';
import type { SshSession } from '../transport/ssh.js';

export interface PageBridge {
  bytes(): number;
  /** Rejects when the channel fails (the dump then fails and the source resumes). */
  failed: Promise<never>;
  /** Cuts the stream: CRIU sees its page server gone, fails, and resumes the tree. */
  close(): void;
}

/** Opens the channel to the target's page server; returns a function that bridges CRIU's socket to it. */
export async function openPageChannel(session: SshSession, remotePort: number): Promise<(local: Duplex) => PageBridge> {
  const ch = await session.forwardOut('127.0.0.1', remotePort);
  return (local) => {
    let bytes = 0;
    let fail: (e: Error) => void = () => undefined;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    failed.catch(() => undefined);
    local.on('data', (d: Buffer) => {
      bytes += d.length;
      if (!ch.write(d)) {
        local.pause();
        ch.once('drain', () => local.resume());
      }
    });
    local.on('end', () => ch.end());
    local.on('error', () => ch.destroy());
    ch.on('data', (d: Buffer) => local.write(d));
    ch.on('error', (e: Error) => fail(e));
    ch.on('close', () => local.destroy());
    return {
      bytes: () => bytes,
      failed,
      close() {
        local.destroy();
        ch.destroy();
      },
    };
  };
}
