/**
 * The migrate phase: `cedana migrate` against the route a user takes by hand today, on the same
 * kind of process, in one run, alternating A B A B:
 *
 *   naive:  criu dump -t PID -D dir (cedana's options) to local disk,
 *           tar -C dir -cf - . | ssh host 'mkdir -p D && tar -xf - -C D' (OpenSSH, its default cipher),
 *           ssh host criu restore -D D --restore-detached --pidfile …
 *   cedana: cedana migrate PID --to host --json
 *
 * The process (dirty-fixture.ts) holds N MiB of random memory and rewrites 1% of it every second.
 * Each round starts a fresh one, moves it to the test-bed host, checks that it runs there (its
 * heartbeat in a shared directory moves on), ends it there and waits until its PID is free again.
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MigrateResult } from '../src/commands/migrate.js';
import { buildDumpArgs, buildRestoreArgs, type CriuDecisions, type RestoreFlags } from '../src/criu/options.js';
import { shq } from '../src/transport/ssh.js';
import type { BenchBed } from './bed.js';
import { cedanaResult, startCedana, type CriuSetup } from './contestants.js';
import { DirtyFixture } from './dirty-fixture.js';
import { lastLine, start, watchPeakRss, type Exit, type StartOptions } from './exec.js';
import { MB, median, type Goal, type Row } from './stats.js';

export interface MigrateConfig {
  /** Process sizes, one set of rounds each. */
  sizesMib: number[];
  reps: number;
  /** Share of the pages rewritten every second. */
  dirtyPercent: number;
  /** Also measure --postcopy against cedana's stop-and-copy. */
  postcopy: boolean;
}

export interface MigrateCtx {
  cfg: MigrateConfig;
  bed: BenchBed;
  criu: CriuSetup;
  /** Local scratch (the naive route's images), removed by the caller. */
  tmp: string;
  /** A directory both hosts see (not /tmp or /var/tmp): the fixture's heartbeat files. */
  shared: string;
  progress(msg: string): void;
}

export interface NaiveRep {
  /** criu dump start → restored on the target: the process is down the whole time. */
  totalMs: number;
  dumpMs: number;
  transferMs: number;
  restoreMs: number;
  /** The tar stream's size (tar --totals). */
  tarBytes: number;
  pid: number;
}

export type CedanaMigrate = MigrateResult & { ok: true };

export interface CedanaRep {
  wallMs: number;
  /** cedana's own peak RSS (VmHWM) during the migration: it streams, so this must not grow with the process. */
  peakRssBytes: number;
  result: CedanaMigrate;
  /** Time between cedana's progress events (--json prints them on stderr), where available. */
  phasesMs: Record<string, number>;
}

export interface SizeSamples {
  mib: number;
  naive: NaiveRep[];
  cedana: CedanaRep[];
  /** cedana migrate --precopy (by content where the kernel has no soft-dirty). */
  precopy: CedanaRep[];
  /** cedana migrate --no-precopy --transport ssh2: the memory through ssh2 instead of OpenSSH (empty when not measured). */
  ssh2: CedanaRep[];
  /** cedana migrate --postcopy (empty when not measured). */
  postcopy: CedanaRep[];
}

export interface MigrateSamples {
  sizes: SizeSamples[];
  /** The cipher OpenSSH chose for the naive route (its default). */
  naiveCipher: string;
  /** The share of its pages the process rewrote every second. */
  dirtyPercent: number;
}

