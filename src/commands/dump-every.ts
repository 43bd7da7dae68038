/**
 * cedana dump <pid> --every INTERVAL --keep N -o DIR: periodic checkpoints of a long job (training)
 * that should resume from the last one after a crash. The job keeps running (--leave-running); each
 * checkpoint after the first stores only the pages that changed since the one before (--parent), and
 * every N-th is a full one so that no chain is longer than N. The newest N checkpoints are kept
 * restorable; an older one is removed only when none of those needs it as a parent. It ends when the
 * process ends, or on SIGINT/SIGTERM (the checkpoint in progress, if any, is abandoned and the
 * process resumed).
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { TcpMode } from '../criu/options.js';
import { CedanaError, toCedanaError } from '../errors.js';
import type { ShipPolicy } from '../image/ship.js';
import { processExists } from '../proc/procfs.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { utcStamp } from '../util/paths.js';
import { dump, incrementalThroughSink } from './dump.js';

export interface DumpEveryArgs {
  pid: number;
  output: string;
  everyMs: number;
  keep: number;
  tcp: TcpMode;
  fileLocks: boolean;
  ship?: ShipPolicy;
  reporter?: Reporter;
  signal?: AbortSignal;
  cudaCheckpoint?: string;
  gpuLockTimeoutMs?: number;
  /** Called after each checkpoint (the CLI prints it as a JSON event with --json). */
  onCheckpoint?: (c: CheckpointRecord) => void;
}

export interface CheckpointRecord {
  image: string;
  /** The checkpoint it is incremental to, or null for a full one. */
  parent: string | null;
  bytes: number;
  memoryBytes: number;
  frozenMs: number;
  at: string;
}

export interface DumpEveryResult {
  command: 'dump';
  pid: number;
  every: { intervalMs: number; keep: number };
  /** The checkpoints on disk at the end, oldest first; the last one is the newest state. */
  checkpoints: CheckpointRecord[];
  made: number;
  failed: number;
  /** Why it stopped. */
  ended: 'process-exited' | 'signal';
  /** The failures, in words (a failed checkpoint leaves the process running; the next one is full). */
  errors: string[];
}

/** "90s", "10m", "1h", "1500ms" or a plain number of seconds, to milliseconds. Pure. */
export function parseInterval(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new CedanaError('USAGE', `--every ${JSON.stringify(text)}: expected a duration like 90s, 10m or 1h`, { hint: 'e.g. --every 10m' });
  const n = Number(m[1]);
  const ms = n * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  if (ms < 1000) throw new CedanaError('USAGE', `--every ${text}: at least one second`, { hint: 'e.g. --every 60s' });
  return ms;
}

/**
 * Which checkpoints to keep: the newest `keep`, and every parent they need. Pure.
 * `made` is oldest first, each with the name of its parent (or null).
 */
export function retained(made: { image: string; parent: string | null }[], keep: number): Set<string> {
  const byName = new Map(made.map((c) => [c.image, c]));
  const out = new Set<string>();
  for (const c of made.slice(-keep)) {
    for (let x: typeof c | undefined = c; x && !out.has(x.image); x = x.parent ? byName.get(x.parent) : undefined) out.add(x.image);
  }
  return out;
}

export async function dumpEvery(args: DumpEveryArgs): Promise<DumpEveryResult> {
  const report = args.reporter ?? silentReporter;
  if (!Number.isInteger(args.keep) || args.keep < 1) throw new CedanaError('USAGE', '--keep must be a positive integer', { hint: 'e.g. --keep 5' });
  if (!(await processExists(args.pid))) throw new CedanaError('PID_NOT_FOUND', `no process with PID ${args.pid}`, { hint: 'check the PID with `ps -p <pid>`' });
  const dir = resolve(args.output);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const made: CheckpointRecord[] = [];
  const errors: string[] = [];
  let chainLength = 0;
  let count = 0;
  let seq = (await readdir(dir).catch(() => [] as string[])).filter((n) => /^ckpt-\d+/.test(n)).length;
  let ended: DumpEveryResult['ended'] = 'signal';
  for (;;) {
    if (args.signal?.aborted) break;
    if (!(await processExists(args.pid))) {
      ended = 'process-exited';
      break;
    }
    const started = performance.now();
    const image = join(dir, `ckpt-${String(++seq).padStart(4, '0')}-${utcStamp()}`);
    const last = made.at(-1);
    const parent = last && chainLength > 0 && chainLength < args.keep ? last.image : null;
    report.phase(`checkpoint ${seq}${parent ? ' (incremental)' : ' (full)'}`);
    try {
      const r = await dump({
        pid: args.pid, output: image, leaveRunning: true, tcp: args.tcp, fileLocks: args.fileLocks, force: false, ship: args.ship,
        parent: parent ?? undefined, index: !parent && !incrementalThroughSink(), signal: args.signal, cudaCheckpoint: args.cudaCheckpoint, gpuLockTimeoutMs: args.gpuLockTimeoutMs,
      });
      const rec: CheckpointRecord = { image, parent, bytes: r.bytes, memoryBytes: r.memoryBytes, frozenMs: r.frozenMs, at: new Date().toISOString() };
      made.push(rec);
      count++;
      chainLength = parent ? chainLength + 1 : 1;
      args.onCheckpoint?.(rec);
      report.phase(`saved ${image} (${(r.bytes / 1048576).toFixed(1)} MiB${parent ? ', incremental' : ', full'}, frozen ${r.frozenMs} ms)`);
      // Retention: what no kept checkpoint needs goes.
      const keep = retained(made, args.keep);
      for (const old of made.filter((c) => !keep.has(c.image))) await rm(old.image, { recursive: true, force: true });
      made.splice(0, made.length, ...made.filter((c) => keep.has(c.image)));
    } catch (e) {
      const err = toCedanaError(e);
      if (err.code === 'INTERRUPTED' || args.signal?.aborted) break;
      if (!(await processExists(args.pid))) {
        ended = 'process-exited';
        break;
      }
      errors.push(`${image}: ${err.code}: ${err.message}`);
      chainLength = 0; // the next one is full
    }
    // Wait for the next one, watching the process and the signal.
    const due = started + args.everyMs;
    while (performance.now() < due && !args.signal?.aborted) {
      if (!(await processExists(args.pid))) break;
      await sleep(Math.min(250, Math.max(0, due - performance.now())));
    }
  }
  return {
    command: 'dump',
    pid: args.pid,
    every: { intervalMs: args.everyMs, keep: args.keep },
    checkpoints: made,
    made: count,
    failed: errors.length,
    ended,
    errors,
  };
}
