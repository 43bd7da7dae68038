/**
 * Pre-copy by content against the real CRIU: cedana reads a running process's memory and sends it,
 * as a page-server client, to a stock `criu page-server` (4.2), a round at a time; a later round
 * into a directory whose parent is the previous one carries only the pages that changed. The chain
 * CRIU's page server wrote then holds exactly the process's memory, read back the way CRIU's
 * restore reads it (ParentPages).
 */
import { spawn } from 'node:child_process';
import { closeSync, openSync, readSync } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PageServerClient } from '../../src/criu/page-server/client.js';
import { locateCriu } from '../../src/criu/criu.js';
import { ParentPages } from '../../src/image/parent-pages.js';
import { PAGE_SIZE } from '../../src/migrate/precopy/memory.js';
import { sendRound, sendTreeRound, type RoundPages } from '../../src/migrate/precopy/round.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';
import { decodeImage, type MessageEntry } from '../../src/image/criu/codec.js';
import { execa } from 'execa';
import { hashPages, HASH_BYTES, parseMaps, readPages } from '../../src/migrate/precopy/memory.js';
import { copyFile } from 'node:fs/promises';
import type { Duplex } from 'node:stream';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../helpers/ports.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

/**
 * A stock `criu page-server` serving one session on a unix socket (its --ps-socket 3), writing into
 * `dir`; with `prev`, the previous round's directory relative to `dir`. Ended at cleanup if still there.
 */
async function pageServer(dir: string, prev?: string): Promise<{ client: PageServerClient; sock: Duplex; done: Promise<number>; log: () => Promise<string> }> {
  const criu = await locateCriu();
  await mkdir(dir, { recursive: true });
  const child = spawn(criu.path, ['page-server', '-D', dir, '--ps-socket', '3', '-o', 'page-server.log', '-v4', ...(prev ? ['--prev-images-dir', prev] : [])], {
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    detached: true,
  });
  if (!child.pid) throw new Error('criu page-server did not start');
  owned.own(child.pid);
  const done = new Promise<number>((res) => child.once('close', (code) => res(code ?? -1)));
  const sock = child.stdio[3] as Duplex;
  return { client: new PageServerClient(sock), sock, done, log: () => readFile(join(dir, 'page-server.log'), 'utf8').catch(() => '') };
}

/** Stops the process and waits until it is stopped (kill() returns before it is). */
async function stop(pid: number): Promise<void> {
  process.kill(pid, 'SIGSTOP');
  await waitFor(`PID ${pid} stopped`, () => /^\d+ \(.*\) T /.test(readText(`/proc/${pid}/stat`) ?? ''));
}

/** A stock `criu page-server` listening on 127.0.0.1 (as on a migration's target), connected to over TCP. */
async function tcpPageServer(dir: string, prev?: string): Promise<{ client: PageServerClient; done: Promise<number>; log: () => Promise<string> }> {
  const criu = await locateCriu();
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const child = spawn(criu.path, ['page-server', '-D', dir, '--address', '127.0.0.1', '--port', String(port), '-o', 'page-server.log', '-v4', ...(prev ? ['--prev-images-dir', prev] : [])], {
    stdio: 'ignore',
    detached: true,
  });
  if (!child.pid) throw new Error('criu page-server did not start');
  owned.own(child.pid);
  const done = new Promise<number>((res) => child.once('close', (code) => res(code ?? -1)));
  let sock: Socket | undefined;
  for (let i = 0; !sock && i < 200; i++) {
    sock = await new Promise<Socket | undefined>((res) => {
      const s = connect({ host: '127.0.0.1', port, noDelay: true });
      s.once('connect', () => res(s));
      s.once('error', () => res(undefined));
    });
    if (!sock) await sleep(25);
  }
  if (!sock) throw new Error(`criu page-server does not listen on 127.0.0.1:${port}`);
  return { client: new PageServerClient(sock), done, log: () => readFile(join(dir, 'page-server.log'), 'utf8').catch(() => '') };
}

