/**
 * npm run bench: how much cedana adds to plain CRIU, and how cedana migrate compares with moving a
 * process by hand, measured in one run, printed as ratios against baselines taken in the same run
 * (the machine is shared and noisy). Three phases:
 *
 *   fixed    the fixed costs: cedana --version, dump --help and a small dump against node -e 0 (the floor)
 *   local    cedana dump/restore against plain criu on one process (directory, archives, stream, RSS)
 *   migrate  cedana migrate against criu dump + tar | ssh + ssh criu restore, to a test-bed host
 *   ssh      one SSH stream's throughput: OpenSSH against cedana's transport (ssh2), same link
 *   incremental  dump --parent: bytes stored against the bytes the process changed
 *   precopy  pre-copy against stop-and-copy, in the test guest (its kernel tracks dirty pages; emulated)
 *   overhead a job's throughput with `dump --every` running against without (not in the default run: minutes)
 *
 *   CEDANA_BENCH_ONLY          phases to run, comma-separated (default: all but overhead)
 *   CEDANA_BENCH_FIXED_REPS    repetitions of the fixed phase (default 20: its probes are short and noisy)
 *   CEDANA_BENCH_MIB           memory of the local phase's process (default 1024)
 *   CEDANA_BENCH_REPS          repetitions; medians are reported (default 3)
 *   CEDANA_BENCH_MIGRATE_MIB   sizes of the processes migrated, comma-separated (default 4,256,1024)
 *   CEDANA_BENCH_DIRTY_PERCENT share of its pages the migrated process rewrites every second (default 1)
 *   CEDANA_BENCH_STREAM_MIB    bytes per SSH stream, in MiB (default 1024)
 *   CEDANA_BENCH_LINK_RATE     shape the link to the test-bed host, both ways (tc's rate: 1gbit, 500mbit; default: none, loopback-fast)
 *   CEDANA_BENCH_PRECOPY_ARGS  more arguments for the migrate phase's --precopy contestant (e.g. "--max-rounds 2")
 *   CEDANA_BENCH_HOST          test-bed host index for migrate and ssh (default 40; 10.231.<n>.0/24)
 *   CEDANA_BENCH_POSTCOPY      0 leaves out migrate --postcopy (measured against cedana's stop-and-copy)
 *   CEDANA_BENCH_SSH2          0 leaves out migrate --transport ssh2 (measured against the default, OpenSSH)
 *   CEDANA_BENCH_INCREMENTAL_MIB      memory of the incremental phase's process (default 1024)
 *   CEDANA_BENCH_INCREMENTAL_PERCENT  shares of its pages rewritten before each incremental checkpoint (default 1,10,50)
 *   CEDANA_BENCH_PRECOPY_MIB   memory of the precopy phase's process (default 256; it rewrites CEDANA_BENCH_DIRTY_PERCENT)
 *   CEDANA_BENCH_THP           transparent huge pages in the guest for precopy: madvise (default, as here) or always (its kernel's default)
 *   CEDANA_BENCH_OVERHEAD_MIB / _INTERVAL / _WINDOW   the overhead phase's job memory (1024), checkpoint
 *                              interval in seconds (60) and measuring window in seconds (125)
 *
 * Needs root and CRIU. Prints tables on stdout, progress on stderr, and writes everything measured
 * to .bench/results-<UTC time>.json. Images live in a temporary directory under /var/tmp, the
 * migrated process's heartbeat under /var/lib (a directory both hosts see); all are removed at the
 * end, as are the processes started and the test-bed host, also on failure or Ctrl-C.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { locateCriu, networkLockBackend } from '../src/criu/criu.js';
import { checksumDir } from '../src/image/checksum.js';
import { utcStamp } from '../src/util/paths.js';
import {
  cedanaDump, cedanaRestore, cedanaResult, criuDump, criuRestore, dumpArgs, restoreArgs, startCedana, REPO_ROOT,
  type CedanaDump, type CedanaRestore, type CriuDump, type CriuRestore, type CriuSetup,
} from './contestants.js';
import { startBed, type BenchBed } from './bed.js';
import { killMovingFixtures } from './dirty-fixture.js';
import { describeMachine, machineState, start, stopActive, watchPeakRss } from './exec.js';
import { Fixture } from './fixture.js';
import { migrateRounds, migrateRows, renderMigrateBreakdown, type MigrateCtx } from './migrate.js';
import { streamRounds, streamRows, type StreamCtx } from './ssh-stream.js';
import { incrementalRounds, incrementalRows } from './incremental.js';
import { overheadRounds, overheadRows } from './overhead.js';
import { precopyRounds, precopyRows } from './precopy.js';
import { fixedRounds, fixedRows } from './fixed.js';
import { evaluate, MB, median, renderTable, type Row } from './stats.js';

const PHASES = ['fixed', 'local', 'migrate', 'ssh', 'incremental', 'precopy', 'overhead'] as const;
type Phase = (typeof PHASES)[number];

interface Config {
  phases: Phase[];
  mib: number;
  reps: number;
  fixedReps: number;
  migrateMib: number[];
  dirtyPercent: number;
  streamMib: number;
  hostIndex: number;
  postcopy: boolean;
  incrementalMib: number;
  incrementalPercent: number[];
  precopyMib: number;
  overheadMib: number;
  overheadIntervalS: number;
  overheadWindowS: number;
}

interface Ctx {
  cfg: Config;
  tmp: string;
  fixture: Fixture;
  criu: CriuSetup;
  /** Environment for cedana: TMPDIR puts its work directories next to the baseline's. */
  env: NodeJS.ProcessEnv;
}

