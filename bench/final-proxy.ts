/**
 * Measures the live final step of pre-copy by content, one host: a pager.py of MIB MiB (argv[2],
 * default 256), rounds 0 and 1 (1% of its pages rewritten between) into stock page servers, then
 * 0.1% rewritten, then REPS times (argv[4], default 3), with --leave-running, three ways:
 *  - plain: `criu dump` to a local directory (page cache);
 *  - stop-and-copy over loopback: `criu dump --page-server` straight into a stock page server on 127.0.0.1;
 *  - proxy: `criu dump --page-server --ps-socket 0` through cedana's proxy into a stock page server
 *    on 127.0.0.1 whose parent is round 1.
 * Prints CRIU's frozen time (stats-dump) of each, medians, and the pages the proxy forwarded.
 *   npx vite-node bench/final-proxy.ts [MIB] [WORKERS] [REPS]   (WORKERS: hashing threads, 0: none)
 */
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { locateCriu } from '../src/criu/criu.js';
import { readDumpStats } from '../src/image/criu/stats.js';
import { dumpThroughProxy } from '../src/migrate/precopy/proxy.js';
import type { RoundResult } from '../src/migrate/precopy/round.js';
import { roundInto, waitFile } from './precopy-common.js';

const mib = Number(process.argv[2] ?? 256);
const workers = Number(process.argv[3] ?? 0);
const reps = Number(process.argv[4] ?? 3);
const fixture = fileURLToPath(new URL('../test/fixtures/pager.py', import.meta.url));


async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', () => res()));
  const port = (srv.address() as { port: number }).port;
  await new Promise((res) => srv.close(res));
  return port;
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;

async function main(): Promise<void> {
  const base = await mkdtemp(join(tmpdir(), 'cedana-bench-proxy-'));
  const pids: number[] = [];
  try {
    const pager = spawn('python3', ['-u', fixture, String(mib), base], { stdio: 'ignore', detached: true });
    const pid = pager.pid!;
    pids.push(pid);
    await waitFile(join(base, 'sha0'), 120_000);
    const criu = await locateCriu();
    const pages = (mib << 20) / 4096;
    const rewrite = async (n: number, k: number): Promise<void> => {
      await import('node:fs/promises').then((fs) => fs.writeFile(join(base, 'rewrite'), String(n)));
      process.kill(pid, 'SIGUSR2');
      await waitFile(join(base, 'rewritten'), 30_000, (t) => t.startsWith(`${k} `));
    };
    const round = (name: string, prev?: string, prevPages?: RoundResult['pages']): Promise<RoundResult> =>
      roundInto(criu, pid, join(base, name), { prev, prevPages }, pids);
    /** A stock page server on 127.0.0.1, daemonized once it listens. */
    const tcpServer = async (dir: string, prev?: string): Promise<number> => {
      await mkdir(dir, { recursive: true });
      const port = await freePort();
      await execa(criu.path, ['page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(port), '-d', '--pidfile', join(dir, 'ps.pid'), '-o', 'ps.log', ...(prev ? ['--prev-images-dir', prev] : [])]);
      pids.push(Number(await readFile(join(dir, 'ps.pid'), 'utf8')));
      return port;
    };
    const frozen = async (dir: string): Promise<number> => ((await readDumpStats(join(dir, 'stats-dump')))?.frozenUs ?? NaN) / 1000;

    const r0 = await round('r0');
    await rewrite(Math.round(pages / 100), 1);
    const r1 = await round('r1', '../r0', r0.pages);
    console.log(`round 1: ${r1.pagesSent} pages sent, ${r1.pagesUnchanged} unchanged, ${r1.timings.total.toFixed(0)} ms`);
    await rewrite(Math.round(pages / 1000), 2);

    const res: Record<string, number[]> = { plain: [], tcp: [], proxy: [] };
    for (let i = 0; i < reps; i++) {
      const plain = join(base, `plain-${i}`);
      await mkdir(plain);
      await execa(criu.path, ['dump', '-t', String(pid), '-D', plain, '-o', 'dump.log', '--leave-running']);
      res.plain!.push(await frozen(plain));

      const tcp = join(base, `tcp-${i}`);
      await mkdir(tcp);
      const port = await tcpServer(join(base, `tcp-ps-${i}`));
      await execa(criu.path, ['dump', '-t', String(pid), '-D', tcp, '-o', 'dump.log', '--leave-running', '--page-server', '--address', '127.0.0.1', '--port', String(port)]);
      res.tcp!.push(await frozen(tcp));

      const dump = join(base, `proxy-${i}`);
      await mkdir(dump);
      const port2 = await tcpServer(join(base, `final-${i}`), '../r1');
      const sock = await new Promise<Socket>((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: port2, noDelay: true });
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
      const p = await dumpThroughProxy({
        criu, args: ['dump', '-t', String(pid), '-D', dump, '-o', 'dump.log', '--leave-running'], logFile: join(dump, 'dump.log'),
        workDir: base, target: sock, held: new Map([[pid, r1.pages]]), workers,
      });
      res.proxy!.push(await frozen(dump));
      console.log(`rep ${i}: frozen plain ${res.plain!.at(-1)!.toFixed(0)} ms, stock page server over TCP ${res.tcp!.at(-1)!.toFixed(0)} ms, proxy ${res.proxy!.at(-1)!.toFixed(0)} ms ` +
        `(${p.proxy.pagesForwarded} of ${p.proxy.pagesReceived} pages forwarded, proxy session ${p.proxy.ms.toFixed(0)} ms)`);
    }
    console.log(`${mib} MiB, ${workers} hashing workers, medians of ${reps}: frozen plain ${median(res.plain!).toFixed(0)} ms, stock page server over TCP ${median(res.tcp!).toFixed(0)} ms, proxy ${median(res.proxy!).toFixed(0)} ms`);
  } finally {
    for (const p of pids.reverse()) {
      // Only what is still ours (a daemonized page server that served its session has exited; its PID may be reused).
      const cmd = await readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '');
      if (!/criu|python3/.test(cmd)) continue;
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await rm(base, { recursive: true, force: true });
  }
}

await main();
