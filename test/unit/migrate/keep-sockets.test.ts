import { existsSync, lstatSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { dropKeptSocketFiles, keepSocketFiles, putBackSocketFiles } from '../../../src/migrate/keep-sockets.js';

/** A unix socket server at `path` that greets each client with `name`. */
async function serve(path: string, name: string): Promise<Server> {
  const s = createServer((c) => c.end(name));
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.listen(path, () => resolve());
  });
  return s;
}

/** What the server at `path` says, or the error code when nothing answers. */
function greet(path: string): Promise<string> {
  return new Promise((resolve) => {
    const c = connect(path);
    let got = '';
    c.on('data', (b) => (got += b.toString()));
    c.on('end', () => resolve(got));
    c.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

const keeps = (dir: string): string[] => readdirSync(dir).filter((n) => n.startsWith('.cedana-keep-'));

describe('keepSocketFiles, putBackSocketFiles, dropKeptSocketFiles (real unix sockets)', () => {
  let dir: string;
  const servers: Server[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-keep-'));
  });
  afterEach(async () => {
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
    await rm(dir, { recursive: true, force: true });
  });

  it('gives each socket file a second name beside it: the same inode', async () => {
    const path = join(dir, 'tmux-0');
    servers.push(await serve(path, 'orig'));
    const kept = await keepSocketFiles([path]);
    expect(kept).toHaveLength(1);
    const k = kept[0]!;
    expect(k.path).toBe(path);
    expect(dirname(k.keep)).toBe(dir);
    expect(k.keep).toMatch(/\/\.cedana-keep-[0-9a-f]{12}$/);
    const a = lstatSync(path, { bigint: true });
    const b = lstatSync(k.keep, { bigint: true });
    expect(b.isSocket()).toBe(true);
    expect(b.ino).toBe(a.ino);
    expect(k.ino).toBe(a.ino);
    expect(a.nlink).toBe(2n);
    expect(await greet(k.keep)).toBe('orig'); // the second name reaches the same server
  });

  it('after a failure, a socket file unlinked meanwhile comes back: clients reach the still-running server', async () => {
    const path = join(dir, 'default');
    servers.push(await serve(path, 'orig'));
    const kept = await keepSocketFiles([path]);
    await unlink(path); // what CRIU's restore does on shared storage (unlink_sk)
    expect(await greet(path)).toBe('ENOENT');
    await putBackSocketFiles(kept);
    expect(lstatSync(path, { bigint: true }).ino).toBe(kept[0]!.ino);
    expect(await greet(path)).toBe('orig');
    expect(keeps(dir)).toEqual([]);
  });

  it('after a failure, a socket someone else bound there meanwhile is replaced by the original', async () => {
    const path = join(dir, 'sock');
    servers.push(await serve(path, 'orig'));
    const kept = await keepSocketFiles([path]);
    await unlink(path);
    servers.push(await serve(path, 'restored copy'));
    expect(await greet(path)).toBe('restored copy');
    await putBackSocketFiles(kept);
    expect(await greet(path)).toBe('orig');
    expect(keeps(dir)).toEqual([]);
  });

  it('after a failure, when the path still is the same socket, only the second name goes', async () => {
    const path = join(dir, 'sock');
    servers.push(await serve(path, 'orig'));
    const kept = await keepSocketFiles([path]);
    await putBackSocketFiles(kept);
    expect(keeps(dir)).toEqual([]);
    expect(lstatSync(path, { bigint: true }).nlink).toBe(1n);
    expect(await greet(path)).toBe('orig');
  });

  it('skips what is not a socket (a regular file, a directory, nothing)', async () => {
    const file = join(dir, 'file');
    await writeFile(file, 'x');
    const sock = join(dir, 'sock');
    servers.push(await serve(sock, 'orig'));
    const kept = await keepSocketFiles([file, dir, join(dir, 'absent'), sock]);
    expect(kept.map((k) => k.path)).toEqual([sock]);
    expect(keeps(dir)).toHaveLength(1);
    expect(lstatSync(file).nlink).toBe(1);
  });

  it('after success, dropKeptSocketFiles removes every second name and leaves the paths', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    servers.push(await serve(a, 'A'), await serve(b, 'B'));
    const kept = await keepSocketFiles([a, b]);
    expect(keeps(dir)).toHaveLength(2);
    await dropKeptSocketFiles(kept);
    expect(keeps(dir)).toEqual([]);
    expect(existsSync(a) && existsSync(b)).toBe(true);
    expect(await greet(b)).toBe('B');
  });
});