interface Timed<T> {
  wallMs: number;
  result: T;
}

interface CedanaRound {
  dump: Timed<CedanaDump>;
  restore: Timed<CedanaRestore>;
}

interface DirRep {
  criu: { dump: CriuDump; restore: CriuRestore };
  cedana: CedanaRound;
}

interface RssRep {
  dumpBytes: number;
  restoreBytes: number;
}

interface StreamRep extends RssRep {
  wallMs: number;
  dump: CedanaDump;
  restore: CedanaRestore;
}

interface Overheads {
  cliStartMs: number;
  criuVersionMs: number;
  checksumMs: number;
  checksumBytes: number;
}

const GOAL_RATIO = { on: 'ratio', op: '<=', limit: 1.05 } as const;
const GOAL_RSS = { on: 'value', op: '<', limit: 200 } as const;

const progress = (msg: string): void => void process.stderr.write(`bench: ${msg}\n`);

function readConfig(): Config {
  const only = (process.env.CEDANA_BENCH_ONLY ?? '').split(',').map((p) => p.trim()).filter(Boolean);
  for (const p of only) if (!(PHASES as readonly string[]).includes(p)) throw new Error(`CEDANA_BENCH_ONLY: unknown phase "${p}" (phases: ${PHASES.join(', ')})`);
  const dirtyPercent = Number(process.env.CEDANA_BENCH_DIRTY_PERCENT ?? 1);
  if (!(dirtyPercent >= 0 && dirtyPercent <= 100)) throw new Error('CEDANA_BENCH_DIRTY_PERCENT must be between 0 and 100');
  const hostIndex = positiveInt('CEDANA_BENCH_HOST', 40);
  if (hostIndex > 200) throw new Error('CEDANA_BENCH_HOST must be a test-bed index, 1 to 200');
  return {
    phases: only.length > 0 ? PHASES.filter((p) => only.includes(p)) : PHASES.filter((p) => p !== 'overhead'),
    mib: positiveInt('CEDANA_BENCH_MIB', 1024),
    reps: positiveInt('CEDANA_BENCH_REPS', 3),
    fixedReps: positiveInt('CEDANA_BENCH_FIXED_REPS', 20),
    migrateMib: positiveInts('CEDANA_BENCH_MIGRATE_MIB', [4, 256, 1024]),
    dirtyPercent,
    streamMib: positiveInt('CEDANA_BENCH_STREAM_MIB', 1024),
    hostIndex,
    postcopy: process.env.CEDANA_BENCH_POSTCOPY !== '0',
    incrementalMib: positiveInt('CEDANA_BENCH_INCREMENTAL_MIB', 1024),
    incrementalPercent: positiveInts('CEDANA_BENCH_INCREMENTAL_PERCENT', [1, 10, 50]),
    precopyMib: positiveInt('CEDANA_BENCH_PRECOPY_MIB', 256),
    overheadMib: positiveInt('CEDANA_BENCH_OVERHEAD_MIB', 1024),
    overheadIntervalS: positiveInt('CEDANA_BENCH_OVERHEAD_INTERVAL', 60),
    overheadWindowS: positiveInt('CEDANA_BENCH_OVERHEAD_WINDOW', 125),
  };
}