const GOAL_MIGRATE: Goal = { on: 'ratio', op: '<=', limit: 0.4 };
/** Post-copy: the tree runs on the target within a tenth of stop-and-copy's downtime. */
const GOAL_POSTCOPY: Goal = { on: 'ratio', op: '<=', limit: 0.1 };
/** Pre-copy: downtime ≤ 0.25× the route by hand, ≤ 0.5× cedana's own stop-and-copy; total ≤ 0.6× by hand. */
const GOAL_PRECOPY_NAIVE: Goal = { on: 'ratio', op: '<=', limit: 0.25 };
const GOAL_PRECOPY_STOP: Goal = { on: 'ratio', op: '<=', limit: 0.5 };
const GOAL_PRECOPY_TOTAL: Goal = { on: 'ratio', op: '<=', limit: 0.6 };
/** Where the process rewrites much of its memory (10%, 50% a second) pre-copy cannot win; the stop rule must keep it from losing: downtime ≤ 1.1× stop-and-copy. */
const GOAL_PRECOPY_HOT: Goal = { on: 'ratio', op: '<=', limit: 1.1 };
const HOT_PERCENT = 10;
/** A small process (a shell pipeline, memcached): downtime ≤ 200 ms, the whole command ≤ 1.5 s. */
const SMALL_MIB = 16;
const GOAL_SMALL_DOWNTIME: Goal = { on: 'value', op: '<=', limit: 200 };
const GOAL_SMALL_TOTAL: Goal = { on: 'value', op: '<=', limit: 1500 };
/** cedana streams the memory: its own RSS stays bounded whatever the process size. */
const GOAL_RSS: Goal = { on: 'value', op: '<', limit: 200 };

/** The fixture needs no CRIU flag (own session, no terminal, no sockets): the baseline gets none either. */
const NO_FLAGS: CriuDecisions = { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], notes: [] };
const NO_RESTORE_FLAGS: RestoreFlags = { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: false };

/** Where both routes keep the image on the target: cedana's default --target-dir (a tmpfs on the test bed). */
const TARGET_DIR = '/var/tmp';

/** CRIU in its own session with stdin closed, as cedana starts it. */
const criuStart: StartOptions = { detached: true, stdio: ['ignore', 'pipe', 'pipe'] };

async function settle(): Promise<void> {
  await start('sync', [], { stdio: 'ignore' }).done;
}

function expectOk(exit: Exit, what: string): void {
  if (exit.code !== 0) throw new Error(`${what} failed (exit ${exit.code ?? exit.signal}): ${(exit.stderr || exit.stdout).trim().slice(-800)}`);
}

/** The naive route, timed from the start of criu dump (the freeze) to the restored process. */
async function naiveRound(m: MigrateCtx, fx: DirtyFixture, tag: string): Promise<NaiveRep> {
  const local = join(m.tmp, `naive-${tag}`);
  const images = join(local, 'img');
  const work = join(local, 'work');
  await mkdir(images, { recursive: true });
  await mkdir(work, { recursive: true });
  const remote = `${TARGET_DIR}/cedana-bench-naive-${tag}`;
  const dumpArgs = buildDumpArgs(fx.pid, NO_FLAGS, { imagesDir: images, workDir: work, logFile: join(work, 'dump.log'), networkLock: m.criu.networkLock, leaveRunning: false });
  const restoreArgs = buildRestoreArgs(NO_RESTORE_FLAGS, {
    imagesDir: `${remote}/img`, workDir: remote, logFile: `${remote}/restore.log`, networkLock: m.criu.networkLock, pidFile: `${remote}/restored.pid`,
  });
  const host = m.bed.host.name;
  try {
    await settle();
    const t0 = performance.now();
    const dump = await start(m.criu.path, dumpArgs, criuStart).done;
    expectOk(dump, 'criu dump');
    const t1 = performance.now();
    const script = 'set -o pipefail; d=$1; cmd=$2; shift 2; tar -C "$d" --totals -cf - . | ssh "$@" "$cmd"';
    const unpack = `mkdir -p ${shq(`${remote}/img`)} && tar -xf - -C ${shq(`${remote}/img`)}`;
    const xfer = await start('bash', ['-c', script, 'naive-transfer', images, unpack, ...m.bed.sshOpts, host]).done;
    expectOk(xfer, 'tar | ssh');
    const t2 = performance.now();
    const restore = await start('ssh', [...m.bed.sshOpts, host, `${['criu', ...restoreArgs].map(shq).join(' ')} && cat ${shq(`${remote}/restored.pid`)}`]).done;
    expectOk(restore, 'ssh criu restore');
    const t3 = performance.now();
    const tarBytes = Number(/Total bytes written: (\d+)/.exec(xfer.stderr)?.[1] ?? Number.NaN);
    return { totalMs: t3 - t0, dumpMs: t1 - t0, transferMs: t2 - t1, restoreMs: t3 - t2, tarBytes, pid: Number(lastLine(restore.stdout)) };
  } finally {
    await rm(local, { recursive: true, force: true });
    await m.bed.ssh(`rm -rf ${shq(remote)}`).catch(() => undefined);
  }
}

