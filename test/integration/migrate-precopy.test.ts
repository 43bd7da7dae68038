/**
 * `cedana migrate --precopy` on this kernel, which has no soft-dirty tracking: pre-copy by page
 * content. Rounds read the memory of the running tree and send it to stock `criu page-server`s on the
 * target (each later round only the pages whose hash changed); the final dump goes through cedana's
 * proxy, which leaves what the target holds unchanged as PE_PARENT. The process keeps rewriting its
 * memory throughout, and after the migration checks every page against the digest it remembers.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cedanaOk, parseJsonLine } from '../helpers/cedana.js';
import { FIXTURES, Owned, alive, killChildren, readText, waitFor, waitGone } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';
import type { TestHost } from '../../scripts/testbed/host.js';

const owned = new Owned();
let bed: Bed;
let host: TestHost;
let shared: string;

beforeAll(async () => {
  bed = await startBed([25]);
  host = bed.hosts[0]!;
  shared = await mkdtemp('/var/lib/cedana-test-precopy-');
});
afterAll(async () => {
  await bed?.destroy();
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

/** dirtier.py: `mib` MiB rewriting `percent` % of its pages a second, in a directory both hosts see. */
async function dirtier(mib: number, percent: number, extra: string[] = []): Promise<{ dir: string; pid: number; pages: number }> {
  const dir = await mkdtemp(join(shared, 'dirtier-'));
  const pid = owned.python('dirtier.py', [String(mib), String(percent), dir, ...extra]);
  const pages = Number(await waitFor('memory filled', () => readText(join(dir, 'ready')), 60_000));
  return { dir, pid, pages };
}

/** Asks the process (wherever it runs: the PID is the same there) to check its memory; its k-th answer. */
async function selfCheck(dir: string, k: number, signal: () => Promise<void>): Promise<string> {
  await signal();
  return waitFor(`check-${k}`, () => readText(join(dir, `check-${k}`)), 60_000);
}

/**
 * Whether the final step goes by content or falls back to stop-and-copy depends on how fast round 1
 * crossed (contentFinalLoses): these tests fix the answer, so that none depends on the machine's speed.
 */
const byContent = (): Record<string, string> => ({ ...bed.env, CEDANA_PRECOPY_FAST_LINK: 'Infinity' });
const fastLink = (): Record<string, string> => ({ ...bed.env, CEDANA_PRECOPY_FAST_LINK: '1' });

