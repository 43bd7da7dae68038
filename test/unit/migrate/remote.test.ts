/**
 * remote.ts is I/O over SSH; here the session is a stand-in: its exec runs the command with the local
 * sh where that is harmless (mktemp, rm), or returns canned results where the target would run CRIU.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { cleanupRemote, makeRemoteDir, openRestore, placementScript, startPageServer, type RemoteDir } from '../../../src/migrate/remote.js';
import type { ShippedEntry } from '../../../src/image/ship.js';
import type { ExecResult, SshSession } from '../../../src/transport/ssh.js';

type Exec = (command: string, stdin?: Buffer | string) => Promise<ExecResult>;

function fakeSession(exec: Exec, over: Partial<Record<'isOpen' | 'channel' | 'lost', unknown>> = {}): SshSession & { commands: string[] } {
  const commands: string[] = [];
  return {
    target: 'root@b',
    isOpen: true,
    commands,
    exec: (command: string, stdin?: Buffer | string) => {
      commands.push(command);
      return exec(command, stdin);
    },
    lost: () => new Promise<never>(() => undefined),
    ...over,
  } as unknown as SshSession & { commands: string[] };
}

/** Runs the command with the local sh, as the target's sshd would. */
const localSh: Exec = async (command) => {
  const r = spawnSync('sh', ['-c', command], { encoding: 'utf8' });
  return { code: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
};

const result = (code: number | null, stdout = '', stderr = ''): ExecResult => ({ code, signal: null, stdout, stderr });

async function codeOf(p: Promise<unknown>): Promise<CedanaError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(CedanaError);
  return e as CedanaError;
}

describe('makeRemoteDir and cleanupRemote (with the local sh)', () => {
  let parent: string;
  beforeEach(async () => {
    parent = await mkdtemp(join(tmpdir(), 'cedana remote '));
  });
  afterEach(async () => {
    await rm(parent, { recursive: true, force: true });
  });

  it('creates a private work directory with an img subdirectory, in a parent with a space in its name', async () => {
    const d = await makeRemoteDir(fakeSession(localSh), parent);
    expect(d.dir.startsWith(`${parent}/cedana-migrate.`)).toBe(true);
    expect(d.images).toBe(`${d.dir}/img`);
    expect(statSync(d.images).isDirectory()).toBe(true);
    expect(statSync(d.dir).mode & 0o777).toBe(0o700);
  });

  it('TARGET_NO_SPACE when the directory cannot be made, quoting the error', async () => {
    const e = await codeOf(makeRemoteDir(fakeSession(localSh), join(parent, 'does-not-exist')));
    expect(e.code).toBe('TARGET_NO_SPACE');
    expect(e.message).toContain('on root@b');
    expect(e.message).toMatch(/mktemp/);
  });

  it('TARGET_NO_SPACE when the command prints something that is not a path', async () => {
    const e = await codeOf(makeRemoteDir(fakeSession(async () => result(0, 'banner\n')), parent));
    expect(e.code).toBe('TARGET_NO_SPACE');
  });

  it('cleanupRemote removes the directory, stops the page server by its pid file and kills the given pids', async () => {
    const d = await makeRemoteDir(fakeSession(localSh), parent);
    const sleeper = spawnSync('sh', ['-c', 'sleep 30 >/dev/null 2>&1 & echo $!'], { encoding: 'utf8' });
    const pid = Number(sleeper.stdout.trim());
    expect(pid).toBeGreaterThan(0);
    await writeFile(join(d.dir, 'page-server.pid'), `${pid}\n`);
    const s = fakeSession(localSh);
    expect(await cleanupRemote(s, d, [2 ** 22 + 1])).toBe(true);
    expect(existsSync(d.dir)).toBe(false);
    expect(s.commands[0]).toContain(`kill -9 ${2 ** 22 + 1}`);
    // The page server (here: sleep) got its TERM: it is gone, or a zombie waiting for its reaper.
    const dead = (): boolean => {
      try {
        return /^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
      } catch {
        return true;
      }
    };
    for (let i = 0; i < 100 && !dead(); i++) await new Promise((r) => setTimeout(r, 10));
    const ok = dead();
    if (!ok) process.kill(pid, 'SIGKILL');
    expect(ok).toBe(true);
  });

  it('cleanupRemote works without a page server pid file', async () => {
    const d = await makeRemoteDir(fakeSession(localSh), parent);
    expect(await cleanupRemote(fakeSession(localSh), d)).toBe(true);
    expect(existsSync(d.dir)).toBe(false);
  });

  it('cleanupRemote does nothing on a closed session and swallows a failing exec', async () => {
    const d = { dir: join(parent, 'x'), images: join(parent, 'x', 'img') };
    const closed = fakeSession(localSh, { isOpen: false });
    expect(await cleanupRemote(closed, d)).toBe(false);
    expect(closed.commands).toEqual([]);
    const failing = fakeSession(() => Promise.reject(new CedanaError('CONNECTION_LOST', 'gone')));
    expect(await cleanupRemote(failing, d)).toBe(false);
  });
});