function positiveInts(name: string, fallback: number[]): number[] {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  return raw.split(',').map((part) => {
    const n = Number(part.trim());
    if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${name} must be positive integers separated by commas, not "${raw}"`);
    return n;
  });
}

function positiveInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, not "${raw}"`);
  return n;
}

/** Flushes the previous round's dirty pages, so they are not written back during the next timing. */
async function settle(): Promise<void> {
  await start('sync', [], { stdio: 'ignore' }).done;
}

async function expectRestored(ctx: Ctx, pid: number): Promise<void> {
  if (pid !== ctx.fixture.pid) throw new Error(`restore brought back PID ${pid}, expected ${ctx.fixture.pid}`);
  await ctx.fixture.expectRunning();
}

// ---- the rounds: each dumps the running fixture, waits for its PID to be free, restores it ----

async function criuRound(ctx: Ctx, root: string): Promise<DirRep['criu']> {
  const images = join(root, 'images');
  await settle();
  const dump = await criuDump(ctx.criu, ctx.fixture.pid, images, join(root, 'dump-work'));
  await ctx.fixture.gone();
  await settle();
  const restore = await criuRestore(ctx.criu, images, join(root, 'restore-work'));
  await expectRestored(ctx, restore.pid);
  return { dump, restore };
}

/** cedana dump to `output` (a directory or an archive), then cedana restore from it. */
async function cedanaRound(ctx: Ctx, output: string): Promise<CedanaRound> {
  await settle();
  const dump = await cedanaDump(ctx.fixture.pid, output, ctx.env);
  await ctx.fixture.gone();
  await settle();
  const restore = await cedanaRestore(output, ctx.env);
  await expectRestored(ctx, restore.result.pid);
  return { dump, restore };
}

/**
 * The first dump of the fixture is slower than every later one (fresh memory, cold page cache):
 * one unmeasured criu round makes every measured dump start from a restored process.
 */
async function warmUp(ctx: Ctx): Promise<void> {
  progress('warm-up: criu dump/restore (not measured)');
  const root = join(ctx.tmp, 'warm-up');
  await criuRound(ctx, root);
  await rm(root, { recursive: true, force: true });
}

/** Baseline and cedana alternate (A B A B …) on the same process; the last images feed the checksum probe. */
async function dirRounds(ctx: Ctx, probe: (images: string) => Promise<void>): Promise<DirRep[]> {
  await warmUp(ctx);
  return repeat(ctx, 'directory: criu dump/restore, then cedana dump/restore', async (i) => {
    const criuRoot = join(ctx.tmp, `criu-${i}`);
    const cedanaDir = join(ctx.tmp, `cedana-${i}`);
    const criu = await criuRound(ctx, criuRoot);
    const cedana = await cedanaRound(ctx, cedanaDir);
    if (i === ctx.cfg.reps - 1) await probe(join(criuRoot, 'images'));
    await rm(criuRoot, { recursive: true, force: true });
    await rm(cedanaDir, { recursive: true, force: true });
    return { criu, cedana };
  });
}

async function archiveRounds(ctx: Ctx, ext: 'tar.zst' | 'tar'): Promise<CedanaRound[]> {
  return repeat(ctx, `cedana dump -o x.${ext}, restore from it`, async (i) => {
    const archive = join(ctx.tmp, `cedana-${i}.${ext}`);
    const round = await cedanaRound(ctx, archive);
    await rm(archive, { force: true });
    return round;
  });
}

/** cedana's own peak RSS (VmHWM) while it dumps to a directory, and while it restores from it. */
async function rssDirRound(ctx: Ctx, output: string): Promise<RssRep> {
  await settle();
  const dump = startCedana(dumpArgs(ctx.fixture.pid, output), ctx.env);
  const dumpPeak = watchPeakRss(dump);
  cedanaResult<CedanaDump>(await dump.done, 'dump', 'stdout');
  await ctx.fixture.gone();
  await settle();
  const restore = startCedana(restoreArgs(output), ctx.env);
  const restorePeak = watchPeakRss(restore);
  const r = cedanaResult<CedanaRestore>(await restore.done, 'restore', 'stdout');
  await expectRestored(ctx, r.pid);
  await rm(output, { recursive: true, force: true });
  return { dumpBytes: await dumpPeak, restoreBytes: await restorePeak };
}

/** `cedana dump -o - | cedana restore -`: the pipe runs between the two processes, not through us. */
async function streamRound(ctx: Ctx): Promise<StreamRep> {
  await settle();
  const t0 = performance.now();
  const restore = startCedana(restoreArgs('-'), ctx.env, ['pipe', 'pipe', 'pipe']);
  const pipeIn = restore.child.stdin;
  if (!pipeIn) throw new Error('cedana restore - has no stdin pipe');
  const dump = startCedana(dumpArgs(ctx.fixture.pid, '-'), ctx.env, ['ignore', pipeIn, 'pipe']);
  pipeIn.destroy(); // the dump holds its own copy of the write end; the restore sees EOF when it exits
  const peaks = Promise.all([watchPeakRss(dump), watchPeakRss(restore)]);
  const [d, r] = await Promise.all([dump.done, restore.done]);
  const wallMs = performance.now() - t0;
  const dumped = cedanaResult<CedanaDump>(d, 'dump -o -', 'stderr');
  const restored = cedanaResult<CedanaRestore>(r, 'restore -', 'stdout');
  await expectRestored(ctx, restored.pid);
  const [dumpBytes, restoreBytes] = await peaks;
  return { wallMs, dump: dumped, restore: restored, dumpBytes, restoreBytes };
}

async function repeat<T>(ctx: Ctx, what: string, fn: (i: number) => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < ctx.cfg.reps; i++) {
    progress(`${i + 1}/${ctx.cfg.reps} ${what}`);
    out.push(await fn(i));
  }
  return out;
}

