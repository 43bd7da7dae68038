/**
 * Post-copy migration (CRIU lazy pages over userfaultfd, the pages in TLS through an SSH remote
 * forward): the tree runs on the target before its memory has moved, and its memory arrives intact.
 * The failure semantics differ from stop-and-copy and are tested as such: before the target runs, a
 * failure resumes the source; after it, the source is gone and a broken link loses the process.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cedana, cedanaOk, parseJsonLine } from '../helpers/cedana.js';
import { Owned, alive, killChildren, readText, waitFor } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';
import type { TestHost } from '../../scripts/testbed/host.js';

const owned = new Owned();
let bed: Bed;
let host: TestHost;
let shared: string;

beforeAll(async () => {
  bed = await startBed([13]);
  host = bed.hosts[0]!;
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(async () => {
  await bed?.destroy();
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const memhog = async (mib: number) => owned.memhog(mib, await mkdtemp(join(shared, 'mem-')));

describe('migrate --postcopy', () => {
  it('runs the tree on the target before its memory moved; 256 MiB arrive intact', async () => {
    const { dir, pid, sha0 } = await memhog(256);
    // --min-throughput 1: whatever the link carries on this machine today, the test is not about it.
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--postcopy', '--min-throughput', '1'], { env: bed.env });
    expect(r).toMatchObject({ ok: true, mode: 'postcopy', targetPid: pid, processes: 1 });
    expect(r.postcopy.linkBytesPerSec).toBeGreaterThan(0);
    expect(r.postcopy.pullMs).toBeGreaterThan(0);
    expect(r.memoryBytes).toBeGreaterThan(256 * 1024 * 1024); // every page went through the lazy stream
    expect(r.downtimeMs).toBeLessThan(r.durationMs);
    expect(r.decisions.join('\n')).toMatch(/post-copy: the link carries \d+ MB\/s; ~\d+ MiB follow the tree .* the process is lost/);
    expect(alive(pid)).toBe(false);
    expect((await bed.onHost(host, `kill -USR1 ${pid}`)).exitCode).toBe(0);
    expect(await waitFor('checksum on the target', () => readText(join(dir, 'sha-1')), 30_000)).toBe(sha0);
    expect((await bed.onHost(host, 'ls -A /var/tmp')).stdout.trim()).toBe(''); // the daemon and work dir are gone
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('refuses a link slower than --min-throughput before freezing; the source runs on', async () => {
    const { dir, pid } = await memhog(16);
    const r = await cedana(['migrate', String(pid), '--to', host.name, '--postcopy', '--min-throughput', '100000', '--json'], { env: bed.env });
    expect(r.exitCode).toBe(37);
    expect(r.json!.error).toMatchObject({ code: 'LINK_TOO_SLOW', sourceResumed: true });
    expect(r.json!.error.hint).toMatch(/without --postcopy/);
    const beat = Number(readText(join(dir, 'beat')));
    await waitFor('heartbeat on the source', () => Number(readText(join(dir, 'beat'))) > beat + 5);
  });

  it('a failing target restore (before the tree runs there) resumes the source, memory intact', async () => {
    const { dir, pid, sha0 } = await memhog(64);
    // A file of the tree exists on the target with another size: preflight passes, CRIU there refuses it.
    const name = `cedana-pc-mismatch-${process.pid}`;
    const holder = owned.python('appender.py', [`/tmp/${name}`]);
    owned.onCleanup(() => rm(`/tmp/${name}`, { force: true }));
    await waitFor('holder writing', () => (readText(`/tmp/${name}`)?.length ?? 0) > 20);
    await bed.onHost(host, `echo x > /tmp/${name}`);
    const r = await cedana(['migrate', String(holder), '--to', host.name, '--postcopy', '--min-throughput', '1', '--json'], { env: bed.env });
    expect(r.exitCode).toBe(34);
    expect(r.json!.error).toMatchObject({ code: 'TARGET_RESTORE_FAILED', sourceResumed: true, targetCleanedUp: true });
    const n = readText(`/tmp/${name}`)!.length;
    await waitFor('the source to write on', () => readText(`/tmp/${name}`)!.length > n + 20);
    await bed.onHost(host, `rm -f /tmp/${name}`);
    expect((await bed.onHost(host, 'ls -A /var/tmp')).stdout.trim()).toBe('');
    process.kill(pid, 'SIGUSR1'); // an unrelated process on the source: untouched
    expect(await waitFor('checksum', () => readText(join(dir, 'sha-1')), 30_000)).toBe(sha0);
  });

  it('a link broken after the tree runs there loses the process, as documented: PROCESS_LOST, the source does not come back', async () => {
    const { pid } = await memhog(512);
    const child = spawn('node', [BIN, 'migrate', String(pid), '--to', host.name, '--postcopy', '--min-throughput', '1', '--json'], { env: { ...process.env, ...bed.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let events = '';
    let fired = false;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => {
      events += d.toString();
      if (!fired && /"phase":"memory","bytes":[1-9]/.test(events)) {
        fired = true;
        // The per-connection sshd processes are the children of the host's sshd listener.
        killChildren(host.initPid);
      }
    });
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(fired, events).toBe(true);
    expect(code).toBe(38);
    const json = parseJsonLine(stdout)!;
    expect(json.error).toMatchObject({ code: 'PROCESS_LOST', targetPid: pid, targetCleanedUp: true });
    // Its incomplete copy was ended there, and nothing is left.
    const there = await bed.onHost(host, `[ -e /proc/${pid} ] && echo running; pgrep -f '[c]riu lazy-pages'; ls -A /var/tmp; true`);
    expect(there.stdout.trim()).toBe('');
    expect(json.error.sourceResumed).toBeUndefined(); // nothing to resume: the source was ended when the target ran
    expect(alive(pid)).toBe(false);
  });
});
