/**
 * A process of another user (nobody here, as PostgreSQL or nginx's workers run as theirs). CRIU reads
 * every process's resource limits with prlimit(2), which needs CAP_SYS_RESOURCE for another user's
 * process. Where root lacks it (these VMs drop it), cedana refuses before anything is frozen and names
 * the user and the capability; where root has it, the same process dumps, restores and migrates.
 * Each test takes the branch this machine's real capabilities decide, and asserts what must follow.
 */
import { chownSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { locateCriu, spawnCriu } from '../../src/criu/criu.js';
import { CedanaError } from '../../src/errors.js';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { FIXTURES, Owned, alive, count, waitFor, waitGone } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const NOBODY = 65534;
const AS_NOBODY = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups'];

/** Read here, independently of cedana: the test runs as the same root, with the capabilities cedana and CRIU inherit. */
const capEff = BigInt(`0x${/^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]}`);
const HAS_SYS_RESOURCE = ((capEff >> 24n) & 1n) === 1n;

/** counter.py as nobody, counting into a directory nobody owns (under `parent`). */
async function nobodyCounter(parent?: string): Promise<{ dir: string; state: string; pid: number }> {
  const dir = await owned.tempDir('cedana-nobody-', parent);
  chownSync(dir, NOBODY, NOBODY);
  const state = join(dir, 'state');
  // The system's python: the one on root's PATH may live under /root, where nobody cannot go.
  const pid = owned.start('/usr/bin/python3', ['-u', join(FIXTURES, 'counter.py'), state], { wrap: AS_NOBODY });
  await waitFor('counting', () => count(state) > 2);
  expect(statSync(`/proc/${pid}`).uid).toBe(NOBODY);
  return { dir, state, pid };
}

/** Never stopped: alive and counting on. */
async function expectCounting(state: string, pid: number): Promise<void> {
  const n = count(state);
  expect(alive(pid)).toBe(true);
  await waitFor('the process to go on counting', () => count(state) > n + 3);
}

function expectNamesTheCause(error: Record<string, any>, pid: number): void {
  expect(error.code).toBe('CAPABILITY_MISSING');
  expect(error.message).toContain(`PID ${pid} (python3)`);
  expect(error.message).toContain(`user ${NOBODY} (nobody)`);
  expect(error.message).toContain('CAP_SYS_RESOURCE');
  expect(error.hint).toMatch(/run cedana where root has CAP_SYS_RESOURCE/);
  expect(error.hint).toContain('cedana check');
  expect(error).toMatchObject({ missingCapabilities: ['CAP_SYS_RESOURCE'], processes: [{ pid, comm: 'python3', uid: NOBODY, name: 'nobody' }] });
}

describe(`a process of another user, root ${HAS_SYS_RESOURCE ? 'with' : 'without'} CAP_SYS_RESOURCE`, () => {
  it(HAS_SYS_RESOURCE ? 'dump: dumped, and restored as its user' : 'dump: refused before CRIU runs, naming the user and the capability; the process never stops', async () => {
    const { state, pid } = await nobodyCounter();
    const out = await owned.tempDir();
    const logs = await owned.tempDir('cedana-logs-');
    const img = join(out, 'img');
    const r = await cedana(['dump', String(pid), '-o', img, '--json'], { env: { CEDANA_LOG_DIR: logs } });
    if (!HAS_SYS_RESOURCE) {
      expect(r.exitCode, r.stderr).toBe(48);
      expectNamesTheCause(r.json!.error, pid);
      // Refused before the freeze: no CRIU ran (a failed one leaves its log), no image.
      expect(r.json!.error).not.toHaveProperty('log');
      expect(readdirSync(logs)).toEqual([]);
      expect(existsSync(img)).toBe(false);
      await expectCounting(state, pid);
      const human = await cedana(['dump', String(pid), '-o', img]);
      expect(human.exitCode).toBe(48);
      expect(human.stderr).toContain('[CAPABILITY_MISSING]');
      expect(human.stderr).toContain(`user ${NOBODY} (nobody)`);
      expect(human.stderr).toMatch(/hint: run cedana where root has CAP_SYS_RESOURCE/);
      await expectCounting(state, pid);
    } else {
      expect(r.exitCode, r.stderr).toBe(0);
      await waitGone(pid);
      const n = count(state);
      const restored = await cedanaOk(['restore', img]);
      owned.own(restored.pid);
      expect(restored.pid).toBe(pid);
      expect(statSync(`/proc/${pid}`).uid).toBe(NOBODY);
      await waitFor('counting on from where it was dumped', () => count(state) > n + 3);
    }
  });

  it(HAS_SYS_RESOURCE ? "CRIU's dump succeeds" : "CRIU's own failure (what a process the refusal cannot judge meets) is explained the same way, its log kept", async () => {
    const { state, pid } = await nobodyCounter();
    const work = await owned.tempDir();
    const logs = await owned.tempDir('cedana-logs-');
    const criu = await locateCriu();
    const logFile = join(work, 'dump.log');
    const before = process.env.CEDANA_LOG_DIR;
    process.env.CEDANA_LOG_DIR = logs;
    let failure: unknown;
    try {
      await spawnCriu(criu, ['dump', '-t', String(pid), '-D', work, '-o', logFile, '--leave-running'], { logFile, label: `dump-${pid}` }).done;
    } catch (e) {
      failure = e;
    } finally {
      if (before === undefined) delete process.env.CEDANA_LOG_DIR;
      else process.env.CEDANA_LOG_DIR = before;
    }
    if (!HAS_SYS_RESOURCE) {
      expect(failure).toBeInstanceOf(CedanaError);
      const e = failure as CedanaError;
      expectNamesTheCause({ code: e.code, message: e.message, hint: e.hint, ...e.details }, pid);
      const kept = e.details.log as string;
      expect(kept.startsWith(logs)).toBe(true);
      expect(readFileSync(kept, 'utf8')).toMatch(/Can't get rlimit \d+: Operation not permitted/);
      expect(e.hint).toContain(kept);
      expect(e.details.criuLines).toContain("Can't get rlimit 0: Operation not permitted");
    } else {
      expect(failure).toBeUndefined();
      expect(readdirSync(work)).toContain(`core-${pid}.img`);
    }
    await expectCounting(state, pid); // CRIU resumed it (or left it running)
  });
});

describe(`migrating a process of another user, root ${HAS_SYS_RESOURCE ? 'with' : 'without'} CAP_SYS_RESOURCE`, () => {
  let bed: Bed;
  let shared: string;
  beforeAll(async () => {
    bed = await startBed([21]);
    // A directory both hosts see (each has its own /tmp), that nobody may pass through to its own.
    shared = await mkdtemp('/var/lib/cedana-test-');
    await chmod(shared, 0o711);
  });
  afterAll(async () => {
    await bed?.destroy();
    await rm(shared, { recursive: true, force: true });
  });

  it(HAS_SYS_RESOURCE ? 'moves it; it runs on the target as its user' : 'refused with the same error before the freeze; the source runs on, the target is untouched', async () => {
    const { state, pid } = await nobodyCounter(shared);
    const host = bed.hosts[0]!;
    const r = await cedana(['migrate', String(pid), '--to', host.name, '--json'], { env: bed.env });
    if (!HAS_SYS_RESOURCE) {
      expect(r.exitCode, r.stderr).toBe(48);
      expectNamesTheCause(r.json!.error, pid);
      expect(r.json!.error.sourceResumed).toBe(true);
      await expectCounting(state, pid);
      expect((await bed.onHost(host, 'ls -A /var/tmp')).stdout.trim()).toBe('');
      expect((await bed.onHost(host, `test -e /proc/${pid}`)).exitCode).not.toBe(0);
    } else {
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.json).toMatchObject({ ok: true, targetPid: pid });
      expect(alive(pid)).toBe(false);
      try {
        expect((await bed.onHost(host, `stat -c %u /proc/${pid}`)).stdout.trim()).toBe(String(NOBODY));
        const n = count(state);
        await waitFor('counting on, on the target', () => count(state) > n + 3);
      } finally {
        await bed.onHost(host, `kill -9 ${pid}`);
      }
    }
  });
});
