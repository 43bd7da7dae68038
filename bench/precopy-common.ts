/** What the pre-copy scripts (content-round.ts, final-proxy.ts) share: waiting on the pager's files, a round into a stock page server. */
import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { PageServerClient } from '../src/criu/page-server/client.js';
import type { Criu } from '../src/criu/criu.js';
import { sendRound, type RoundResult } from '../src/migrate/precopy/round.js';

/** The file's text once it exists (and `want` accepts it); throws after `ms`. */
export async function waitFile(path: string, ms: number, want?: (t: string) => boolean): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const t = await readFile(path, 'utf8').catch(() => undefined);
    if (t && (!want || want(t))) return t;
    if (Date.now() > end) throw new Error(`no ${path}`);
    await sleep(20);
  }
}

/**
 * One round of `pid`'s memory into a stock `criu page-server` writing `dir` (the previous round's
 * directory `prev`, relative, as its parent); the page server's PID goes into `pids` for cleanup.
 */
export async function roundInto(
  criu: Criu,
  pid: number,
  dir: string,
  opts: { prev?: string; prevPages?: RoundResult['pages']; workers?: number },
  pids: number[],
): Promise<RoundResult> {
  await mkdir(dir);
  const ps = spawn(criu.path, ['page-server', '-D', dir, '--ps-socket', '3', '-o', 'ps.log', ...(opts.prev ? ['--prev-images-dir', opts.prev] : [])], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    detached: true,
  });
  pids.push(ps.pid!);
  const done = new Promise<number | null>((res) => ps.once('close', res));
  const r = await sendRound(pid, new PageServerClient(ps.stdio[3] as Duplex), { prev: opts.prevPages, workers: opts.workers });
  if ((await done) !== 0) throw new Error('page server failed');
  return r;
}