describe('startPageServer (canned results: no CRIU)', () => {
  const d = { dir: '/var/tmp/cedana-migrate.abc', images: '/var/tmp/cedana-migrate.abc/img' };

  it('returns the port of the first start that succeeds', async () => {
    let n = 0;
    const s = fakeSession(async () => (++n < 3 ? result(1, '', 'Address already in use') : result(0)));
    const port = await startPageServer(s, d);
    expect(s.commands).toHaveLength(3);
    expect(port).toBeGreaterThanOrEqual(20000);
    expect(port).toBeLessThan(61000);
    expect(s.commands[2]).toContain(`--address 127.0.0.1 --port ${port} -d`);
    expect(s.commands[2]).toContain(`-D '${d.images}' -W '${d.dir}'`);
  });

  it('TARGET_UNSUPPORTED after 8 failed starts, quoting the last error', async () => {
    const s = fakeSession(async () => result(1, '', 'Error: no page server for you'));
    const e = await codeOf(startPageServer(s, d));
    expect(s.commands).toHaveLength(8);
    expect(e.code).toBe('TARGET_UNSUPPORTED');
    expect(e.message).toContain('no page server for you');
    expect(e.hint).toContain(`${d.dir}/page-server.log`);
  });
});

/** What migrate does at the commit point: the restore command, then the metadata into it. */
async function sendAndRestore(s: Parameters<typeof openRestore>[0], d: RemoteDir, tar: (dest: NodeJS.WritableStream) => Promise<void>, flags: string[], lock: string) {
  return (await openRestore(s, d, flags, lock, { treePids: [4321] })).send(tar);
}

describe('openRestore + send (a stand-in channel: no CRIU)', () => {
  const d = { dir: '/var/tmp/w', images: '/var/tmp/w/img' };

  /** A channel that takes stdin, then answers with the given output and exit code. */
  function channel(code: number | null, stdout: string, stderr = ''): Writable & { stderr: Writable; received: Buffer[]; command?: string } {
    const received: Buffer[] = [];
    const ch = new Writable({
      emitClose: false,
      write(chunk: Buffer, _enc, cb) {
        received.push(chunk);
        cb();
      },
      final(cb) {
        cb();
        setImmediate(() => {
          if (stdout) ch.emit('data', Buffer.from(stdout));
          if (stderr) ch.stderr.emit('data', Buffer.from(stderr));
          ch.emit('exit', code);
          ch.emit('close');
        });
      },
    }) as Writable & { stderr: Writable; received: Buffer[] };
    ch.stderr = new Writable({ write: (_c, _e, cb) => cb() });
    ch.received = received;
    return ch;
  }

  /** The target's lifeline: `keep` is confirmed with `kept`, anything else ends the restore (`ended`). */
  function lifeline(): Writable {
    let line = '';
    const w: Writable = new Writable({
      write(chunk: Buffer, _enc, cb) {
        line += chunk.toString();
        cb();
      },
      final(cb) {
        cb();
        setImmediate(() => {
          w.emit('data', Buffer.from(line.startsWith('keep') ? 'kept\n' : 'ended\n'));
          w.emit('close');
        });
      },
    });
    return w;
  }

  const tar = (dest: NodeJS.WritableStream): Promise<void> => new Promise<void>((resolve) => dest.end('TARBYTES', () => resolve()));

  function session(ch: ReturnType<typeof channel>, lost?: () => Promise<never>): SshSession & { command?: string } {
    const s = fakeSession(async () => result(0), {
      // The lifeline (it reads one line) answers as the target's does; the other channel is the restore.
      channel: async (command: string) => {
        if (command.includes('read -r cmd')) return lifeline();
        (s as { command?: string }).command = command;
        return ch;
      },
      ...(lost ? { lost } : {}),
    });
    return s;
  }

  it('sends the tar stream and returns the restored pid', async () => {
    const ch = channel(0, 'pid=4321\n');
    const s = session(ch);
    expect(await sendAndRestore(s, d, tar, ['--tcp-established', "--ext 'x'"], 'iptables')).toEqual({ pid: 4321 });
    expect(Buffer.concat(ch.received).toString()).toBe('TARBYTES');
    const cmd = s.command!;
    expect(cmd.startsWith("sh -c '")).toBe(true);
    // Unquote the sh -c argument: it is the script the target runs.
    const script = spawnSync('sh', ['-c', `printf %s ${cmd.slice('sh -c '.length)}`], { encoding: 'utf8' }).stdout;
    expect(script).toContain("cd '/var/tmp/w/img' || exit 99");
    expect(script).toContain('sha256sum -c --quiet --strict cedana.sha256 >&2 || exit 98');
    expect(script).toContain("--network-lock iptables --restore-detached --pidfile '/var/tmp/w/restored.pid' ${check:+--action-script \"$check\"} '--tcp-established' '--ext '\\''x'\\'''");
  });

  it('IMAGE_INVALID when the checksums fail on the target (exit 98)', async () => {
    const e = await codeOf(sendAndRestore(session(channel(98, '', 'pages-1.img: FAILED\nsha256sum: WARNING: 1 computed checksum did NOT match\n')), d, tar, [], 'iptables'));
    expect(e.code).toBe('IMAGE_INVALID');
    expect(e.message).toContain('pages-1.img: FAILED | sha256sum: WARNING');
  });

  it('TARGET_RESTORE_FAILED with CRIU’s error lines, timestamps stripped', async () => {
    const out = 'criu=(00.012345) Error (criu/files-reg.c:1890): Can\'t open file srv/x on restore: No such file\ncriu=(00.020000) Error (criu/cr-restore.c:2500): Restoring FAILED.\n';
    const e = await codeOf(sendAndRestore(session(channel(1, out)), d, tar, [], 'nftables'));
    expect(e.code).toBe('TARGET_RESTORE_FAILED');
    expect(e.message).toContain('(exit 1)');
    expect(e.details).toEqual({
      criuLines: ["Error (criu/files-reg.c:1890): Can't open file srv/x on restore: No such file", 'Error (criu/cr-restore.c:2500): Restoring FAILED.'],
    });
  });

  it('TARGET_RESTORE_FAILED when criu exits 0 but no pid comes back', async () => {
    const e = await codeOf(sendAndRestore(session(channel(0, 'pid=\n')), d, tar, [], 'iptables'));
    expect(e.code).toBe('TARGET_RESTORE_FAILED');
    expect(e.details).toEqual({ criuLines: [] });
  });

  it('CONNECTION_LOST when the connection drops while waiting', async () => {
    const ch = channel(0, 'pid=1\n');
    const lost = (): Promise<never> => Promise.reject(new CedanaError('CONNECTION_LOST', 'the SSH connection to root@b was lost'));
    const hanging = (): Promise<void> => new Promise<void>(() => undefined); // the tar never finishes: the loss must end the wait
    const e = await codeOf(sendAndRestore(session(ch, lost), d, hanging, [], 'iptables'));
    expect(e.code).toBe('CONNECTION_LOST');
  });
});

