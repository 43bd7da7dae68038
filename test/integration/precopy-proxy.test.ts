/**
 * The live final step of pre-copy by content, against the real CRIU: rounds 0 and 1 into stock page
 * servers, then `criu dump --page-server --ps-socket 0` through cedana's proxy into a third page
 * server (on 127.0.0.1 TCP, as on a target) whose parent is round 1: only the pages rewritten since
 * round 1 cross with their data. `criu restore` through final → r1 → r0 gives back the process with
 * its memory intact, by its own checksum.
 */
import { spawn } from 'node:child_process';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { afterEach, describe, expect, it } from 'vitest';
import { PageServerClient } from '../../src/criu/page-server/client.js';
import { locateCriu } from '../../src/criu/criu.js';
import { readDumpStats, readRestoreStats } from '../../src/image/criu/stats.js';
import { PAGE_SIZE } from '../../src/migrate/precopy/memory.js';
import { dumpThroughProxy, heldPages, type ProxyResult } from '../../src/migrate/precopy/proxy.js';
import { sendRound, sendTreeRound } from '../../src/migrate/precopy/round.js';
import { alive, Owned, readText, waitFor, waitGone } from '../helpers/processes.js';
import { freePort } from '../helpers/ports.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

interface Server {
  done: Promise<number>;
  log: () => Promise<string>;
}

function startPageServer(dir: string, args: string[], stdio: ('ignore' | 'pipe')[]): { child: ReturnType<typeof spawn> } & Server {
  const child = spawn('criu', ['page-server', '-D', dir, '-o', 'page-server.log', '-v4', ...args], { stdio, detached: true });
  if (!child.pid) throw new Error('criu page-server did not start');
  owned.own(child.pid);
  const done = new Promise<number>((res) => child.once('close', (code) => res(code ?? -1)));
  return { child, done, log: () => readFile(join(dir, 'page-server.log'), 'utf8').catch(() => '') };
}

/** A stock page server on a unix socket (its fd 3), for a round. */
async function roundServer(dir: string, prev?: string): Promise<{ client: PageServerClient } & Server> {
  await mkdir(dir, { recursive: true });
  const s = startPageServer(dir, ['--ps-socket', '3', ...(prev ? ['--prev-images-dir', prev] : [])], ['ignore', 'ignore', 'pipe', 'pipe']);
  return { ...s, client: new PageServerClient(s.child.stdio[3] as Duplex) };
}

/** A stock page server listening on 127.0.0.1, as on a migration's target; the connection to it. */
async function tcpServer(dir: string, prev?: string): Promise<{ sock: Socket; child: ReturnType<typeof spawn> } & Server> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const s = startPageServer(dir, ['--address', '127.0.0.1', '--port', String(port), ...(prev ? ['--prev-images-dir', prev] : [])], ['ignore', 'ignore', 'ignore']);
  for (let i = 0; i < 200; i++) {
    const sock = await new Promise<Socket | undefined>((res) => {
      const c = connect({ host: '127.0.0.1', port, noDelay: true });
      c.once('connect', () => res(c));
      c.once('error', () => res(undefined));
    });
    if (sock) return { ...s, sock };
    await sleep(25);
  }
  throw new Error(`criu page-server does not listen on 127.0.0.1:${port}`);
}

const tail = async (f: string): Promise<string> => (await readFile(f, 'utf8').catch(() => '')).slice(-3000);

