/**
 * The incremental phase: how much an incremental checkpoint (dump --parent) stores against the bytes
 * the process actually changed. test/fixtures/pager.py holds N MiB of random memory and, when told,
 * rewrites exactly K pages with new random bytes; after a full checkpoint, each step rewrites a share
 * of its pages and takes a checkpoint with the one before as parent. Goal: stored ≤ 1.2 × changed.
 * Each step is also taken without the page sink (CEDANA_PAGE_SINK=0: CRIU writes every page, cedana
 * drops the unchanged ones afterwards), from the same parent, alternating which goes first.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DumpResult } from '../src/commands/dump.js';
import { cedanaResult, startCedana, REPO_ROOT } from './contestants.js';
import { start, watchPeakRss } from './exec.js';
import { MB, type Goal, type Row } from './stats.js';

export interface IncrementalStep {
  percent: number;
  pagesRewritten: number;
  changedBytes: number;
  storedBytes: number;
  pagesWritten: number;
  pagesInParent: number;
  frozenMs: number;
  durationMs: number;
  /** cedana's own peak RSS (VmHWM) during the dump through the sink. */
  peakRss: number;
  /** The same checkpoint, same parent, without the page sink (CRIU writes every page, cedana drops the unchanged ones after). */
  noSink: { frozenMs: number; durationMs: number; storedBytes: number };
}

export interface IncrementalSamples {
  mib: number;
  full: { bytes: number; frozenMs: number; durationMs: number };
  steps: IncrementalStep[];
}

const GOAL_SIZE: Goal = { on: 'ratio', op: '<=', limit: 1.2 };
const GOAL_RSS: Goal = { on: 'value', op: '<', limit: 200 };

async function waitFor<T>(what: string, f: () => Promise<T | undefined>, ms = 300_000): Promise<T> {
  const end = performance.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (performance.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export async function incrementalRounds(mib: number, percents: number[], tmp: string, progress: (m: string) => void): Promise<IncrementalSamples> {
  const dir = await mkdtemp(join(tmp, 'pager-'));
  const ck = join(tmp, 'chain');
  await mkdir(ck);
  const proc = start('python3', [join(REPO_ROOT, 'test/fixtures/pager.py'), String(mib), dir], { detached: true, stdio: 'ignore' });
  const pid = proc.pid;
  try {
    progress(`incremental: filling ${mib} MiB`);
    await waitFor('the pager fixture', async () => (await readFile(join(dir, 'sha0'), 'utf8').catch(() => undefined)) || undefined);
    const dump = async (out: string, parent?: string, sink = true): Promise<{ r: DumpResult; ms: number; peakRss: number }> => {
      const env = { ...process.env, TMPDIR: tmp, ...(sink ? {} : { CEDANA_PAGE_SINK: '0' }) };
      const run = startCedana(['dump', String(pid), '--leave-running', '-o', out, ...(parent ? ['--parent', parent] : []), '--json'], env);
      const peak = watchPeakRss(run);
      const exit = await run.done;
      return { r: cedanaResult<DumpResult & { ok: true }>(exit, 'dump', 'stdout'), ms: exit.ms, peakRss: await peak };
    };
    progress('incremental: full checkpoint');
    let prev = join(ck, 'c0');
    const first = await dump(prev);
    const full = { bytes: first.r.memoryBytes, frozenMs: first.r.frozenMs, durationMs: first.ms };
    const pages = (mib * 1024 * 1024) / 4096;
    const steps: IncrementalStep[] = [];
    for (const [i, percent] of percents.entries()) {
      const k = Math.round((pages * percent) / 100);
      await writeFile(join(dir, 'rewrite'), String(k));
      process.kill(pid, 'SIGUSR2');
      await waitFor('the rewrite', async () => ((await readFile(join(dir, 'rewritten'), 'utf8').catch(() => '')).startsWith(`${i + 1} `) ? true : undefined));
      progress(`incremental: ${percent}% of the pages rewritten (${k}), checkpoint with the one before as parent`);
      const out = join(ck, `c${i + 1}`);
      // Alternated: which of the two goes first changes each step.
      const viaSink = (): Promise<{ r: DumpResult; ms: number; peakRss: number }> => dump(out, prev);
      const noSink = async (): Promise<{ r: DumpResult; ms: number; peakRss: number }> => {
        const r = await dump(`${out}-nosink`, prev, false);
        await rm(`${out}-nosink`, { recursive: true, force: true });
        return r;
      };
      let d: { r: DumpResult; ms: number; peakRss: number };
      let n: { r: DumpResult; ms: number; peakRss: number };
      if (i % 2 === 0) {
        d = await viaSink();
        n = await noSink();
      } else {
        n = await noSink();
        d = await viaSink();
      }
      steps.push({
        percent, pagesRewritten: k, changedBytes: k * 4096, storedBytes: d.r.memoryBytes, pagesWritten: d.r.incremental?.pagesWritten ?? 0,
        pagesInParent: d.r.incremental?.pagesInParent ?? 0, frozenMs: d.r.frozenMs, durationMs: d.ms, peakRss: d.peakRss,
        noSink: { frozenMs: n.r.frozenMs, durationMs: n.ms, storedBytes: n.r.memoryBytes },
      });
      prev = out;
    }
    return { mib, full, steps };
  } finally {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
    await rm(dir, { recursive: true, force: true });
    await rm(ck, { recursive: true, force: true });
  }
}

export function incrementalRows(s: IncrementalSamples): Row[] {
  return s.steps.flatMap((x) => [
    { name: `incremental after ${x.percent}% rewritten: stored`, unit: 'MB', value: x.storedBytes / MB, baseline: x.changedBytes / MB, baselineLabel: 'bytes changed', goal: GOAL_SIZE },
    { name: `incremental after ${x.percent}% rewritten: frozen`, unit: 'ms', value: x.frozenMs, baseline: s.full.frozenMs, baselineLabel: 'full dump frozen' },
    { name: `incremental after ${x.percent}% rewritten: frozen, page sink`, unit: 'ms', value: x.frozenMs, baseline: x.noSink.frozenMs, baselineLabel: 'the same without the sink' },
    { name: `incremental after ${x.percent}% rewritten: whole command, page sink`, unit: 'ms', value: x.durationMs, baseline: x.noSink.durationMs, baselineLabel: 'the same without the sink' },
    { name: `incremental after ${x.percent}% rewritten: cedana's peak RSS, page sink`, unit: 'MB', value: x.peakRss / MB, goal: GOAL_RSS },
  ] satisfies Row[]);
}