/** Fixed costs cedana pays on every run: starting Node and the CLI, asking CRIU its version. */
async function fixedCosts(ctx: Ctx): Promise<Pick<Overheads, 'cliStartMs' | 'criuVersionMs'>> {
  const cli: number[] = [];
  const criu: number[] = [];
  for (let i = 0; i < Math.max(3, ctx.cfg.reps); i++) {
    cli.push((await startCedana(['--version'], ctx.env).done).ms);
    criu.push((await start(ctx.criu.path, ['--version']).done).ms);
  }
  return { cliStartMs: median(cli), criuVersionMs: median(criu) };
}

/** The checksums (BLAKE3) of every file of an image, as cedana's dump (frozen) and restore (before CRIU) compute them. */
async function checksumCost(images: string): Promise<Pick<Overheads, 'checksumMs' | 'checksumBytes'>> {
  const t0 = performance.now();
  const files = await checksumDir(images);
  const checksumMs = performance.now() - t0;
  return { checksumMs, checksumBytes: Object.values(files).reduce((a, f) => a + f.size, 0) };
}

// ---- results ----

interface Samples {
  dir: DirRep[];
  zst: CedanaRound[];
  tar: CedanaRound[];
  rssDir: RssRep[];
  stream: StreamRep[];
  overheads: Overheads;
}

const med = <T>(xs: T[], f: (x: T) => number): number => median(xs.map(f));
const criuFrozenMs = (r: DirRep): number => (r.criu.dump.stats?.frozenUs ?? Number.NaN) / 1000;