describe('the live final step: criu dump through cedana’s proxy into the target’s page server', () => {
  it.each([[false, 0], [true, 0], [false, 2]])('only pages rewritten since the last round cross; criu restore through final → r1 → r0 gives back the memory (--leave-running %s, %i hashing workers)', async (leaveRunning, workers) => {
    const criu = await locateCriu();
    const base = await owned.tempDir('cedana-proxy-');
    const MIB = 64;
    const p = await owned.pager(MIB, base);
    const s0 = await roundServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done, await s0.log()).toBe(0);
    await p.rewrite(300, 1);
    const s1 = await roundServer(join(base, 'r1'), '../r0');
    const r1 = await sendRound(p.pid, s1.client, { prev: r0.pages });
    expect(await s1.done, await s1.log()).toBe(0);
    expect(r1.hasParent).toBe(true);
    const N = 50;
    const frozenSha = await p.rewrite(N, 2);

    // A plain criu dump of the same process, for the frozen time (it keeps running).
    const plain = join(base, 'plain');
    await mkdir(plain);
    const pd = await execa(criu.path, ['dump', '-t', String(p.pid), '-D', plain, '-o', 'dump.log', '-v4', '--leave-running'], { reject: false });
    expect(pd.exitCode, await tail(join(plain, 'dump.log'))).toBe(0);
    const plainStats = await readDumpStats(join(plain, 'stats-dump'));
    // And stop-and-copy over the network: criu dump straight into a stock page server on 127.0.0.1, every page.
    const full = join(base, 'full');
    await mkdir(full);
    const fullPs = await tcpServer(join(base, 'full-ps'));
    const fullPort = fullPs.sock.remotePort!;
    fullPs.sock.destroy(); // only the probe: the page server serves one connection, so start another
    await fullPs.done;
    const fullPs2 = startPageServer(join(base, 'full-ps'), ['--address', '127.0.0.1', '--port', String(fullPort)], ['ignore', 'ignore', 'ignore']);
    await sleep(200);
    const fd = await execa(criu.path, ['dump', '-t', String(p.pid), '-D', full, '-o', 'dump.log', '-v4', '--leave-running', '--page-server', '--address', '127.0.0.1', '--port', String(fullPort)], { reject: false });
    expect(fd.exitCode, await tail(join(full, 'dump.log'))).toBe(0);
    expect(await fullPs2.done).toBe(0);
    const fullStats = await readDumpStats(join(full, 'stats-dump'));

    // The live final step.
    const dump = join(base, 'dump');
    await mkdir(dump);
    const target = await tcpServer(join(base, 'final'), '../r1');
    const res = await dumpThroughProxy({
      criu, args: ['dump', '-t', String(p.pid), '-D', dump, '-o', 'dump.log', '-v4', ...(leaveRunning ? ['--leave-running'] : [])], logFile: join(dump, 'dump.log'),
      workDir: base, target: target.sock, held: new Map([[p.pid, r1.pages]]), workers,
    }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${await tail(join(dump, 'dump.log'))}\n${await target.log()}`);
    });
    expect(await target.done, await target.log()).toBe(0);
    const stats = await readDumpStats(join(dump, 'stats-dump'));
    const total = (MIB << 20) / PAGE_SIZE;
    // The N pages rewritten since round 1, the interpreter's few, [vdso], CRIU's own text page.
    expect(res.proxy.pagesForwarded).toBeGreaterThanOrEqual(N);
    expect(res.proxy.pagesForwarded).toBeLessThan(N + 500);
    expect(res.proxy.pagesParent).toBeGreaterThan(total - 500);
    expect(res.proxy.pagemapsWithParent).toBe(1);
    expect(res.proxy.pagesForwarded + res.proxy.pagesParent).toBe(res.proxy.pagesReceived);
    console.log(JSON.stringify({
      leaveRunning, workers, pagesReceived: res.proxy.pagesReceived, pagesForwarded: res.proxy.pagesForwarded, pagesParent: res.proxy.pagesParent, proxyMs: Math.round(res.proxy.ms), dumpMs: Math.round(res.dumpMs),
      frozenMs: stats && stats.frozenUs / 1000, memdumpMs: stats && stats.memdumpUs / 1000, memwriteMs: stats && stats.memwriteUs / 1000,
      plainFrozenMs: plainStats && plainStats.frozenUs / 1000, plainMemdumpMs: plainStats && plainStats.memdumpUs / 1000, plainMemwriteMs: plainStats && plainStats.memwriteUs / 1000,
      tcpPageServerFrozenMs: fullStats && fullStats.frozenUs / 1000, tcpPageServerMemwriteMs: fullStats && fullStats.memwriteUs / 1000,
    }));

    if (leaveRunning) {
      expect(alive(p.pid)).toBe(true);
      process.kill(p.pid, 'SIGKILL'); // the restore needs its PID
    }
    await waitGone(p.pid);
    // Every other image of the dump beside the final level's pages (criu dump wrote no pages here).
    const images = await readdir(dump);
    expect(images.filter((f) => /^(pagemap-\d+|pages-\d+)\.img$/.test(f))).toEqual([]);
    for (const f of images) if (f.endsWith('.img')) await copyFile(join(dump, f), join(base, 'final', f));
    const t0 = performance.now();
    const r = await execa(criu.path, ['restore', '-D', join(base, 'final'), '-d', '-o', 'restore.log', '-v4', '--pidfile', join(base, 'restored.pid')], { reject: false });
    const chainRestoreMs = performance.now() - t0;
    const pid = Number(await readFile(join(base, 'restored.pid'), 'utf8').catch(() => '0'));
    if (pid) owned.own(pid);
    expect(r.exitCode, await tail(join(base, 'final', 'restore.log'))).toBe(0);
    process.kill(pid, 'SIGUSR1');
    const sha = await waitFor('the restored checksum', () => readText(join(p.dir, 'sha-1')), 30_000);
    expect(sha).toBe(frozenSha);
    if (leaveRunning || workers) return;
    // The cost of restoring through the chain (CRIU reads parent pages itself, not its restorer):
    // against restoring the plain dump of the same process.
    const chained = await readRestoreStats(join(base, 'final', 'stats-restore'));
    process.kill(pid, 'SIGKILL');
    await waitGone(pid);
    const t = performance.now();
    const pr = await execa(criu.path, ['restore', '-D', plain, '-d', '-o', 'restore.log', '-v4', '--pidfile', join(base, 'plain.pid')], { reject: false });
    const plainRestoreMs = performance.now() - t;
    const pid2 = Number(await readFile(join(base, 'plain.pid'), 'utf8').catch(() => '0'));
    if (pid2) owned.own(pid2);
    expect(pr.exitCode, await tail(join(plain, 'restore.log'))).toBe(0);
    const flat = await readRestoreStats(join(plain, 'stats-restore'));
    console.log(JSON.stringify({ chainRestoreMs: Math.round(chainRestoreMs), chainRestoreUs: chained?.restoreUs, plainRestoreMs: Math.round(plainRestoreMs), plainRestoreUs: flat?.restoreUs }));
  });

  it('a target that goes away mid-dump fails the dump; the process runs on, unchanged', async () => {
    const criu = await locateCriu();
    const base = await owned.tempDir('cedana-proxy-');
    const p = await owned.pager(16, base);
    const s0 = await roundServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    const before = await p.rewrite(20, 1);
    const dump = join(base, 'dump');
    await mkdir(dump);
    const target = await tcpServer(join(base, 'final'), '../r0');
    // The target's page server ends once the first pages are forwarded.
    let forwarded = 0;
    const origWrite = target.sock.write.bind(target.sock) as (...a: unknown[]) => boolean;
    (target.sock as unknown as { write: (...a: unknown[]) => boolean }).write = (...a: unknown[]) => {
      forwarded += (a[0] as Buffer).length;
      if (forwarded > 64 << 10 && target.child.pid && alive(target.child.pid)) process.kill(target.child.pid, 'SIGKILL');
      return origWrite(...a);
    };
    await expect(dumpThroughProxy({
      criu, args: ['dump', '-t', String(p.pid), '-D', dump, '-o', 'dump.log', '-v4'], logFile: join(dump, 'dump.log'),
      workDir: base, target: target.sock, held: new Map([[p.pid, r0.pages]]),
    })).rejects.toThrow();
    expect(await target.done).not.toBe(0);
    expect(alive(p.pid)).toBe(true);
    // Not frozen, memory as before: it answers with the same checksum.
    process.kill(p.pid, 'SIGUSR1');
    expect(await waitFor('the checksum', () => readText(join(p.dir, 'sha-1')), 30_000)).toBe(before);
  });
});

describe('a criu dump that fails', () => {
  it('when cedana is interrupted mid-dump (SIGINT): the process runs on, unchanged', async () => {
    const criu = await locateCriu();
    const base = await owned.tempDir('cedana-proxy-');
    const p = await owned.pager(16, base);
    const s0 = await roundServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    const before = await p.rewrite(20, 1);
    const dump = join(base, 'dump');
    await mkdir(dump);
    const target = await tcpServer(join(base, 'final'), '../r0');
    const ac = new AbortController();
    let forwarded = 0;
    const origWrite = target.sock.write.bind(target.sock) as (...a: unknown[]) => boolean;
    (target.sock as unknown as { write: (...a: unknown[]) => boolean }).write = (...a: unknown[]) => {
      forwarded += (a[0] as Buffer).length;
      if (forwarded > 64 << 10) ac.abort();
      return origWrite(...a);
    };
    await expect(dumpThroughProxy({
      criu, args: ['dump', '-t', String(p.pid), '-D', dump, '-o', 'dump.log', '-v4'], logFile: join(dump, 'dump.log'),
      workDir: base, target: target.sock, held: new Map([[p.pid, r0.pages]]), signal: ac.signal,
    })).rejects.toMatchObject({ code: 'INTERRUPTED' });
    expect(ac.signal.aborted).toBe(true);
    expect(await target.done).not.toBe(0);
    expect(alive(p.pid)).toBe(true);
    process.kill(p.pid, 'SIGUSR1');
    expect(await waitFor('the checksum', () => readText(join(p.dir, 'sha-1')), 30_000)).toBe(before);
  });

  it('before any page (no such process): CRIU’s own error is reported, the target’s page server is not left waiting', async () => {
    const criu = await locateCriu();
    const base = await owned.tempDir('cedana-proxy-');
    const dump = join(base, 'dump');
    await mkdir(dump);
    const target = await tcpServer(join(base, 'final'));
    const gone = 2 ** 22 + 12345; // above the default pid_max's range: no such process
    const err = await dumpThroughProxy({
      criu, args: ['dump', '-t', String(gone), '-D', dump, '-o', 'dump.log', '-v4'], logFile: join(dump, 'dump.log'),
      workDir: base, target: target.sock, held: new Map(),
    }).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect(err!.message).not.toMatch(/before its end/);
    expect(err!.message).toMatch(/criu dump failed[\s\S]*No such process/);
    // The stock page server, its connection closed before any command, exits — with 0 (measured):
    // one more reason to go by the dump's exit code only. It wrote no pagemap.
    expect(typeof (await target.done)).toBe('number');
    expect((await readdir(join(base, 'final'))).filter((f) => f.startsWith('pagemap-'))).toEqual([]);
  });

  it('after its pages were sent still sends CLOSE and the page server exits 0 with a partial directory: dumpThroughProxy trusts the dump’s exit code and fails', async () => {
    const criu = await locateCriu();
    const base = await owned.tempDir('cedana-proxy-');
    const p = await owned.pager(8, base);
    const s0 = await roundServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    const before = await p.rewrite(10, 1);
    const dump = join(base, 'dump');
    await mkdir(dump);
    // Fails the dump at its post-dump step, after the memory went out: CRIU resumes the tree.
    const script = join(base, 'fail-post-dump.sh');
    await writeFile(script, '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] && exit 1\nexit 0\n', { mode: 0o755 });
    const target = await tcpServer(join(base, 'final'), '../r0');
    let proxied: ProxyResult | undefined;
    const err = await dumpThroughProxy({
      criu, args: ['dump', '-t', String(p.pid), '-D', dump, '-o', 'dump.log', '-v4', '--action-script', script], logFile: join(dump, 'dump.log'),
      workDir: base, target: target.sock, held: new Map([[p.pid, r0.pages]]), onProxied: (r) => (proxied = r),
    }).then(() => undefined, (e: Error) => e);
    expect(err?.message).toMatch(/criu dump|CRIU/i);
    // The page server saw a complete session (CLOSE answered 0) and exited 0: only the exit code tells.
    expect(await target.done).toBe(0);
    expect(proxied?.status).toBe(0);
    expect(alive(p.pid)).toBe(true);
    process.kill(p.pid, 'SIGUSR1');
    expect(await waitFor('the checksum', () => readText(join(p.dir, 'sha-1')), 30_000)).toBe(before);
  });
});

/**
 * Two processes (parent and child) sharing an anonymous MAP_SHARED region (CRIU's shmem pagemap,
 * type 2) besides each one's private memory. On SIGUSR2 each rewrites 20 of its private pages (the
 * parent also 10 shared ones) and writes "<k>" to <dir>/<who>-rewritten-<k>; on SIGUSR1 each writes
 * the sha256 of its private memory and of the shared region to <dir>/<who>-sum-<n>.
 */
const TREE = `
import hashlib, mmap, os, random, signal, sys, time
out = sys.argv[1]
shm = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
shm[:] = os.urandom(4 << 20)
who = 'child' if os.fork() == 0 else 'parent'
priv = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for off in range(0, 8 << 20, 1 << 20): priv[off:off + (1 << 20)] = os.urandom(1 << 20)
asked = {'sum': 0, 'rw': 0}; done = {'sum': 0, 'rw': 0}
def write(name, text):
    open(os.path.join(out, name + '.tmp'), 'w').write(text); os.rename(os.path.join(out, name + '.tmp'), os.path.join(out, name))
signal.signal(signal.SIGUSR1, lambda *_: asked.__setitem__('sum', asked['sum'] + 1))
signal.signal(signal.SIGUSR2, lambda *_: asked.__setitem__('rw', asked['rw'] + 1))
write(who + '-ready', str(os.getpid()))
while True:
    if asked['rw'] > done['rw']:
        done['rw'] = asked['rw']
        for p in random.sample(range(2048), 20): priv[p * 4096:(p + 1) * 4096] = os.urandom(4096)
        if who == 'parent':
            for p in random.sample(range(1024), 10): shm[p * 4096:(p + 1) * 4096] = os.urandom(4096)
        write('%s-rewritten-%d' % (who, done['rw']), 'ok')
    if asked['sum'] > done['sum']:
        done['sum'] = asked['sum']
        write('%s-sum-%d' % (who, done['sum']), hashlib.sha256(priv).hexdigest() + ' ' + hashlib.sha256(shm).hexdigest())
    time.sleep(0.02)
`;

describe('a tree of two processes with shared memory through the proxy', () => {
  it('each process against its own round, the shared memory forwarded whole; restored, both report the memory they had', async () => {
    const criu = await locateCriu();
    const base = await owned.tempDir('cedana-proxy-');
    const dir = join(base, 'tree');
    await mkdir(dir);
    const parent = owned.start('python3', ['-c', TREE, dir]);
    const child = Number(await waitFor('the child', () => readText(join(dir, 'child-ready')), 30_000));
    await waitFor('the parent', () => readText(join(dir, 'parent-ready')), 30_000);
    const s0 = await roundServer(join(base, 'r0'));
    const r0 = await sendTreeRound([parent, child], s0.client);
    expect(await s0.done, await s0.log()).toBe(0);
    const sums = async (n: number): Promise<string[]> => {
      for (const pid of [parent, child]) process.kill(pid, 'SIGUSR1');
      return Promise.all(['parent', 'child'].map((w) => waitFor(`${w}'s sums`, () => readText(join(dir, `${w}-sum-${n}`)), 30_000)));
    };
    for (const pid of [parent, child]) process.kill(pid, 'SIGUSR2');
    await Promise.all(['parent', 'child'].map((w) => waitFor(`${w} rewritten`, () => readText(join(dir, `${w}-rewritten-1`)))));
    const before = await sums(1);

    const dump = join(base, 'dump');
    await mkdir(dump);
    const target = await tcpServer(join(base, 'final'), '../r0');
    const res = await dumpThroughProxy({
      criu, args: ['dump', '-t', String(parent), '-D', dump, '-o', 'dump.log', '-v4'], logFile: join(dump, 'dump.log'),
      workDir: base, target: target.sock, held: await heldPages(r0),
    }).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${await tail(join(dump, 'dump.log'))}\n${await target.log()}`);
    });
    expect(await target.done, await target.log()).toBe(0);
    const shmPages = (4 << 20) / PAGE_SIZE;
    expect(res.proxy.pagemaps).toBe(3);
    expect(res.proxy.pagemapsWithParent).toBe(2); // the processes'; round 0 had no shared memory
    expect(res.proxy.pagesShmem).toBe(shmPages);
    // 20 private pages each, the shared region whole, a few of the interpreters' own.
    expect(res.proxy.pagesForwarded - res.proxy.pagesShmem).toBeGreaterThanOrEqual(40);
    expect(res.proxy.pagesForwarded - res.proxy.pagesShmem).toBeLessThan(40 + 1000);
    expect(res.proxy.pagesParent).toBeGreaterThan(2 * ((8 << 20) / PAGE_SIZE) - 1000);

    await waitGone(child);
    await waitGone(parent);
    for (const f of await readdir(dump)) if (f.endsWith('.img')) await copyFile(join(dump, f), join(base, 'final', f));
    const r = await execa(criu.path, ['restore', '-D', join(base, 'final'), '-d', '-o', 'restore.log', '-v4', '--pidfile', join(base, 'restored.pid')], { reject: false });
    const pid = Number(await readFile(join(base, 'restored.pid'), 'utf8').catch(() => '0'));
    if (pid) owned.own(pid);
    expect(r.exitCode, await tail(join(base, 'final', 'restore.log'))).toBe(0);
    expect(pid).toBe(parent);
    expect(await sums(2)).toEqual(before);
  });
});
