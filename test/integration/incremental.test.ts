/**
 * Incremental checkpoints without soft-dirty tracking: pages are compared by content with the
 * parent's and only the changed ones are stored. A chain of three checkpoints of a process that
 * rewrites known pages between them: each link restores the memory as it was at that point (the
 * process checks its own sha256), each child stores about what changed, and a missing parent is
 * detected before CRIU runs.
 */
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, renameSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { blake3 } from '@napi-rs/blake-hash';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cedana, cedanaOk, parseJsonLine } from '../helpers/cedana.js';
import { pagesImage, sha256, toFormat1 } from '../helpers/images.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
let shared: string;
beforeAll(async () => {
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(() => rm(shared, { recursive: true, force: true }));
afterEach(() => owned.cleanup());

const PAGE = 4096;

describe('dump --parent', () => {
  it('stores only what changed; every link of the chain restores its own state; a missing parent is refused', async () => {
    const { dir, pid, sha0, rewrite } = await owned.pager(64, shared);
    const ck = await mkdtemp(join(shared, 'chain-'));
    const [c1, c2, c3] = ['c1', 'c2', 'c3'].map((n) => join(ck, n)) as [string, string, string];

    const full = await cedanaOk(['dump', String(pid), '--leave-running', '-o', c1]);
    expect(full.incremental).toBeUndefined();
    const shaA = await rewrite(256, 1); // 1 MiB of 64
    const d2 = await cedanaOk(['dump', String(pid), '--leave-running', '--parent', c1, '-o', c2]);
    expect(d2.incremental).toMatchObject({ parent: c1 });
    // The 256 rewritten pages, plus what the interpreter itself touched meanwhile; far from 64 MiB.
    expect(d2.incremental.pagesWritten).toBeGreaterThanOrEqual(256);
    expect(d2.incremental.pagesWritten).toBeLessThan(2048);
    expect(d2.memoryBytes).toBe(d2.incremental.pagesWritten * PAGE);
    expect(d2.incremental.pagesInParent).toBeGreaterThan(15_000);
    expect(full.memoryBytes / d2.memoryBytes).toBeGreaterThan(8);
    expect(readlinkSync(join(c2, 'parent'))).toBe('../c1');
    const shaB = await rewrite(512, 2);
    const d3 = await cedanaOk(['dump', String(pid), '--parent', c2, '-o', c3]); // the last one ends the process
    expect(d3.incremental.pagesWritten).toBeGreaterThanOrEqual(512);
    await waitGone(pid);

    // Each link restores the memory of its moment (the process hashes its memory again).
    for (const [img, want] of [[c3, shaB], [c2, shaA], [c1, sha0]] as const) {
      const r = await cedanaOk(['restore', img]);
      owned.own(r.pid);
      await rm(join(dir, 'sha-1'), { force: true });
      process.kill(pid, 'SIGUSR1');
      expect(await waitFor(`checksum after restoring ${img}`, () => readText(join(dir, 'sha-1')), 30_000)).toBe(want);
      process.kill(pid, 'SIGKILL');
      await waitGone(pid);
    }

    // A parent that is gone, or changed, is found before CRIU runs.
    renameSync(c2, `${c2}.away`);
    const gone = await cedana(['restore', c3, '--json']);
    expect(gone.exitCode).toBe(9);
    expect(gone.json!.error).toMatchObject({ code: 'IMAGE_INVALID', missingParent: c2 });
    expect(gone.json!.error.message).toMatch(/the parent of .*c3 is gone .*: \d+ of its pages are there/);
    renameSync(`${c2}.away`, c2);
    const c1Pages = pagesImage(c1);
    writeFileSync(join(c1, c1Pages), 'tampered', { flag: 'r+' });
    const bad = await cedana(['restore', c3, '--json']);
    expect(bad.json!.error.code).toBe('IMAGE_INVALID');
    expect(bad.json!.error.message).toContain(`${c1Pages} (checksum mismatch)`);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
    expect(lstatSync(join(c3, 'parent')).isSymbolicLink()).toBe(true);
  });

  it('chains of format 1 (sha256, cedana before BLAKE3) restore, and so does a format 2 child of one; a replaced parent is refused by either digest', async () => {
    const { dir, pid, rewrite } = await owned.pager(16, shared);
    const ck = await mkdtemp(join(shared, 'chain-v1-'));
    const [c1, c2, c3] = ['c1', 'c2', 'c3'].map((n) => join(ck, n)) as [string, string, string];
    await cedanaOk(['dump', String(pid), '--leave-running', '-o', c1]);
    const shaA = await rewrite(64, 1);
    await cedanaOk(['dump', String(pid), '--leave-running', '--parent', c1, '-o', c2]);
    // Both as an earlier cedana wrote them, the parent first: the child names its manifest by sha256.
    toFormat1(c1);
    const m2 = toFormat1(c2);
    expect(m2.parent).toMatchObject({ path: '../c1', manifestSha256: sha256(readFileSync(join(c1, 'cedana.json'))) });

    // A child made now, of the format 1 parent: format 2, naming that parent by the BLAKE3 of its manifest.
    const shaB = await rewrite(128, 2);
    const d3 = await cedanaOk(['dump', String(pid), '--parent', c2, '-o', c3]); // ends the process
    expect(d3.incremental.pagesWritten).toBeGreaterThanOrEqual(128);
    expect(d3.incremental.pagesInParent).toBeGreaterThan(2000); // the parent's page index served as it is
    const m3 = JSON.parse(readFileSync(join(c3, 'cedana.json'), 'utf8'));
    expect(m3.formatVersion).toBe(2);
    expect(m3.parent).toEqual({
      path: '../c2', manifestBlake3: blake3(readFileSync(join(c2, 'cedana.json'))).toString('hex'),
      pagesInParent: d3.incremental.pagesInParent, pagesWritten: d3.incremental.pagesWritten,
    });
    expect(Object.values(m3.files).every((f) => Object.keys(f as object).join() === 'size,blake3')).toBe(true);
    await waitGone(pid);

    for (const [img, want] of [[c3, shaB], [c2, shaA]] as const) {
      const r = await cedanaOk(['restore', img]);
      owned.own(r.pid);
      await rm(join(dir, 'sha-1'), { force: true });
      process.kill(pid, 'SIGUSR1');
      expect(await waitFor(`checksum after restoring ${img}`, () => readText(join(dir, 'sha-1')), 30_000)).toBe(want);
      process.kill(pid, 'SIGKILL');
      await waitGone(pid);
    }

    // A parent whose manifest changed (every one of its files still checks out against it) is another
    // image: refused before CRIU runs, whether the child names it by BLAKE3 (c3) or by sha256 (c2).
    for (const [child, parent] of [[c3, c2], [c2, c1]] as const) {
      const mp = join(parent, 'cedana.json');
      const text = readFileSync(mp, 'utf8');
      writeFileSync(mp, text.replace(/"hostname": "[^"]*"/, '"hostname": "elsewhere"'));
      const r = await cedana(['restore', child, '--json']);
      expect(r.exitCode).toBe(9);
      expect(r.json!.error.code).toBe('IMAGE_INVALID');
      expect(r.json!.error.message).toBe(`the parent of ${child} (${parent}) is not the image it was made against`);
      writeFileSync(mp, text);
    }
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });

  it('refuses a parent that is not a checkpoint of this process, and an archive output', async () => {
    const { pid } = await owned.counter();
    const other = await owned.counter();
    const img = join(shared, 'other');
    await cedanaOk(['dump', String(other.pid), '--leave-running', '-o', img]);
    const r = await cedana(['dump', String(pid), '--leave-running', '--parent', img, '-o', join(shared, 'x'), '--json']);
    expect(r.json!.error).toMatchObject({ code: 'USAGE' });
    expect(r.json!.error.message).toContain(`checkpoint of PID ${other.pid}, not of ${pid}`);
    const a = await cedana(['dump', String(other.pid), '--leave-running', '--parent', img, '-o', join(shared, 'x.tar'), '--json']);
    expect(a.json!.error.message).toMatch(/--parent needs a directory output/);
  });
});

describe('dump --every --keep', () => {
  it('checkpoints periodically, incremental between full ones, keeps the newest n restorable, and the newest restores the latest state', async () => {
    const dir = await mkdtemp(join(shared, 'every-'));
    const out = join(shared, 'every-ck');
    const pid = owned.python('pager.py', ['16', dir]);
    await waitFor('memory filled', () => readText(join(dir, 'sha0')), 30_000);
    writeFileSync(join(dir, 'rewrite'), '64');
    const child = spawn('node', [BIN, 'dump', String(pid), '--every', '1s', '--keep', '2', '-o', out, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let events = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (events += d.toString()));
    // Between checkpoints the process rewrites pages; then it is stopped with Ctrl-C.
    let last = '';
    for (let k = 1; k <= 4; k++) {
      await waitFor(`checkpoint ${k}`, () => (events.match(/"phase":"saved /g) ?? []).length >= k, 20_000);
      process.kill(pid, 'SIGUSR2');
      last = await waitFor('rewritten', () => {
        const [n, sha] = (readText(join(dir, 'rewritten')) ?? '').split(' ');
        return Number(n) === k ? sha! : undefined;
      });
    }
    // Two more, so that the newest surely follows the last rewrite.
    await waitFor('checkpoint 6', () => (events.match(/"phase":"saved /g) ?? []).length >= 6, 20_000);
    child.kill('SIGINT');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    const r = parseJsonLine(stdout)!;
    expect(r).toMatchObject({ ok: true, command: 'dump', pid, ended: 'signal', failed: 0, every: { intervalMs: 1000, keep: 2 } });
    expect(r.made).toBeGreaterThanOrEqual(6);
    // Full, incremental, full, …: the chain is never longer than 2; what is on disk is exactly what is listed.
    const cks = r.checkpoints as { image: string; parent: string | null; memoryBytes: number }[];
    expect(readdirSync(out).sort()).toEqual(cks.map((c) => basename(c.image)).sort());
    for (const c of cks) if (c.parent) expect(cks.find((p) => p.image === c.parent)!.parent).toBeNull();
    expect(cks.length).toBeLessThanOrEqual(3);
    const inc = cks.filter((c) => c.parent);
    for (const c of inc) expect(c.memoryBytes).toBeLessThan(4 * 1024 * 1024); // 64 pages rewritten, not 16 MiB
    expect(alive(pid)).toBe(true); // left running all along
    // After a crash, the newest checkpoint brings back the latest state.
    process.kill(pid, 'SIGKILL');
    await waitGone(pid);
    const newest = cks.at(-1)!.image;
    const rr = await cedanaOk(['restore', newest]);
    owned.own(rr.pid);
    process.kill(pid, 'SIGUSR1');
    expect(await waitFor('checksum', () => readText(join(dir, 'sha-1')), 30_000)).toBe(last);
  });

  it('ends by itself when the process ends', async () => {
    const { pid } = await owned.counter();
    const out = join(shared, 'every-end');
    const child = spawn('node', [BIN, 'dump', String(pid), '--every', '1s', '-o', out, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let events = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (events += d.toString()));
    await waitFor('a checkpoint', () => events.includes('"phase":"saved '), 20_000);
    process.kill(pid, 'SIGKILL');
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    expect(parseJsonLine(stdout)).toMatchObject({ ok: true, ended: 'process-exited' });
  });
});