async function cedanaRound(m: MigrateCtx, fx: DirtyFixture, extra: string[] = []): Promise<CedanaRep> {
  await settle();
  const run = startCedana(['migrate', String(fx.pid), '--to', m.bed.host.name, '--target-dir', TARGET_DIR, ...extra, '--json'], { ...m.bed.env, TMPDIR: m.tmp });
  const peak = watchPeakRss(run);
  const exit = await run.done;
  const result = cedanaResult<CedanaMigrate>(exit, 'migrate', 'stdout');
  return { wallMs: exit.ms, peakRssBytes: await peak, result, phasesMs: phaseTimes(exit.stderr) };
}

/** Durations between the phase events cedana prints with --json (best effort: none if absent). */
export function phaseTimes(stderr: string): Record<string, number> {
  const events: { phase: string; t: number }[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const e = JSON.parse(line) as { event?: string; phase?: string; t?: number };
      if (e.event === 'phase' && typeof e.phase === 'string' && typeof e.t === 'number') events.push({ phase: e.phase, t: e.t });
    } catch {
      // not an event
    }
  }
  const out: Record<string, number> = {};
  for (let i = 0; i + 1 < events.length; i++) {
    const key = events[i]!.phase.replace(/\d+ process\(es\)/, 'N process(es)').replace(/ on \S+$/, ' on <target>').replace(/ to \S+$/, ' to <target>');
    out[key] = events[i + 1]!.t - events[i]!.t;
  }
  return out;
}

/** One migration of a fresh fixture by `route`; checks it runs on the target, then ends it there. */
async function round<T>(m: MigrateCtx, mib: number, route: (fx: DirtyFixture) => Promise<T>, pidOf: (r: T) => number): Promise<T> {
  const fx = DirtyFixture.spawn(mib, m.cfg.dirtyPercent, m.shared);
  let moved = false;
  try {
    await fx.ready();
    const r = await route(fx);
    moved = true;
    const pid = pidOf(r);
    if (pid !== fx.pid) throw new Error(`the process came back as PID ${pid} on the target, expected ${fx.pid}`);
    await fx.gone(); // the original: ended by cedana after its commit, by criu dump on the naive route
    await fx.beating(await fx.beats());
    return r;
  } finally {
    if (!moved) await fx.kill(); // still here: a failed route resumes it
    // End it on the target and wait until its PID is free there (the next round may need it).
    if (await m.bed.isFixture(fx.pid)) await m.bed.ssh(`kill -9 ${fx.pid}`);
    const deadline = performance.now() + 30_000;
    while (await m.bed.pidExists(fx.pid)) {
      if (performance.now() > deadline) throw new Error(`PID ${fx.pid} is still taken on ${m.bed.host.name} 30 s after kill -9`);
      await sleep(20);
    }
    await rm(join(m.shared, `${fx.pid}.beat`), { force: true });
  }
}

/** Which cipher OpenSSH negotiates by default with the target (its `ssh -v` says). */
async function defaultCipher(m: MigrateCtx): Promise<string> {
  const exit = await start('ssh', ['-v', ...m.bed.sshOpts, m.bed.host.name, 'true']).done;
  return /kex: client->server cipher: (\S+)/.exec(exit.stderr)?.[1] ?? 'unknown';
}

const naivePid = (r: NaiveRep): number => r.pid;
const cedanaPid = (r: CedanaRep): number => r.result.targetPid;

