/**
 * Pre-copy rounds while the tree runs: CRIU's (`pre-dump --track-mem`, where the kernel has
 * soft-dirty) or cedana's by page content (everywhere else), and the stop rule.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { criuFeature, spawnCriu, type Criu } from '../../criu/criu.js';
import { PAGE_SIZE } from '../../criu/page-server/protocol.js';
import { readDumpStats } from '../../image/criu/stats.js';
import { CedanaError } from '../../errors.js';
import { startPageServer } from '../remote.js';
import type { RoundPages, TreeRoundResult } from './round.js';
import type { RemoteShell } from '../../transport/remote-shell.js';
import { type MigrateArgs, type PrecopyRound, type Prepared, type Progress, interrupted, progressTicker } from '../context.js';

/**
 * Pre-copy when asked, or by default where the kernel tracks dirty pages (soft-dirty); an explicit
 * --precopy without it is an error that says what to use instead.
 */
export async function choosePrecopy(args: MigrateArgs, criu: Criu): Promise<PrecopyMode | undefined> {
  const by = args.precopyBy ?? 'auto';
  if (by !== 'auto' && (args.precopy === false || args.postcopy)) {
    throw new CedanaError('USAGE', `--precopy-by ${by} is for pre-copy; it does not go with ${args.postcopy ? '--postcopy' : '--no-precopy'}`, { hint: 'choose one' });
  }
  if (args.precopy === false) return undefined;
  if (args.postcopy) {
    if (args.precopy) throw new CedanaError('USAGE', '--precopy and --postcopy do not go together', { hint: 'choose one' });
    return undefined;
  }
  // Asked by name: pre-copy is implied, whatever the kernel tracks.
  if (by === 'content') return 'content';
  const r = await criuFeature(criu, 'mem_dirty_track');
  if (r.ok) return 'criu';
  if (by === 'soft-dirty') {
    throw new CedanaError('HOST_UNSUPPORTED', 'pre-copy by soft-dirty: this kernel does not track dirty pages (no CONFIG_MEM_SOFT_DIRTY; arm64 never has it)', {
      hint: 'use --precopy-by content (cedana compares page contents), or --no-precopy',
    });
  }
  // No soft-dirty (this kernel, every arm64 one): pre-copy compares page contents instead, when asked.
  return args.precopy ? 'content' : undefined;
}

/**
 * The pre-copy stop rule (P.Haul, go-criu's phaul): a round of 64 pages or fewer, a round over 110%
 * of the one before (diverging), or --max-rounds; and one more, measured in the guest: a round within
 * 10% of the one before has reached the process's floor of pages it rewrites all the time (there, 90
 * pages a round, round after round), where more rounds only cost time. A reason to stop, or undefined. Pure.
 */
export function precopyStop(rounds: Pick<PrecopyRound, 'pagesWritten'>[], maxRounds: number): string | undefined {
  const n = rounds.length;
  const last = rounds[n - 1]!;
  const prev = rounds[n - 2];
  if (last.pagesWritten <= PRECOPY_SMALL_ROUND) return `round ${n} wrote ${last.pagesWritten} pages (≤ ${PRECOPY_SMALL_ROUND})`;
  if (prev && last.pagesWritten > prev.pagesWritten * 1.1) {
    return `not converging: round ${n} wrote ${last.pagesWritten} pages, over 110% of the ${prev.pagesWritten} before`;
  }
  // A floor: the pages the process rewrites all the time. More rounds would send the same again.
  if (prev && last.pagesWritten >= prev.pagesWritten * 0.9) {
    return `no longer shrinking: round ${n} wrote ${last.pagesWritten} pages, the ${prev.pagesWritten} before`;
  }
  if (n >= maxRounds) return `the last of --max-rounds ${maxRounds}`;
  return undefined;
}

export const PRECOPY_SMALL_ROUND = 64;

/**
 * How pre-copy finds what changed: `criu` (its pre-dump rounds with the kernel's soft-dirty bits,
 * `--track-mem`) or `content` (cedana reads the memory of the running tree and compares each page's
 * hash with the last round's; no kernel feature needed).
 */
export type PrecopyMode = 'criu' | 'content';

/**
 * Round 1's rate (bytes a second) from which the link is taken not to be what limits: the memory
 * crossed about as fast as cedana reads and hashes it. CEDANA_PRECOPY_FAST_LINK overrides it (tests).
 */
const FAST_LINK_BYTES_PER_SEC = 250e6;
/** Pages changed a second, as a share of the memory, above which the final step by content loses on such a link. */
const CONTENT_FINAL_MAX_DIRTY_PER_SEC = 0.06;
/** Below this (pages: 64 MiB) the final step's hashing is short whatever happens, and the estimate of change too noisy. */
const CONTENT_FINAL_MIN_PAGES = 16384;

