/**
 * SshSession against an in-process ssh2 server on 127.0.0.1: host-key checking, authentication,
 * exec, forwarded channels and connection loss. No sshd, nothing beyond loopback.
 */
import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect as netConnect, createServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Server, utils, type Connection, type ParsedKey, type ServerChannel } from 'ssh2';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { shq, SshSession } from '../../../src/transport/ssh.js';

const HOST_KEY = utils.generateKeyPairSync('ed25519');
const OTHER_HOST_KEY = utils.generateKeyPairSync('ed25519');
const ECDSA_KEY = utils.generateKeyPairSync('ecdsa', { bits: 256 });
const CLIENT_KEY = utils.generateKeyPairSync('ed25519');
const STRANGER_KEY = utils.generateKeyPairSync('ed25519');

const b64 = (pub: string): string => pub.split(' ')[1]!;
const parsed = (pub: string): ParsedKey => {
  const k = utils.parseKey(pub);
  if (k instanceof Error) throw k;
  return k;
};

/**
 * The server's exec language: "echo N" copies stdin to stdout, writes "err:N" to stderr and exits
 * with N; "hang" never answers; "drop" ends the whole connection; "signal" is killed by TERM.
 */
function runExec(conn: Connection, command: string, ch: ServerChannel): void {
  const [verb, arg] = command.split(' ');
  if (verb === 'echo') {
    const chunks: Buffer[] = [];
    ch.on('data', (d: Buffer) => chunks.push(d));
    ch.on('end', () => {
      ch.write(Buffer.concat(chunks));
      ch.stderr.write(`err:${arg}`);
      ch.exit(Number(arg));
      ch.end();
    });
  } else if (verb === 'signal') {
    ch.exit('TERM', false, '');
    ch.end();
  } else if (verb === 'drop') {
    conn.end();
  } else if (verb !== 'hang') {
    ch.stderr.write(`unknown command: ${command}`);
    ch.exit(127);
    ch.end();
  }
}

interface TestServer {
  port: number;
  connections: Connection[];
  /** Resolves when the server side of each connection has closed. */
  closed: Promise<void>[];
  execs: string[];
  forwards: { destIP: string; destPort: number }[];
  /** The host key algorithm each connection negotiated. */
  hostKeyAlgos: string[];
  close(): Promise<void>;
}

async function startServer(opts: { hostKeys?: string[]; authorized?: string; refuseForward?: boolean } = {}): Promise<TestServer> {
  const authorized = parsed(opts.authorized ?? CLIENT_KEY.public);
  const connections: Connection[] = [];
  const closed: Promise<void>[] = [];
  const execs: string[] = [];
  const forwards: { destIP: string; destPort: number }[] = [];
  const hostKeyAlgos: string[] = [];
  const sockets: Socket[] = [];
  const server = new Server({ hostKeys: opts.hostKeys ?? [HOST_KEY.private] }, (conn) => {
    connections.push(conn);
    closed.push(new Promise<void>((resolve) => conn.on('close', () => resolve())));
    conn.on('handshake', (n) => hostKeyAlgos.push(n.serverHostKey));
    conn.on('error', () => undefined);
    conn.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || ctx.username !== 'root') return ctx.reject(['publickey']);
      if (ctx.key.algo !== authorized.type || !ctx.key.data.equals(authorized.getPublicSSH())) return ctx.reject(['publickey']);
      if (ctx.signature && ctx.blob && authorized.verify(ctx.blob, ctx.signature, ctx.hashAlgo) !== true) return ctx.reject(['publickey']);
      ctx.accept();
    });
    conn.on('ready', () => {
      conn.on('session', (accept) => {
        const session = accept();
        session.on('exec', (acceptExec, _reject, info) => {
          execs.push(info.command);
          runExec(conn, info.command, acceptExec());
        });
      });
      conn.on('tcpip', (accept, reject, info) => {
        forwards.push({ destIP: info.destIP, destPort: info.destPort });
        if (opts.refuseForward) return reject();
        const sock = netConnect(info.destPort, info.destIP);
        sockets.push(sock);
        sock.once('error', () => reject());
        sock.once('connect', () => {
          const ch = accept();
          sock.pipe(ch).pipe(sock);
          ch.on('error', () => sock.destroy());
        });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    connections,
    closed,
    execs,
    forwards,
    hostKeyAlgos,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        for (const c of connections) c.end();
        server.close(() => resolve());
      }),
  };
}

