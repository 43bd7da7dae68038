/**
 * Carries CRIU's page-server stream through SSH: CRIU writes to a unix socket cedana gave it
 * (`--ps-socket`), and cedana pipes it into a direct-tcpip channel to the page server listening on
 * the target's loopback. No image pages touch the source's disk. Bytes are counted for progress.
 */
import { mkdtemp } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { CedanaError } from '../errors.js';
import { OpenSshLink } from '../transport/openssh.js';
import type { SshSession } from '../transport/ssh.js';

export interface PageBridge {
  bytes(): number;
  /** bytes(), exact once the stream has ended (where counting is not done here: OpenSSH). */
  settle?(): Promise<number>;
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

/** --transport: which SSH client carries the page streams. */
export type Transport = 'auto' | 'openssh' | 'ssh2';

/** How CRIU's page stream reaches a page server on the target. */
export interface CriuPageStream {
  /** CRIU's arguments for it. */
  args: string[];
  /** spawnCriu's options for it. */
  spawn: { pageServerSocket: true } | { stdinSocket: Socket };
  /** Once CRIU runs: the bridge (progress, failure, cut). */
  attach(run: { psSocket?: Duplex }): PageBridge;
}

/** The page streams of one migration: every stream to a page server on the target goes through here. */
export interface PageLinks {
  via: 'openssh' | 'ssh2';
  /** Why this client (a decision line). */
  note: string;
  /** A stream to 127.0.0.1:port on the target for cedana's own page-server client and proxy. */
  open(port: number): Promise<Duplex>;
  /** CRIU's own page stream to 127.0.0.1:port on the target. */
  forCriu(port: number): Promise<CriuPageStream>;
  close(): Promise<void>;
}

function ssh2Links(session: SshSession, note: string): PageLinks {
  return {
    via: 'ssh2',
    note,
    open: (port) => session.forwardOut('127.0.0.1', port),
    async forCriu(port) {
      const bridge = await openPageChannel(session, port);
      return { args: ['--page-server', '--ps-socket', '3'], spawn: { pageServerSocket: true }, attach: (run) => bridge(run.psSocket!) };
    },
    close: async () => undefined,
  };
}

function opensshLinks(link: OpenSshLink, note: string): PageLinks {
  return {
    via: 'openssh',
    note,
    async open(port) {
      const s = link.stream('127.0.0.1', port);
      // A failed OpenSSH ends the socket: the page-server client sees the stream end early and fails.
      s.done.catch((e: Error) => s.socket.destroy(e));
      return s.socket;
    },
    async forCriu(port) {
      const s = link.stream('127.0.0.1', port);
      // CRIU gets the socket as its fd 0 (given blocking, as its page-server writes expect) and
      // writes into OpenSSH directly; cedana's copy is closed once CRIU has it (spawnCriu).
      return {
        args: ['--page-server', '--ps-socket', '0'],
        spawn: { stdinSocket: s.socket },
        attach: () => ({
          bytes: () => s.bytes(),
          settle: () => s.settle(),
          failed: s.done.then(() => new Promise<never>(() => undefined)),
          close: () => s.kill(),
        }),
      };
    },
    close: () => link.close(),
  };
}

/**
 * Chooses and opens the client for the page streams: OpenSSH's `ssh -W` through one ControlMaster
 * connection pinned to the host key the session verified (src/transport/openssh.ts), or ssh2's
 * forwarded channels. `auto` takes OpenSSH where it is installed and connects, else ssh2; a second
 * connection answered with another host key is refused in every mode.
 */
export async function openPageLinks(session: SshSession, dir: string, transport: Transport, label: string): Promise<PageLinks> {
  if (transport === 'ssh2') return ssh2Links(session, 'page streams: ssh2 (--transport ssh2)');
  const refuse = (why: string, code: 'USAGE' | 'SSH_FAILED' = 'USAGE'): never => {
    throw new CedanaError(code, `--transport openssh: ${why}`, { hint: 'use --transport auto (OpenSSH where it can, else ssh2) or ssh2' });
  };
  if (!session.direct) {
    if (transport === 'openssh') refuse('the session goes through a jump host (ProxyJump), which only ssh2 follows here');
    return ssh2Links(session, 'page streams: ssh2 (the target is reached through a jump host)');
  }
  try {
    const link = await OpenSshLink.open(session.direct, await mkdtemp(join(dir, 'openssh-')), label);
    return opensshLinks(link, 'page streams: OpenSSH (ssh -W through one connection pinned to the verified host key)');
  } catch (e) {
    if (e instanceof CedanaError && e.code === 'HOST_KEY_MISMATCH') throw e;
    const why = (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no OpenSSH client (ssh) here' : (e as Error).message;
    if (transport === 'openssh') refuse(why, 'SSH_FAILED');
    return ssh2Links(session, `page streams: ssh2 (OpenSSH not usable: ${why})`);
  }
}
