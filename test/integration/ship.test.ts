/**
 * Files that travel with the image: a job whose working directory, data file and log live in a
 * private /tmp, plus a deleted-but-open scratch file, is dumped, its directory removed, and
 * restored: the files are put back as they were at the dump and the job carries on with them.
 */
import { existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor, waitGone, wholeWorkerLog, workerState, type WorkerLine } from '../helpers/processes.js';

const owned = new Owned();
let shared: string;
beforeAll(async () => {
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(() => rm(shared, { recursive: true, force: true }));
afterEach(() => owned.cleanup());

/**
 * tmpworker.py with its files in a private temporary directory: its progress, and what it reads of
 * its data and scratch files, are the lines of its log there (a file it has open anyway, so what
 * it has open at a dump is only what the test is about).
 */
async function worker(scratchMib: number): Promise<{ dir: string; log: string; pid: number; before: WorkerLine }> {
  const dir = join(await owned.tempDir(), 'job');
  const log = join(dir, 'work.log');
  const pid = owned.python('tmpworker.py', [dir, String(scratchMib)]);
  const before = await waitFor('working', () => {
    const s = workerState(log);
    return s && s.i > 5 ? s : undefined;
  });
  return { dir, log, pid, before };
}

describe('files shipped with the image', () => {
  it('puts back a private working directory, data file and log, and a deleted scratch file over CRIU\'s 1 MiB default', async () => {
    const { dir, log, pid, before } = await worker(2);
    const img = join(shared, 'img-ship');
    const d = await cedanaOk(['dump', String(pid), '-o', img]);
    await waitGone(pid);
    expect(d.shipped).toEqual(expect.arrayContaining([dir, join(dir, 'data.bin'), join(dir, 'work.log')]));
    expect(d.decisions.join('\n')).toMatch(/shipping 2 file\(s\)/);
    const insp = await cedanaOk(['inspect', img]);
    expect(insp.ok).toBe(true);
    const data = insp.manifest.shipped.find((e: { path: string }) => e.path === join(dir, 'data.bin'));
    expect(data).toMatchObject({ kind: 'file', size: 1 << 20, mode: 0o644, uid: 0 });
    expect(insp.sizes.shipped).toBeGreaterThanOrEqual(1 << 20);
    const human = await cedana(['inspect', img]);
    expect(human.stdout).toContain(`${join(dir, 'data.bin')} (1.0 MiB)`);
    const atDump = workerState(log)!; // the log as the dump left it: the job's last line before the freeze
    rmSync(dir, { recursive: true }); // the restore host does not have them
    const r = await cedanaOk(['restore', img]);
    owned.own(r.pid);
    expect(r.placed).toEqual([dir, join(dir, 'data.bin'), join(dir, 'work.log')]);
    const after = await waitFor('working again', () => {
      const s = workerState(log);
      return s && s.i > atDump.i + 20 ? s : undefined;
    });
    expect(after.data).toBe(before.data); // the data file's contents, read through its descriptor
    expect(after.scratch).toBe(before.scratch); // the deleted file, carried by CRIU
    expect(after.cwd).toBe(dir);
    expect(wholeWorkerLog(log).length).toBeGreaterThan(atDump.i + 20); // the log goes on at its offset: no gap, no repeat
    expect(statSync(dir).mode & 0o777).toBe(0o755);
    expect(statSync(join(img, 'shipped', '0')).mode & 0o777).toBe(0o600);
    await rm(img, { recursive: true, force: true });
  });

  it('keeps a file already there with the same size; another size is FILE_CONFLICT and nothing is restored or left', async () => {
    const { dir, log: logPath, pid } = await worker(0);
    const img = join(shared, 'img-conflict');
    owned.onCleanup(() => rm(img, { recursive: true, force: true }));
    await cedanaOk(['dump', String(pid), '-o', img]);
    await waitGone(pid);
    const log = readText(logPath)!;
    rmSync(join(dir, 'data.bin'));
    writeFileSync(logPath, `${log}one more line\n`);
    const r = await cedana(['restore', img, '--json']);
    expect(r.exitCode).toBe(16);
    expect(r.json!.error).toMatchObject({ code: 'FILE_CONFLICT' });
    expect(r.json!.error.message).toContain(join(dir, 'work.log'));
    expect(alive(pid)).toBe(false);
    expect(existsSync(join(dir, 'data.bin'))).toBe(false); // what was placed before the conflict was removed
    writeFileSync(logPath, log);
    const ok = await cedanaOk(['restore', img]);
    owned.own(ok.pid);
    expect(ok.placed).toEqual([join(dir, 'data.bin')]);
  });

  it('a failure after the files were placed removes them again', async () => {
    const { dir, pid } = await worker(0);
    const img = join(shared, 'img-undo');
    owned.onCleanup(() => rm(img, { recursive: true, force: true }));
    await cedanaOk(['dump', String(pid), '-o', img]);
    await waitGone(pid);
    rmSync(dir, { recursive: true });
    const r = await cedana(['restore', img, '--map-port', '8000:9000', '--json']);
    expect(r.json!.error.code).toBe('REMAP_INVALID');
    expect(existsSync(dir)).toBe(false);
  });

  it('--no-ship-files carries nothing; a deleted file over 64 MiB is refused before freezing, and carried with --ship-files', async () => {
    const small = await worker(0);
    const img = join(shared, 'img-none');
    owned.onCleanup(() => rm(img, { recursive: true, force: true }));
    const d = await cedanaOk(['dump', String(small.pid), '-o', img, '--no-ship-files']);
    expect(d.shipped).toEqual([]);
    expect(existsSync(join(img, 'shipped'))).toBe(false);
    await waitGone(small.pid);

    const big = await worker(65);
    const r = await cedana(['dump', String(big.pid), '-o', join(shared, 'img-big'), '--json']);
    expect(r.exitCode).toBe(15);
    expect(r.json!.error).toMatchObject({ code: 'FILE_TOO_LARGE' });
    expect(r.json!.error.hint).toMatch(/--ship-files/);
    expect(existsSync(join(shared, 'img-big'))).toBe(false);
    const s = workerState(big.log)!.i;
    await waitFor('the job goes on', () => workerState(big.log)!.i > s + 5);
    // --ship-files carries it whatever its size.
    const bigImg = join(shared, 'img-big');
    owned.onCleanup(() => rm(bigImg, { recursive: true, force: true }));
    await cedanaOk(['dump', String(big.pid), '-o', bigImg, '--ship-files']);
    await waitGone(big.pid);
    const r2 = await cedanaOk(['restore', bigImg]);
    owned.own(r2.pid);
    const at = workerState(big.log)!.i;
    const after = await waitFor('working again', () => {
      const x = workerState(big.log);
      return x && x.i > at + 5 ? x : undefined;
    });
    expect(after.scratch).toBe(big.before.scratch);
  });
});
