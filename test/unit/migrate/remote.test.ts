/**
 * remote.ts is I/O over SSH; here the session is a stand-in: its exec runs the command with the local
 * sh where that is harmless (mktemp, rm), or returns canned results where the target would run CRIU.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { cleanupRemote, lifelineScript, LOCK_WAIT_LIMIT_S, lockBlocked, makeRemoteDir, openRestore, placementScript, restoreLines, startPageServer, type RemoteDir } from '../../../src/migrate/remote.js';
import { REMOTE_PATH } from '../../../src/migrate/preflight.js';
import { parseLockLine } from '../../../src/proc/locks.js';
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

describe('lockBlocked', () => {
  it.each([
    ['72', 'POSIX lock (fcntl)'], // x86-64 fcntl
    ['25', 'POSIX lock (fcntl)'], // arm64 fcntl
    ['73', 'flock'], // x86-64 flock
    ['32', 'flock'], // arm64 flock
  ])('syscall %s is a %s', (nr, call) => {
    const e = lockBlocked('root@b', `lock=4242 ${nr} /srv/app/db.sqlite\n`);
    expect(e.message).toContain(`waited for a ${call} on /srv/app/db.sqlite`);
  });

  it('TARGET_LOCK_BLOCKED, exit 19, with the file and the waiting PID, found among other output', () => {
    const e = lockBlocked('root@b', 'criu=(00.1) Error (criu/x.c:1): y\nlock=4242 73 /nfs/my data/app.lock\n');
    expect(e).toBeInstanceOf(CedanaError);
    expect(e.code).toBe('TARGET_LOCK_BLOCKED');
    expect(e.exitCode).toBe(19);
    expect(e.message).toBe('the restore on root@b waited for a flock on /nfs/my data/app.lock, held there by another process, and was ended after 2 s');
    expect(e.details).toEqual({ file: '/nfs/my data/app.lock', pid: 4242 });
    expect(e.hint).toContain('cedana dump');
  });

  it('without a path (the descriptor was gone), "a file"', () => {
    expect(lockBlocked('b', 'lock=4242 72 \n').message).toContain('POSIX lock (fcntl) on a file,');
    expect(lockBlocked('b', 'lock=4242 72\n').message).toContain('on a file,');
  });
});

describe('lifelineScript and restoreLines (text)', () => {
  const d: RemoteDir = { dir: '/var/tmp/cedana-migrate.Ab12', images: '/var/tmp/cedana-migrate.Ab12/img' };

  it('lifeline: reads one line; keep answers kept; otherwise ends CRIU’s restore tree, the restored PIDs once restored.pid is written, the daemons, the work dir', () => {
    const s = lifelineScript(d, [4242, 4243]);
    const lines = s.split('\n');
    expect(lines[0]).toBe(REMOTE_PATH);
    expect(s).toContain('IFS= read -r cmd || cmd=lost');
    expect(s).toContain('if [ "$cmd" = keep ]; then echo kept');
    expect(s).toContain(`c=$(cat '/var/tmp/cedana-migrate.Ab12/restore-criu.pid' 2>/dev/null); [ -n "$c" ] && kill -9 $(tree_of "$c")`);
    expect(s).toContain(`[ -s '/var/tmp/cedana-migrate.Ab12/restored.pid' ] && kill -9 4242 4243 2>/dev/null`);
    expect(s).toContain(`'/var/tmp/cedana-migrate.Ab12/page-server.pid'`);
    expect(s).toContain(`'/var/tmp/cedana-migrate.Ab12/lazy-pages.pid'`);
    expect(s).toContain(`rm -rf '/var/tmp/cedana-migrate.Ab12'`);
    expect(lines.at(-1)).toBe('echo ended 2>/dev/null');
  });

  it('restoreLines: the restore in the background, its PID in restore-criu.pid, a watcher over the tree PIDs, lock-blocked → exit 94', () => {
    const lines = restoreLines(d, 'criu restore -D x', [4242, 4243]);
    expect(lines[0]).toBe('criu restore -D x &');
    expect(lines).toContain(`echo $c > '/var/tmp/cedana-migrate.Ab12/restore-criu.pid'`);
    const watch = lines.find((l) => l.startsWith('( '))!;
    expect(watch).toContain('for p in 4242 4243; do');
    expect(watch).toContain('FCNTL=72 FLOCK=73');
    expect(watch).toContain('FCNTL=25 FLOCK=32');
    expect(watch).toContain(`[ $n -ge ${LOCK_WAIT_LIMIT_S * 5} ]`);
    expect(watch).toContain(`> '/var/tmp/cedana-migrate.Ab12/lock-blocked'`);
    expect(lines).toContain('wait $c; rc=$?');
    expect(lines.at(-1)).toMatch(/^if \[ -s '\/var\/tmp\/cedana-migrate\.Ab12\/lock-blocked' \]; then echo "lock=\$\(cat .*exit 94; fi$/);
  });
});

/** Whether a PID runs (a zombie does not). */
function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