function buildRows(s: Samples): Row[] {
  const criuDumpMs = med(s.dir, (r) => r.criu.dump.wallMs);
  const criuRestoreMs = med(s.dir, (r) => r.criu.restore.wallMs);
  const criuSumMs = med(s.dir, (r) => r.criu.dump.wallMs + r.criu.restore.wallMs);
  const memoryMB = med(s.dir, (r) => r.cedana.dump.result.memoryBytes) / MB;
  const criuMBps = memoryMB / (criuDumpMs / 1000);
  const archiveRows = (ext: string, reps: CedanaRound[]): Row[] => [
    { name: `dump → .${ext}: throughput`, unit: 'MB/s', value: med(reps, (r) => r.dump.result.memoryBytes / MB / (r.dump.result.durationMs / 1000)), baseline: criuMBps, baselineLabel: 'criu dump → dir' },
    { name: `dump → .${ext}: archive size`, unit: 'MB', value: med(reps, (r) => r.dump.result.bytes) / MB, baseline: memoryMB, baselineLabel: 'memory dumped' },
    { name: `dump → .${ext} (wall)`, unit: 'ms', value: med(reps, (r) => r.dump.wallMs), baseline: criuDumpMs, baselineLabel: 'criu dump → dir' },
    { name: `restore ← .${ext} (wall)`, unit: 'ms', value: med(reps, (r) => r.restore.wallMs), baseline: criuRestoreMs, baselineLabel: 'criu restore ← dir' },
  ];
  return [
    { name: 'dump → dir (wall)', unit: 'ms', value: med(s.dir, (r) => r.cedana.dump.wallMs), baseline: criuDumpMs, baselineLabel: 'criu dump', goal: GOAL_RATIO },
    { name: 'restore ← dir (wall)', unit: 'ms', value: med(s.dir, (r) => r.cedana.restore.wallMs), baseline: criuRestoreMs, baselineLabel: 'criu restore', goal: GOAL_RATIO },
    { name: 'dump + restore, dir (wall)', unit: 'ms', value: med(s.dir, (r) => r.cedana.dump.wallMs + r.cedana.restore.wallMs), baseline: criuSumMs, baselineLabel: 'criu', goal: GOAL_RATIO },
    { name: 'dump → dir: frozen', unit: 'ms', value: med(s.dir, (r) => r.cedana.dump.result.frozenMs), baseline: median(s.dir.map(criuFrozenMs)), baselineLabel: 'criu frozen' },
    ...archiveRows('tar.zst', s.zst),
    ...archiveRows('tar', s.tar),
    { name: 'peak RSS: dump → dir', unit: 'MB', value: med(s.rssDir, (r) => r.dumpBytes) / MB, goal: GOAL_RSS },
    { name: 'peak RSS: restore ← dir', unit: 'MB', value: med(s.rssDir, (r) => r.restoreBytes) / MB, goal: GOAL_RSS },
    { name: 'peak RSS: dump -o - (| restore -)', unit: 'MB', value: med(s.stream, (r) => r.dumpBytes) / MB, goal: GOAL_RSS },
    { name: 'peak RSS: restore - (dump -o - |)', unit: 'MB', value: med(s.stream, (r) => r.restoreBytes) / MB, goal: GOAL_RSS },
    { name: 'dump -o - | restore - (wall, incl. PID reap)', unit: 'ms', value: med(s.stream, (r) => r.wallMs), baseline: criuSumMs, baselineLabel: 'criu dump + restore' },
  ];
}

/** Where cedana's extra time goes, from its own JSON (durationMs, frozenMs, restoreMs) and the probes. */
function breakdown(s: Samples): Record<string, number> {
  const o = s.overheads;
  return {
    dumpExtraMs: med(s.dir, (r) => r.cedana.dump.wallMs - r.criu.dump.wallMs),
    dumpOutsideDurationMs: med(s.dir, (r) => r.cedana.dump.wallMs - r.cedana.dump.result.durationMs),
    dumpExtraFrozenMs: med(s.dir, (r) => r.cedana.dump.result.frozenMs - criuFrozenMs(r)),
    restoreExtraMs: med(s.dir, (r) => r.cedana.restore.wallMs - r.criu.restore.wallMs),
    restoreOutsideDurationMs: med(s.dir, (r) => r.cedana.restore.wallMs - r.cedana.restore.result.durationMs),
    restoreBeforeAndAfterCriuMs: med(s.dir, (r) => r.cedana.restore.result.durationMs - r.cedana.restore.result.restoreMs),
    restoreCriuStatCedanaMs: med(s.dir, (r) => r.cedana.restore.result.restoreMs),
    restoreCriuStatBaselineMs: med(s.dir, (r) => (r.criu.restore.stats?.restoreUs ?? Number.NaN) / 1000),
    cliStartMs: o.cliStartMs,
    criuVersionMs: o.criuVersionMs,
    checksumMs: o.checksumMs,
    checksumMBps: o.checksumBytes / MB / (o.checksumMs / 1000),
  };
}

