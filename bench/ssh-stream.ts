/**
 * The ssh phase: how fast one SSH connection carries a bulk stream from this host to the test-bed
 * host, OpenSSH against cedana's transport (ssh2), on the same link, alternating every repetition.
 * The data is a file of random bytes in the page cache, the same for every contestant.
 *
 *   OpenSSH  `ssh -c aes128-gcm@openssh.com host 'cat > /dev/null' < file`, the same with OpenSSH's
 *            default cipher, and `ssh -W 127.0.0.1:PORT host < file` (a direct-tcpip channel to a
 *            sink on the target's loopback, the kind of channel migrate uses);
 *   cedana   the page stream as migrate drives it by default (src/transport/openssh.ts): another
 *            process (as CRIU) writes into a socket whose other end is `ssh -W` through cedana's
 *            own ControlMaster connection, pinned to the host key the ssh2 session verified;
 *   ssh2     SshSession.forwardOut to the same sink (migrate's fallback without OpenSSH), the
 *            page bridge as migrate drives it then (a unix socket from another process, as CRIU's
 *            --ps-socket, bridged into the channel), and an exec channel running `cat > /dev/null`.
 *
 * OpenSSH runs through a ControlMaster connection per cipher, so that no contestant's time
 * includes a handshake: each transfer opens a channel on a connection already up.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { mkdtemp, open } from 'node:fs/promises';
import { randomFillSync } from 'node:crypto';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { openPageChannel } from '../src/migrate/page-proxy.js';
import { shq, SshSession } from '../src/transport/ssh.js';
import { OpenSshLink } from '../src/transport/openssh.js';
import type { BenchBed } from './bed.js';
import { start, type Started } from './exec.js';
import { MB, median, type Goal, type Row } from './stats.js';

export interface StreamConfig {
  mib: number;
  reps: number;
}

export interface StreamCtx {
  cfg: StreamConfig;
  bed: BenchBed;
  tmp: string;
  progress(msg: string): void;
}

export const AES_GCM = 'aes128-gcm@openssh.com';

/** Contestants, in the order each repetition runs them. */
export const STREAMS = ['openssh-aes128-gcm', 'openssh-default', 'openssh-W-aes128-gcm', 'cedana-openssh-link', 'ssh2-forwardOut', 'ssh2-page-bridge', 'ssh2-exec-cat'] as const;
export type StreamName = (typeof STREAMS)[number];

export interface StreamSamples {
  bytes: number;
  /** Milliseconds per transfer, per contestant. */
  ms: Record<StreamName, number[]>;
  /** What OpenSSH negotiates without -c. */
  defaultCipher: string;
}

const GOAL_SSH2: Goal = { on: 'ratio', op: '>=', limit: 0.9 };

/** Reads each connection to its end, answers with the byte count and closes; prints one line per connection. */
const SINK = `
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(sys.argv[1])))
s.listen(8)
print('ready', os.getpid(), flush=True)
buf = bytearray(1 << 20)
while True:
    c, _ = s.accept()
    n = 0
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        n += k
    try:
        c.sendall(b'%d\\n' % n)
    except OSError:
        pass
    c.close()
    print('got', n, flush=True)
`;

interface Sink {
  port: number;
  pid: number;
  control: Started;
  /** The byte count of the next connection the sink finishes. */
  got(): Promise<number>;
}

/** Starts the sink on the target over a separate OpenSSH connection (not one being measured). */
async function startSink(s: StreamCtx): Promise<Sink> {
  for (let attempt = 0; ; attempt++) {
    const port = 20000 + Math.floor(Math.random() * 40000);
    const control = start('ssh', [...s.bed.sshOpts, s.bed.host.name, `exec python3 -c ${shq(SINK)} ${port}`]);
    const counts: number[] = [];
    const waiting: ((n: number) => void)[] = [];
    let out = '';
    const ready = await Promise.race([
      new Promise<number>((resolve) => {
        control.child.stdout?.on('data', (d: Buffer) => {
          out += d.toString();
          let nl: number;
          while ((nl = out.indexOf('\n')) >= 0) {
            const line = out.slice(0, nl);
            out = out.slice(nl + 1);
            const r = /^ready (\d+)$/.exec(line);
            if (r) resolve(Number(r[1]));
            const g = /^got (\d+)$/.exec(line);
            if (g) counts.push(Number(g[1]));
          }
          while (counts.length > 0 && waiting.length > 0) waiting.shift()!(counts.shift()!);
        });
      }),
      control.done.then(() => 0),
    ]);
    const got = async (): Promise<number> => {
      const next = counts.length > 0 ? Promise.resolve(counts.shift()!) : new Promise<number>((resolve) => waiting.push(resolve));
      return Promise.race([next, sleep(10_000).then(() => Number.NaN)]);
    };
    if (ready > 0) return { port, pid: ready, control, got };
    if (attempt >= 5) throw new Error(`the sink does not start on ${s.bed.host.name}: ${(await control.done).stderr.trim().slice(-300)}`);
  }
}

