/**
 * SSH sessions to a target host with ssh2, honouring what the user already has: ~/.ssh/config
 * (Host, HostName, User, Port, IdentityFile, ProxyJump, UserKnownHostsFile), ssh-agent and the
 * default identities. Host keys are always checked against known_hosts: an unknown host is refused
 * unless acceptNewHostKey (then recorded), a changed key is always refused.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { connect as netConnect, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { Client, type AnyAuthMethod, type ClientChannel, type ConnectConfig } from 'ssh2';
import { CedanaError } from '../errors.js';
import { RemoteShell, unresponsive } from './remote-shell.js';
import { findKnownKeys, hostKeyAlgorithms, judgeHostKey, keyType, readKnownHosts, recordHostKey, type HostKeyVerdict } from './known-hosts.js';
import { parseDestination, parseSshConfig, resolveHost, type HostConfig } from './ssh-config.js';

export interface SshOptions {
  acceptNewHostKey?: boolean;
  /** The directory playing ~/.ssh (default: $HOME/.ssh). */
  sshDir?: string;
  connectTimeoutMs?: number;
}

export interface ExecResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Fast AEAD ciphers first: they are what bounds the page stream's throughput. */
export const CIPHERS = ['aes128-gcm@openssh.com', 'aes256-gcm@openssh.com', 'aes128-ctr', 'aes256-ctr', 'chacha20-poly1305@openssh.com'];

/**
 * The socket of a direct connection, tuned for bulk streams (migrate's memory pages) without
 * delaying small messages:
 * - ssh2 hands every SSH packet (at most 32 KiB of data: the packet size sshd allows) to its own
 *   socket.write, one write(2) each. The socket is corked from the first write until the loop has
 *   handled the I/O at hand (setImmediate), so what one turn of the loop produced leaves in one
 *   writev(2): ~4x fewer syscalls for the page bridge, ~30x for 1 MiB channel writes. 1 GiB through
 *   a forwarded channel went from 475 to 696 MB/s, through the page bridge from 458 to 585 MB/s
 *   (interleaved before/after runs on the 2-CPU test machine, quiet).
 * - Nagle is off (the writes are batched, so it has no small segments to save): a small message
 *   written while earlier data is unacknowledged no longer waits for the peer's delayed ACK (a
 *   channel open right after a channel closed took ~40 ms, now ~0.3 ms).
 */
function streamSocket(host: string, port: number): Socket {
  const sock = netConnect({ host, port, noDelay: true });
  const write = sock.write.bind(sock) as (...args: unknown[]) => boolean;
  let corked = false;
  const flush = (): void => {
    corked = false;
    sock.uncork();
  };
  sock.write = ((...args: unknown[]) => {
    if (!corked) {
      corked = true;
      sock.cork();
      setImmediate(flush);
    }
    return write(...args);
  }) as Socket['write'];
  return sock;
}

/**
 * What a second connection to the same host needs to be the same connection in every respect that
 * matters: the address and user cedana's session used, the identities it could offer, and the host
 * key it verified (OpenSSH is given only that key: src/transport/openssh.ts).
 */
export interface DirectTarget {
  host: string;
  port: number;
  user: string;
  identityFiles: string[];
  hostKey: Buffer;
}

