/**
 * File locks are never lost silently. CRIU 4.2.1 drops a read lock on a file the process also maps
 * (SQLite's -shm) and keeps one on a file it only has open: mapped-locks.py holds one of each. The
 * dump predicts it, the restore checks every lock of the image before the tree runs and fails
 * (the tree ended, the image intact) unless --allow-lost-locks; a migration is refused before
 * freezing, and the target's own check (a CRIU action script) is tested against real CRIU.
 */
import { execa } from 'execa';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';
import { useBed } from '../helpers/testbed.js';
import { LOCK_CHECK_SCRIPT, expectedLocksFile, imageLocks, parseLostLocks } from '../../src/image/file-locks.js';

const owned = new Owned();
const t = useBed(23);
afterEach(() => owned.cleanup());

const count = (state: string): number => Number(readText(state)?.trim().split(' ')[1] ?? 0);

/** /proc/locks lines of a PID on a file (by inode). */
const locksOn = (pid: number, file: string): string[] =>
  readFileSync('/proc/locks', 'utf8').split('\n').filter((l) => new RegExp(`\\s${pid}\\s+\\S+:${statSync(file).ino}\\s`).test(l));

async function mappedLocks(parent?: string): Promise<{ dir: string; pid: number; state: string }> {
  const dir = parent ? await mkdtemp(join(parent, 'locks-')) : await owned.tempDir();
  const state = join(dir, 'state');
  const pid = owned.python('mapped-locks.py', [dir]);
  await waitFor('counting', () => count(state) > 2);
  expect(locksOn(pid, join(dir, 'mapped'))).toHaveLength(1);
  expect(locksOn(pid, join(dir, 'plain'))).toHaveLength(1);
  return { dir, pid, state };
}

describe('a lock CRIU does not restore', () => {
  it('is predicted by the dump, fails the restore (tree ended, image intact), and --allow-lost-locks runs it without', async () => {
    const { dir, pid, state } = await mappedLocks();
    const img = join(dir, 'img');
    const d = await cedanaOk(['dump', String(pid), '-o', img]);
    expect(d.decisions.join('\n')).toContain(`lock on ${join(dir, 'mapped')} is on a file it also maps`);
    await waitGone(pid);
    const at = count(state);

    const r = await cedana(['restore', img, '--json']);
    expect(r.exitCode).toBe(50);
    expect(r.json!.error).toMatchObject({ code: 'LOCK_LOST', lost: [{ pid, path: join(dir, 'mapped'), kind: 'POSIX', type: 'READ', start: '128', end: '128' }] });
    await waitGone(pid); // CRIU ended the tree before it ran
    expect(count(state)).toBe(at);

    const ok = await cedanaOk(['restore', img, '--allow-lost-locks']);
    owned.own(ok.pid);
    expect(ok.decisions.join('\n')).toContain(`--allow-lost-locks: running without POSIX READ lock on ${join(dir, 'mapped')}`);
    await waitFor('counting again', () => count(state) > at + 5);
    expect(locksOn(pid, join(dir, 'plain'))).toHaveLength(1);
    expect(locksOn(pid, join(dir, 'mapped'))).toHaveLength(0);
  });

  it("the target's check (a CRIU post-restore action script) fails a restore that lost a lock, and passes one that did not", async () => {
    const { dir, pid } = await mappedLocks();
    const img = join(dir, 'img');
    await cedanaOk(['dump', String(pid), '-o', img]);
    await waitGone(pid);
    const locks = await imageLocks(img);
    expect(locks.map((l) => `${l.pid} ${l.kind} ${l.type} ${l.start}-${l.end}`).sort()).toEqual([`${pid} POSIX READ 128-128`, `${pid} POSIX READ 128-128`]);
    const check = join(img, 'locks-check.sh');
    writeFileSync(check, LOCK_CHECK_SCRIPT, { mode: 0o700 });
    writeFileSync(join(img, 'expected-locks'), expectedLocksFile(locks));
    const criu = (f: string[]) => execa('criu', ['restore', '-D', img, '-o', join(dir, 'r.log'), '--file-locks', '--shell-job', '-d', '--action-script', check, ...f], { reject: false });
    const failed = await criu([]);
    expect(failed.exitCode).not.toBe(0);
    // CRIU ended the tree before it ran: its SIGKILL may still be pending when criu has exited (seen in
    // state R with SIGKILL pending, then a zombie of PID 1), so wait for the process to be gone.
    await waitGone(pid);
    const lost = parseLostLocks(readFileSync(join(img, 'lost-locks'), 'utf8'));
    expect(lost).toHaveLength(1);
    expect(lost[0]).toMatchObject({ pid, kind: 'POSIX', type: 'READ', start: '128', end: '128', path: join(dir, 'mapped') });
    // Expecting only the lock CRIU keeps, the same script lets the tree run.
    writeFileSync(join(img, 'expected-locks'), expectedLocksFile(locks.filter((l) => l.fd !== lost[0]!.fd)));
    const passed = await criu([]);
    expect(passed.exitCode, passed.stderr).toBe(0);
    owned.own(pid);
    expect(alive(pid)).toBe(true);
    expect(readFileSync(join(img, 'lost-locks'), 'utf8')).toBe('');
  });

  it('a migration is refused before freezing, and moves with --allow-lost-locks', async () => {
    const { dir, pid, state } = await mappedLocks(t.shared);
    const r = await cedana(['migrate', String(pid), '--to', t.host.name, '--json'], { env: t.bed.env });
    expect(r.exitCode).toBe(50);
    expect(r.json!.error).toMatchObject({ code: 'LOCK_LOST', predicted: true, files: [join(dir, 'mapped')], sourceResumed: true });
    const n = count(state);
    await waitFor('the source to count on', () => count(state) > n + 5);
    const ok = await cedanaOk(['migrate', String(pid), '--to', t.host.name, '--allow-lost-locks'], { env: t.bed.env });
    expect(ok.targetPid).toBe(pid);
    expect(alive(pid)).toBe(false);
    const m = count(state);
    await waitFor('counting on the target', () => count(state) > m + 5);
    await t.bed.onHost(t.host, `kill -9 ${pid}`);
  });
});
