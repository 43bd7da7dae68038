/**
 * Bulk streams (migrate's memory pages) through the system's OpenSSH client instead of ssh2.
 *
 * Why: ssh2 frames and encrypts every packet on Node's main thread. On the 2-CPU test machine it
 * carried 0.6–0.85× what OpenSSH does on the same link, and neither a worker thread with its own
 * connection (≈ the same rate) nor two connections striped from two workers (+5%) closed that: the
 * machine is CPU-bound and ssh2 spends ~1.2 s of CPU per GiB against OpenSSH's ~0.95 s (bench
 * `ssh` phase; the README has the figures). OpenSSH's `-W` moves the bytes between a socket and the
 * network in C, in a process of its own; CRIU can write its page stream straight into that socket,
 * so the memory never passes through Node at all.
 *
 * Safety is the same as the ssh2 session's, by construction:
 * - OpenSSH connects to the address, port and user the ssh2 session resolved, with `-F /dev/null`
 *   (nothing else from a config file), `BatchMode` (never a prompt) and the identity files the
 *   session could use (and the agent, as ssh2 does).
 * - It may accept exactly one host key: the one cedana's session verified against known_hosts. That
 *   key alone is written to a private known_hosts file under a fixed alias (HostKeyAlias), with
 *   StrictHostKeyChecking=yes. Any other key — another machine answering the second connection — is
 *   refused: HOST_KEY_MISMATCH, never a fall-back.
 * - One connection (a ControlMaster) carries every stream of a migration, opened while the preflight
 *   runs, so no stream pays a handshake. Its remote command reads its stdin, a pipe from cedana: if
 *   cedana dies, the pipe closes, the command ends and the connection with it. No orphan stays.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { CedanaError } from '../errors.js';
import { keyType } from './known-hosts.js';
import { CIPHERS, type DirectTarget } from './ssh.js';

/** The only name OpenSSH checks the host key under (the key file holds nothing else). */
export const PIN_ALIAS = 'cedana-migration-target';


/** The known_hosts line that lets OpenSSH accept exactly the key cedana verified. */
export function pinLine(hostKey: Buffer): string {
  return `${PIN_ALIAS} ${keyType(hostKey)} ${hostKey.toString('base64')}\n`;
}

/** OpenSSH's options for a connection to exactly the host, port, user and key of `t`. */
export function opensshOptions(t: DirectTarget, pinFile: string): string[] {
  const o = (kv: string): string[] => ['-o', kv];
  return [
    '-F', '/dev/null',
    ...o('BatchMode=yes'),
    ...o('StrictHostKeyChecking=yes'),
    ...o(`UserKnownHostsFile=${pinFile}`),
    ...o('GlobalKnownHostsFile=/dev/null'),
    ...o(`HostKeyAlias=${PIN_ALIAS}`),
    ...o('UpdateHostKeys=no'),
    ...o('CheckHostIP=no'),
    ...o(`Ciphers=${CIPHERS.join(',')}`),
    ...o('ConnectTimeout=15'),
    ...o('ServerAliveInterval=5'),
    ...o('ServerAliveCountMax=3'),
    ...o('ForwardAgent=no'),
    ...o('ForwardX11=no'),
    ...o('ClearAllForwardings=yes'),
    ...t.identityFiles.flatMap((f) => ['-i', f]),
    '-p', String(t.port),
    '-l', t.user,
  ];
}

/** What OpenSSH's stderr says went wrong, as cedana's errors. */
export function opensshError(stderr: string, label: string): CedanaError {
  const text = stderr.trim().split('\n').filter((l) => l && !/^Warning: Permanently added/.test(l)).slice(-3).join('; ');
  if (/Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED|host key for .* has changed/i.test(stderr)) {
    return new CedanaError('HOST_KEY_MISMATCH', `a second SSH connection to ${label} was answered with another host key than the first: ${text}`, {
      hint: 'someone may be in the middle, or the name resolves to another machine now; cedana never accepts a changed key',
    });
  }
  if (/Permission denied/i.test(stderr)) {
    return new CedanaError('SSH_AUTH_FAILED', `OpenSSH could not authenticate to ${label}: ${text}`, { hint: 'use --transport ssh2, or give OpenSSH the same key (ssh-agent)' });
  }
  if (/open failed|connect failed|administratively prohibited/i.test(stderr)) {
    return new CedanaError('SSH_FAILED', `OpenSSH could not open a forwarded channel on ${label}: ${text}`, { hint: 'the target sshd must allow TCP forwarding (AllowTcpForwarding)' });
  }
  return new CedanaError('SSH_UNREACHABLE', `OpenSSH could not connect to ${label}: ${text || 'no message'}`, { hint: 'check that `ssh` works to it; --transport ssh2 does without OpenSSH' });
}