/** Every page the round names, read back through the chain at `dir`, equals the process's memory now. */
async function expectChainHolds(dir: string, pid: number, pages: RoundPages): Promise<number> {
  const chain = await ParentPages.open(dir);
  const mem = openSync(`/proc/${pid}/mem`, 'r');
  let checked = 0;
  const bad: string[] = [];
  try {
    let i = 0;
    while (i < pages.count) {
      let j = i + 1;
      while (j < pages.count && j - i < 1024 && pages.vaddrs[j] === pages.vaddrs[j - 1]! + PAGE_SIZE) j++;
      const n = j - i;
      const va = pages.vaddrs[i]!;
      const fromChain = Buffer.alloc(n * PAGE_SIZE);
      const held = await chain.readAsync(pid, va, n, fromChain);
      const live = Buffer.alloc(n * PAGE_SIZE);
      expect(readSync(mem, live, 0, live.length, va)).toBe(live.length);
      for (let p = 0; p < n; p++) {
        const same = held[p] === 1 && fromChain.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE).equals(live.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE));
        if (!same && bad.length < 10) bad.push(`${(va + p * PAGE_SIZE).toString(16)} held=${held[p]}`);
        checked++;
      }
      i = j;
    }
  } finally {
    closeSync(mem);
    chain.close();
  }
  expect(bad).toEqual([]);
  return checked;
}

