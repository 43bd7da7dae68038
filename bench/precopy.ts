/**
 * The precopy phase: pre-copy (by soft-dirty, and by content) against stop-and-copy in the test guest (scripts/guest), whose kernel
 * tracks dirty pages, as this machine's does not. The guest is emulated (qemu TCG), so absolute
 * times are far longer than on real hardware; both routes run in the same guest, alternated, and the
 * ratio of their downtimes is what this reports. Goal: pre-copy downtime ≤ 0.2 × stop-and-copy.
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { REPO_ROOT } from './contestants.js';
import { median, type Goal, type Row } from './stats.js';

export interface GuestRun {
  /** precopy: CRIU's rounds (soft-dirty); content: cedana's rounds by page contents (--precopy-by content). */
  mode: 'stop-and-copy' | 'precopy' | 'content';
  exitCode: number;
  downtimeMs: number;
  durationMs: number;
  bytesSent: number;
  precopy?: { rounds: { pagesWritten: number }[]; finalPagesWritten: number };
  error?: unknown;
}

export interface PrecopySamples {
  mib: number;
  dirty: number;
  kernel: string;
  runs: GuestRun[];
}

const GOAL_PRECOPY: Goal = { on: 'ratio', op: '<=', limit: 0.2 };

export async function precopyRounds(mib: number, dirty: number, reps: number, thp: string, progress: (m: string) => void): Promise<PrecopySamples & { thp: string }> {
  progress(`precopy: booting the test guest; ${reps} × (stop-and-copy, pre-copy by soft-dirty, pre-copy by content) of ${mib} MiB rewriting ${dirty}% a second (emulated: minutes)`);
  const r = await execa(join(REPO_ROOT, 'scripts/guest/run'), [join(REPO_ROOT, 'scripts/guest/precopy-bench-run.sh')], {
    env: { ...process.env, CEDANA_GUEST_APPEND: `cedana.mib=${mib} cedana.dirty=${dirty} cedana.reps=${reps} cedana.thp=${thp}`, CEDANA_GUEST_TIMEOUT: '3600' },
    reject: false,
    all: true,
  });
  const line = String(r.all).split('\n').find((l) => l.includes('GUEST-RESULT '));
  if (!line) throw new Error(`the guest gave no result: ${String(r.all).slice(-1500)}`);
  const g = JSON.parse(line.slice(line.indexOf('GUEST-RESULT ') + 13)) as PrecopySamples;
  const failed = g.runs.filter((x) => x.exitCode !== 0);
  if (failed.length > 0) throw new Error(`a migration in the guest failed: ${JSON.stringify(failed[0])}`);
  return { ...g, thp };
}

export function precopyRows(s: PrecopySamples & { thp: string }): Row[] {
  const of = (mode: GuestRun['mode'], f: (x: GuestRun) => number): number => median(s.runs.filter((x) => x.mode === mode).map(f));
  return [
    { name: `pre-copy ${s.mib} MiB at ${s.dirty}%/s (guest, THP ${s.thp}): downtime`, unit: 'ms', value: of('precopy', (x) => x.downtimeMs), baseline: of('stop-and-copy', (x) => x.downtimeMs), baselineLabel: 'stop-and-copy', goal: GOAL_PRECOPY },
    { name: `pre-copy ${s.mib} MiB at ${s.dirty}%/s (guest, THP ${s.thp}): total`, unit: 'ms', value: of('precopy', (x) => x.durationMs), baseline: of('stop-and-copy', (x) => x.durationMs), baselineLabel: 'stop-and-copy' },
    ...(s.runs.some((x) => x.mode === 'content')
      ? [
          { name: `pre-copy by content ${s.mib} MiB at ${s.dirty}%/s (guest): downtime`, unit: 'ms', value: of('content', (x) => x.downtimeMs), baseline: of('precopy', (x) => x.downtimeMs), baselineLabel: 'pre-copy by soft-dirty' },
          { name: `pre-copy by content ${s.mib} MiB at ${s.dirty}%/s (guest): total`, unit: 'ms', value: of('content', (x) => x.durationMs), baseline: of('precopy', (x) => x.durationMs), baselineLabel: 'pre-copy by soft-dirty' },
          { name: `pre-copy by content ${s.mib} MiB at ${s.dirty}%/s (guest): downtime vs stop-and-copy`, unit: 'ms', value: of('content', (x) => x.downtimeMs), baseline: of('stop-and-copy', (x) => x.downtimeMs), baselineLabel: 'stop-and-copy', goal: GOAL_PRECOPY },
        ] satisfies Row[]
      : []),
  ];
}