async function stopSink(s: StreamCtx, sink: Sink): Promise<void> {
  await s.bed.ssh(`kill ${sink.pid}`).catch(() => undefined);
  await sink.control.done.catch(() => undefined);
}

interface Master {
  socket: string;
  proc: Started;
}

/** An OpenSSH ControlMaster connection with the given cipher (or the default). */
async function startMaster(s: StreamCtx, name: string, cipher?: string): Promise<Master> {
  const socket = join(s.tmp, `mux-${name}`);
  const proc = start('ssh', [...s.bed.sshOpts, '-M', '-S', socket, '-N', '-o', 'ControlPersist=no', ...(cipher ? ['-c', cipher] : []), s.bed.host.name]);
  const deadline = performance.now() + 15_000;
  for (;;) {
    const check = await start('ssh', [...s.bed.sshOpts, '-S', socket, '-O', 'check', s.bed.host.name]).done;
    if (check.code === 0) return { socket, proc };
    if (proc.child.exitCode !== null || performance.now() > deadline) {
      throw new Error(`OpenSSH master (${cipher ?? 'default cipher'}) does not come up: ${(await proc.done).stderr.trim().slice(-300)}`);
    }
    await sleep(20);
  }
}

async function stopMaster(s: StreamCtx, m: Master): Promise<void> {
  await start('ssh', [...s.bed.sshOpts, '-S', m.socket, '-O', 'exit', s.bed.host.name]).done.catch(() => undefined);
  await m.proc.done.catch(() => undefined);
}

/** A transfer through a master: the file is the client's stdin, which the master reads itself. */
async function openssh(s: StreamCtx, m: Master, file: string, args: string[]): Promise<number> {
  const fh = await open(file, 'r');
  try {
    const exit = await start('ssh', [...s.bed.sshOpts, '-S', m.socket, ...args], { stdio: [fh.fd, 'pipe', 'pipe'] }).done;
    if (exit.code !== 0) throw new Error(`ssh ${args.join(' ')}: exit ${exit.code ?? exit.signal}: ${exit.stderr.trim().slice(-300)}`);
    return exit.ms;
  } finally {
    await fh.close();
  }
}

/** Resolves with the sink's answer (the byte count) once the channel has closed. */
function answer(ch: Duplex): Promise<number> {
  let text = '';
  ch.on('data', (d: Buffer) => (text += d.toString()));
  return once(ch, 'close').then(() => Number(text.trim()));
}

async function ssh2Forward(session: SshSession, sink: Sink, file: string): Promise<[number, number]> {
  const t0 = performance.now();
  const ch = await session.forwardOut('127.0.0.1', sink.port);
  const got = answer(ch);
  createReadStream(file, { highWaterMark: 1 << 20 }).pipe(ch);
  const n = await got;
  return [performance.now() - t0, n];
}

/**
 * migrate's path: another process writes into a unix socket (as CRIU into --ps-socket), bridged into
 * the channel. Timed until the sink reports the last byte: the local socket closes as soon as the
 * writer is done, while the channel may still hold data.
 */