/** One stream through the connection: the socket's other end is OpenSSH's stdin and stdout. */
export interface OpenSshStream {
  /** cedana's end: read and write it, or hand it to CRIU as its --ps-socket and close it here. */
  socket: Socket;
  /**
   * Bytes read so far by the connection's OpenSSH process since the stream began (its rchar in
   * /proc, updated every 100 ms: the stream may bypass cedana). It includes the little OpenSSH reads
   * from the network (window adjustments, the page server's answers): a progress figure.
   */
  bytes(): number;
  /** bytes(), read again now. */
  settle(): Promise<number>;
  /** Settles when OpenSSH ends; rejects if it failed. */
  done: Promise<void>;
  /** Ends the stream now. */
  kill(): void;
}

/** Bytes a process has read so far (rchar), or undefined once it is gone. */
async function readChars(pid: number): Promise<number | undefined> {
  const io = await readFile(`/proc/${pid}/io`, 'utf8').catch(() => undefined);
  const m = io ? /^rchar:\s*(\d+)/m.exec(io) : null;
  return m ? Number(m[1]) : undefined;
}

export class OpenSshLink {
  private closed = false;

  private constructor(
    private readonly master: ChildProcess,
    private readonly ctl: string,
    private readonly dir: string,
    readonly label: string,
  ) {}

  /**
   * Opens the connection (a ControlMaster whose control socket lives in `dir`, a private directory).
   * Rejects with what OpenSSH said; ENOENT when there is no `ssh` here.
   */
  static async open(t: DirectTarget, dir: string, label: string, timeoutMs = 20_000): Promise<OpenSshLink> {
    const pin = join(dir, 'known_hosts');
    await writeFile(pin, pinLine(t.hostKey), { mode: 0o600 });
    const ctl = join(dir, 'ctl');
    const master = spawn('ssh', [...opensshOptions(t, pin), '-M', '-S', ctl, '-o', 'ControlPersist=no', t.host, 'exec cat >/dev/null'], {
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    let stderr = '';
    master.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    master.stdin!.on('error', () => undefined);
    const exited = new Promise<Error>((resolve) => {
      master.once('error', (e) => resolve(e));
      master.once('exit', () => resolve(opensshError(stderr, label)));
    });
    const deadline = performance.now() + timeoutMs;
    let failure: Error | undefined;
    exited.then((e) => (failure = e), () => undefined);
    // The control socket appears once OpenSSH has authenticated and checked the key.
    for (;;) {
      if (failure) throw failure;
      if (await stat(ctl).then(() => true, () => false)) break;
      if (performance.now() > deadline) {
        master.kill('SIGTERM');
        throw new CedanaError('SSH_UNREACHABLE', `OpenSSH did not connect to ${label} within ${Math.round(timeoutMs / 1000)} s`, { hint: '--transport ssh2 does without OpenSSH' });
      }
      await sleep(5);
    }
    return new OpenSshLink(master, ctl, dir, label);
  }

  /** A stream to host:port as seen from the target (`ssh -W` through the connection). */
  stream(host: string, port: number): OpenSshStream {
    if (this.closed || this.master.exitCode !== null) throw new CedanaError('CONNECTION_LOST', `the OpenSSH connection to ${this.label} is closed`);
    // sh makes the socket OpenSSH's stdin and stdout at once; cedana holds the other end (fd 3 here).
    const child = spawn('sh', ['-c', 'exec "$@" <&3 >&3 3<&-', 'sh', 'ssh', '-F', '/dev/null', '-o', 'BatchMode=yes', '-S', this.ctl, '-W', `${host}:${port}`, PIN_ALIAS], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const done = new Promise<void>((resolve, reject) => {
      child.once('error', reject);
      child.once('exit', (code, signal) => (code === 0 || signal === 'SIGTERM' ? resolve() : reject(opensshError(stderr, this.label))));
    });
    done.catch(() => undefined);
    // With -S, the client hands its stdin and stdout to the master, which does the reading.
    const reader = this.master.pid!;
    let base: number | undefined;
    let last = 0;
    void readChars(reader).then((n) => (base ??= n ?? 0));
    const refresh = async (): Promise<number> => {
      const n = await readChars(reader);
      if (n !== undefined && base !== undefined) last = Math.max(last, n - base);
      return last;
    };
    const poll = setInterval(() => void refresh(), 100);
    poll.unref();
    void done.finally(() => clearInterval(poll)).catch(() => undefined);
    return {
      socket: child.stdio[3] as Socket,
      bytes: () => last,
      settle: refresh,
      done,
      kill: () => {
        if (child.exitCode === null) child.kill('SIGTERM');
      },
    };
  }

  get isOpen(): boolean {
    return !this.closed && this.master.exitCode === null;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.master.exitCode === null && this.master.signalCode === null) {
      this.master.stdin!.end();
      this.master.kill('SIGTERM');
      // At most 2 s, and no timer left behind to hold the process once OpenSSH is gone.
      const stop = new AbortController();
      await Promise.race([once(this.master, 'exit'), sleep(2000, undefined, { signal: stop.signal }).catch(() => undefined)]);
      stop.abort();
    }
    await rm(this.dir, { recursive: true, force: true });
  }
}