async function echoServer(): Promise<{ server: NetServer; port: number }> {
  const server = createServer((s) => s.pipe(s));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port };
}

async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(CedanaError);
    return (e as CedanaError).code;
  }
  throw new Error('expected a rejection');
}

describe('SshSession', () => {
  let dir: string;
  let sshDir: string;
  let knownHosts: string;
  let srv: TestServer | undefined;
  let session: SshSession | undefined;
  let extra: (() => Promise<void> | void)[] = [];
  let savedAgent: string | undefined;

  /** ~/.ssh/config: "target" → the test server; "jumped" → the same server, through "target". */
  async function writeConfig(port: number, identity = join(sshDir, 'id_test')): Promise<void> {
    await writeFile(
      join(sshDir, 'config'),
      [
        'Host target jumped',
        '  HostName 127.0.0.1',
        `  Port ${port}`,
        '  User root',
        `  IdentityFile ${identity}`,
        'Host jumped',
        '  ProxyJump target',
        '',
      ].join('\n'),
    );
  }

  const knownLine = (port: number, pub: string): string => `[127.0.0.1]:${port} ${pub.split(' ')[0]} ${b64(pub)}\n`;

  beforeEach(async () => {
    savedAgent = process.env.SSH_AUTH_SOCK;
    delete process.env.SSH_AUTH_SOCK; // only the configured IdentityFile is offered
    dir = await mkdtemp(join(tmpdir(), 'cedana-ssh-'));
    sshDir = join(dir, '.ssh');
    knownHosts = join(sshDir, 'known_hosts');
    await mkdir(sshDir, { mode: 0o700 });
    await writeFile(join(sshDir, 'id_test'), CLIENT_KEY.private, { mode: 0o600 });
    await writeFile(join(sshDir, 'id_stranger'), STRANGER_KEY.private, { mode: 0o600 });
    srv = await startServer();
    await writeConfig(srv.port);
  });

  afterEach(async () => {
    session?.close();
    session = undefined;
    for (const f of extra.splice(0)) await f();
    await srv?.close();
    srv = undefined;
    if (savedAgent !== undefined) process.env.SSH_AUTH_SOCK = savedAgent;
    await rm(dir, { recursive: true, force: true });
  });

  it('connects when the host key is in known_hosts', async () => {
    await writeFile(knownHosts, knownLine(srv!.port, HOST_KEY.public));
    session = await SshSession.connect('target', { sshDir });
    expect(session.isOpen).toBe(true);
    expect(session.target).toBe('target');
    expect(session.hostName).toBe('127.0.0.1');
    expect(srv!.connections).toHaveLength(1);
  });

  it('connects to a host key recorded hashed, among other hosts', async () => {
    const salt = randomBytes(20);
    const h = createHmac('sha1', salt).update(`[127.0.0.1]:${srv!.port}`).digest('base64');
    await writeFile(knownHosts, `other ssh-ed25519 ${b64(OTHER_HOST_KEY.public)}\n|1|${salt.toString('base64')}|${h} ssh-ed25519 ${b64(HOST_KEY.public)}\n`);
    session = await SshSession.connect('target', { sshDir });
    expect(session.isOpen).toBe(true);
  });

  it('user@host:port on the command line overrides the config', async () => {
    await writeFile(join(sshDir, 'config'), `Host elsewhere\n  Port 1\nHost *\n  IdentityFile ${join(sshDir, 'id_test')}\n`);
    await writeFile(knownHosts, knownLine(srv!.port, HOST_KEY.public));
    session = await SshSession.connect(`root@127.0.0.1:${srv!.port}`, { sshDir });
    expect(session.hostName).toBe('127.0.0.1');
  });

  it('refuses an unknown host with HOST_KEY_UNKNOWN and leaves known_hosts alone', async () => {
    await writeFile(knownHosts, `other ssh-ed25519 ${b64(OTHER_HOST_KEY.public)}\n`);
    expect(await codeOf(SshSession.connect('target', { sshDir }))).toBe('HOST_KEY_UNKNOWN');
    expect(await readFile(knownHosts, 'utf8')).toBe(`other ssh-ed25519 ${b64(OTHER_HOST_KEY.public)}\n`);
  });

  it('refuses an unknown host when there is no known_hosts file, and creates none', async () => {
    expect(await codeOf(SshSession.connect('target', { sshDir }))).toBe('HOST_KEY_UNKNOWN');
    await expect(readFile(knownHosts)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('with acceptNewHostKey, connects to an unknown host and records [127.0.0.1]:PORT ssh-ed25519 …', async () => {
    session = await SshSession.connect('target', { sshDir, acceptNewHostKey: true });
    expect(session.isOpen).toBe(true);
    expect(await readFile(knownHosts, 'utf8')).toBe(`[127.0.0.1]:${srv!.port} ssh-ed25519 ${b64(HOST_KEY.public)}\n`);
    session.close();
    // The next connection finds it without being told to accept.
    session = await SshSession.connect('target', { sshDir });
    expect(session.isOpen).toBe(true);
  });

  it('records the new key in the first UserKnownHostsFile', async () => {
    const kh = join(dir, 'elsewhere', 'kh');
    await writeFile(join(sshDir, 'config'), `Host target\n  HostName 127.0.0.1\n  Port ${srv!.port}\n  IdentityFile ${join(sshDir, 'id_test')}\n  UserKnownHostsFile ${kh} ${knownHosts}\n`);
    session = await SshSession.connect('target', { sshDir, acceptNewHostKey: true });
    expect(await readFile(kh, 'utf8')).toBe(`[127.0.0.1]:${srv!.port} ssh-ed25519 ${b64(HOST_KEY.public)}\n`);
    await expect(readFile(knownHosts)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('refuses a changed host key with HOST_KEY_MISMATCH, even with acceptNewHostKey', async () => {
    const line = knownLine(srv!.port, OTHER_HOST_KEY.public);
    await writeFile(knownHosts, line);
    expect(await codeOf(SshSession.connect('target', { sshDir }))).toBe('HOST_KEY_MISMATCH');
    expect(await codeOf(SshSession.connect('target', { sshDir, acceptNewHostKey: true }))).toBe('HOST_KEY_MISMATCH');
    expect(await readFile(knownHosts, 'utf8')).toBe(line);
  });

  it('refuses a revoked host key with HOST_KEY_MISMATCH', async () => {
    await writeFile(knownHosts, `@revoked [127.0.0.1]:${srv!.port} ssh-ed25519 ${b64(HOST_KEY.public)}\n${knownLine(srv!.port, HOST_KEY.public)}`);
    expect(await codeOf(SshSession.connect('target', { sshDir, acceptNewHostKey: true }))).toBe('HOST_KEY_MISMATCH');
  });

  it('refuses a host known only under another key type with HOST_KEY_MISMATCH, even with acceptNewHostKey', async () => {
    const line = knownLine(srv!.port, ECDSA_KEY.public);
    await writeFile(knownHosts, line);
    expect(await codeOf(SshSession.connect('target', { sshDir, acceptNewHostKey: true }))).toBe('HOST_KEY_MISMATCH');
    expect(await readFile(knownHosts, 'utf8')).toBe(line);
  });

  it('a host also recorded under a key type ssh2 cannot verify (sk-ssh-ed25519) still connects by its ed25519 key', async () => {
    await writeFile(knownHosts, `[127.0.0.1]:${srv!.port} sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA==\n${knownLine(srv!.port, HOST_KEY.public)}`);
    session = await SshSession.connect('target', { sshDir });
    expect(session.isOpen).toBe(true);
  });

  it('a host recorded only under a key type ssh2 cannot verify is a HOST_KEY_MISMATCH', async () => {
    await writeFile(knownHosts, `[127.0.0.1]:${srv!.port} sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIA==\n`);
    expect(await codeOf(SshSession.connect('target', { sshDir, acceptNewHostKey: true }))).toBe('HOST_KEY_MISMATCH');
  });

  it('prefers the recorded key type when the server has several host keys', async () => {
    await srv!.close();
    srv = await startServer({ hostKeys: [HOST_KEY.private, ECDSA_KEY.private] });
    await writeConfig(srv.port);
    await writeFile(knownHosts, knownLine(srv.port, ECDSA_KEY.public));
    session = await SshSession.connect('target', { sshDir });
    expect(session.isOpen).toBe(true);
    expect(srv.hostKeyAlgos).toEqual(['ecdsa-sha2-nistp256']);
  });

  it('without a recorded key, records the key of the type negotiated by default (ed25519 first)', async () => {
    await srv!.close();
    srv = await startServer({ hostKeys: [ECDSA_KEY.private, HOST_KEY.private] });
    await writeConfig(srv.port);
    session = await SshSession.connect('target', { sshDir, acceptNewHostKey: true });
    expect(await readFile(knownHosts, 'utf8')).toBe(knownLine(srv.port, HOST_KEY.public));
  });

  it('SSH_AUTH_FAILED when the server rejects the key', async () => {
    await writeFile(knownHosts, knownLine(srv!.port, HOST_KEY.public));
    await writeConfig(srv!.port, join(sshDir, 'id_stranger'));
    expect(await codeOf(SshSession.connect('target', { sshDir }))).toBe('SSH_AUTH_FAILED');
  });

  it('SSH_AUTH_FAILED when there is no key to offer at all', async () => {
    await writeFile(knownHosts, knownLine(srv!.port, HOST_KEY.public));
    await writeConfig(srv!.port, join(sshDir, 'no_such_key'));
    expect(await codeOf(SshSession.connect('target', { sshDir }))).toBe('SSH_AUTH_FAILED');
  });

  it('SSH_UNREACHABLE for a closed port', async () => {
    const port = await closedPort();
    await writeConfig(port);
    expect(await codeOf(SshSession.connect('target', { sshDir }))).toBe('SSH_UNREACHABLE');
  });

  it('USAGE for a malformed destination', async () => {
    expect(await codeOf(SshSession.connect('host:0', { sshDir }))).toBe('USAGE');
  });

  describe('once connected', () => {
    beforeEach(async () => {
      await writeFile(knownHosts, knownLine(srv!.port, HOST_KEY.public));
      session = await SshSession.connect('target', { sshDir });
    });

    it('exec returns stdout, stderr and the exit code, and passes stdin', async () => {
      const r = await session!.exec('echo 3', 'hello\nworld\n');
      expect(r).toEqual({ code: 3, signal: null, stdout: 'hello\nworld\n', stderr: 'err:3' });
      expect(srv!.execs).toEqual(['echo 3']);
    });

    it('exec with a Buffer stdin, and with none (stdin closed at once)', async () => {
      const bin = Buffer.from([0, 1, 2, 255]);
      expect(await session!.exec('echo 0', bin)).toMatchObject({ code: 0, stdout: bin.toString() });
      expect(await session!.exec('echo 0')).toEqual({ code: 0, signal: null, stdout: '', stderr: 'err:0' });
    });

    it('exec carries a large stdin intact', async () => {
      const big = 'x'.repeat(3 * 1024 * 1024 + 7);
      const r = await session!.exec('echo 0', big);
      expect(r.stdout.length).toBe(big.length);
      expect(r.stdout === big).toBe(true);
    });

    it('exec with a timeout: a command that never ends is TARGET_UNRESPONSIVE, and the connection serves on', async () => {
      const t0 = Date.now();
      const e = await session!.exec('hang', undefined, { timeoutMs: 300, what: 'the preflight' }).then(
        () => undefined,
        (x: unknown) => x as CedanaError,
      );
      expect(e).toBeInstanceOf(CedanaError);
      expect(e!.code).toBe('TARGET_UNRESPONSIVE');
      expect(e!.message).toMatch(/^the preflight on .* did not end within 300 ms$/);
      expect(e!.hint).toMatch(/login script/);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
      expect(await session!.exec('echo 4', 'x', { timeoutMs: 10_000 })).toMatchObject({ code: 4, stdout: 'x' });
    });

    it('exec reports a signal', async () => {
      expect(await session!.exec('signal')).toMatchObject({ code: null, signal: 'SIGTERM' });
    });

    it('runs several execs at once on one connection', async () => {
      const rs = await Promise.all([1, 2, 3].map((n) => session!.exec(`echo ${n}`, `in${n}`)));
      expect(rs.map((r) => [r.code, r.stdout])).toEqual([
        [1, 'in1'],
        [2, 'in2'],
        [3, 'in3'],
      ]);
    });

    it('channel() gives a duplex stream to the command', async () => {
      const ch = await session!.channel('echo 5');
      const out: Buffer[] = [];
      ch.on('data', (d: Buffer) => out.push(d));
      const code = new Promise<number>((resolve) => ch.on('exit', (c: number) => resolve(c)));
      const closed = new Promise<void>((resolve) => ch.on('close', () => resolve()));
      ch.end('streamed');
      expect(await code).toBe(5);
      await closed;
      expect(Buffer.concat(out).toString()).toBe('streamed');
    });

    it('forwardOut reaches a TCP server on the target side', async () => {
      const echo = await echoServer();
      extra.push(() => new Promise<void>((resolve) => echo.server.close(() => resolve())));
      const ch = await session!.forwardOut('127.0.0.1', echo.port);
      const got = new Promise<string>((resolve) => {
        let s = '';
        ch.on('data', (d: Buffer) => {
          s += d.toString();
          if (s.length >= 9) resolve(s);
        });
      });
      ch.write('ping-pong');
      expect(await got).toBe('ping-pong');
      expect(srv!.forwards).toEqual([{ destIP: '127.0.0.1', destPort: echo.port }]);
      ch.end();
    });

    it('forwardOut to a refused channel is SSH_FAILED', async () => {
      const port = await closedPort();
      expect(await codeOf(session!.forwardOut('127.0.0.1', port))).toBe('SSH_FAILED');
      expect(session!.isOpen).toBe(true);
    });

    it('lost() rejects with CONNECTION_LOST when the server ends the connection', async () => {
      const lost = session!.lost();
      srv!.connections[0]!.end();
      expect(await codeOf(lost)).toBe('CONNECTION_LOST');
      expect(session!.isOpen).toBe(false);
      // Later calls fail at once, with the same code.
      expect(await codeOf(session!.lost())).toBe('CONNECTION_LOST');
      expect(await codeOf(session!.exec('echo 0'))).toBe('CONNECTION_LOST');
      expect(await codeOf(session!.forwardOut('127.0.0.1', 1))).toBe('CONNECTION_LOST');
    });

    it('an exec in flight rejects with CONNECTION_LOST when the connection drops', async () => {
      const pending = session!.exec('hang');
      while (srv!.execs.length === 0) await new Promise((r) => setTimeout(r, 5));
      expect(srv!.execs).toEqual(['hang']);
      srv!.connections[0]!.end();
      expect(await codeOf(pending)).toBe('CONNECTION_LOST');
    });

    it('an exec whose command ends the connection rejects with CONNECTION_LOST', async () => {
      expect(await codeOf(session!.exec('drop'))).toBe('CONNECTION_LOST');
    });

    it('close() ends the connection on the server side too', async () => {
      session!.close();
      await srv!.closed[0];
      expect(await codeOf(session!.lost())).toBe('CONNECTION_LOST');
    });
  });

  it('ProxyJump: reaches the target through a forwarded channel of the jump host', async () => {
    await writeFile(knownHosts, knownLine(srv!.port, HOST_KEY.public));
    session = await SshSession.connect('jumped', { sshDir });
    // Two SSH connections: the jump host's, and the target's through its tcpip channel.
    expect(srv!.connections).toHaveLength(2);
    expect(srv!.forwards).toEqual([{ destIP: '127.0.0.1', destPort: srv!.port }]);
    expect(await session.exec('echo 7', 'via jump')).toMatchObject({ code: 7, stdout: 'via jump' });
  });

  it('ProxyJump: a jump host that refuses the forward is SSH_UNREACHABLE, and its connection is closed', async () => {
    await srv!.close();
    srv = await startServer({ refuseForward: true });
    await writeConfig(srv.port);
    await writeFile(knownHosts, knownLine(srv.port, HOST_KEY.public));
    const err = await SshSession.connect('jumped', { sshDir }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CedanaError);
    expect((err as CedanaError).code).toBe('SSH_UNREACHABLE');
    expect((err as CedanaError).message).toContain(`the jump host target cannot reach 127.0.0.1:${srv.port}`);
    expect(srv.forwards).toHaveLength(1);
    expect(srv.connections).toHaveLength(1);
    await srv.closed[0]; // the jump session was closed, not left behind
  });
});

describe('shq', () => {
  it.each([[''], ['plain'], ["it's"], ["'"], ['$(id) `id` $HOME "q" \\ *'], ['a\nb'], ["''"]])('%j round-trips through sh', (s) => {
    expect(execFileSync('sh', ['-c', `printf %s ${shq(s)}`]).toString()).toBe(s);
  });
});