export async function migrateRounds(m: MigrateCtx): Promise<MigrateSamples> {
  const naiveCipher = await defaultCipher(m);
  // The first migration to a fresh host is slower (sshd, CRIU and python pages cold): one of each, unmeasured.
  m.progress('migrate warm-up: naive and cedana with 64 MiB (not measured)');
  await round(m, 64, (fx) => naiveRound(m, fx, 'warm-up'), naivePid);
  await round(m, 64, (fx) => cedanaRound(m, fx), cedanaPid);
  const sizes: SizeSamples[] = [];
  for (const mib of m.cfg.sizesMib) {
    const s: SizeSamples = { mib, naive: [], cedana: [], precopy: [], ssh2: [], postcopy: [] };
    for (let i = 0; i < m.cfg.reps; i++) {
      m.progress(`${i + 1}/${m.cfg.reps} migrate ${mib} MiB: naive (criu dump, tar | ssh, ssh criu restore), cedana migrate${m.cfg.postcopy ? ', cedana migrate --postcopy' : ''}`);
      s.naive.push(await round(m, mib, (fx) => naiveRound(m, fx, `${mib}-${i}`), naivePid));
      s.cedana.push(await round(m, mib, (fx) => cedanaRound(m, fx, ['--no-precopy']), cedanaPid));
      s.precopy.push(await round(m, mib, (fx) => cedanaRound(m, fx, ['--precopy', ...(process.env.CEDANA_BENCH_PRECOPY_ARGS ?? '').split(' ').filter(Boolean)]), cedanaPid));
      if (process.env.CEDANA_BENCH_SSH2 !== '0') s.ssh2.push(await round(m, mib, (fx) => cedanaRound(m, fx, ['--no-precopy', '--transport', 'ssh2']), cedanaPid));
      if (m.cfg.postcopy) s.postcopy.push(await round(m, mib, (fx) => cedanaRound(m, fx, ['--postcopy', '--min-throughput', '1']), cedanaPid));
    }
    sizes.push(s);
  }
  return { sizes, naiveCipher, dirtyPercent: m.cfg.dirtyPercent };
}

const med = <T>(xs: T[], f: (x: T) => number): number => median(xs.map(f));

export function migrateRows(s: MigrateSamples): Row[] {
  return s.sizes.flatMap((z) => [
    { name: `migrate ${z.mib} MiB: downtime`, unit: 'ms', value: med(z.cedana, (r) => r.result.downtimeMs), baseline: med(z.naive, (r) => r.totalMs), baselineLabel: 'naive', goal: GOAL_MIGRATE },
    { name: `migrate ${z.mib} MiB: total (wall)`, unit: 'ms', value: med(z.cedana, (r) => r.wallMs), baseline: med(z.naive, (r) => r.totalMs), baselineLabel: 'naive', goal: GOAL_MIGRATE },
    ...(z.ssh2.length > 0
      ? ([
          { name: `migrate ${z.mib} MiB: downtime, OpenSSH link vs ssh2`, unit: 'ms', value: med(z.cedana, (r) => r.result.downtimeMs), baseline: med(z.ssh2, (r) => r.result.downtimeMs), baselineLabel: 'cedana --transport ssh2' },
        ] satisfies Row[])
      : []),
    { name: `migrate ${z.mib} MiB: bytes sent`, unit: 'MB', value: med(z.cedana, (r) => r.result.bytesSent) / MB, baseline: med(z.naive, (r) => r.tarBytes) / MB, baselineLabel: 'naive tar' },
    { name: `migrate ${z.mib} MiB: cedana peak RSS`, unit: 'MB', value: med(z.cedana, (r) => r.peakRssBytes) / MB, goal: GOAL_RSS },
    ...(z.mib <= SMALL_MIB
      ? ([
          { name: `migrate ${z.mib} MiB: downtime, absolute`, unit: 'ms', value: med(z.cedana, (r) => r.result.downtimeMs), goal: GOAL_SMALL_DOWNTIME },
          { name: `migrate ${z.mib} MiB: total (wall), absolute`, unit: 'ms', value: med(z.cedana, (r) => r.wallMs), goal: GOAL_SMALL_TOTAL },
        ] satisfies Row[])
      : []),
    ...(z.precopy.length > 0
      ? ([
          { name: `precopy ${z.mib} MiB: downtime`, unit: 'ms', value: med(z.precopy, (r) => r.result.downtimeMs), baseline: med(z.naive, (r) => r.totalMs), baselineLabel: 'naive', ...(s.dirtyPercent < HOT_PERCENT ? { goal: GOAL_PRECOPY_NAIVE } : {}) },
          { name: `precopy ${z.mib} MiB: downtime vs stop-and-copy`, unit: 'ms', value: med(z.precopy, (r) => r.result.downtimeMs), baseline: med(z.cedana, (r) => r.result.downtimeMs), baselineLabel: 'cedana --no-precopy', goal: s.dirtyPercent < HOT_PERCENT ? GOAL_PRECOPY_STOP : GOAL_PRECOPY_HOT },
          { name: `precopy ${z.mib} MiB: total (wall)`, unit: 'ms', value: med(z.precopy, (r) => r.wallMs), baseline: med(z.naive, (r) => r.totalMs), baselineLabel: 'naive', goal: GOAL_PRECOPY_TOTAL },
          { name: `precopy ${z.mib} MiB: cedana peak RSS`, unit: 'MB', value: med(z.precopy, (r) => r.peakRssBytes) / MB, goal: GOAL_RSS },
        ] satisfies Row[])
      : []),
    ...(z.postcopy.length > 0
      ? ([
          { name: `postcopy ${z.mib} MiB: time to running`, unit: 'ms', value: med(z.postcopy, (r) => r.result.downtimeMs), baseline: med(z.cedana, (r) => r.result.downtimeMs), baselineLabel: 'stop-and-copy downtime', goal: GOAL_POSTCOPY },
          { name: `postcopy ${z.mib} MiB: total (wall)`, unit: 'ms', value: med(z.postcopy, (r) => r.wallMs), baseline: med(z.cedana, (r) => r.wallMs), baselineLabel: 'stop-and-copy total' },
          { name: `postcopy ${z.mib} MiB: memory pulled after start`, unit: 'ms', value: med(z.postcopy, (r) => r.result.postcopy?.pullMs ?? Number.NaN) },
        ] satisfies Row[])
      : []),
  ] satisfies Row[]);
}