async function ssh2Bridge(session: SshSession, sink: Sink, file: string): Promise<[number, number]> {
  const t0 = performance.now();
  const bridge = await openPageChannel(session, sink.port);
  const writer = spawn('sh', ['-c', 'exec cat "$1" >&3', 'page-writer', file], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
  const exited = once(writer, 'exit');
  const b = bridge(writer.stdio[3] as unknown as Duplex);
  const got = await sink.got();
  const ms = performance.now() - t0;
  const [code] = (await exited) as [number | null];
  b.close();
  if (code !== 0) throw new Error(`the page writer (cat) exited ${code}`);
  if (b.bytes() !== got) throw new Error(`page bridge: ${b.bytes()} bytes bridged, the sink got ${got}`);
  return [ms, got];
}

/** migrate's default: a writer process (as CRIU) straight into OpenSSH through cedana's link. */
async function opensshLink(link: OpenSshLink, sink: Sink, file: string): Promise<[number, number]> {
  const t0 = performance.now();
  const s = link.stream('127.0.0.1', sink.port);
  const writer = spawn('cat', [file], { stdio: ['ignore', s.socket, 'pipe'] });
  s.socket.destroy(); // the writer and OpenSSH hold the socket now, as CRIU and OpenSSH do in migrate
  const exited = once(writer, 'exit');
  const got = await sink.got();
  const ms = performance.now() - t0;
  const [code] = (await exited) as [number | null];
  s.kill();
  if (code !== 0) throw new Error(`the page writer (cat) exited ${code}`);
  return [ms, got];
}

async function ssh2Exec(session: SshSession, file: string): Promise<[number, number]> {
  const t0 = performance.now();
  const ch = await session.channel('cat > /dev/null; echo done');
  const got = answer(ch);
  createReadStream(file, { highWaterMark: 1 << 20 }).pipe(ch);
  await got;
  return [performance.now() - t0, Number.NaN];
}

async function makeData(path: string, bytes: number): Promise<void> {
  const fh = await open(path, 'w', 0o600);
  try {
    const chunk = Buffer.allocUnsafe(8 << 20);
    for (let off = 0; off < bytes; off += chunk.length) {
      const n = Math.min(chunk.length, bytes - off);
      randomFillSync(chunk, 0, n);
      await fh.write(chunk, 0, n);
    }
  } finally {
    await fh.close();
  }
  await start('cat', [path], { stdio: ['ignore', 'ignore', 'pipe'] }).done; // into the page cache
}

async function defaultCipher(s: StreamCtx): Promise<string> {
  const exit = await start('ssh', ['-v', ...s.bed.sshOpts, s.bed.host.name, 'true']).done;
  return /kex: client->server cipher: (\S+)/.exec(exit.stderr)?.[1] ?? 'unknown';
}

export async function streamRounds(s: StreamCtx): Promise<StreamSamples> {
  const bytes = s.cfg.mib * 1024 * 1024;
  const file = join(s.tmp, 'stream.bin');
  s.progress(`ssh: writing ${s.cfg.mib} MiB of random bytes`);
  await makeData(file, bytes);
  const cipher = await defaultCipher(s);
  const sink = await startSink(s);
  const gcm = await startMaster(s, 'gcm', AES_GCM);
  const dflt = await startMaster(s, 'default');
  const session = await SshSession.connect(s.bed.host.name, { sshDir: s.bed.sshDir });
  const link = await OpenSshLink.open(session.direct!, await mkdtemp(join(s.tmp, 'link-')), s.bed.host.name);
  const ms = Object.fromEntries(STREAMS.map((n) => [n, [] as number[]])) as Record<StreamName, number[]>;
  const host = s.bed.host.name;
  /** The transfer's time, once the sink has confirmed every byte. */
  const checked = async ([t, n]: [number, number], what: string, viaSink = true): Promise<number> => {
    const got = viaSink ? await sink.got() : bytes;
    if ((!Number.isNaN(n) && n !== bytes) || got !== bytes) throw new Error(`${what}: ${n} bytes sent, the sink got ${got}, of ${bytes}`);
    return t;
  };
  try {
    const run: Record<StreamName, () => Promise<number>> = {
      'openssh-aes128-gcm': () => openssh(s, gcm, file, [host, 'cat > /dev/null']),
      'openssh-default': () => openssh(s, dflt, file, [host, 'cat > /dev/null']),
      'openssh-W-aes128-gcm': async () => checked([await openssh(s, gcm, file, ['-W', `127.0.0.1:${sink.port}`, host]), Number.NaN], 'ssh -W'),
      'cedana-openssh-link': async () => checked(await opensshLink(link, sink, file), 'OpenSSH link', false),
      'ssh2-forwardOut': async () => checked(await ssh2Forward(session, sink, file), 'forwardOut'),
      'ssh2-page-bridge': async () => checked(await ssh2Bridge(session, sink, file), 'page bridge', false),
      'ssh2-exec-cat': async () => checked(await ssh2Exec(session, file), 'exec', false),
    };
    // One unmeasured pass: the first transfer on each connection is slower (cold pages, cold caches).
    s.progress('ssh: warm-up, one transfer each (not measured)');
    for (const name of STREAMS) await run[name]();
    for (let i = 0; i < s.cfg.reps; i++) {
      s.progress(`${i + 1}/${s.cfg.reps} ssh: ${s.cfg.mib} MiB through ${STREAMS.join(', ')}`);
      for (const name of STREAMS) ms[name].push(await run[name]());
    }
  } finally {
    await link.close();
    session.close();
    await stopMaster(s, gcm);
    await stopMaster(s, dflt);
    await stopSink(s, sink);
  }
  return { bytes, ms, defaultCipher: cipher };
}

export function streamRows(s: StreamSamples): Row[] {
  const rate = (name: StreamName): number => median(s.ms[name].map((t) => s.bytes / MB / (t / 1000)));
  const gcm = rate('openssh-aes128-gcm');
  const base = { baseline: gcm, baselineLabel: 'OpenSSH aes128-gcm' };
  return [
    { name: 'ssh: OpenSSH aes128-gcm, cat > /dev/null', unit: 'MB/s', value: gcm },
    { name: `ssh: OpenSSH default (${s.defaultCipher}), cat`, unit: 'MB/s', value: rate('openssh-default'), ...base },
    { name: 'ssh: OpenSSH aes128-gcm, -W → sink', unit: 'MB/s', value: rate('openssh-W-aes128-gcm'), ...base },
    { name: 'ssh: cedana page stream (OpenSSH link, migrate\'s default) → sink', unit: 'MB/s', value: rate('cedana-openssh-link'), ...base, goal: GOAL_SSH2 },
    { name: 'ssh: ssh2 forwardOut → sink (fallback)', unit: 'MB/s', value: rate('ssh2-forwardOut'), ...base },
    { name: 'ssh: ssh2 page bridge (migrate\'s fallback) → sink', unit: 'MB/s', value: rate('ssh2-page-bridge'), ...base },
    { name: 'ssh: ssh2 exec, cat > /dev/null', unit: 'MB/s', value: rate('ssh2-exec-cat'), ...base },
  ];
}