function renderBreakdown(b: Record<string, number>): string {
  const ms = (v: number | undefined): string => (v === undefined || Number.isNaN(v) ? '—' : `${Math.round(v)} ms`);
  return [
    'where cedana\'s extra time goes (directory output, medians):',
    `  dump:    +${ms(b.dumpExtraMs)} over criu; ${ms(b.dumpOutsideDurationMs)} outside cedana's own timer (Node start, module load, exit);`,
    `           frozen ${ms(b.dumpExtraFrozenMs)} longer than criu's (post-dump gate: manifest, BLAKE3 of every file, commit)`,
    `  restore: +${ms(b.restoreExtraMs)} over criu; ${ms(b.restoreOutsideDurationMs)} outside cedana's own timer;`,
    `           ${ms(b.restoreBeforeAndAfterCriuMs)} in cedana around CRIU (checksum verification, host checks);`,
    `           CRIU restore stat ${ms(b.restoreCriuStatCedanaMs)} under cedana vs ${ms(b.restoreCriuStatBaselineMs)} plain`,
    `  probes:  \`cedana --version\` ${ms(b.cliStartMs)}; \`criu --version\` ${ms(b.criuVersionMs)} (cedana runs it each time);`,
    `           BLAKE3 of one image ${ms(b.checksumMs)} (${(b.checksumMBps ?? 0).toFixed(0)} MB/s, page cache hot)`,
  ].join('\n');
}

/** Extra CRIU flags cedana chose (its decisions) would make the baseline unfair: say so. */
function fairnessWarnings(s: Samples): string[] {
  const flags = new Set(s.dir.flatMap((r) => r.cedana.dump.result.decisions).filter((d) => d.startsWith('--')));
  return [...flags].map((d) => `warning: cedana passed a CRIU flag the baseline does not: ${d}`);
}

function hostInfo(criu: CriuSetup): Record<string, unknown> {
  const criuVersion = /Version:\s*(\S+)/.exec(execFileSync(criu.path, ['--version'], { encoding: 'utf8' }))?.[1] ?? 'unknown';
  return {
    kernel: release(), cpus: cpus().length, cpuModel: cpus()[0]?.model, memTotalBytes: totalmem(),
    node: process.version, criu: criu.path, criuVersion, networkLock: criu.networkLock,
  };
}

async function writeResults(doc: Record<string, unknown>): Promise<string> {
  const dir = join(REPO_ROOT, '.bench');
  await mkdir(dir, { recursive: true });
  const path = join(dir, `results-${utcStamp()}.json`);
  await writeFile(path, `${JSON.stringify(doc, null, 2)}\n`);
  return path;
}

// ---- main ----

async function measure(ctx: Ctx): Promise<Samples> {
  let sha: Pick<Overheads, 'checksumMs' | 'checksumBytes'> = { checksumMs: Number.NaN, checksumBytes: 0 };
  const dir = await dirRounds(ctx, async (images) => void (sha = await checksumCost(images)));
  const zst = await archiveRounds(ctx, 'tar.zst');
  const tar = await archiveRounds(ctx, 'tar');
  const rssDir = await repeat(ctx, 'peak RSS: cedana dump -o dir, restore from it', (i) => rssDirRound(ctx, join(ctx.tmp, `rss-${i}`)));
  const stream = await repeat(ctx, 'peak RSS: cedana dump -o - | cedana restore -', () => streamRound(ctx));
  progress('fixed costs');
  const overheads = { ...(await fixedCosts(ctx)), ...sha };
  return { dir, zst, tar, rssDir, stream, overheads };
}

async function criuSetup(): Promise<CriuSetup> {
  const criu = await locateCriu();
  const networkLock = await networkLockBackend();
  if (!networkLock) throw new Error('neither iptables nor nft is installed');
  return { path: criu.path, networkLock };
}

interface Section {
  /** Printed on stdout, in phase order. */
  text: string;
  /** Written to the results file under the phase's name. */
  doc: Record<string, unknown>;
}

async function localPhase(cfg: Config, criu: CriuSetup, tmp: string, fixture: Fixture, host: Record<string, unknown>): Promise<Section> {
  const ctx: Ctx = { cfg, tmp, fixture, criu, env: { ...process.env, TMPDIR: tmp } };
  progress(`fixture: PID ${fixture.pid}, filling ${cfg.mib} MiB`);
  await fixture.ready();
  const machine = await machineState();
  const samples = await measure(ctx);
  const rows = buildRows(samples).map(evaluate);
  const b = breakdown(samples);
  const warnings = fairnessWarnings(samples);
  const text = [
    `cedana bench: ${cfg.mib} MiB of random memory, ${cfg.reps} repetition(s), medians; criu ${host.criuVersion}, kernel ${host.kernel}, ${host.cpus} CPU(s)`,
    'baseline: plain criu with the options cedana passes, measured in the same run; MB = 10^6 bytes',
    describeMachine(machine),
    '',
    renderTable(rows),
    '',
    renderBreakdown(b),
    ...(warnings.length ? ['', ...warnings] : []),
  ].join('\n');
  return { text, doc: { machine, rows, breakdown: b, warnings, samples } };
}