async function until(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

describe('lifelineScript run with the local sh (stand-in processes: no CRIU)', () => {
  let parent: string;
  let d: RemoteDir;
  const started: ChildProcess[] = [];

  /** A stand-in for CRIU's restore: sh with a sleep below it (tree_of must reach the child). Returns [sh, its child]. */
  async function standIn(): Promise<[number, number]> {
    const p = spawn('sh', ['-c', 'sleep 300 & echo $!; wait'], { stdio: ['ignore', 'pipe', 'ignore'] });
    started.push(p);
    const child = await new Promise<number>((resolve) => p.stdout!.once('data', (b: Buffer) => resolve(Number(b.toString().trim()))));
    return [p.pid!, child];
  }
  function sleeper(): number {
    const p = spawn('sleep', ['300'], { stdio: 'ignore' });
    started.push(p);
    return p.pid!;
  }
  const lifeline = (input: string, treePids: number[]) => spawnSync('sh', ['-c', lifelineScript(d, treePids)], { input, encoding: 'utf8', timeout: 15_000 });

  beforeEach(async () => {
    parent = await mkdtemp(join(tmpdir(), 'cedana life '));
    const dir = join(parent, 'cedana-migrate.x Y');
    d = { dir, images: join(dir, 'img') };
    await mkdir(d.images, { recursive: true });
  });
  afterEach(async () => {
    for (const p of started.splice(0)) p.kill('SIGKILL');
    for (const pid of [...killLater.splice(0)]) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await rm(parent, { recursive: true, force: true });
  });
  const killLater: number[] = [];

  it('abort: ends the restore and everything below it, the daemons and what was placed, removes the work dir, says ended', async () => {
    const [criu, below] = await standIn();
    killLater.push(below);
    const pageServer = sleeper();
    const other = sleeper(); // a tree PID: the restore had not finished, so whatever has that PID now is left alone
    await writeFile(join(d.dir, 'restore-criu.pid'), `${criu}\n`);
    await writeFile(join(d.dir, 'page-server.pid'), `${pageServer}\n`);
    const placedDir = join(parent, 'placed dir');
    await mkdir(placedDir);
    await writeFile(join(placedDir, 'f'), 'x');
    await writeFile(join(d.dir, 'placed'), `${placedDir}\n${join(placedDir, 'f')}\n`);
    const r = lifeline('abort\n', [other]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('ended');
    expect(r.stdout).not.toContain('kept');
    expect(await until(() => !alive(criu) && !alive(below))).toBe(true);
    expect(await until(() => !alive(pageServer))).toBe(true);
    expect(alive(other)).toBe(true);
    expect(existsSync(d.dir)).toBe(false);
    expect(existsSync(placedDir)).toBe(false); // undone, newest first: the file, then its directory
    expect(existsSync(parent)).toBe(true);
  });

  it('abort once the restore finished (restored.pid written): the restored tree’s PIDs are ended too', async () => {
    const restored = sleeper();
    await writeFile(join(d.dir, 'restored.pid'), `${restored}\n`);
    const r = lifeline('abort\n', [restored]);
    expect(r.stdout).toContain('ended');
    expect(await until(() => !alive(restored))).toBe(true);
    expect(existsSync(d.dir)).toBe(false);
  });

  it('keep: answers kept, ends nothing, removes nothing', async () => {
    const [criu, below] = await standIn();
    killLater.push(below);
    const restored = sleeper();
    await writeFile(join(d.dir, 'restore-criu.pid'), `${criu}\n`);
    await writeFile(join(d.dir, 'restored.pid'), `${restored}\n`);
    const r = lifeline('keep\n', [restored]);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe('kept');
    expect(alive(criu) && alive(below) && alive(restored)).toBe(true);
    expect(existsSync(join(d.dir, 'restored.pid'))).toBe(true);
  });

  it.each([
    ['the end of the stream (cedana gone, connection lost)', ''],
    ['a keep cut short (no newline)', 'keep'],
    ['anything else', 'what\n'],
  ])('%s is an abort', async (_what, input) => {
    const [criu, below] = await standIn();
    killLater.push(below);
    await writeFile(join(d.dir, 'restore-criu.pid'), `${criu}\n`);
    const r = lifeline(input, [2 ** 22 + 1]);
    expect(r.stdout).toContain('ended');
    expect(r.stdout).not.toContain('kept');
    expect(await until(() => !alive(criu) && !alive(below))).toBe(true);
    expect(existsSync(d.dir)).toBe(false);
  });

  it('abort before the restore started (no pid files): only the work dir goes', () => {
    const r = lifeline('abort\n', [2 ** 22 + 1]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('ended');
    expect(existsSync(d.dir)).toBe(false);
  });
});

describe('restoreLines run with the local sh: a restoring task waiting on a lock held there (flock(1): no CRIU)', () => {
  const hasFlock = spawnSync('sh', ['-c', 'command -v flock']).status === 0;

  it.skipIf(!hasFlock)('is found by the watcher, the restore is ended, and lockBlocked reads what it wrote', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'cedana-lockwait-'));
    const d: RemoteDir = { dir: parent, images: join(parent, 'img') };
    const file = join(parent, 'shared db.lock');
    await writeFile(file, '');
    // The holder keeps the lock in its own process (-F: no fork); the waiter stands for a restoring task.
    const holder = spawn('flock', ['-F', '-x', file, 'sleep', '30'], { stdio: 'ignore' });
    let waiter: ChildProcess | undefined;
    try {
      expect(await until(() => readFileSync('/proc/locks', 'utf8').split('\n').some((l) => parseLockLine(l)?.pid === holder.pid))).toBe(true);
      waiter = spawn('flock', ['-x', file, 'true'], { stdio: 'ignore' });
      const treeOf = lifelineScript(d, []).split('\n').find((l) => l.startsWith('tree_of()'))!;
      const script = [treeOf, ...restoreLines(d, 'sleep 30', [waiter.pid!]), 'echo "rc=$rc"', 'exit $rc'].join('\n');
      const t0 = Date.now();
      const r = spawnSync('sh', ['-c', script], { encoding: 'utf8', timeout: 15_000 });
      const took = Date.now() - t0;
      expect(r.status).toBe(94);
      expect(took).toBeGreaterThanOrEqual(LOCK_WAIT_LIMIT_S * 1000);
      expect(took).toBeLessThan(LOCK_WAIT_LIMIT_S * 1000 + 3000);
      const pid = Number(readFileSync(join(parent, 'restore-criu.pid'), 'utf8'));
      expect(await until(() => !alive(pid))).toBe(true); // the stand-in restore was ended
      expect(r.stdout).toMatch(new RegExp(`^lock=${waiter.pid} \\d+ `, 'm'));
      const e = lockBlocked('root@b', r.stdout);
      expect(e.code).toBe('TARGET_LOCK_BLOCKED');
      expect(e.details).toEqual({ file, pid: waiter.pid });
      expect(e.message).toContain(`waited for a flock on ${file}`);
    } finally {
      holder.kill('SIGKILL');
      waiter?.kill('SIGKILL');
      await rm(parent, { recursive: true, force: true });
    }
  });

  it('a restore that finishes without waiting on a lock goes on (no lock= line, its own status)', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'cedana-lockwait-'));
    try {
      const d: RemoteDir = { dir: parent, images: join(parent, 'img') };
      const treeOf = lifelineScript(d, []).split('\n').find((l) => l.startsWith('tree_of()'))!;
      const script = [treeOf, ...restoreLines(d, 'sh -c "exit 3"', [process.pid]), 'echo "rc=$rc"'].join('\n');
      const r = spawnSync('sh', ['-c', script], { encoding: 'utf8', timeout: 15_000 });
      expect(r.status).toBe(0);
      expect(r.stdout).toBe('rc=3\n');
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });
});
