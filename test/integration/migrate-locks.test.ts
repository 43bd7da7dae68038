/**
 * Nothing hangs after the freeze, whatever holds the target's restore: a file lock held there (by
 * another process, or by the frozen source itself on storage both hosts see) fails it fast, Ctrl-C
 * and the deadline end it, and a cedana killed outright takes the target's restore with it. In each
 * case the source runs on where it was, and the target keeps nothing. Checked with real programs:
 * SQLite in WAL mode on the shared directory (the test bed's /var/lib) and a lock holder of our own.
 */
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, cedana, parseJsonLine } from '../helpers/cedana.js';
import { FIXTURES, Owned, alive, readText, waitFor } from '../helpers/processes.js';
import { useBed } from '../helpers/testbed.js';

const owned = new Owned();
const t = useBed(22);
afterEach(async () => {
  await t.bed.onHost(t.host, 'for f in /tmp/cedana-lk-*/hstate; do [ -f "$f" ] && kill -9 $(cut -d" " -f1 "$f"); done; rm -rf /tmp/cedana-lk-*');
  await owned.cleanup();
});

const count = (state: string): number => Number(readText(state)?.trim().split(' ')[1] ?? 0);

/** The source counts on, and the target has neither the process nor anything in its work area. */
async function expectSourceOnly(pid: number, state: string, fixture = 'lock-holder'): Promise<void> {
  expect(alive(pid), 'source alive').toBe(true);
  const n = count(state);
  await waitFor('the source to count on', () => count(state) > n + 5);
  // Our process, by its command line: the host's own PID namespace may give that number to one of its own.
  const there = await t.bed.onHost(t.host, `ls -A /var/tmp; grep -qs ${fixture} /proc/${pid}/cmdline && echo running-there; true`);
  expect(there.stdout.trim(), 'left on the target').toBe('');
}

/**
 * A source process holding a read lock on /tmp/cedana-lk-…/data, and on the target (its own /tmp) a
 * process holding a write lock on a file of the same path: the target's restore must wait for it.
 */
async function lockedOnTarget(socket?: string): Promise<{ pid: number; state: string; dir: string; releaseThere: () => Promise<void> }> {
  const dir = `/tmp/cedana-lk-${process.pid}-${Math.floor(Math.random() * 1e9)}`;
  mkdirSync(dir);
  owned.onCleanup(() => rm(dir, { recursive: true, force: true }));
  // The fixture goes there by value: this checkout may be in a /tmp of its own, which the target does not see.
  const script = readFileSync(join(FIXTURES, 'lock-holder.py'), 'utf8');
  const held = await t.bed.onHost(t.host, `mkdir -p ${dir} && cat > ${dir}/holder.py <<'CEDANA_EOF'\n${script}CEDANA_EOF\n(setsid python3 ${dir}/holder.py ${dir}/data write ${dir}/hstate </dev/null >/dev/null 2>&1 &) && for i in $(seq 50); do [ -s ${dir}/hstate ] && break; sleep 0.1; done; cat ${dir}/hstate`);
  expect(held.stdout.trim(), held.stderr).toMatch(/^\d+ \d+$/);
  // Its state file on storage both hosts see: a state.tmp it happens to have open at the freeze
  // (it writes one every 20 ms) is then there too, and cannot fail the restore for another reason.
  const state = join(await owned.tempDir('lk-state-', t.shared), 'state');
  const pid = owned.python('lock-holder.py', [join(dir, 'data'), 'read', state, ...(socket ? [socket] : [])]);
  await waitFor('the source counting', () => count(state) > 2);
  return {
    pid, state, dir,
    releaseThere: async () => void (await t.bed.onHost(t.host, `kill -9 $(cut -d' ' -f1 ${dir}/hstate)`)),
  };
}

/** Starts a migration with JSON events; `onRestoring` runs once the target has started restoring. */
function migrating(pid: number, extra: string[], onRestoring?: (cedanaPid: number) => void): Promise<{ code: number | null; json?: Record<string, any>; ms: number }> {
  const t0 = performance.now();
  const child = spawn('node', [BIN, 'migrate', String(pid), '--to', t.host.name, '--json', ...extra], { env: { ...process.env, ...t.bed.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let err = '';
  let fired = false;
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    if (!fired && onRestoring && /restoring on/.test(err)) {
      fired = true;
      // The restore is then waiting on the lock there (it reached it within the first few ms).
      setTimeout(() => onRestoring(child.pid!), 500);
    }
  });
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, json: parseJsonLine(stdout), ms: performance.now() - t0 })));
}

