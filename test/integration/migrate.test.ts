/**
 * cedana migrate between two hosts of the test bed (network, PID and mount namespaces with a real
 * OpenSSH server), checked by what the processes report on the target. The fixtures keep their
 * state in a directory both hosts share; each host's /tmp and /var/tmp are its own.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { BIN, cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, count, readText, waitFor, wholeWorkerLog, workerState } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';

const owned = new Owned();
let bed: Bed;
let shared: string;

beforeAll(async () => {
  bed = await startBed([11]);
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(async () => {
  await bed?.destroy();
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const fields = (path: string): number[] | undefined => readText(path)?.trim().split(/\s+/).map(Number);

describe('migrate', () => {
  it('the test host numbers its own processes where no PID here can be, before and after a migration', async () => {
    // A migration restores the tree with its PIDs of this machine inside the host's PID namespace:
    // the host's sshd and shells must never hold one (a restore then fails, exit 34).
    const host = bed.hosts[0]!;
    expect(host.pidStart, 'the test bed warned why it found no PID range for its hosts').toBeDefined();
    const own = async (): Promise<number[]> => {
      const ps = await bed.onHost(host, 'echo $$; ps -e -o pid=');
      expect(ps.exitCode, ps.stderr).toBe(0);
      return ps.stdout.trim().split(/\s+/).map(Number);
    };
    for (const p of await own()) if (p !== 1) expect(p).toBeGreaterThanOrEqual(host.pidStart!);
    const { state, pid } = await owned.counter(await mkdtemp(join(shared, 'pids-')));
    expect(pid).toBeLessThan(host.pidStart!);
    await cedanaOk(['migrate', String(pid), '--to', host.name], { env: bed.env });
    const at = count(state);
    await waitFor('counting on the target', () => count(state) > at + 5);
    // Restoring it there at its own number did not move the host's counter down to it.
    for (const p of await own()) if (p !== 1 && p !== pid) expect(p).toBeGreaterThanOrEqual(host.pidStart!);
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('moves 256 MiB of random memory intact; the source ends, the copy runs on the target', async () => {
    const dir = await mkdtemp(join(shared, 'mem-'));
    const pid = owned.python('memhog.py', ['256', dir]);
    const sha0 = await waitFor('memory filled', () => readText(join(dir, 'sha0')), 60_000);
    const host = bed.hosts[0]!;
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name], { env: bed.env });
    expect(r).toMatchObject({ ok: true, command: 'migrate', pid, target: host.name, targetPid: pid, processes: 1 });
    expect(r.bytesSent).toBeGreaterThan(256 * 1024 * 1024);
    expect(r.downtimeMs).toBeGreaterThan(0);
    expect(r.durationMs).toBeGreaterThanOrEqual(r.downtimeMs);
    expect(alive(pid)).toBe(false); // on the source: gone
    // On the target: running, and its memory is what it was.
    expect((await bed.onHost(host, `cat /proc/${pid}/comm`)).stdout.trim()).toBe('python3');
    expect((await bed.onHost(host, `kill -USR1 ${pid}`)).exitCode).toBe(0);
    expect(await waitFor('checksum on the target', () => readText(join(dir, 'sha-1')), 30_000)).toBe(sha0);
    // Nothing left behind in the target's work area.
    expect((await bed.onHost(host, 'ls /var/tmp')).stdout.trim()).toBe('');
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('its progress events tell the truth: the total is what is sent, the ETA never absurd', async () => {
    const dir = await mkdtemp(join(shared, 'prog-'));
    const pid = owned.python('memhog.py', ['192', dir]);
    await waitFor('memory filled', () => readText(join(dir, 'sha0')), 60_000);
    const host = bed.hosts[0]!;
    const r = await cedana(['migrate', String(pid), '--to', host.name, '--json'], { env: bed.env });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    const events = r.stderr.split('\n').filter((l) => l.includes('"event":"progress"')).map((l) => JSON.parse(l) as { bytes: number; totalBytes?: number; etaMs?: number });
    expect(events.length).toBeGreaterThan(0);
    const sent = r.json!.memoryBytes as number;
    for (const e of events) {
      expect(e.totalBytes! / sent).toBeGreaterThan(0.8);
      expect(e.totalBytes! / sent).toBeLessThan(1.25);
      if (e.etaMs !== undefined) expect(e.etaMs).toBeLessThan(r.json!.durationMs * 10);
    }
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('shows its progress on a terminal: phase, bytes, MB/s, ETA', async () => {
    const dir = await mkdtemp(join(shared, 'tty-'));
    const pid = owned.python('memhog.py', ['256', dir]);
    await waitFor('memory filled', () => readText(join(dir, 'sha0')), 60_000);
    const host = bed.hosts[0]!;
    // script(1) gives cedana a pseudo-terminal (given a size, as a terminal has); CI must be absent.
    const { CI: _ci, ...env }: Record<string, string | undefined> = { ...process.env, ...bed.env, NO_COLOR: '1' };
    const cmd = `stty cols 120 rows 40; node ${BIN} migrate ${pid} --to ${host.name}`;
    const r = await execa('script', ['-qfec', cmd, '/dev/null'], { env, extendEnv: false, reject: false, timeout: 60_000 });
    const screen = String(r.stdout);
    expect(r.exitCode, screen).toBe(0);
    expect(screen).toMatch(/memory: \d+ MiB of ~\d+ MiB, \d+ MB\/s(, ETA \d+\.\d s)?/);
    expect(screen).toMatch(/preflight on cedana-h11/);
    expect(screen).toMatch(new RegExp(`migrated PID ${pid} \\(1 process\\) to ${host.name}`));
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('moves a parent and child talking through pipes; they carry on there', async () => {
    const dir = await mkdtemp(join(shared, 'pipes-'));
    const state = join(dir, 'state');
    const pid = owned.python('pipetree.py', [state]);
    await waitFor('talking', () => (fields(state)?.[2] ?? 0) > 5);
    const host = bed.hosts[0]!;
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name], { env: bed.env });
    expect(r.processes).toBe(2);
    const at = fields(state)![2]!;
    const after = await waitFor('talking on the target', () => {
      const f = fields(state)!;
      return f[2]! > at + 10 ? f : undefined;
    });
    expect(after[3]).toBe(0);
    expect((await bed.onHost(host, `cat /proc/${after[1]}/comm`)).stdout.trim()).toBe('python3');
    await bed.onHost(host, `kill -9 ${after[1]} ${pid}`);
  });

  it('moves a process appending to a file that exists on both hosts; the offset is kept', async () => {
    const dir = await mkdtemp(join(shared, 'log-'));
    const log = join(dir, 'out.log');
    const pid = owned.python('appender.py', [log]);
    await waitFor('lines', () => (readText(log)?.split('\n').length ?? 0) > 10);
    const host = bed.hosts[0]!;
    await cedanaOk(['migrate', String(pid), '--to', host.name], { env: bed.env });
    const n = readText(log)!.split('\n').length;
    await waitFor('lines written on the target', () => readText(log)!.split('\n').length > n + 20);
    readText(log)!.split('\n').slice(0, -1).forEach((l, i) => expect(l).toBe(`line ${i}`));
    await bed.onHost(host, `kill -9 ${pid}`);
  });

  it('ships a job\'s files that only the source\'s private /tmp has; preflight lists them; the job carries on there', async () => {
    const host = bed.hosts[0]!;
    const dir = join(await owned.tempDir(), 'job'); // this host's /tmp: the target has its own
    const log = join(dir, 'work.log'); // its progress, and what it reads of its files, are the lines of its log
    const pid = owned.python('tmpworker.py', [dir, '2']);
    const before = await waitFor('working', () => {
      const s = workerState(log);
      return s && s.i > 5 ? s : undefined;
    });
    const r = await cedana(['migrate', String(pid), '--to', host.name, '--json'], { env: bed.env });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    const events = r.stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { event: string; phase?: string });
    const listed = events.find((e) => e.event === 'phase' && e.phase?.startsWith('will ship to'))?.phase;
    expect(listed).toContain(join(dir, 'data.bin'));
    expect(r.json!.shipped).toEqual(expect.arrayContaining([dir, join(dir, 'data.bin'), log]));
    const at = workerState(log)!.i; // the source's copy, as the freeze left it
    const there = bed.path(host, log); // the files live in the target's /tmp now
    const after = await waitFor('working on the target', () => {
      const s = workerState(there);
      return s && s.i > at + 20 ? s : undefined;
    });
    expect(after.data).toBe(before.data); // the data file arrived whole
    expect(after.scratch).toBe(before.scratch); // and the deleted scratch file
    expect(after.cwd).toBe(dir);
    expect(wholeWorkerLog(there).length).toBeGreaterThan(at + 20); // the log continuing at its offset, without a gap
    expect((await bed.onHost(host, `stat -c %a ${dir}`)).stdout.trim()).toBe('755');
    await bed.onHost(host, `kill -9 ${pid}; rm -rf ${dirname(dir)}`);
  });

  it('with --no-ship-files refuses a process whose files the target lacks, touching nothing', async () => {
    const dir = await owned.tempDir();
    const log = join(dir, 'out.log');
    const pid = owned.python('appender.py', [log]);
    await waitFor('lines', () => (readText(log)?.split('\n').length ?? 0) > 3);
    const r = await cedana(['migrate', String(pid), '--to', bed.hosts[0]!.name, '--no-ship-files', '--json'], { env: bed.env });
    expect(r.exitCode).toBe(33);
    expect(r.json!.error).toMatchObject({ code: 'FILES_MISSING_ON_TARGET', sourceResumed: true });
    expect(r.json!.error.missing).toContain(log);
    expect(r.json!.error.hint).toMatch(/--ship-files/);
    expect((await bed.onHost(bed.hosts[0]!, `ls ${dir} 2>&1`)).exitCode).not.toBe(0); // nothing created there
    const n = readText(log)!.split('\n').length;
    await waitFor('the source to go on', () => readText(log)!.split('\n').length > n + 3);
  });

  it('--map-path: the target uses its own copy under another path, appending at the same offset', async () => {
    const host = bed.hosts[0]!;
    const base = await mkdtemp(join(shared, 'map-'));
    const [a, b] = [join(base, 'a'), join(base, 'b')];
    mkdirSync(a);
    const pid = owned.python('appender.py', [join(a, 'out.log')], { cwd: a });
    await waitFor('lines', () => (readText(join(a, 'out.log'))?.split('\n').length ?? 0) > 10);
    // A copy that differs in size is refused in preflight, before anything is frozen.
    mkdirSync(b);
    writeFileSync(join(b, 'out.log'), 'not the same\n');
    const bad = await cedana(['migrate', String(pid), '--to', host.name, '--map-path', `${a}=${b}`, '--json'], { env: bed.env });
    expect(bad.json!.error).toMatchObject({ code: 'REMAP_INVALID', sourceResumed: true });
    rmSync(b, { recursive: true });
    // No copy at all: the file is shipped to the new path.
    const r = await cedanaOk(['migrate', String(pid), '--to', host.name, '--map-path', `${a}=${b}`], { env: bed.env });
    expect(r.shipped).toEqual(expect.arrayContaining([a, join(a, 'out.log')]));
    const atMove = readText(join(a, 'out.log'))!.split('\n').length - 1;
    await waitFor('lines in the new file', () => (readText(join(b, 'out.log'))?.split('\n').length ?? 0) > atMove + 20);
    readText(join(b, 'out.log'))!.split('\n').slice(0, -1).forEach((l, i) => expect(l).toBe(`line ${i}`));
    expect(readText(join(a, 'out.log'))!.split('\n').length - 1).toBe(atMove); // the source's file is left alone
    expect((await bed.onHost(host, `readlink /proc/${pid}/cwd`)).stdout.trim()).toBe(b);
    await bed.onHost(host, `kill -9 ${pid}`);
  });
});