/**
 * After pre-copy rounds by content: a reason to make the final step plain stop-and-copy instead
 * (its frozen time is then stop-and-copy's own), or undefined to go on by content. By content, the
 * final step streams the whole memory through cedana's proxy, which hashes every page while the
 * tree is frozen, and the target restores through the rounds' chain; that pays only where sending
 * is slower than hashing, or little changes. How fast the tree changes its memory: the pages round
 * k sent changed while round k-1 read the memory, so share_k / duration_{k-1}, the highest of the
 * rounds (the last round alone can be small by chance, and the final step also carries what
 * changed in the second or so before the freeze; the gaps between rounds make it read high).
 * Measured (bench migrate, the test bed's unshaped link, round 1 at 270–410 MB/s): rewriting 10% of
 * its pages a second (9.7–13.8% a second by this estimate), the final step by content froze the
 * tree 1.22× (256 MiB) and 1.48× (1 GiB) as long as stop-and-copy; at 1% (1.8–4.7% by the
 * estimate) 1.2× (256 MiB) and 0.73–1.0× (1 GiB); on a 1 Gbit/s link (round 1 at ~115 MB/s) by
 * content won at 0.28–0.42×. Pure but for the environment override.
 */
export function contentFinalLoses(rounds: Pick<PrecopyRound, 'round' | 'pagesWritten' | 'durationMs'>[]): string | undefined {
  const first = rounds[0];
  if (!first || rounds.length < 2 || first.durationMs <= 0 || first.pagesWritten < CONTENT_FINAL_MIN_PAGES) return undefined;
  const fast = Number(process.env.CEDANA_PRECOPY_FAST_LINK ?? FAST_LINK_BYTES_PER_SEC);
  const rate = (first.pagesWritten * PAGE_SIZE) / (first.durationMs / 1000);
  let dirty = 0;
  for (let k = 1; k < rounds.length; k++) {
    const before = rounds[k - 1]!;
    if (before.durationMs > 0) dirty = Math.max(dirty, rounds[k]!.pagesWritten / first.pagesWritten / (before.durationMs / 1000));
  }
  if (rate < fast || dirty <= CONTENT_FINAL_MAX_DIRTY_PER_SEC) return undefined;
  return `round 1 crossed at ${(rate / 1e6).toFixed(0)} MB/s (the link is not what limits) and the tree changes ~${(dirty * 100).toFixed(1)}% of its memory a second: the final step goes stop-and-copy (hashing every page while frozen and restoring through the rounds would cost more than it saves)`;
}

/** What the rounds left on the target: the last round's directory, and (by content) the pages it holds, by process as CRIU names it. */
export interface PrecopyDone {
  prev: string;
  rounds: PrecopyRound[];
  held?: Map<number, RoundPages>;
}

/**
 * Pre-copy by content: rounds while the tree runs, each into a stock `criu page-server` on the target
 * (the previous round its --prev-images-dir) with cedana as its client: round 1 sends every present
 * page; each later one only the pages whose hash changed, PE_PARENT for the rest (round.ts). Stops
 * by precopyStop. The final dump then goes through cedana's proxy (stopAndCopy).
 */
export async function precopyRoundsByContent(p: Prepared, state: Progress): Promise<PrecopyDone> {
  const { args, session, report } = p;
  const remote = state.remote!;
  const maxRounds = args.maxRounds ?? 8;
  const pids = p.facts.processes.map((x) => x.pid);
  const { PageServerClient } = await import('../../criu/page-server/client.js');
  const { sendTreeRound } = await import('./round.js');
  const { heldPages } = await import('./proxy.js');
  const rounds: PrecopyRound[] = [];
  let last: TreeRoundResult | undefined;
  // One shell there starts every round's page server (a login shell each time costs ~100 ms).
  const shell = await session.shell();
  try {
    return await roundsThrough(shell);
  } finally {
    shell.close();
  }

  async function roundsThrough(shell: RemoteShell): Promise<PrecopyDone> {
    for (let n = 1; ; n++) {
      if (args.signal?.aborted) throw interrupted();
      const into = `pre-${n}`;
      const port = await startPageServer(session, remote, { into, prev: n > 1 ? `pre-${n - 1}` : undefined }, shell);
      const client = new PageServerClient(await (await p.links).open(port));
      const t0 = performance.now();
      report.phase(`pre-copy round ${n}: reading the memory of the running tree and sending ${n === 1 ? 'it' : 'what changed'}`);
      const ticker = progressTicker(report, () => client.bytesSent, n === 1 ? p.dumpBytes : 0);
      const onAbort = (): void => client.abort();
      args.signal?.addEventListener('abort', onAbort, { once: true });
      try {
        const prev = last ? new Map([...last.byPid].map(([pid, r]) => [pid, r.pages])) : undefined;
        last = await Promise.race([sendTreeRound(pids, client, { prev }), session.lost()]);
      } catch (e) {
        client.abort();
        throw args.signal?.aborted ? interrupted() : e;
      } finally {
        clearInterval(ticker);
        args.signal?.removeEventListener('abort', onAbort);
      }
      const r: PrecopyRound = { round: n, pagesWritten: last.pagesSent, pagesSkippedParent: last.pagesUnchanged, frozenMs: 0, durationMs: Math.round(performance.now() - t0) };
      rounds.push(r);
      const mbps = r.durationMs > 0 ? last.bytesSent / 1e6 / (r.durationMs / 1000) : 0;
      report.phase(`pre-copy round ${n}: ${r.pagesWritten} pages sent (${(r.pagesWritten / 256).toFixed(1)} MiB, ${mbps.toFixed(0)} MB/s), ${r.pagesSkippedParent} unchanged, never frozen`);
      const why = precopyStop(rounds, maxRounds);
      if (why) {
        p.decisions.notes.push(`pre-copy by content: ${rounds.length} round(s) while the tree ran (no soft-dirty here: pages compared by hash); stopped: ${why}`);
        return { prev: into, rounds, held: await heldPages(last) };
      }
    }
  }
}