describe('pre-copy rounds by content through a stock criu page-server', () => {
  it.each([0, 2])('round 0 sends every page; round 1 only the rewritten ones; the chain holds exactly the memory (%i worker threads)', async (workers) => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(64, base);
    owned.own(p.pid);

    const s0 = await pageServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client, { workers });
    expect(await s0.done, await s0.log()).toBe(0);
    expect(r0.hasParent).toBe(false);
    expect(r0.pagesUnchanged).toBe(0);
    expect(r0.pagesSent).toBe(r0.pages.count);
    expect(r0.pagesSent).toBeGreaterThan((64 << 20) / PAGE_SIZE);
    expect((await readdir(join(base, 'r0'))).sort()).toEqual(expect.arrayContaining([`pagemap-${p.pid}.img`, 'pages-65537.img']));

    const N = 200;
    await p.rewrite(N, 1);

    const s1 = await pageServer(join(base, 'r1'), '../r0');
    const r1 = await sendRound(p.pid, s1.client, { prev: r0.pages, workers });
    expect(await s1.done, await s1.log()).toBe(0);
    expect(r1.hasParent).toBe(true);
    // The rewritten pages, and the few the interpreter touched meanwhile.
    expect(r1.pagesSent).toBeGreaterThanOrEqual(N);
    expect(r1.pagesSent).toBeLessThan(N + 400);
    expect(r1.pagesSent + r1.pagesUnchanged).toBe(r1.pages.count);

    await stop(p.pid);
    // The process may have touched a few pages after round 1 read them: one more round, stopped, is exact.
    const s2 = await pageServer(join(base, 'r2'), '../r1');
    const r2 = await sendRound(p.pid, s2.client, { prev: r1.pages, workers });
    expect(await s2.done, await s2.log()).toBe(0);
    expect(r2.pagesSent).toBeLessThan(400);
    const checked = await expectChainHolds(join(base, 'r2'), p.pid, r2.pages);
    expect(checked).toBe(r2.pages.count);
    // Round 1's chain, compared where nothing changed since: every page it names resolves (coverage).
    const chain1 = await ParentPages.open(join(base, 'r1'));
    const buf = Buffer.alloc(PAGE_SIZE);
    let unresolved = 0;
    for (let i = 0; i < r1.pages.count; i += 97) if ((await chain1.readAsync(p.pid, r1.pages.vaddrs[i]!, 1, buf))[0] !== 1) unresolved++;
    chain1.close();
    expect(unresolved).toBe(0);
    expect(alive(p.pid)).toBe(true);
  });

  it('a page server without a parent (has_parent 0) gets every page again, no PE_PARENT', async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(8, base);
    owned.own(p.pid);
    const s0 = await pageServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    const s1 = await pageServer(join(base, 'r1'));
    const r1 = await sendRound(p.pid, s1.client, { prev: r0.pages });
    expect(await s1.done, await s1.log()).toBe(0);
    expect(r1.hasParent).toBe(false);
    expect(r1.pagesUnchanged).toBe(0);
    expect(r1.pagesSent).toBe(r1.pages.count);
    await stop(p.pid);
    const s2 = await pageServer(join(base, 'r2'));
    const r2 = await sendRound(p.pid, s2.client);
    expect(await s2.done).toBe(0);
    await expectChainHolds(join(base, 'r2'), p.pid, r2.pages);
  });

  it("covers what CRIU's own dump of the process holds, byte for byte (but [vdso], the text page CRIU's parasite bootstrap copies on write, and the rseq cpu ids the kernel updates)", async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(16, base);
    const s0 = await pageServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    await p.rewrite(50, 1);
    await stop(p.pid);
    const s1 = await pageServer(join(base, 'r1'), '../r0');
    const r1 = await sendRound(p.pid, s1.client, { prev: r0.pages });
    expect(await s1.done, await s1.log()).toBe(0);
    const maps = parseMaps(await readFile(`/proc/${p.pid}/maps`, 'utf8'));
    const vdso = maps.filter((v) => v.path === '[vdso]');

    const criu = await locateCriu();
    const dump = join(base, 'dump');
    await mkdir(dump);
    const d = await execa(criu.path, ['dump', '-t', String(p.pid), '-D', dump, '-o', 'dump.log', '-v4', '--leave-running'], { reject: false });
    expect(d.exitCode, await readFile(join(dump, 'dump.log'), 'utf8').then((l) => l.slice(-3000)).catch(() => d.stderr)).toBe(0);
    const entries = decodeImage(await readFile(join(dump, `pagemap-${p.pid}.img`)), 'pagemap').entries.slice(1).map((e) => (e as MessageEntry).value);
    const theirs = await ParentPages.open(dump);
    const ours = await ParentPages.open(join(base, 'r1'));
    let compared = 0;
    const lacking: string[] = [];
    const differ: string[] = [];
    try {
      for (const e of entries) {
        const va = Number(e.vaddr);
        const n = Number(e.nr_pages);
        const a = Buffer.alloc(n * PAGE_SIZE);
        const b = Buffer.alloc(n * PAGE_SIZE);
        const heldA = await theirs.readAsync(p.pid, va, n, a);
        const heldB = await ours.readAsync(p.pid, va, n, b);
        for (let i = 0; i < n; i++) {
          const at = va + i * PAGE_SIZE;
          if (!heldA[i]) continue;
          if (vdso.some((v) => at >= v.start && at < v.end)) continue;
          if (!heldB[i]) {
            const v = maps.find((m) => at >= m.start && at < m.end);
            const pm = Buffer.alloc(8);
            const fd = openSync(`/proc/${p.pid}/pagemap`, 'r');
            readSync(fd, pm, 0, 8, (at / PAGE_SIZE) * 8);
            closeSync(fd);
            lacking.push(`${at.toString(16)} ${v ? `${v.start.toString(16)}-${v.end.toString(16)} ${v.perms} ${v.path}` : 'no vma'} pme=${pm.readBigUInt64LE().toString(16)}`);
          }
          else if (!a.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE).equals(b.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE))) {
            const v = maps.find((m) => at >= m.start && at < m.end);
            const bytes: number[] = [];
            for (let o = 0; o < PAGE_SIZE; o++) if (a[i * PAGE_SIZE + o] !== b[i * PAGE_SIZE + o]) bytes.push(o);
            differ.push(`${at.toString(16)} ${v ? `${v.start.toString(16)}-${v.end.toString(16)} ${v.perms} ${v.path}` : 'no vma'} bytes ${bytes.join(',')}`);
          }
          compared++;
        }
      }
    } finally {
      theirs.close();
      ours.close();
    }
    // CRIU's own parasite bootstrap writes into the first executable mapping (ptrace, then puts the
    // code back): that page becomes an anonymous copy CRIU dumps, while the rounds saw a file page.
    // The one page that may differ: the thread's struct rseq (in glibc's TCB), whose cpu_id fields
    // the kernel rewrites when CRIU's parasite runs the stopped task on another CPU. Any other byte differing fails.
    expect(differ.length, differ.join('\n')).toBeLessThanOrEqual(1);
    for (const d of differ) {
      const offs = d.split(' bytes ')[1]!.split(',').map(Number);
      expect(Math.max(...offs) - Math.min(...offs), d).toBeLessThan(32);
    }
    expect(lacking.length, lacking.join('\n')).toBeLessThanOrEqual(1);
    for (const l of lacking) expect(l).toMatch(/ r-xp \//);
    expect(compared).toBeGreaterThan((16 << 20) / PAGE_SIZE);
    // The rounds carry no more than CRIU's dump (zero pages left out alike); a few pages the process
    // dropped between round 1 and the dump at most.
    expect(r1.pages.count - compared).toBeLessThan(64);
  });

  it('over TCP to a page server on 127.0.0.1, as on a target: rounds 0 and 1, the chain holds the memory', async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(16, base);
    const s0 = await tcpPageServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done, await s0.log()).toBe(0);
    await p.rewrite(30, 1);
    await stop(p.pid);
    const s1 = await tcpPageServer(join(base, 'r1'), '../r0');
    const r1 = await sendRound(p.pid, s1.client, { prev: r0.pages });
    expect(await s1.done, await s1.log()).toBe(0);
    expect(r1.hasParent).toBe(true);
    expect(r1.pagesSent).toBeGreaterThanOrEqual(30);
    expect(r1.pagesSent).toBeLessThan(430);
    await expectChainHolds(join(base, 'r1'), p.pid, r1.pages);
  });

  it("the stock page server refuses a PE_PARENT range its parent does not hold: the client's CLOSE rejects", async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(4, base);
    const s0 = await pageServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    const s1 = await pageServer(join(base, 'r1'), '../r0');
    expect(await s1.client.open(p.pid)).toBe(true);
    // Just below the lowest page round 0 sent: not in the parent's pagemap.
    await s1.client.parent(r0.pages.vaddrs[0]! - 16 * PAGE_SIZE, 1).catch(() => undefined);
    await expect(s1.client.close()).rejects.toThrow();
    expect(await s1.done).not.toBe(0);
    expect(await s1.log()).toMatch(/parent/i);
  });

  it('leaves out pages mapped to the shared zero page (read, never written), as CRIU does', async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const script = [
      'import ctypes, mmap, os, sys, time',
      'm = mmap.mmap(-1, 8 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
      'for off in range(0, 4 << 20, 4096): m[off]',
      'for off in range(4 << 20, 8 << 20, 4096): m[off] = 1',
      'a = ctypes.addressof(ctypes.c_char.from_buffer(m))',
      "open(sys.argv[1] + '.tmp', 'w').write(str(a)); os.rename(sys.argv[1] + '.tmp', sys.argv[1])",
      'time.sleep(600)',
    ].join('\n');
    const pid = owned.start('python3', ['-c', script, join(base, 'addr')]);
    const addr = Number(await waitFor('the mapping', () => readText(join(base, 'addr')), 30_000));
    let read = 0;
    let written = 0;
    for await (const run of readPages(pid)) {
      for (let i = 0; i < run.pages; i++) {
        const va = run.vaddr + i * PAGE_SIZE;
        if (va >= addr && va < addr + (4 << 20)) read++;
        else if (va >= addr + (4 << 20) && va < addr + (8 << 20)) written++;
      }
    }
    expect({ read, written }).toEqual({ read: 0, written: (4 << 20) / PAGE_SIZE });
  });

  it('two processes in one session (a pagemap each, one CLOSE): only the rewritten process sends pages in round 1', async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const a = await owned.pager(8, base);
    const b = await owned.pager(8, base);
    const s0 = await pageServer(join(base, 'r0'));
    const r0 = await sendTreeRound([a.pid, b.pid], s0.client);
    expect(await s0.done, await s0.log()).toBe(0);
    expect((await readdir(join(base, 'r0'))).filter((n) => n.startsWith('pagemap-')).sort()).toEqual([`pagemap-${a.pid}.img`, `pagemap-${b.pid}.img`].sort());
    await b.rewrite(40, 1);
    await stop(a.pid);
    await stop(b.pid);
    const s1 = await pageServer(join(base, 'r1'), '../r0');
    const prev = new Map([...r0.byPid].map(([pid, r]) => [pid, r.pages]));
    const r1 = await sendTreeRound([a.pid, b.pid], s1.client, { prev });
    expect(await s1.done, await s1.log()).toBe(0);
    const ra = r1.byPid.get(a.pid)!;
    const rb = r1.byPid.get(b.pid)!;
    expect([ra.hasParent, rb.hasParent]).toEqual([true, true]);
    expect(ra.pagesSent).toBeLessThan(400);
    expect(rb.pagesSent).toBeGreaterThanOrEqual(40);
    expect(rb.pagesSent).toBeLessThan(440);
    await expectChainHolds(join(base, 'r1'), a.pid, ra.pages);
    await expectChainHolds(join(base, 'r1'), b.pid, rb.pages);
  });

  it.each([0, 2])('a process that ends mid-round fails the round, never a short one, and the page server is not left waiting (%i worker threads)', async (workers) => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(64, base);
    const s0 = await pageServer(join(base, 'r0'));
    // Killed once the round is under way: after its first 256 KiB went to the page server (of 64 MiB,
    // sent in runs of 64 KiB), not after a delay a fast machine can outrun.
    let killedAt = Infinity;
    let sent = 0;
    const write = s0.sock.write.bind(s0.sock) as (...a: unknown[]) => boolean;
    (s0.sock as unknown as { write: (...a: unknown[]) => boolean }).write = (...a: unknown[]) => {
      sent += (a[0] as Buffer).length;
      if (sent > 256 << 10 && killedAt === Infinity) {
        process.kill(p.pid, 'SIGKILL');
        killedAt = performance.now();
      }
      return write(...a);
    };
    const err = await sendRound(p.pid, s0.client, { workers, chunkPages: 16 }).then(() => undefined, (e: unknown) => e as Error);
    const failedAt = performance.now();
    // The round failed because the process ended, not for another reason before it did. (A process
    // still exiting, its memory already gone, read as absent pages: the round came out short.)
    expect(err?.message).toMatch(/ended while its memory was read|ENOENT|ESRCH/);
    expect(failedAt).toBeGreaterThanOrEqual(killedAt);
    expect(await s0.done).not.toBe(0);
    // Killed: it ends (a process tearing down its memory takes a moment to become a zombie).
    await waitFor(`PID ${p.pid} to end`, () => !alive(p.pid), 15_000);
  });

  it("CRIU restores through the rounds: a final level made from CRIU's dump (pages the last round holds unchanged as PE_PARENT) restores the memory intact", async () => {
    const base = await owned.tempDir('cedana-precopy-');
    const p = await owned.pager(32, base);
    const s0 = await pageServer(join(base, 'r0'));
    const r0 = await sendRound(p.pid, s0.client);
    expect(await s0.done).toBe(0);
    const want = await p.rewrite(100, 1);
    const s1 = await pageServer(join(base, 'r1'), '../r0');
    const r1 = await sendRound(p.pid, s1.client, { prev: r0.pages });
    expect(await s1.done, await s1.log()).toBe(0);
    await p.rewrite(20, 2).then(() => undefined);
    const final = await readFile(join(p.dir, 'rewritten'), 'utf8');
    await stop(p.pid);

    // CRIU's own dump (the process ends with it), then its pages re-sent against round 1 by content,
    // as the final step's proxy will: only pages round 1 lacks or holds otherwise cross.
    const criu = await locateCriu();
    const dump = join(base, 'dump');
    await mkdir(dump);
    const d = await execa(criu.path, ['dump', '-t', String(p.pid), '-D', dump, '-o', 'dump.log', '-v4'], { reject: false });
    expect(d.exitCode, await readFile(join(dump, 'dump.log'), 'utf8').then((l) => l.slice(-3000)).catch(() => d.stderr)).toBe(0);
    await waitGone(p.pid);
    const entries = decodeImage(await readFile(join(dump, `pagemap-${p.pid}.img`)), 'pagemap').entries.slice(1).map((e) => (e as MessageEntry).value);
    const theirs = await ParentPages.open(dump);
    const s2 = await pageServer(join(base, 'final'), '../r1');
    const c = s2.client;
    expect(await c.open(p.pid)).toBe(true);
    const held = new Map<number, Buffer>();
    for (let i = 0; i < r1.pages.count; i++) held.set(r1.pages.vaddrs[i]!, r1.pages.hashes.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES));
    let parent = 0;
    let data = 0;
    for (const e of entries) {
      const va = Number(e.vaddr);
      const n = Number(e.nr_pages);
      const buf = Buffer.alloc(n * PAGE_SIZE);
      const got = await theirs.readAsync(p.pid, va, n, buf);
      expect(got.every((g) => g === 1)).toBe(true);
      const h = Buffer.alloc(n * HASH_BYTES);
      hashPages(buf, n, h);
      let i = 0;
      while (i < n) {
        const same = (k: number): boolean => held.get(va + k * PAGE_SIZE)?.equals(h.subarray(k * HASH_BYTES, (k + 1) * HASH_BYTES)) ?? false;
        const kind = same(i);
        let j = i + 1;
        while (j < n && same(j) === kind) j++;
        if (kind) {
          await c.parent(va + i * PAGE_SIZE, j - i);
          parent += j - i;
        } else {
          await c.add(va + i * PAGE_SIZE, buf.subarray(i * PAGE_SIZE, j * PAGE_SIZE));
          data += j - i;
        }
        i = j;
      }
    }
    theirs.close();
    await c.close();
    expect(await s2.done, await s2.log()).toBe(0);
    // The 20 pages rewritten after round 1, the interpreter's few, [vdso], CRIU's own text page.
    expect(data).toBeGreaterThanOrEqual(20);
    expect(data).toBeLessThan(500);
    expect(parent).toBeGreaterThan((32 << 20) / PAGE_SIZE - 500);
    // Every other image of CRIU's dump beside the final level's pages.
    for (const f of await readdir(dump)) if (!/^(pagemap-\d+|pages-\d+)\.img$/.test(f) && f.endsWith('.img')) await copyFile(join(dump, f), join(base, 'final', f));

    const r = await execa(criu.path, ['restore', '-D', join(base, 'final'), '-d', '-o', 'restore.log', '-v4', '--pidfile', join(base, 'restored.pid')], { reject: false });
    const pid = Number(await readFile(join(base, 'restored.pid'), 'utf8').catch(() => '0'));
    if (pid) owned.own(pid);
    expect(r.exitCode, await readFile(join(base, 'final', 'restore.log'), 'utf8').then((l) => l.slice(-3000)).catch(() => r.stderr)).toBe(0);
    // The restored pager's checksum of its memory (it was stopped at the dump: continue it).
    process.kill(pid, 'SIGCONT');
    process.kill(pid, 'SIGUSR1');
    const sha = await waitFor('the restored checksum', () => readText(join(p.dir, 'sha-1')), 30_000);
    expect(sha).toBe(final.split(' ')[1]);
    expect(sha).not.toBe(want);
  });
});
