/**
 * The overhead phase: what periodic checkpoints (`cedana dump --every`) cost a running job. A python
 * worker holding N MiB of random memory does fixed units of work (hashing 256 KiB of its memory and
 * rewriting one page each) and counts them; its throughput over a window without checkpoints is the
 * baseline, over an equal window with `cedana dump --every INTERVAL` running the measure, alternated
 * (without, with, without, with…) so that the machine's drift falls on both. Goal: ≤ 2% lost at one
 * checkpoint a minute.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startCedana } from './contestants.js';
import { start } from './exec.js';
import { FILL_MEMORY } from './fixture.js';
import type { Goal, Row } from './stats.js';

const WORKER = `${FILL_MEMORY}
import hashlib, random
out = sys.argv[3]
pages = size >> 12
n = 0
last = time.time()
while True:
    off = random.randrange(0, size - (256 << 10))
    hashlib.sha256(buf[off:off + (256 << 10)]).digest()
    p = random.randrange(pages) << 12
    buf[p:p + 8] = os.urandom(8)
    n += 1
    now = time.time()
    if now - last >= 0.5:
        with open(out + '.tmp', 'w') as f:
            f.write('%d %.6f\\n' % (n, now))
        os.replace(out + '.tmp', out)
        last = now
`;

export interface OverheadWindow {
  checkpoints: boolean;
  seconds: number;
  units: number;
  perSecond: number;
  made?: number;
}

export interface OverheadSamples {
  mib: number;
  intervalS: number;
  windows: OverheadWindow[];
}

const GOAL_OVERHEAD: Goal = { on: 'ratio', op: '>=', limit: 0.98 };

async function counter(path: string): Promise<{ n: number; t: number }> {
  for (;;) {
    const text = await readFile(path, 'utf8').catch(() => '');
    const [n, t] = text.trim().split(' ').map(Number);
    if (n !== undefined && t !== undefined && Number.isFinite(n) && Number.isFinite(t)) return { n, t };
    await sleep(100);
  }
}

export async function overheadRounds(mib: number, intervalS: number, windowS: number, pairs: number, tmp: string, progress: (m: string) => void): Promise<OverheadSamples> {
  const dir = await mkdtemp(join(tmp, 'overhead-'));
  const state = join(dir, 'count');
  const worker = start('python3', ['-c', WORKER, 'cedana-bench-overhead', String(mib), state], { detached: true, stdio: 'ignore' });
  const windows: OverheadWindow[] = [];
  try {
    progress(`overhead: filling ${mib} MiB`);
    await counter(state);
    await sleep(2000);
    for (let i = 0; i < pairs; i++) {
      for (const checkpoints of [false, true]) {
        progress(`overhead ${i + 1}/${pairs}: ${windowS} s ${checkpoints ? `with a checkpoint every ${intervalS} s` : 'without checkpoints'}`);
        const ck = checkpoints
          ? startCedana(['dump', String(worker.pid), '--every', `${intervalS}s`, '--keep', '2', '-o', join(dir, `ck-${i}`), '--json'], { ...process.env, TMPDIR: tmp })
          : undefined;
        const a = await counter(state);
        await sleep(windowS * 1000);
        const b = await counter(state);
        let made: number | undefined;
        if (ck) {
          ck.child.kill('SIGINT');
          const exit = await ck.done;
          made = (JSON.parse(exit.stdout.trim().split('\n').pop() || '{}') as { made?: number }).made;
          await rm(join(dir, `ck-${i}`), { recursive: true, force: true });
        }
        windows.push({ checkpoints, seconds: b.t - a.t, units: b.n - a.n, perSecond: (b.n - a.n) / (b.t - a.t), made });
      }
    }
    return { mib, intervalS, windows };
  } finally {
    try {
      process.kill(worker.pid, 'SIGKILL');
    } catch {
      // gone
    }
    await rm(dir, { recursive: true, force: true });
  }
}

export function overheadRows(s: OverheadSamples): Row[] {
  const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);
  const without = mean(s.windows.filter((w) => !w.checkpoints).map((w) => w.perSecond));
  const withCk = mean(s.windows.filter((w) => w.checkpoints).map((w) => w.perSecond));
  const made = s.windows.filter((w) => w.checkpoints).reduce((a, w) => a + (w.made ?? 0), 0);
  return [
    { name: `job throughput with a checkpoint every ${s.intervalS} s (${made} made)`, unit: 'units/s', value: withCk, baseline: without, baselineLabel: 'without checkpoints', goal: GOAL_OVERHEAD },
  ];
}