/**
 * Pre-copy: rounds of `criu pre-dump --track-mem` while the tree runs (each freezes it only to
 * collect what changed), streamed to a page server on the target, each round the parent of the
 * next; stops by precopyStop. The final dump then sends only the pages changed since.
 */
export async function precopyRounds(p: Prepared, state: Progress): Promise<PrecopyDone> {
  const { args, session, work, report } = p;
  const remote = state.remote!;
  const maxRounds = args.maxRounds ?? 8;
  const rounds: PrecopyRound[] = [];
  const thp = await readFile('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8').catch(() => '');
  if (thp.includes('[always]')) {
    p.decisions.notes.push('pre-copy: transparent huge pages are "always" here: memory in huge pages is tracked per 2 MiB, so a process writing all over its memory may not converge (THP "madvise" avoids it)');
  }
  for (let n = 1; ; n++) {
    if (args.signal?.aborted) throw interrupted();
    const into = `pre-${n}`;
    const prev = n > 1 ? `pre-${n - 1}` : undefined;
    const port = await startPageServer(session, remote, { into, prev });
    const stream = await (await p.links).forCriu(port);
    const local = join(work, into);
    const roundWork = join(work, `${into}-work`);
    await execa('mkdir', ['-m', '700', local, roundWork]);
    const logFile = join(roundWork, 'pre-dump.log');
    const criuArgs = [
      'pre-dump', '-t', String(args.pid), '-D', local, '-W', roundWork, '-o', logFile, '-v4', '--track-mem', ...stream.args,
      ...(prev ? ['--prev-images-dir', `../${prev}`] : []), ...(p.decisions.shellJob ? ['--shell-job'] : []),
    ];
    const t0 = performance.now();
    report.phase(`pre-copy round ${n}: sending memory while the tree runs`);
    const run = spawnCriu(p.criu, criuArgs, { logFile, label: `precopy-${args.pid}-${n}`, ...stream.spawn });
    const proxy = stream.attach(run);
    const ticker = progressTicker(report, () => proxy.bytes(), n === 1 ? p.dumpBytes : 0);
    const onAbort = (): void => proxy.close();
    args.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([run.done, session.lost(), proxy.failed]);
    } catch (e) {
      proxy.close();
      await run.done.catch(() => undefined);
      throw args.signal?.aborted ? interrupted() : e;
    } finally {
      clearInterval(ticker);
      args.signal?.removeEventListener('abort', onAbort);
      proxy.close();
    }
    const st = await readDumpStats(join(roundWork, 'stats-dump'));
    const r: PrecopyRound = {
      round: n, pagesWritten: st?.pagesWritten ?? 0, pagesSkippedParent: st?.pagesSkippedParent ?? 0,
      frozenMs: Math.round((st?.frozenUs ?? 0) / 1000), durationMs: Math.round(performance.now() - t0),
    };
    rounds.push(r);
    report.phase(`pre-copy round ${n}: ${r.pagesWritten} pages sent (${(r.pagesWritten / 256).toFixed(1)} MiB), ${r.pagesSkippedParent} unchanged, frozen ${r.frozenMs} ms`);
    const why = precopyStop(rounds, maxRounds);
    if (why) {
      p.decisions.notes.push(`pre-copy: ${rounds.length} round(s) while the tree ran; stopped: ${why}`);
      return { prev: into, rounds };
    }
  }
}