describe('migrate --precopy by content (no soft-dirty here)', () => {
  it('sends rounds while the process runs, then only what changed while frozen; the process finds every page as it wrote it', async () => {
    const { dir, pid, pages } = await dirtier(256, 1);
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--precopy', '--json'], { env: byContent() });
    expect(r.mode).toBe('precopy');
    expect(r.decisions.join('\n')).toMatch(/pre-copy by content: \d+ round\(s\)/);
    const rounds = r.precopy.rounds as { pagesWritten: number; pagesSkippedParent: number }[];
    expect(rounds.length).toBeGreaterThanOrEqual(1);
    // Round 1 sent all of its memory, with the data.
    expect(rounds[0]!.pagesWritten).toBeGreaterThanOrEqual(pages);
    expect(rounds[0]!.pagesSkippedParent).toBe(0);
    if (rounds.length > 1) {
      expect(rounds[1]!.pagesSkippedParent).toBeGreaterThan(pages * 0.5);
      expect(rounds[1]!.pagesWritten).toBeLessThan(pages * 0.5);
    }
    // While frozen, only what changed since the last round crossed; the rest the target holds.
    expect(r.precopy.finalPagesInParent).toBeGreaterThan(pages * 0.5);
    expect(r.precopy.finalPagesWritten).toBeLessThan(pages * 0.5);
    await waitGone(pid);
    const there = await bed.onHost(host, `cat /proc/${pid}/comm`);
    expect(there.stdout.trim()).toBe('python3');
    // Still rewriting its memory there, and every page is what it last wrote.
    const beat = Number(readText(join(dir, 'beat')));
    await waitFor('the process to go on there', () => Number(readText(join(dir, 'beat'))) > beat + 5);
    const check = await selfCheck(dir, 1, async () => {
      const k = await bed.onHost(host, `kill -USR1 ${pid}`);
      expect(k.exitCode, k.stderr).toBe(0);
    });
    expect(check).toBe(`ok ${pages}`);
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('a tree of two, the parent\'s memory MAP_SHARED (CRIU\'s shared memory, forwarded whole): both find every page as they wrote it', async () => {
    const a = await mkdtemp(join(shared, 'dirtier-'));
    const b = await mkdtemp(join(shared, 'dirtier-'));
    const script = join(FIXTURES, 'dirtier.py');
    // sh starts the child, then becomes the parent (exec keeps its PID).
    const pid = owned.start('sh', ['-c', `python3 -u ${script} 24 2 ${b} & exec python3 -u ${script} 24 2 ${a} shared`]);
    const pages = Number(await waitFor('parent filled', () => readText(join(a, 'ready')), 60_000));
    const childPages = Number(await waitFor('child filled', () => readText(join(b, 'ready')), 60_000));
    const child = Number(readText(`/proc/${pid}/task/${pid}/children`)?.trim());
    expect(child).toBeGreaterThan(0);
    owned.own(child);
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--precopy', '--json'], { env: byContent() });
    expect(r).toMatchObject({ mode: 'precopy', processes: 2 });
    // Round 1 carried both processes' private pages; the shared mapping goes with the final dump.
    expect(r.precopy.rounds[0].pagesWritten).toBeGreaterThanOrEqual(childPages);
    expect(r.precopy.finalPagesWritten).toBeGreaterThanOrEqual(pages); // the shared memory, whole
    await waitGone(pid);
    await waitGone(child);
    for (const [dir, p, n] of [[a, pid, pages], [b, child, childPages]] as const) {
      const check = await selfCheck(dir, 1, async () => {
        const k = await bed.onHost(host, `kill -USR1 ${p}`);
        expect(k.exitCode, k.stderr).toBe(0);
      });
      expect(check).toBe(`ok ${n}`);
    }
    await bed.onHost(host, `kill -9 ${child} ${pid}`);
  });

  it('a tree that changes fast, on a link that keeps up: the final step goes stop-and-copy, and the process finds every page as it wrote it', async () => {
    const { dir, pid, pages } = await dirtier(80, 50);
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--precopy', '--json'], { env: fastLink() });
    expect(r.mode).toBe('precopy');
    expect(r.decisions.join('\n')).toMatch(/pre-copy by content: round 1 crossed at \d+ MB\/s .* the final step goes stop-and-copy/);
    expect(r.precopy.rounds.length).toBeGreaterThanOrEqual(2);
    // Everything crossed while frozen, nothing from the rounds' chain.
    expect(r.precopy.finalPagesInParent).toBe(0);
    expect(r.precopy.finalPagesWritten).toBeGreaterThanOrEqual(pages);
    await waitGone(pid);
    const check = await selfCheck(dir, 1, async () => {
      const k = await bed.onHost(host, `kill -USR1 ${pid}`);
      expect(k.exitCode, k.stderr).toBe(0);
    });
    expect(check).toBe(`ok ${pages}`);
    // Nothing of the rounds is left there.
    expect((await bed.onHost(host, 'ls -A /var/tmp')).stdout.trim()).toBe('');
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('faults — the target page servers ended, SIGINT, or the target\'s sshd killed during the rounds, SIGINT in the final freeze — leave the source running and unchanged, the target clean', async () => {
    const { dir, pid, pages } = await dirtier(128, 1);
    // The target's sshd is killed once round 2 has begun: every login shell there has started by
    // then (one long-lived shell, the OpenSSH link's connection). Killed while a login shell runs
    // its rc files, pyenv's rehash can leave its lock behind, which holds up every later login for
    // a minute.
    for (const fault of ['page-server', 'sigint', 'final-sigint', 'sshd'] as const) {
      const child = spawn('node', [BIN, 'migrate', String(pid), '--to', host.name, '--precopy', '--json'], { env: { ...process.env, ...bed.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      let fired = false;
      let killing: Promise<unknown> = Promise.resolve();
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (!fired && (fault === 'final-sigint' ? /"phase":"freezing/ : fault === 'sshd' ? /pre-copy round 2/ : /pre-copy round 1/).test(stderr)) {
          fired = true;
          if (fault === 'sigint') setTimeout(() => child.kill('SIGINT'), 150);
          else if (fault === 'sshd') killChildren(host.initPid); // the per-connection sshd processes
          else if (fault === 'final-sigint') child.kill('SIGINT');
          // Every CRIU there, for a few seconds: the page server of whichever round (or of the final step) is on.
          else killing = bed.onHost(host, 'for i in $(seq 60); do pkill -x criu; sleep 0.05; done');
        }
      });
      const code = await new Promise<number | null>((res) => child.on('close', (c) => res(c)));
      await killing; // its last pkill before the next migration starts
      expect(fired, stderr).toBe(true);
      const j = parseJsonLine(stdout)!;
      expect(code, stderr).not.toBe(0);
      expect(j.error, fault).toMatchObject({ sourceResumed: true, targetCleanedUp: true });
      if (fault === 'sigint' || fault === 'final-sigint') expect(j.error.code, JSON.stringify(j.error)).toBe('INTERRUPTED');
      if (fault === 'sshd') expect(['CONNECTION_LOST', 'CRIU_FAILED', 'IO_ERROR', 'SSH_FAILED'], JSON.stringify(j.error)).toContain(j.error.code);
      expect(alive(pid)).toBe(true);
      const left = await bed.onHost(host, `ls -A /var/tmp; pgrep -x criu; [ -e /proc/${pid} ] && echo running-there; true`);
      expect(left.stdout.trim(), 'left on the target').toBe('');
    }
    const beat = Number(readText(join(dir, 'beat')));
    await waitFor('the source to go on', () => Number(readText(join(dir, 'beat'))) > beat + 5);
    const check = await selfCheck(dir, 1, async () => void process.kill(pid, 'SIGUSR1'));
    expect(check).toBe(`ok ${pages}`);
  });
});
