/**
 * Containers with the real runc and CRIU: busybox containers built here (test/helpers/containers),
 * dumped, restored and migrated to a test-bed host (which has its own cgroups, /tmp and /run). What
 * the containers themselves write — a count, the echoes of a TCP connection — says whether they
 * carried on: every number once, in order, across the checkpoint.
 */
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { COUNTER, consecutive, makeBundle, makeOverlayBundle, makeRootfs, runContainer, state } from '../helpers/containers.js';
import { Owned, readText, waitFor } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';

const owned = new Owned();
let shared: string;
let seq = 0;
const newId = (): string => `cedana-t${process.pid}-${++seq}`;

beforeAll(async () => {
  // Seen by the test-bed hosts too (their /tmp is their own).
  shared = await mkdtemp('/var/lib/cedana-test-ctr-');
});
afterAll(async () => {
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const lines = (path: string): number => (readText(path) ?? '').trim().split('\n').filter(Boolean).length;

/** A counting container whose bundle is under `parent` (shared by default), once it has counted. */
async function counter(parent?: string): Promise<{ id: string; bundle: string; count: string; pid: number }> {
  const id = newId();
  const bundle = await makeBundle(parent ?? (await owned.tempDir('ctr-', shared)), COUNTER);
  const pid = await runContainer(owned, id, bundle);
  const count = join(bundle, 'rootfs', 'data', 'count');
  await waitFor('counting', () => lines(count) > 3);
  return { id, bundle, count, pid };
}

describe('containers (runc)', () => {
  it('dump ends the container, restore --container brings it back: it counts on from where it was', async () => {
    const c = await counter();
    const img = join(await owned.tempDir(), 'img.tar.zst');
    const d = await cedanaOk(['dump', '--container', c.id, '-o', img, '--json']);
    expect(d).toMatchObject({ container: c.id, runtime: 'runc', pid: c.pid, leftRunning: false, rootfs: 'none' });
    expect(await state(c.id)).toBeUndefined();
    const at = lines(c.count);
    await new Promise((r) => setTimeout(r, 600));
    expect(lines(c.count), 'nothing runs after the dump').toBe(at);

    const ins = await cedanaOk(['inspect', img, '--json']);
    expect(ins.manifest.container).toMatchObject({ id: c.id, runtime: 'runc', bundle: c.bundle, config: 'container/config.json', rootfs: { mode: 'none', path: join(c.bundle, 'rootfs') } });
    const asTree = await cedana(['restore', img, '--json']);
    expect(asTree.json?.error).toMatchObject({ code: 'USAGE', hint: expect.stringMatching(/--container/) });

    const r = await cedanaOk(['restore', img, '--container', '--json']);
    expect(r).toMatchObject({ container: c.id, runtime: 'runc', bundle: c.bundle, bundleCreated: 'none' });
    expect((await state(c.id))?.status).toBe('running');
    await waitFor('counting again', () => lines(c.count) > at + 5);
    expect(consecutive(readFileSync(c.count, 'utf8'))).toBe(true);
  });

  it('--leave-running keeps it counting; a restore over the running id is refused, under a new id it runs', async () => {
    const c = await counter();
    const img = join(await owned.tempDir(), 'img');
    await cedanaOk(['dump', '--container', c.id, '-o', img, '--leave-running', '--json']);
    expect((await state(c.id))?.status).toBe('running');
    const at = lines(c.count);
    await waitFor('still counting', () => lines(c.count) > at + 3);

    const clash = await cedana(['restore', img, '--container', '--json']);
    expect(clash.json?.error.code).toBe('CONTAINER_EXISTS');
    expect(clash.exitCode).toBe(45);
    expect((await state(c.id))?.status).toBe('running');

    const copy = newId();
    owned.onCleanup(async () => {
      await execa('runc', ['delete', '--force', copy], { reject: false });
      await execa('rm', ['-rf', `/run/cedana/bundles/${copy}`], { reject: false });
    });
    const r = await cedanaOk(['restore', img, '--container', copy, '--json']);
    expect(r.container).toBe(copy);
    expect((await state(copy))?.status).toBe('running');
  });

  it('refuses an unknown id, a created (never started) and a stopped container, touching nothing', async () => {
    const unknown = await cedana(['dump', '--container', 'no-such-container-here', '--json']);
    expect(unknown.json?.error.code).toBe('CONTAINER_NOT_FOUND');
    expect(unknown.exitCode).toBe(43);

    const created = newId();
    const b1 = await makeBundle(await owned.tempDir('ctr-', shared), COUNTER);
    owned.onCleanup(async () => void (await execa('runc', ['delete', '--force', created], { reject: false })));
    await execa('runc', ['create', created], { cwd: b1, stdin: 'ignore', stdout: 'ignore', stderr: 'ignore' });
    const r1 = await cedana(['dump', '--container', created, '--json']);
    expect(r1.json?.error.code).toBe('CONTAINER_NOT_RUNNING');
    expect(r1.exitCode).toBe(44);
    expect((await state(created))?.status).toBe('created');

    const stopped = newId();
    const b2 = await makeBundle(await owned.tempDir('ctr-', shared), 'true');
    await runContainer(owned, stopped, b2);
    await waitFor('stopped', async () => (await state(stopped))?.status === 'stopped');
    const r2 = await cedana(['dump', '--container', stopped, '--json']);
    expect(r2.json?.error.code).toBe('CONTAINER_NOT_RUNNING');
    expect(r2.json?.error.hint).toMatch(/stopped/);

    const bad = await cedana(['dump', '--container', '../etc', '--json']);
    expect(bad.json?.error.code).toBe('USAGE');
  });

  it('restore rebuilds an overlay root file system from the changes in the image over the base image here', async () => {
    const base = join(await owned.tempDir('base-', shared), 'rootfs');
    await makeRootfs(base);
    const parent = await owned.tempDir('ovl-');
    const { bundle, upper } = await makeOverlayBundle(owned, parent, base, COUNTER);
    const id = newId();
    await runContainer(owned, id, bundle);
    const count = join(bundle, 'rootfs', 'data', 'count');
    await waitFor('counting', () => lines(count) > 3);
    const img = join(await owned.tempDir(), 'img');
    const d = await cedanaOk(['dump', '--container', id, '-o', img, '--rootfs', '--json']);
    expect(d.rootfs).toBe('changes');
    const ins = await cedanaOk(['inspect', img, '--json']);
    expect(ins.manifest.container.rootfs).toMatchObject({ mode: 'changes', base: [base], upper, work: join(parent, 'work'), image: 'container/rootfs-changes.tar' });
    // The container's storage is lost; the base image stays.
    await execa('umount', [join(bundle, 'rootfs')]);
    await rm(upper, { recursive: true });
    await rm(join(parent, 'work'), { recursive: true });
    const r = await cedanaOk(['restore', img, '--container', '--json']);
    expect(r.bundleCreated).toBe('config+rootfs');
    await waitFor('counting again', () => lines(count) > d.processes && lines(join(upper, 'data', 'count')) > 8);
    expect(consecutive(readFileSync(count, 'utf8'))).toBe(true);
  });

  it('a checkpoint that fails (the disk fills up) resumes the container and leaves no image', async () => {
    const c = await counter();
    const small = await owned.tempDir();
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=700', 'tmpfs', small]);
    owned.onCleanup(async () => void (await execa('umount', [small], { reject: false })));
    const r = await cedana(['dump', '--container', c.id, '-o', join(small, 'img'), '--json']);
    expect(r.json?.ok).toBe(false);
    expect(r.json?.error.code).toBe('RUNTIME_FAILED');
    expect(r.json?.error.containerRunning).toBe(true);
    expect((await execa('ls', ['-A', small])).stdout).toBe('');
    expect((await state(c.id))?.status).toBe('running');
    const at = lines(c.count);
    await waitFor('counting on', () => lines(c.count) > at + 3);
    expect(consecutive(readFileSync(c.count, 'utf8'))).toBe(true);
  });
});

describe('migrating containers (runc, test bed)', () => {
  let bed: Bed;
  beforeAll(async () => {
    bed = await startBed([20]);
  });
  afterAll(async () => {
    await bed?.destroy();
  });
  const there = async (cmd: string): Promise<string> => {
    const r = await bed.onHost(bed.hosts[0]!, cmd);
    expect(r.exitCode, r.stderr).toBe(0);
    return r.stdout.trim();
  };
  const endThere = (id: string): void =>
    owned.onCleanup(async () => void (await bed.onHost(bed.hosts[0]!, `runc kill ${id} KILL 2>/dev/null; sleep 0.2; runc delete --force ${id} 2>/dev/null; true`)));

  it('with only the bundle shipped (its root file system is there): it counts on there', async () => {
    const host = bed.hosts[0]!;
    const c = await counter();
    endThere(c.id);
    const r = await cedanaOk(['migrate', '--container', c.id, '--to', host.name, '--json'], { env: bed.env });
    expect(r).toMatchObject({ container: c.id, target: host.name, rootfs: 'none' });
    expect(await state(c.id)).toBeUndefined();
    expect(await there(`runc state ${c.id} | grep -c '"status": "running"'`)).toBe('1');
    const at = lines(c.count);
    await waitFor('counting there', () => lines(c.count) > at + 5);
    expect(consecutive(readFileSync(c.count, 'utf8'))).toBe(true);
  });

  it('a root file system only here is refused without --rootfs (nothing moves) and sent with it', async () => {
    const host = bed.hosts[0]!;
    // Under /tmp: the test-bed host has its own /tmp, so nothing of the bundle is there.
    const c = await counter(await owned.tempDir('ctr-'));
    endThere(c.id);
    const no = await cedana(['migrate', '--container', c.id, '--to', host.name, '--json'], { env: bed.env });
    expect(no.json?.error.code).toBe('ROOTFS_MISSING');
    expect(no.exitCode).toBe(47);
    expect(no.json?.error.hint).toMatch(/--rootfs/);
    expect((await state(c.id))?.status).toBe('running');

    const r = await cedanaOk(['migrate', '--container', c.id, '--to', host.name, '--rootfs', '--json'], { env: bed.env });
    expect(r.rootfs).toBe('full');
    const at = lines(c.count);
    await waitFor('counting there', async () => Number(await there(`wc -l < ${c.count}`)) > at + 5);
    expect(consecutive(await there(`cat ${c.count}`))).toBe(true);
    expect(await there(`cat ${join(c.bundle, 'config.json')} | head -c 1`)).toBe('{');
    await there(`runc kill ${c.id} KILL; sleep 0.2; runc delete --force ${c.id}; rm -rf ${c.bundle}`);
  });

  it('an overlay root file system: only its changes travel (--rootfs), the base image is there; it counts on there', async () => {
    const host = bed.hosts[0]!;
    const base = join(await owned.tempDir('base-', shared), 'rootfs');
    await makeRootfs(base);
    // Upper, work and mount point under /tmp: nothing of them is on the test-bed host.
    const { bundle, upper } = await makeOverlayBundle(owned, await owned.tempDir('ovl-'), base, COUNTER);
    const id = newId();
    endThere(id);
    await runContainer(owned, id, bundle);
    const count = join(bundle, 'rootfs', 'data', 'count');
    await waitFor('counting', () => lines(count) > 3);
    expect(readFileSync(join(upper, 'data', 'count'), 'utf8')).toBe(readFileSync(count, 'utf8'));

    const r = await cedanaOk(['migrate', '--container', id, '--to', host.name, '--rootfs', '--json'], { env: bed.env });
    expect(r.rootfs).toBe('changes');
    expect(r.decisions.join('\n')).toMatch(/is an overlay: its changes/);
    // The base (busybox, ~2 MB) did not travel: the changes and the memory did.
    expect(r.bytesSent).toBeLessThan(1_500_000);
    const at = lines(count);
    await waitFor('counting there', async () => Number(await there(`wc -l < ${count}`)) > at + 5);
    expect(consecutive(await there(`cat ${count}`))).toBe(true);
    expect(await there(`grep -c ' ${join(bundle, 'rootfs')} .* - overlay ' /proc/self/mountinfo`)).toBe('1');
    await there(`runc kill ${id} KILL; sleep 0.2; runc delete --force ${id}; umount ${join(bundle, 'rootfs')}`);
  });

  it('a TCP service and its connected client carry on after the migration (--tcp-established decided)', async () => {
    const host = bed.hosts[0]!;
    const id = newId();
    endThere(id);
    // Server and client in the container's own network namespace; the client sends a number a line
    // and writes the echoes back to /data/echo.
    const script = 'nc -ll -p 7000 -e cat & sleep 0.5; i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done | nc 127.0.0.1 7000 > /data/echo';
    const bundle = await makeBundle(await owned.tempDir('ctr-', shared), script);
    await runContainer(owned, id, bundle);
    const echo = join(bundle, 'rootfs', 'data', 'echo');
    await waitFor('echoes', () => lines(echo) > 3);
    const r = await cedanaOk(['migrate', '--container', id, '--to', host.name, '--json'], { env: bed.env });
    expect(r.decisions.join('\n')).toMatch(/tcp-established/);
    const at = lines(echo);
    await waitFor('echoes there, on the same connection', () => lines(echo) > at + 5);
    expect(consecutive(readFileSync(echo, 'utf8'))).toBe(true);
  });

  it('a target whose restore fails: the container resumes here and the target is cleaned up', async () => {
    const host = bed.hosts[0]!;
    const c = await counter(await owned.tempDir('ctr-'));
    endThere(c.id);
    // The target has a bundle at that path whose config.json is not one: runc restore fails there.
    await there(`mkdir -p ${c.bundle}/rootfs/bin && touch ${c.bundle}/rootfs/bin/sh && echo broken > ${c.bundle}/config.json`);
    const r = await cedana(['migrate', '--container', c.id, '--to', host.name, '--json'], { env: bed.env });
    expect(r.json?.error.code).toBe('TARGET_RESTORE_FAILED');
    expect(r.json?.error).toMatchObject({ sourceResumed: true, targetCleanedUp: true });
    expect((await state(c.id))?.status).toBe('running');
    const at = lines(c.count);
    await waitFor('counting here', () => lines(c.count) > at + 3);
    expect(consecutive(readFileSync(c.count, 'utf8'))).toBe(true);
    expect(await there(`runc state ${c.id} >/dev/null 2>&1 && echo exists; cat ${c.bundle}/config.json; ls /var/tmp`)).toBe('broken');
    await there(`rm -rf ${c.bundle}`);
  });

  it('past --freeze-timeout the migration is abandoned: FREEZE_TIMEOUT, the container resumes here, nothing there', async () => {
    const host = bed.hosts[0]!;
    const c = await counter();
    endThere(c.id);
    // 1 ms: spent by the checkpoint already, so the deadline has passed when the restore there starts.
    const r = await cedana(['migrate', '--container', c.id, '--to', host.name, '--freeze-timeout', '1ms', '--json'], { env: bed.env });
    expect(r.exitCode).toBe(39);
    expect(r.json?.error).toMatchObject({ code: 'FREEZE_TIMEOUT', freezeTimeoutMs: 1, sourceResumed: true, targetCleanedUp: true });
    expect((await state(c.id))?.status).toBe('running');
    const at = lines(c.count);
    await waitFor('counting here', () => lines(c.count) > at + 3);
    expect(consecutive(readFileSync(c.count, 'utf8'))).toBe(true);
    expect(await there(`runc state ${c.id} >/dev/null 2>&1 && echo exists; ls -A /var/tmp`)).toBe('');
  });
});