describe('a restore held up on the target never hangs the migration', () => {
  it('a lock held there: the restore fails fast with TARGET_LOCK_BLOCKED naming the file; the source runs on', async () => {
    const { pid, state, dir } = await lockedOnTarget();
    const r = await migrating(pid, []);
    expect(r.code, JSON.stringify(r.json)).toBe(19);
    expect(r.json!.error).toMatchObject({ code: 'TARGET_LOCK_BLOCKED', file: join(dir, 'data'), sourceResumed: true, targetCleanedUp: true });
    expect(r.json!.error.message).toContain(join(dir, 'data'));
    await expectSourceOnly(pid, state);
  });

  it('Ctrl-C while the target restores: INTERRUPTED, the source resumed and the target cleaned, within seconds', async () => {
    const { pid, state } = await lockedOnTarget();
    let sentAt = 0;
    const r = await migrating(pid, [], (c) => {
      sentAt = performance.now();
      process.kill(c, 'SIGINT');
    });
    expect(r.code, JSON.stringify(r.json)).toBe(130);
    expect(r.json!.error).toMatchObject({ code: 'INTERRUPTED', sourceResumed: true, targetCleanedUp: true });
    // Well before the 2 s after which the lock watcher would have ended the restore by itself.
    expect(performance.now() - sentAt).toBeLessThan(1500);
    await expectSourceOnly(pid, state);
  });

  it('the freeze deadline (--freeze-timeout) ends a restore that waits: FREEZE_TIMEOUT', async () => {
    const { pid, state } = await lockedOnTarget();
    const r = await migrating(pid, ['--freeze-timeout', '500ms']);
    expect(r.code, JSON.stringify(r.json)).toBe(39);
    expect(r.json!.error).toMatchObject({ code: 'FREEZE_TIMEOUT', freezeTimeoutMs: 500, sourceResumed: true, targetCleanedUp: true });
    await expectSourceOnly(pid, state);
  });

  it('cedana killed while the target restores: the source resumes, and the target never completes a second copy', async () => {
    const { pid, state, releaseThere } = await lockedOnTarget();
    // A killed cedana cannot remove its own work directory here: the test does.
    const before = new Set(readdirSync(tmpdir()).filter((n) => n.startsWith('cedana-migrate-')));
    owned.onCleanup(() => Promise.all(readdirSync(tmpdir()).filter((n) => n.startsWith('cedana-migrate-') && !before.has(n)).map((n) => rm(join(tmpdir(), n), { recursive: true, force: true }))).then(() => undefined));
    const r = await migrating(pid, [], (c) => {
      process.kill(c, 'SIGKILL');
      // The lock there goes at once: a restore that outlived its session would now complete.
      void releaseThere();
    });
    expect(r.code).toBe(null);
    await waitFor('the source to resume', () => alive(pid) && count(state) > 0);
    // Longer than the restore would take once the lock is free.
    await new Promise((res) => setTimeout(res, 3000));
    await expectSourceOnly(pid, state);
  });

  it("a unix socket file of the source on shared storage survives a failed restore (CRIU's restore unlinks it there)", async () => {
    const sock = join(t.shared, `sock-${process.pid}`);
    const { pid, state } = await lockedOnTarget(sock);
    const r = await migrating(pid, []);
    expect(r.json!.error.code, JSON.stringify(r.json!.error)).toBe('TARGET_LOCK_BLOCKED');
    expect(existsSync(sock)).toBe(true);
    // And it is the source's own: it answers there with its PID.
    const answer = await new Promise<string>((res, rej) => {
      let got = '';
      const c = connect(sock);
      c.on('data', (d) => (got += d.toString()));
      c.on('end', () => res(got));
      c.on('error', rej);
    });
    expect(answer.split(' ')[0]).toBe(String(pid));
    const left = (await execa('sh', ['-c', `ls -A ${t.shared} | grep -c cedana-keep || true`])).stdout.trim();
    expect(left).toBe('0');
    await expectSourceOnly(pid, state);
  });
});

describe('SQLite in WAL mode on storage both hosts see', () => {
  it('is refused before freezing, never hangs, and its database stays whole', async () => {
    const dir = await mkdtemp(join(t.shared, 'sqlite-'));
    const db = join(dir, 'db');
    // Its state file on storage both hosts see: a state.tmp it happens to have open at the freeze
  // (it writes one every 20 ms) is then there too, and cannot fail the restore for another reason.
  const state = join(await owned.tempDir('lk-state-', t.shared), 'state');
    const pid = owned.python('sqlite-writer.py', [db, state]);
    await waitFor('rows written', () => count(state) > 50);

    // Its lock on db-shm, a file it maps, would be lost by CRIU: refused before anything is frozen.
    const lost = await cedana(['migrate', String(pid), '--to', t.host.name, '--json'], { env: t.bed.env });
    expect(lost.exitCode).toBe(50);
    expect(lost.json!.error).toMatchObject({ code: 'LOCK_LOST', predicted: true });
    expect(lost.json!.error.message).toContain(`${db}-shm`);

    // Accepting that, it moves only if the source holds no write lock on the shared files when it
    // freezes; otherwise it is refused before freezing, or the restore there fails fast. Never a hang.
    const r = await migrating(pid, ['--allow-lost-locks']);
    if (r.code === 0) {
      expect(r.json).toMatchObject({ ok: true, targetPid: pid });
      expect(alive(pid)).toBe(false);
      const rows = count(state);
      await waitFor('the writer to write on there', () => count(state) > rows + 50);
      // Without its lock on db-shm, another client would take the database for unused: end it first.
      await t.bed.onHost(t.host, `kill -9 ${pid}`);
    } else {
      expect(['SHARED_FILE_LOCKED', 'TARGET_LOCK_BLOCKED']).toContain(r.json!.error.code);
      expect(r.json!.error.message).toContain(db);
      expect(r.json!.error.sourceResumed).toBe(true);
      await expectSourceOnly(pid, state, 'sqlite-writer');
      const rows = count(state);
      await waitFor('the writer to write on', () => count(state) > rows + 50);
    }
    const check = await execa('sqlite3', [db, 'PRAGMA integrity_check; SELECT count(*) > 0 FROM t;']);
    expect(check.stdout.trim().split('\n')).toEqual(['ok', '1']);
  });
});
