/**
 * Measures pre-copy by content, one host: a pager.py of MIB MiB (argv[2], default 256), round 0 into a
 * stock `criu page-server` (unix socket, page cache), then 1% of its pages rewritten and round 1
 * against round 0. Prints MB/s and where the time goes (pagemap, /proc/PID/mem, hashing, waiting on
 * the socket), and the reader alone (no hash, no send) for comparison.
 *   npx vite-node bench/content-round.ts [MIB] [WORKERS]   (WORKERS: read+hash threads, 0: none)
 */
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { PageServerClient } from '../src/criu/page-server/client.js';
import { locateCriu } from '../src/criu/criu.js';
import { readPages, type ReadTimings } from '../src/migrate/precopy/memory.js';
import type { RoundResult } from '../src/migrate/precopy/round.js';
import { roundInto, waitFile } from './precopy-common.js';

const mib = Number(process.argv[2] ?? 256);
const workers = Number(process.argv[3] ?? 0);
const fixture = fileURLToPath(new URL('../test/fixtures/pager.py', import.meta.url));


const fmt = (r: RoundResult): string => {
  const t = r.timings;
  const mb = r.bytesSent / 1e6;
  return `sent ${r.pagesSent} pages (${mb.toFixed(1)} MB), unchanged ${r.pagesUnchanged}; ${t.total.toFixed(0)} ms = ${(mb / (t.total / 1000)).toFixed(0)} MB/s; ` +
    `maps ${t.maps.toFixed(1)} ms, pagemap ${t.pagemap.toFixed(1)} ms, mem read ${t.mem.toFixed(1)} ms (thread pool, overlaps), hash ${t.hash.toFixed(1)} ms, socket wait ${t.send.toFixed(1)} ms`;
};

async function main(): Promise<void> {
  const base = await mkdtemp(join(tmpdir(), 'cedana-bench-round-'));
  const pids: number[] = [];
  try {
    const child = spawn('python3', ['-u', fixture, String(mib), base], { stdio: 'ignore', detached: true });
    pids.push(child.pid!);
    await waitFile(join(base, 'sha0'), 120_000);
    const criu = await locateCriu();
    const round = (name: string, prev?: string, prevPages?: RoundResult['pages']): Promise<RoundResult> =>
      roundInto(criu, child.pid!, join(base, name), { prev, prevPages, workers }, pids);
    // The reader alone, without hashing and sending.
    const t: ReadTimings = { maps: 0, pagemap: 0, mem: 0, hash: 0 };
    let s = performance.now();
    let bytes = 0;
    for await (const run of readPages(child.pid!, { hash: false, timings: t, workers })) bytes += run.data.length;
    let ms = performance.now() - s;
    console.log(`read only: ${(bytes / 1e6).toFixed(1)} MB in ${ms.toFixed(0)} ms = ${(bytes / 1e6 / (ms / 1000)).toFixed(0)} MB/s (pagemap ${t.pagemap.toFixed(1)} ms, mem ${t.mem.toFixed(1)} ms)`);
    s = performance.now();
    const t2: ReadTimings = { maps: 0, pagemap: 0, mem: 0, hash: 0 };
    for await (const run of readPages(child.pid!, { timings: t2, workers })) bytes += run.data.length;
    ms = performance.now() - s;
    console.log(`read + hash: ${ms.toFixed(0)} ms (hash ${t2.hash.toFixed(0)} ms)`);

    // Read and send, no hashing: the page server's side and the socket alone.
    {
      const dir = join(base, 'nohash');
      await mkdir(dir);
      const ps = spawn(criu.path, ['page-server', '-D', dir, '--ps-socket', '3'], { stdio: ['ignore', 'ignore', 'ignore', 'pipe'], detached: true });
      pids.push(ps.pid!);
      const done = new Promise<number | null>((res) => ps.once('close', res));
      const c = new PageServerClient(ps.stdio[3] as Duplex);
      const t3: ReadTimings = { maps: 0, pagemap: 0, mem: 0, hash: 0 };
      s = performance.now();
      await c.open(child.pid!);
      let wait = 0;
      for await (const run of readPages(child.pid!, { hash: false, timings: t3, workers })) {
        const w = performance.now();
        await c.add(run.vaddr, run.data);
        wait += performance.now() - w;
      }
      await c.close();
      ms = performance.now() - s;
      if ((await done) !== 0) throw new Error('page server failed');
      console.log(`read + send, no hash: ${(c.bytesSent / 1e6).toFixed(1)} MB in ${ms.toFixed(0)} ms = ${(c.bytesSent / 1e6 / (ms / 1000)).toFixed(0)} MB/s (socket wait ${wait.toFixed(0)} ms)`);
      await rm(dir, { recursive: true, force: true });
    }
    const r0 = await round('r0');
    console.log(`round 0: ${fmt(r0)}`);
    const n = Math.round((mib << 8) / 100);
    await writeFile(join(base, 'rewrite'), String(n));
    process.kill(child.pid!, 'SIGUSR2');
    await waitFile(join(base, 'rewritten'), 60_000);
    const r1 = await round('r1', '../r0', r0.pages);
    console.log(`workers ${workers}`);
    console.log(`round 1 (${n} pages rewritten): ${fmt(r1)}`);
  } finally {
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    await rm(base, { recursive: true, force: true });
  }
}

await main();