export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export class SshSession {
  private closed = false;
  private readonly closeWaiters: ((e: CedanaError) => void)[] = [];

  private constructor(
    private readonly client: Client,
    readonly target: string,
    readonly hostName: string,
    private readonly jump?: SshSession,
    /** Set when the session is a direct connection (not through a jump host). */
    readonly direct?: DirectTarget,
  ) {
    client.on('close', () => {
      this.closed = true;
      const err = new CedanaError('CONNECTION_LOST', `the SSH connection to ${target} was lost`, {
        hint: 'check that the target is up and reachable, then try again',
      });
      for (const w of this.closeWaiters.splice(0)) w(err);
    });
    client.on('error', () => undefined); // reported through 'close' and the pending calls
  }

  static async connect(destination: string, opts: SshOptions = {}): Promise<SshSession> {
    const sshDir = opts.sshDir ?? join(homedir(), '.ssh');
    const dest = parseDestination(destination);
    if (!dest) throw new CedanaError('USAGE', `not a valid destination: ${JSON.stringify(destination)}`, { hint: 'use [user@]host[:port]' });
    const config = resolveHost(parseSshConfig(await readFile(join(sshDir, 'config'), 'utf8').catch(() => '')), dest.host, join(sshDir, '..'));
    return SshSession.open(destination, config, dest, sshDir, opts);
  }

  private static async open(label: string, config: HostConfig, dest: { user?: string; port?: number }, sshDir: string, opts: SshOptions): Promise<SshSession> {
    const user = dest.user ?? config.user ?? 'root';
    const port = dest.port ?? config.port ?? 22;
    const host = config.hostName;
    let jump: SshSession | undefined;
    let sock: Readable | undefined;
    if (config.proxyJump) {
      jump = await SshSession.connect(config.proxyJump.split(',')[0]!, opts);
      try {
        sock = await jump.forwardOut(host, port);
      } catch (e) {
        jump.close();
        throw new CedanaError('SSH_UNREACHABLE', `the jump host ${config.proxyJump} cannot reach ${host}:${port}: ${(e as Error).message}`, {
          hint: 'check ProxyJump in ~/.ssh/config: the jump host must reach the target and allow TCP forwarding',
        });
      }
    }
    const knownFiles = config.userKnownHostsFiles.length > 0 ? config.userKnownHostsFiles : [join(sshDir, 'known_hosts')];
    const known = findKnownKeys(await readKnownHosts(knownFiles), host, port);
    const identityFiles: string[] = [];
    let verdict: HostKeyVerdict | undefined;
    let presented: Buffer | undefined;
    const client = new Client();
    const cfg: ConnectConfig = {
      host,
      port,
      username: user,
      sock,
      readyTimeout: opts.connectTimeoutMs ?? 15_000,
      keepaliveInterval: 5000,
      keepaliveCountMax: 3,
      algorithms: {
        cipher: CIPHERS as ConnectConfig['algorithms'] extends infer A ? A extends { cipher?: infer C } ? C : never : never,
        // The recorded key types first, as OpenSSH orders them; the others stay allowed, so that a key of a
        // type not recorded is judged (a mismatch) instead of failing the handshake as "unreachable".
        ...(known.length > 0 ? { serverHostKey: { remove: hostKeyAlgorithms(known), prepend: hostKeyAlgorithms(known) } as never } : {}),
      },
      hostVerifier: (key: Buffer) => {
        presented = key;
        verdict = judgeHostKey(known, key);
        return verdict === 'match' || (verdict === 'unknown' && !!opts.acceptNewHostKey);
      },
      authHandler: await authMethods(user, config, sshDir, identityFiles),
    };
    await new Promise<void>((resolve, reject) => {
      client.once('ready', () => resolve());
      client.once('error', (e: Error & { level?: string }) => {
        jump?.close();
        reject(connectError(e, label, host, port, verdict, presented, knownFiles[0]!));
      });
      // Through a jump host, the jump session's socket does the batching.
      client.connect(sock ? cfg : { ...cfg, sock: streamSocket(host, port) });
    });
    if (verdict === 'unknown' && presented) await recordHostKey(knownFiles[0]!, host, port, presented);
    return new SshSession(client, label, host, jump, !sock && presented ? { host, port, user, identityFiles, hostKey: presented } : undefined);
  }

  /**
   * Runs a command; stdin (if any) is written and closed. Rejects if the connection fails, or with
   * TARGET_UNRESPONSIVE when `timeoutMs` passes without the command ending (its channel is closed):
   * a login script that blocks there (a lock it waits on) must not hold cedana forever.
   */
  async exec(command: string, stdin?: Buffer | string, opts: { timeoutMs?: number; what?: string } = {}): Promise<ExecResult> {
    const ch = await this.channel(command);
    return new Promise<ExecResult>((resolve, reject) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let code: number | null = null;
      let signal: string | null = null;
      const lost = (e: CedanaError): void => {
        clearTimeout(timer);
        reject(e);
      };
      this.closeWaiters.push(lost);
      const timer = opts.timeoutMs === undefined ? undefined : setTimeout(() => {
        this.dropWaiter(lost);
        ch.close();
        reject(unresponsive(opts.what ?? 'a command', this.target, opts.timeoutMs!, `nothing was frozen. Check that \`ssh ${this.target} true\` returns at once: a login script there (~/.bashrc, ~/.profile) that waits on something holds every command`));
      }, opts.timeoutMs);
      ch.on('data', (d: Buffer) => out.push(d));
      ch.stderr.on('data', (d: Buffer) => err.push(d));
      ch.on('exit', (c: number | null, s?: string) => {
        code = c;
        signal = s ?? null;
      });
      ch.on('close', () => {
        clearTimeout(timer);
        this.dropWaiter(lost);
        resolve({ code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
      });
      if (stdin !== undefined) ch.end(stdin);
      else ch.end();
    });
  }

  /** A long-lived `sh` there for a series of short commands (see RemoteShell). */
  async shell(): Promise<RemoteShell> {
    return new RemoteShell(await this.channel('sh -s'), this.target);
  }

  /** Starts a command and returns its channel (stdin/stdout as a duplex stream, .stderr). */
  async channel(command: string): Promise<ClientChannel> {
    this.assertOpen();
    return new Promise<ClientChannel>((resolve, reject) => {
      this.client.exec(command, (e, ch) => (e ? reject(this.channelError(e)) : resolve(ch)));
    });
  }

  /** A direct-tcpip channel to host:port as seen from the target. */
  async forwardOut(host: string, port: number): Promise<ClientChannel> {
    this.assertOpen();
    return new Promise<ClientChannel>((resolve, reject) => {
      this.client.forwardOut('127.0.0.1', 0, host, port, (e, ch) => (e ? reject(this.channelError(e)) : resolve(ch)));
    });
  }

  /**
   * Remote forwarding (`ssh -R`): the target's sshd listens on its loopback, on a port it picks, and
   * hands each connection to `onConnection` as a channel. Returns the port and a function to stop.
   */
  async forwardIn(onConnection: (ch: ClientChannel) => void): Promise<{ port: number; close(): void }> {
    this.assertOpen();
    const port = await new Promise<number>((resolve, reject) => {
      this.client.forwardIn('127.0.0.1', 0, (e, p) => (e ? reject(this.channelError(e)) : resolve(p)));
    });
    const listener = (info: { destPort: number }, accept: () => ClientChannel, reject: () => void): void => {
      if (info.destPort !== port) return reject();
      onConnection(accept());
    };
    this.client.on('tcp connection', listener);
    return {
      port,
      close: () => {
        this.client.off('tcp connection', listener);
        if (!this.closed) this.client.unforwardIn('127.0.0.1', port, () => undefined);
      },
    };
  }

  /** Resolves never; rejects with CONNECTION_LOST when the connection goes. */
  lost(): Promise<never> {
    return new Promise<never>((_, reject) => {
      if (this.closed) reject(new CedanaError('CONNECTION_LOST', `the SSH connection to ${this.target} was lost`));
      else this.closeWaiters.push(reject);
    });
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  close(): void {
    this.client.end();
    this.jump?.close();
  }

  private dropWaiter(w: (e: CedanaError) => void): void {
    const i = this.closeWaiters.indexOf(w);
    if (i >= 0) this.closeWaiters.splice(i, 1);
  }

  private assertOpen(): void {
    if (this.closed) throw new CedanaError('CONNECTION_LOST', `the SSH connection to ${this.target} is closed`);
  }

  private channelError(e: Error): CedanaError {
    if (this.closed) return new CedanaError('CONNECTION_LOST', `the SSH connection to ${this.target} was lost`);
    return new CedanaError('SSH_FAILED', `SSH channel to ${this.target} refused: ${e.message}`, {
      hint: 'the target sshd must allow sessions and TCP forwarding (AllowTcpForwarding)',
    });
  }
}

/** The methods ssh2 offers; `usable` collects the identity files it could read (for OpenSSH's -i). */
async function authMethods(user: string, config: HostConfig, sshDir: string, usable: string[]): Promise<AnyAuthMethod[]> {
  const methods: AnyAuthMethod[] = [];
  if (process.env.SSH_AUTH_SOCK) methods.push({ type: 'agent', username: user, agent: process.env.SSH_AUTH_SOCK });
  const files = config.identityFiles.length > 0 ? config.identityFiles : ['id_ed25519', 'id_ecdsa', 'id_rsa'].map((f) => join(sshDir, f));
  for (const f of files) {
    const key = await readFile(f).catch(() => undefined);
    // Keys with a passphrase need the agent: cedana never asks for secrets.
    if (key && !/ENCRYPTED|bcrypt/.test(key.subarray(0, 2000).toString('latin1'))) {
      methods.push({ type: 'publickey', username: user, key });
      usable.push(f);
    }
  }
  return methods;
}

function connectError(e: Error & { level?: string }, label: string, host: string, port: number, verdict: HostKeyVerdict | undefined, key: Buffer | undefined, knownFile: string): CedanaError {
  if (verdict === 'mismatch') {
    return new CedanaError('HOST_KEY_MISMATCH', `the host key of ${label} (${host}:${port}, ${key ? keyType(key) : '?'}) does not match the one in ${knownFile}`, {
      hint: 'the host was reinstalled, or someone is in the middle: check with its administrator; cedana never accepts a changed key',
    });
  }
  if (verdict === 'unknown') {
    return new CedanaError('HOST_KEY_UNKNOWN', `${label} (${host}:${port}) is not in ${knownFile}`, {
      hint: 'check its fingerprint, then add it with ssh-keyscan or run again with --accept-new-host-key to record it',
    });
  }
  if (e.level === 'client-authentication') {
    return new CedanaError('SSH_AUTH_FAILED', `authentication to ${label} as the configured user failed`, {
      hint: 'load a key into ssh-agent or set IdentityFile in ~/.ssh/config; the target must accept it for root',
    });
  }
  return new CedanaError('SSH_UNREACHABLE', `cannot connect to ${label} (${host}:${port}): ${e.message}`, {
    hint: 'check the host name, port and network; `ssh` to it by hand should work',
  });
}