export function renderMigrateBreakdown(s: MigrateSamples): string {
  const ms = (v: number): string => (Number.isNaN(v) ? '—' : `${Math.round(v)} ms`);
  const lines = [`where the time goes (medians; naive route over OpenSSH's default cipher, ${s.naiveCipher}):`];
  for (const z of s.sizes) {
    lines.push(
      `  ${z.mib} MiB naive:  criu dump ${ms(med(z.naive, (r) => r.dumpMs))}, tar | ssh ${ms(med(z.naive, (r) => r.transferMs))} ` +
        `(${(med(z.naive, (r) => r.tarBytes / MB / (r.transferMs / 1000))).toFixed(0)} MB/s), ssh criu restore ${ms(med(z.naive, (r) => r.restoreMs))}`,
    );
    const phases = [...new Set(z.cedana.flatMap((r) => Object.keys(r.phasesMs)))];
    const parts = phases.map((p) => `${p} ${ms(med(z.cedana.filter((r) => p in r.phasesMs), (r) => r.phasesMs[p]!))}`);
    lines.push(
      `  ${z.mib} MiB cedana: wall ${ms(med(z.cedana, (r) => r.wallMs))} = its durationMs ${ms(med(z.cedana, (r) => r.result.durationMs))} ` +
        `+ Node start/exit ${ms(med(z.cedana, (r) => r.wallMs - r.result.durationMs))}; downtime ${ms(med(z.cedana, (r) => r.result.downtimeMs))}`,
    );
    if (parts.length) lines.push(`           phases: ${parts.join('; ')}`);
    if (z.precopy.length > 0) {
      const pr = z.precopy.map((r) => `${r.result.precopy?.rounds.map((x) => x.pagesWritten).join('/') ?? '—'} then ${r.result.precopy?.finalPagesWritten ?? '—'} frozen`);
      lines.push(`  ${z.mib} MiB --precopy: downtime ${ms(med(z.precopy, (r) => r.result.downtimeMs))}, wall ${ms(med(z.precopy, (r) => r.wallMs))}; pages per round: ${pr.join('; ')}`);
    }
  }
  return lines.join('\n');
}