async function migratePhase(cfg: Config, m: Omit<MigrateCtx, 'cfg' | 'progress'>): Promise<Section> {
  const machine = await machineState();
  const samples = await migrateRounds({ ...m, cfg: { sizesMib: cfg.migrateMib, reps: cfg.reps, dirtyPercent: cfg.dirtyPercent, postcopy: cfg.postcopy }, progress });
  const rows = migrateRows(samples).map(evaluate);
  const text = [
    `cedana migrate: ${cfg.migrateMib.join(' and ')} MiB processes rewriting ${cfg.dirtyPercent}% of their pages every second, to test-bed host ${m.bed.host.name}; ${cfg.reps} repetition(s), medians`,
    `baseline (naive): criu dump to local disk (cedana's options), tar | ssh (OpenSSH, default cipher ${samples.naiveCipher}), ssh criu restore;`,
    '  its downtime and total are the whole sequence; cedana\'s downtime is its own downtimeMs, its total the wall time of the command',
    describeMachine(machine),
    '',
    renderTable(rows),
    '',
    renderMigrateBreakdown(samples),
  ].join('\n');
  return { text, doc: { machine, rows, samples } };
}

async function sshPhase(cfg: Config, s: Omit<StreamCtx, 'cfg' | 'progress'>): Promise<Section> {
  const machine = await machineState();
  const samples = await streamRounds({ ...s, cfg: { mib: cfg.streamMib, reps: cfg.reps }, progress });
  const rows = streamRows(samples).map(evaluate);
  const text = [
    `ssh stream: ${cfg.streamMib} MiB of random bytes (page cache) to test-bed host ${s.bed.host.name} over one SSH connection; ${cfg.reps} repetition(s), medians`,
    'OpenSSH through a ControlMaster per cipher (no handshake in the times); ssh2 is cedana\'s transport (src/transport/ssh.ts), cipher aes128-gcm',
    describeMachine(machine),
    '',
    renderTable(rows),
  ].join('\n');
  return { text, doc: { machine, rows, samples } };
}

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: must run as root (CRIU needs it)\n');
    return 1;
  }
  const cfg = readConfig();
  const criu = await criuSetup();
  await mkdir('/var/tmp', { recursive: true });
  const tmp = await mkdtemp('/var/tmp/cedana-bench-');
  let fixture: Fixture | undefined;
  let bed: BenchBed | undefined;
  let shared: string | undefined;
  let cleaned: Promise<void> | undefined;
  const cleanup = (): Promise<void> =>
    (cleaned ??= (async () => {
      await stopActive();
      if (fixture && (await fixture.kill())) await fixture.gone().catch(() => undefined);
      await killMovingFixtures();
      // Ends every process on the test-bed host (its PID namespace), then the host itself.
      await bed?.destroy().catch((e: unknown) => progress(`could not tear down the test-bed host: ${(e as Error).message}`));
      if (shared) await rm(shared, { recursive: true, force: true });
      await rm(tmp, { recursive: true, force: true });
    })());
  const onSignal = (signal: NodeJS.Signals): void => {
    progress(`${signal}: cleaning up`);
    void cleanup().finally(() => process.exit(signal === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const host = hostInfo(criu);
    const doc: Record<string, unknown> = { startedAt: new Date().toISOString(), config: cfg, host };
    const sections: string[] = [];
    if (cfg.phases.includes('fixed')) {
      const machine = await machineState();
      const samples = await fixedRounds(criu, cfg.fixedReps, tmp, { ...process.env, TMPDIR: tmp }, progress);
      const rows = fixedRows(samples).map(evaluate);
      sections.push([
        `cedana's fixed costs: Node start, module load, CRIU's version (cached), against the floor \`node -e 0\`; a small process (sleep) dumped by cedana and by plain criu; ${cfg.fixedReps} repetition(s), alternated, medians`,
        describeMachine(machine),
        '',
        renderTable(rows),
      ].join('\n'));
      doc.fixed = { machine, rows, samples };
    }
    if (cfg.phases.includes('local')) {
      fixture = Fixture.spawn(cfg.mib);
      const local = await localPhase(cfg, criu, tmp, fixture, host);
      sections.push(local.text);
      doc.local = local.doc;
      if (await fixture.kill()) await fixture.gone(); // its memory is not needed by the next phases
    }
    if (cfg.phases.includes('migrate') || cfg.phases.includes('ssh')) {
      progress(`test-bed host ${cfg.hostIndex}: starting`);
      bed = await startBed(cfg.hostIndex, tmp);
      if (cfg.phases.includes('migrate')) {
        shared = await mkdtemp('/var/lib/cedana-bench-');
        const migrate = await migratePhase(cfg, { bed, criu, tmp, shared });
        sections.push(migrate.text);
        doc.migrate = migrate.doc;
      }
      if (cfg.phases.includes('ssh')) {
        const ssh = await sshPhase(cfg, { bed, tmp });
        sections.push(ssh.text);
        doc.ssh = ssh.doc;
      }
    }
    if (cfg.phases.includes('incremental')) {
      const machine = await machineState();
      const samples = await incrementalRounds(cfg.incrementalMib, cfg.incrementalPercent, tmp, progress);
      const rows = incrementalRows(samples).map(evaluate);
      sections.push([
        `cedana dump --parent: a ${samples.mib} MiB process rewriting ${cfg.incrementalPercent.join('%, ')}% of its pages between checkpoints (one chain; full checkpoint ${(samples.full.bytes / MB).toFixed(0)} MB, frozen ${samples.full.frozenMs} ms)`,
        'baseline: the bytes of the pages it rewrote (4 KiB each); what the interpreter itself touches meanwhile is stored too',
        describeMachine(machine),
        '',
        renderTable(rows),
      ].join('\n'));
      doc.incremental = { machine, rows, samples };
    }
    if (cfg.phases.includes('precopy')) {
      const machine = await machineState();
      const samples = await precopyRounds(cfg.precopyMib, cfg.dirtyPercent, cfg.reps, process.env.CEDANA_BENCH_THP ?? 'madvise', progress);
      const rows = precopyRows(samples).map(evaluate);
      sections.push([
        `cedana migrate, pre-copy (by soft-dirty, and by content) against stop-and-copy: a ${samples.mib} MiB process rewriting ${samples.dirty}% of its pages a second, in the test guest (kernel ${samples.kernel}, emulated by qemu TCG: absolute times are not a real machine's, the ratio is the measure); ${cfg.reps} repetition(s) of each, medians`,
        `pre-copy rounds (pages written): ${samples.runs.filter((x) => x.precopy).map((x) => `${x.mode === 'content' ? 'by content ' : ''}${x.precopy!.rounds.map((q) => q.pagesWritten).join(' → ')} → final ${x.precopy!.finalPagesWritten}`).join('; ')}`,
        describeMachine(machine),
        '',
        renderTable(rows),
      ].join('\n'));
      doc.precopy = { machine, rows, samples };
    }
    if (cfg.phases.includes('overhead')) {
      const machine = await machineState();
      const samples = await overheadRounds(cfg.overheadMib, cfg.overheadIntervalS, cfg.overheadWindowS, cfg.reps, tmp, progress);
      const rows = overheadRows(samples).map(evaluate);
      sections.push([
        `cedana dump --every ${samples.intervalS}s: a ${samples.mib} MiB job's throughput (hashing its memory), ${cfg.overheadWindowS} s windows without and with checkpoints, alternated ×${cfg.reps}`,
        `windows: ${samples.windows.map((w) => `${w.checkpoints ? 'with' : 'without'} ${w.perSecond.toFixed(1)}/s${w.made !== undefined ? ` (${w.made} checkpoint(s))` : ''}`).join(', ')}`,
        describeMachine(machine),
        '',
        renderTable(rows),
      ].join('\n'));
      doc.overhead = { machine, rows, samples };
    }
    doc.finishedAt = new Date().toISOString();
    const path = await writeResults(doc);
    process.stdout.write(`${[...sections, `results: ${path}`].join('\n\n')}\n`);
    return 0;
  } finally {
    await cleanup();
    if (await stat(tmp).catch(() => undefined)) progress(`could not remove ${tmp}`);
  }
}

process.exitCode = await main().catch((e: unknown) => {
  process.stderr.write(`bench: failed: ${(e as Error).message}\n`);
  return 1;
});