describe('placementScript (run with the local sh, as the target runs it)', () => {
  let parent: string;
  let d: RemoteDir;
  beforeEach(async () => {
    parent = await mkdtemp(join(tmpdir(), 'cedana place '));
    d = await makeRemoteDir(fakeSession(localSh), parent);
    await mkdir(join(d.images, 'shipped'));
    await writeFile(join(d.images, 'shipped', '0'), 'data\n');
  });
  afterEach(() => rm(parent, { recursive: true, force: true }));

  const entries = (): ShippedEntry[] => [
    { path: join(parent, 'job dir'), kind: 'dir', mode: 0o750, uid: 0, gid: 0, size: 0, mtimeMs: 0 },
    { path: join(parent, 'job dir', "it's.bin"), kind: 'file', mode: 0o640, uid: 0, gid: 0, size: 5, mtimeMs: 1_600_000_000_250, image: 'shipped/0' },
  ];
  const place = (lines: string[]): { status: number | null; stderr: string } => {
    const r = spawnSync('sh', ['-e', '-c', lines.join('\n')], { cwd: d.images, encoding: 'utf8' });
    return { status: r.status, stderr: r.stderr };
  };

  it('creates the directory and the file with mode and mtime, records them, and cleanup with undo removes them', async () => {
    expect(place(placementScript(entries(), [], d)).status).toBe(0);
    const f = join(parent, 'job dir', "it's.bin");
    expect(readFileSync(f, 'utf8')).toBe('data\n');
    expect(statSync(f).mode & 0o777).toBe(0o640);
    expect(statSync(join(parent, 'job dir')).mode & 0o777).toBe(0o750);
    expect(Math.round(statSync(f).mtimeMs)).toBe(1_600_000_000_250);
    expect(readFileSync(join(d.dir, 'placed'), 'utf8')).toBe(`${join(parent, 'job dir')}\n${f}\n`);
    expect(await cleanupRemote(fakeSession(localSh), d, [], true)).toBe(true);
    expect(existsSync(join(parent, 'job dir'))).toBe(false);
  });

  it('keeps a file of the same size, follows --map-path, and a file of another size exits 96', async () => {
    await mkdir(join(parent, 'new'));
    await writeFile(join(parent, 'new', "it's.bin"), 'DATA\n');
    expect(place(placementScript(entries(), [{ from: join(parent, 'job dir'), to: join(parent, 'new') }], d)).status).toBe(0);
    expect(readFileSync(join(parent, 'new', "it's.bin"), 'utf8')).toBe('DATA\n');
    await writeFile(join(parent, 'new', "it's.bin"), 'longer data\n');
    const r = place(placementScript(entries(), [{ from: join(parent, 'job dir'), to: join(parent, 'new') }], d));
    expect(r.status).toBe(96);
    expect(r.stderr).toContain('exists there with another size');
  });

  it('cleanup without undo leaves what was placed (a committed migration)', async () => {
    expect(place(placementScript(entries(), [], d)).status).toBe(0);
    expect(await cleanupRemote(fakeSession(localSh), d)).toBe(true);
    expect(existsSync(join(parent, 'job dir', "it's.bin"))).toBe(true);
  });
});
