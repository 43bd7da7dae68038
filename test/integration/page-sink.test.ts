/**
 * The page sink: CRIU streams the pages into cedana (`--page-server --ps-socket 3`), which writes
 * the pagemap and pages images itself, hashed as they arrive; with a parent only the changed pages.
 * Against real CRIU: the images restore with the process's memory intact (by its own report), a
 * chain of three restores link by link, and a dump whose sink cannot write leaves the process running
 * and no image.
 */
import { execa } from 'execa';
import { readdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk, type CliOptions } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
let shared: string;
beforeAll(async () => {
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(() => rm(shared, { recursive: true, force: true }));
afterEach(() => owned.cleanup());

const SINK: CliOptions = { env: { CEDANA_PAGE_SINK: '1' } };
const OFF: CliOptions = { env: { CEDANA_PAGE_SINK: '0' } };
const PAGE = 4096;

/** Every file's size and BLAKE3 as the manifest lists them: what the sink hashed is what is on disk. */
function expectManifestTrue(img: string): Record<string, { size: number; blake3: string }> {
  const m = JSON.parse(readFileSync(join(img, 'cedana.json'), 'utf8'));
  for (const [name, f] of Object.entries(m.files as Record<string, { size: number; blake3: string }>)) {
    const buf = readFileSync(join(img, name));
    expect({ name, size: buf.length, blake3: blake3(buf).toString('hex') }).toEqual({ name, ...f });
  }
  return m.files;
}

async function checksumAfterRestore(img: string, dir: string): Promise<{ pid: number; sha: string }> {
  const r = await cedanaOk(['restore', img]);
  const pid = owned.own(r.pid);
  await rm(join(dir, 'sha-1'), { force: true });
  process.kill(pid, 'SIGUSR1');
  return { pid, sha: await waitFor(`checksum after restoring ${img}`, () => readText(join(dir, 'sha-1')), 30_000) };
}

describe('dump through the page sink', () => {
  it('writes the pages images itself, hashed as they arrive; the image restores the memory intact', async () => {
    const { dir, pid, sha0 } = await owned.memhog(64);
    const img = join(shared, 'full');
    const d = await cedanaOk(['dump', String(pid), '-o', img], SINK);
    await waitGone(pid);
    const files = expectManifestTrue(img);
    // The page server's numbering (criu/image.c: from 0x10001), not CRIU's own pages-1.img.
    expect(Object.keys(files)).toContain('pages-65537.img');
    expect(Object.keys(files)).not.toContain('pages-1.img');
    expect(d.memoryBytes).toBeGreaterThan(64 << 20);
    expect(d.memoryBytes).toBe(files['pages-65537.img']!.size);
    const r = await checksumAfterRestore(img, dir);
    expect(r.sha).toBe(sha0);
  });

  // The page sink compares by content (the default for a dump with a parent); CEDANA_PAGE_SINK=0 lets
  // CRIU write every page and drops the unchanged ones afterwards by their hashes (cedana-pages.idx).
  // A chain may mix both.
  it.each([
    ['through the sink, by content', [{}, {}]],
    ['without the sink, by hash', [OFF, OFF]],
    ['mixed: by hash, then by content', [OFF, {}]],
  ] as const)('incremental %s: a chain of three stores only what changed, each link restores its own memory; a missing or replaced parent is refused', async (_, modes) => {
    const { dir, pid, sha0, rewrite } = await owned.pager(64, shared);
    const ck = await mkdtemp(join(shared, 'chain-'));
    const [c1, c2, c3] = ['c1', 'c2', 'c3'].map((n) => join(ck, n)) as [string, string, string];
    const full = await cedanaOk(['dump', String(pid), '--leave-running', '-o', c1]);
    expect(full.incremental).toBeUndefined();
    const shaA = await rewrite(256, 1);
    const d2 = await cedanaOk(['dump', String(pid), '--leave-running', '--parent', c1, '-o', c2], modes[0]);
    expect(d2.incremental).toMatchObject({ parent: c1 });
    expect(d2.incremental.pagesWritten).toBeGreaterThanOrEqual(256);
    expect(d2.incremental.pagesWritten).toBeLessThan(2048);
    expect(d2.memoryBytes).toBe(d2.incremental.pagesWritten * PAGE);
    expect(d2.incremental.pagesInParent).toBeGreaterThan(15_000);
    const shaB = await rewrite(512, 2);
    const d3 = await cedanaOk(['dump', String(pid), '--parent', c2, '-o', c3], modes[1]); // ends the process
    expect(d3.incremental.pagesWritten).toBeGreaterThanOrEqual(512);
    expect(d3.incremental.pagesWritten).toBeLessThan(2048);
    await waitGone(pid);
    // The sink made the pages files itself (numbered as CRIU's page server does) and needs no index.
    for (const [c, mode] of [[c2, modes[0]], [c3, modes[1]]] as const) {
      const names = readdirSync(c);
      if (mode === OFF) expect(names).toContain('cedana-pages.idx');
      else expect([names.includes('cedana-pages.idx'), names.some((n) => n === 'pages-65537.img')]).toEqual([false, true]);
    }
    for (const c of [c1, c2, c3]) expectManifestTrue(c);

    for (const [img, want] of [[c3, shaB], [c2, shaA], [c1, sha0]] as const) {
      const r = await checksumAfterRestore(img, dir);
      expect(r.sha).toBe(want);
      process.kill(r.pid, 'SIGKILL');
      await waitGone(r.pid);
    }

    renameSync(c2, `${c2}.away`);
    const gone = await cedana(['restore', c3, '--json']);
    expect(gone.exitCode).toBe(9);
    expect(gone.json!.error).toMatchObject({ code: 'IMAGE_INVALID', missingParent: c2 });
    renameSync(`${c2}.away`, c2);
    const mp = join(c2, 'cedana.json');
    const text = readFileSync(mp, 'utf8');
    writeFileSync(mp, text.replace(/"hostname": "[^"]*"/, '"hostname": "elsewhere"'));
    const replaced = await cedana(['restore', c3, '--json']);
    expect(replaced.json!.error.code).toBe('IMAGE_INVALID');
    expect(replaced.json!.error.message).toBe(`the parent of ${c3} (${c2}) is not the image it was made against`);
  });

  it('a hugetlb mapping is stored whole in every link (CRIU restores it from the image itself, never through a parent); the chain restores it intact', async (ctx) => {
    // Huge pages reserved for this test only (16 MiB more than before), given back after: the
    // process takes 8 MiB, and CRIU's kernel probe must still get one (else it cannot tell the
    // mapping's device: "Can't lookup mount … /anon_hugepage").
    const NR = '/proc/sys/vm/nr_hugepages';
    const before = Number(readFileSync(NR, 'utf8'));
    writeFileSync(NR, String(before + 8));
    owned.onCleanup(async () => writeFileSync(NR, String(before)));
    const free = Number(/^HugePages_Free:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
    const size = Number(/^Hugepagesize:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
    if (free < 8 || size !== 2048) ctx.skip(); // the kernel could not reserve them here
    const dir = await owned.tempDir();
    const pid = owned.python('hugehog.py', ['8', dir]);
    const sha0 = await waitFor('memory filled', () => readText(join(dir, 'sha0')), 60_000);
    const ck = await mkdtemp(join(shared, 'huge-'));
    const [c1, c2, c3] = ['c1', 'c2', 'c3'].map((n) => join(ck, n)) as [string, string, string];
    await cedanaOk(['dump', String(pid), '--leave-running', '-o', c1]);
    const d2 = await cedanaOk(['dump', String(pid), '--leave-running', '--parent', c1, '-o', c2]);
    const d3 = await cedanaOk(['dump', String(pid), '--parent', c2, '-o', c3]); // ends the process
    // Nothing changed, yet the 8 MiB of huge pages (2048 small ones) are in each link's own pages.
    for (const d of [d2, d3]) {
      expect(d.incremental.pagesWritten).toBeGreaterThanOrEqual(2048);
      expect(d.incremental.pagesWritten).toBeLessThan(2048 + 512);
    }
    await waitGone(pid);
    const r = await cedanaOk(['restore', c3]);
    owned.own(r.pid);
    process.kill(r.pid, 'SIGUSR1');
    expect(await waitFor('checksum after restore', () => readText(join(dir, 'sha-1')), 30_000)).toBe(sha0);
  });

  it('a sink that cannot write (full disk) fails the dump: the process resumes intact, no partial image is left', async () => {
    const { dir, pid, sha0 } = await owned.memhog(32);
    const small = join(dir, 'small');
    await execa('mkdir', [small]);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=700', 'tmpfs', small]);
    owned.onCleanup(async () => void (await execa('umount', [small], { reject: false })));
    const r = await cedana(['dump', String(pid), '-o', join(small, 'img'), '--json'], SINK);
    expect(r.exitCode).toBe(13);
    expect(r.json!.error).toMatchObject({ code: 'IO_ERROR', processRunning: true });
    expect(r.json!.error.message).toMatch(/writing the pages images failed: ENOSPC/);
    expect(readdirSync(small)).toEqual([]);
    expect(alive(pid)).toBe(true);
    const beat = Number(readText(join(dir, 'beat')));
    await waitFor('heartbeat to go on', () => Number(readText(join(dir, 'beat'))) > beat + 5);
    process.kill(pid, 'SIGUSR1');
    expect(await waitFor('checksum', () => readText(join(dir, 'sha-1')))).toBe(sha0);
  });
});
