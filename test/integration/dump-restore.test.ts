/**
 * dump → restore on one host with the real CRIU, each process checked by what it reports itself
 * after the restore.
 */
import { existsSync, readFileSync, statSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { pagesImage, toFormat1 } from '../helpers/images.js';
import { Owned, alive, count, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const fields = (path: string): number[] | undefined => readText(path)?.trim().split(/\s+/).map(Number);

describe('dump and restore', () => {
  it('restores a parent and child that talk through pipes; they carry on', async () => {
    const dir = await owned.tempDir();
    const state = join(dir, 'state');
    const pid = owned.python('pipetree.py', [state]);
    const [, child, before] = await waitFor('pipe tree to talk', () => {
      const f = fields(state);
      return f && f[2]! >= 5 ? f : undefined;
    });

    const d = await cedanaOk(['dump', String(pid), '-o', join(dir, 'img')]);
    expect(d).toMatchObject({ command: 'dump', pid, processes: 2, image: join(dir, 'img') });
    expect(d.frozenMs).toBeGreaterThan(0);
    expect(alive(pid)).toBe(false);
    const frozenAt = fields(state)![2]!;
    expect(frozenAt).toBeGreaterThanOrEqual(before!);
    await waitGone(pid);

    const r = await cedanaOk(['restore', join(dir, 'img'), '--pid-file', join(dir, 'restored.pid')]);
    owned.own(r.pid);
    expect(r).toMatchObject({ command: 'restore', pid, processes: 2 });
    expect(readText(join(dir, 'restored.pid'))).toBe(`${pid}\n`);
    const after = await waitFor('restored tree to talk again', () => {
      const f = fields(state);
      return f && f[2]! >= frozenAt + 10 ? f : undefined;
    });
    expect(after[0]).toBe(pid);
    expect(after[1]).toBe(child);
    expect(after[3]).toBe(0); // every answer of the restored child was right
    expect(alive(child!)).toBe(true);
  });

  it('keeps the file offset of a process writing to an open file', async () => {
    const dir = await owned.tempDir();
    const log = join(dir, 'out.log');
    const pid = owned.python('appender.py', [log]);
    await waitFor('some lines', () => (readText(log)?.split('\n').length ?? 0) > 10);
    await cedanaOk(['dump', String(pid), '-o', join(dir, 'img')]);
    const linesAtDump = readText(log)!.split('\n').length - 1;
    await waitGone(pid);
    owned.own((await cedanaOk(['restore', join(dir, 'img')])).pid);
    await waitFor('more lines after restore', () => readText(log)!.split('\n').length - 1 >= linesAtDump + 20);
    const lines = readText(log)!.split('\n').slice(0, -1);
    // Every line in order, none lost, none overwritten, no hole of NUL bytes.
    lines.forEach((l, i) => expect(l).toBe(`line ${i}`));
  });

  it('restores 256 MiB of random memory intact (the process checks its own checksum)', async () => {
    const dir = await owned.tempDir();
    const pid = owned.python('memhog.py', ['256', dir]);
    const sha0 = await waitFor('memory filled', () => readText(join(dir, 'sha0')), 60_000);
    const d = await cedanaOk(['dump', String(pid), '-o', join(dir, 'img')]);
    expect(d.memoryBytes).toBeGreaterThan(256 * 1024 * 1024);
    await waitGone(pid);
    const r = await cedanaOk(['restore', join(dir, 'img')]);
    owned.own(r.pid);
    process.kill(r.pid, 'SIGUSR1');
    const sha1 = await waitFor('checksum after restore', () => readText(join(dir, 'sha-1')), 30_000);
    expect(sha1).toBe(sha0);
  });

  it('--leave-running keeps the process; the image restores the state at the dump', async () => {
    const dir = await owned.tempDir();
    const state = join(dir, 'state');
    const pid = owned.python('counter.py', [state]);
    await waitFor('counting', () => (fields(state)?.[1] ?? 0) > 5);
    const beforeDump = fields(state)![1]!;
    const d = await cedanaOk(['dump', String(pid), '--leave-running', '-o', join(dir, 'img')]);
    expect(d.leftRunning).toBe(true);
    const atDump = fields(state)![1]!;
    // The original goes on counting well past the dump point…
    const later = await waitFor('original to go on', () => {
      const n = fields(state)![1]!;
      return alive(pid) && n > atDump + 25 ? n : undefined;
    });
    process.kill(pid, 'SIGKILL');
    await waitGone(pid);
    // …and the restored copy starts again from the dump point, below where the original got.
    const r = await cedanaOk(['restore', join(dir, 'img')]);
    owned.own(r.pid);
    const first = await waitFor('restored copy to count', () => {
      const n = fields(state)![1]!;
      return n !== later ? n : undefined;
    });
    expect(first).toBeLessThan(later);
    expect(first).toBeGreaterThan(beforeDump);
    await waitFor('restored copy to keep counting', () => fields(state)![1]! > first + 5);
  });

  it('detects a file lock, dumps it, and the restored process holds it again', async () => {
    const dir = await owned.tempDir();
    const [lockfile, state] = [join(dir, 'lock'), join(dir, 'state')];
    const pid = owned.python('locker.py', [lockfile, state]);
    await waitFor('counting', () => (fields(state)?.[1] ?? 0) > 3);
    const tryLock = () => execa('flock', ['-n', '-x', lockfile, 'true'], { reject: false });
    expect((await tryLock()).exitCode).toBe(1); // held by the fixture
    const d = await cedanaOk(['dump', String(pid), '-o', join(dir, 'img')]);
    expect(d.decisions.join('\n')).toMatch(/--file-locks: 1 file lock/);
    await waitGone(pid);
    const r = await cedanaOk(['restore', join(dir, 'img')]);
    owned.own(r.pid);
    const at = fields(state)![1]!;
    await waitFor('counting again', () => fields(state)![1]! > at + 5);
    expect((await tryLock()).exitCode).toBe(1); // held again, by the restored process
    const ino = statSync(lockfile).ino;
    expect(readFileSync('/proc/locks', 'utf8')).toMatch(new RegExp(`FLOCK\\s+ADVISORY\\s+WRITE\\s+${r.pid}\\s+\\S+:${ino}\\s`));
  });

  it('reconnects a unix socket whose peer is outside the tree, by its path', async () => {
    const dir = await owned.tempDir();
    const [sock, state] = [join(dir, 'echo.sock'), join(dir, 'state')];
    owned.python('echoserver.py', ['unix', sock]); // not part of the dumped tree
    await waitFor('server socket', () => existsSync(sock));
    const pid = owned.python('unixclient.py', [sock, state]);
    await waitFor('exchanging', () => (fields(state)?.[1] ?? 0) > 3);
    const d = await cedanaOk(['dump', String(pid), '-o', join(dir, 'img')]);
    expect(d.decisions.join('\n')).toMatch(/1 unix socket\(s\) connected to a peer outside the tree/);
    await waitGone(pid);
    const r = await cedanaOk(['restore', join(dir, 'img')]);
    owned.own(r.pid);
    const at = fields(state)![1]!;
    const after = await waitFor('exchanging again', () => {
      const f = fields(state)!;
      return f[1]! > at + 10 ? f : undefined;
    });
    expect(after[2]).toBe(0);
  });

  it('writes a private image with a manifest that checks out', async () => {
    const dir = await owned.tempDir();
    const pid = owned.python('counter.py', [join(dir, 'state')]);
    await waitFor('counting', () => readText(join(dir, 'state')));
    const img = join(dir, 'img');
    const d = await cedanaOk(['dump', String(pid), '-o', img]);
    expect(statSync(img).mode & 0o777).toBe(0o700);
    const manifest = JSON.parse(readFileSync(join(img, 'cedana.json'), 'utf8'));
    expect(manifest).toMatchObject({ format: 'cedana-image', formatVersion: 2, pid, criuVersion: expect.stringMatching(/^4\.\d+/) });
    expect(manifest.processes[0]).toMatchObject({ pid, comm: 'python3' });
    expect(manifest.processes[0].argv).toContain(join(dir, 'state'));
    let total = 0;
    for (const name of readdirSync(img)) {
      expect(statSync(join(img, name)).mode & 0o777, name).toBe(0o600);
      const body = readFileSync(join(img, name));
      total += body.length;
      if (name === 'cedana.json') continue;
      expect(manifest.files[name], name).toEqual({ size: body.length, blake3: blake3(body).toString('hex') });
    }
    expect(Object.keys(manifest.files).length).toBe(readdirSync(img).length - 1);
    expect(d.bytes).toBe(total);
  });

  it('restores an image of format 1 (sha256 checksums, as cedana wrote them before BLAKE3), and refuses one whose memory was changed', async () => {
    const { dir, state, pid } = await owned.counter();
    await waitFor('counting', () => count(state) > 5);
    const img = join(dir, 'img');
    await cedanaOk(['dump', String(pid), '-o', img]);
    const atDump = count(state);
    await waitGone(pid);
    const m = toFormat1(img);
    const pagesName = pagesImage(img);
    expect(m.files[pagesName]).toEqual({ size: statSync(join(img, pagesName)).size, sha256: expect.stringMatching(/^[0-9a-f]{64}$/) });

    // A byte of the memory changed (and put back): the sha256 of format 1 is what catches it.
    const pages = join(img, pagesName);
    const good = readFileSync(pages);
    const bad = Buffer.from(good);
    bad[bad.length >> 1]! ^= 1;
    writeFileSync(pages, bad);
    const refused = await cedana(['restore', img, '--json']);
    expect(refused.exitCode).toBe(9);
    expect(refused.json!.error).toMatchObject({ code: 'IMAGE_INVALID', message: expect.stringContaining(`${pagesName} (checksum mismatch)`) });
    expect(alive(pid)).toBe(false);
    writeFileSync(pages, good);

    const r = await cedanaOk(['restore', img]);
    owned.own(r.pid);
    expect(r.pid).toBe(pid);
    expect(count(state)).toBeGreaterThanOrEqual(atDump);
    await waitFor('counting on from the dump', () => count(state) > atDump + 3);
  });
});
