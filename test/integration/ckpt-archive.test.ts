/**
 * Kubernetes', CRI-O's and Podman's checkpoint archives (the checkpointctl layout), with the real
 * Podman, runc, CRIU and checkpointctl (scripts/setup installs them): a Podman container's export is
 * inspected and restored by cedana under runc; a runc container dumped by cedana in that layout is
 * restored by Podman and read by checkpointctl. The containers themselves say whether they carried
 * on: they append a count to a file, every number once, in order, across the checkpoint.
 */
import { execa } from 'execa';
import { existsSync, readFileSync, statSync, chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { consecutive, makeOverlayBundle, makeRootfs, runContainer, state } from '../helpers/containers.js';
import { Owned, readText, waitFor } from '../helpers/processes.js';
import { busyboxImage, ownContainer, ownImage, podman, podmanOk, uniqueName } from '../helpers/podman.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

/** A number a line into /tmp/count, five a second (busybox sh). */
const COUNT = 'i=0; while true; do echo $i >> /tmp/count; i=$((i+1)); sleep 0.2; done';
const HOMES = '/var/lib/cedana/containers';
const lines = (text: string | undefined): number => (text ?? '').trim().split('\n').filter(Boolean).length;

/** Cleans up everything a restore from an archive makes for container `id`, whatever happened. */
function ownArchiveRestore(id: string): void {
  owned.onCleanup(async () => {
    await execa('runc', ['kill', id, 'KILL'], { reject: false });
    await new Promise((r) => setTimeout(r, 200));
    await execa('runc', ['delete', '--force', id], { reject: false });
    await execa('umount', [join(HOMES, id, 'rootfs')], { reject: false });
    await execa('ip', ['netns', 'delete', `cedana-${id}`], { reject: false });
    await execa('rm', ['-rf', join(HOMES, id)], { reject: false });
  });
}

/** A counting busybox container under Podman, checkpointed with --export (it stops). */
async function podmanExport(compress: 'zstd' | 'gzip' = 'zstd'): Promise<{ image: { name: string; id: string }; name: string; archive: string; atCheckpoint: number }> {
  const image = await busyboxImage(owned);
  const name = uniqueName('ctr');
  ownContainer(owned, name);
  await podmanOk(['run', '-d', '--name', name, image.name, 'sh', '-c', COUNT]);
  await waitFor('counting under Podman', async () => lines((await podman(['exec', name, 'cat', '/tmp/count'])).stdout) > 3);
  // A deletion, for deleted.files.
  await podmanOk(['exec', name, 'busybox', 'rm', '/bin/ls']);
  const archive = join(await owned.tempDir(), compress === 'zstd' ? 'ck.tar.zst' : 'ck.tar.gz');
  await podmanOk(['container', 'checkpoint', '--export', archive, '--compress', compress, name]);
  const diff = await execa('sh', ['-c', `${compress} -dc '${archive}' | tar -xO rootfs-diff.tar | tar -xO tmp/count`]);
  return { image, name, archive, atCheckpoint: lines(diff.stdout) };
}

/** The image's root file system, mounted by Podman (unmounted at cleanup). */
async function imageRootfs(name: string): Promise<string> {
  const dir = await podmanOk(['image', 'mount', name]);
  owned.onCleanup(async () => void (await podman(['image', 'unmount', name])));
  return dir;
}

describe('Podman and Kubernetes checkpoint archives (checkpointctl layout)', () => {
  it("inspects a Podman export: the engine's metadata, the tree, its files; unverified", async () => {
    const p = await podmanExport();
    const ins = await cedanaOk(['inspect', p.archive]);
    expect(ins.containerArchive).toMatchObject({
      layout: 'checkpointctl', engine: 'podman', name: p.name, runtime: 'runc',
      image: { name: p.image.name, id: p.image.id }, deletedFiles: ['/bin/ls'], devShm: true,
      command: ['sh', '-c', COUNT],
    });
    expect(ins.containerArchive.rootfsDiffBytes).toBeGreaterThan(0);
    expect(ins.containerArchive.containerConfig).toMatchObject({ cwd: '/', user: { uid: 0, gid: 0 }, env: expect.arrayContaining(['PATH']) });
    expect(ins.containerArchive.containerConfig.mounts.map((m: { destination: string }) => m.destination)).toEqual(expect.arrayContaining(['/proc', '/dev/shm', '/etc/hosts']));
    expect(JSON.stringify(ins.containerArchive.containerConfig.env)).not.toContain('=');
    expect(ins.containerArchive.stats.pagesWritten).toBeGreaterThan(0);
    expect(ins.containerArchive.interfaces[0]).toMatchObject({ name: 'eth0', addresses: [expect.stringMatching(/^\d+\.\d+\.\d+\.\d+\/\d+$/)] });
    expect(ins.checksums).toMatchObject({ ok: true, verified: false, algorithm: null });
    const root = ins.processes.find((x: { ppid: number }) => x.ppid === 0);
    expect(root.argv).toEqual(['sh']);
    expect(root.files.map((f: { fd: number; path: string }) => [f.fd, f.path])[0]).toEqual([0, '/dev/null']);
    expect(ins.sizes.pages).toBeGreaterThan(0);
    // The same archive unpacked: a directory is read in place.
    const unpacked = await owned.tempDir();
    await execa('sh', ['-c', `zstd -dc '${p.archive}' | tar -C '${unpacked}' -x`]);
    const fromDir = await cedanaOk(['inspect', unpacked]);
    expect(fromDir.containerArchive).toEqual(ins.containerArchive);
    expect(fromDir.processes).toEqual(ins.processes);
    const human = await cedana(['inspect', p.archive]);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toMatch(/from Podman, runtime runc/);
    expect(human.stdout).toMatch(/checksums unverified/);
  });

  it('restores a Podman export (.tar.gz) under runc over the image, with its changes: it counts on from where it was', async () => {
    const p = await podmanExport('gzip');
    const base = await imageRootfs(p.image.name);
    const id = uniqueName('r');
    ownArchiveRestore(id);
    const plain = await cedana(['restore', p.archive, '--json']);
    expect(plain.json?.error).toMatchObject({ code: 'USAGE', hint: expect.stringMatching(/--container/) });
    const noBase = await cedana(['restore', p.archive, '--container', id, '--json']);
    expect(noBase.json?.error).toMatchObject({ code: 'ROOTFS_MISSING', hint: expect.stringContaining(`podman image mount ${p.image.name}`) });

    const r = await cedanaOk(['restore', p.archive, '--container', id, '--rootfs', base]);
    expect(r).toMatchObject({ container: id, runtime: 'runc', from: { engine: 'podman', name: p.name }, checksums: 'unverified', netns: `cedana-${id}`, bundle: join(HOMES, id) });
    expect((await state(id))?.status).toBe('running');
    const count = join(HOMES, id, 'rootfs', 'tmp', 'count');
    await waitFor('counting again under runc', () => lines(readText(count)) > p.atCheckpoint + 5);
    // Every number once, in order: the count before the checkpoint came in rootfs-diff.tar, the rest after.
    expect(consecutive(readFileSync(count, 'utf8'))).toBe(true);
    expect(existsSync(join(HOMES, id, 'rootfs', 'bin', 'ls')), 'deleted.files applied').toBe(false);
    expect(existsSync(join(base, 'bin', 'ls')), "the image's own root file system is untouched").toBe(true);
    // The address network.status names is there, in the namespace made for it.
    const addr = await execa('ip', ['-n', `cedana-${id}`, '-o', 'addr', 'show', 'eth0']);
    expect(addr.stdout).toContain(r.notes.join(' ').match(/keeps (\S+)/)![1]);
  });

  it('a Podman container with an established TCP connection (both ends inside) comes back with it: the stream goes on, nothing lost or repeated', async () => {
    const image = await busyboxImage(owned);
    const name = uniqueName('tcp');
    ownContainer(owned, name);
    // A server that writes what it receives to /tmp/recv, a client sending a number a line.
    await podmanOk(['run', '-d', '--name', name, image.name, 'sh', '-c', 'sleep 100000 | nc -l -p 7000 > /tmp/recv & sleep 1; i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done | nc 127.0.0.1 7000']);
    await waitFor('numbers received', async () => lines((await podman(['exec', name, 'cat', '/tmp/recv'])).stdout) > 3);
    const archive = join(await owned.tempDir(), 'ck.tar.zst');
    await podmanOk(['container', 'checkpoint', '--export', archive, '--tcp-established', name]);
    const ins = await cedanaOk(['inspect', archive]);
    const sockets = ins.processes.flatMap((p: { sockets: { state: string }[] }) => p.sockets);
    expect(sockets.filter((x: { state: string }) => x.state === 'ESTABLISHED')).toHaveLength(2);
    const id = uniqueName('tr');
    ownArchiveRestore(id);
    await cedanaOk(['restore', archive, '--container', id, '--rootfs', await imageRootfs(image.name)]);
    const recv = join(HOMES, id, 'rootfs', 'tmp', 'recv');
    const at = lines(readText(recv));
    await waitFor('received over the restored connection', () => lines(readText(recv)) > at + 5);
    expect(consecutive(readFileSync(recv, 'utf8'))).toBe(true);
  });

  it("reads and restores a kubelet/CRI-O-shaped archive (CRI-O's config.dump and spec annotations, the pod's shared namespaces)", async () => {
    // No CRI-O runs here: the archive is a real Podman export given CRI-O's metadata as CRI-O's
    // sources write it (docs/design/checkpoint-archive-format.md §1.3), in a kubelet's file name.
    const p = await podmanExport();
    const work = await owned.tempDir();
    const x = join(work, 'x');
    await execa('sh', ['-c', `mkdir -p '${x}' && zstd -dc '${p.archive}' | tar -C '${x}' -x`]);
    const spec = JSON.parse(readFileSync(join(x, 'spec.dump'), 'utf8'));
    spec.annotations = {
      'io.container.manager': 'cri-o',
      'io.kubernetes.cri-o.Metadata': JSON.stringify({ name: 'web', attempt: 0 }),
      'io.kubernetes.pod.name': 'web-0',
      'io.kubernetes.pod.namespace': 'shop',
      'io.kubernetes.cri-o.Annotations': '{}',
    };
    spec.linux.cgroupsPath = 'kubepods-besteffort-pod1234.slice:crio:abcd';
    for (const n of spec.linux.namespaces) if (n.type === 'ipc' || n.type === 'uts') n.path = `/var/run/${n.type}ns/pod-gone`;
    const config = { id: 'c'.repeat(64), name: 'k8s_web_web-0_shop_1', rootfsImage: p.image.name, rootfsImageRef: p.image.id, rootfsImageName: p.image.name, runtime: 'runc', createdTime: '2026-11-30T10:00:00Z', checkpointedTime: '2026-11-30T11:00:00Z' };
    await execa('sh', ['-c', `cat > '${x}/spec.dump'`], { input: JSON.stringify(spec) });
    await execa('sh', ['-c', `cat > '${x}/config.dump'`], { input: JSON.stringify(config) });
    await execa('rm', ['-f', join(x, 'network.status'), join(x, 'ctr.log')]);
    const archive = join(work, 'checkpoint-web-0_shop-web-2026-11-30T11:00:00Z.tar');
    await execa('tar', ['-C', x, '-cf', archive, '.']);

    const ins = await cedanaOk(['inspect', archive]);
    expect(ins.containerArchive).toMatchObject({ engine: 'cri-o', name: 'k8s_web_web-0_shop_1', pod: { name: 'web-0', namespace: 'shop' }, image: { ref: p.image.id, name: p.image.name }, checkpointed: '2026-11-30T11:00:00Z', interfaces: [] });
    expect((await cedana(['inspect', archive])).stdout).toMatch(/from CRI-O \(Kubernetes\)[\s\S]*in pod shop\/web-0/);
    const ctl = await execa('checkpointctl', ['inspect', archive], { reject: false });
    expect(ctl.exitCode, ctl.stderr).toBe(0);
    expect(ctl.stdout).toMatch(/CRI-O/);

    const id = uniqueName('k');
    ownArchiveRestore(id);
    // The base given as an OCI bundle (config.json beside rootfs/), as a kubelet node's tools unpack an image.
    const bundle = join(work, 'bundle');
    await execa('sh', ['-c', `mkdir -p '${bundle}/rootfs' && cp -a '${await imageRootfs(p.image.name)}/.' '${bundle}/rootfs/' && echo '{}' > '${bundle}/config.json'`]);
    const r = await cedanaOk(['restore', archive, '--container', id, '--rootfs', bundle]);
    expect(r.from).toMatchObject({ engine: 'cri-o', name: 'k8s_web_web-0_shop_1' });
    expect(r.notes.join('\n')).toMatch(/is an OCI bundle/);
    expect(r.notes.join('\n')).toMatch(/ipc namespace was shared/);
    const count = join(HOMES, id, 'rootfs', 'tmp', 'count');
    await waitFor('counting again', () => lines(readText(count)) > p.atCheckpoint + 5);
    expect(consecutive(readFileSync(count, 'utf8'))).toBe(true);
  });

  it('dump --format checkpointctl: Podman restores the runc container (--import, and from an image built by cedana) and it counts on; checkpointctl reads it', async () => {
    // The "image": a busybox root file system, imported into Podman, and the same files as the
    // overlay's base of a runc container.
    const parent = await owned.tempDir('cedana-ckarch-', '/var/lib');
    const base = join(parent, 'base');
    await makeRootfs(base);
    await execa('tar', ['-C', base, '-cf', join(parent, 'base.tar'), '.']);
    const imageName = `localhost/${uniqueName('base')}:latest`;
    ownImage(owned, imageName);
    await podmanOk(['import', join(parent, 'base.tar'), imageName]);
    // CRIU checks the root directory's mode on restore: the base takes the one Podman's layer has.
    const rootMode = statSync(await imageRootfs(imageName)).mode & 0o7777;
    chmodSync(base, rootMode);
    const upper = join(parent, 'upper');
    mkdirSync(upper);
    chmodSync(upper, rootMode);
    const id = uniqueName('rc');
    const { bundle } = await makeOverlayBundle(owned, parent, base, 'i=0; while true; do echo $i >> /data/count; i=$((i+1)); sleep 0.2; done');
    await runContainer(owned, id, bundle);
    const count = join(bundle, 'rootfs', 'data', 'count');
    await waitFor('counting under runc', () => lines(readText(count)) > 3);
    await execa('rm', [join(bundle, 'rootfs', 'bin', 'ls')]); // (through the overlay: a whiteout in the upper layer)
    // A directory replaced whole: opaque in the overlay's upper layer.
    await execa('sh', ['-c', `rm -rf '${join(bundle, 'rootfs', 'tmp')}' && mkdir '${join(bundle, 'rootfs', 'tmp')}'`]);

    const archive = join(parent, 'ck.tar.zst');
    const d = await cedanaOk(['dump', '--container', id, '--format', 'checkpointctl', '--base-image', imageName, '-o', archive]);
    expect(d).toMatchObject({ container: id, format: 'checkpointctl', rootfs: 'changes', leftRunning: false });
    expect(d.decisions.join('\n')).toMatch(/replaced whole \(opaque\)[^\n]*: \/tmp$/m);
    expect(await state(id)).toBeUndefined();
    const at = lines(readText(count));

    const listing = (await execa('sh', ['-c', `zstd -dc '${archive}' | tar -tv`])).stdout;
    expect(listing).toMatch(/^d\S+ .* checkpoint\/$/m);
    for (const f of ['config.dump', 'spec.dump', 'rootfs-diff.tar', 'deleted.files', 'stats-dump', 'cedana.json', 'checkpoint/inventory.img']) expect(listing).toContain(f);
    expect(statSync(archive).mode & 0o777).toBe(0o600);

    const ctl = await execa('checkpointctl', ['inspect', '--ps-tree', archive], { reject: false });
    expect(ctl.exitCode, ctl.stderr).toBe(0);
    expect(ctl.stdout).toContain(id);
    expect(ctl.stdout).toContain(imageName);
    expect(ctl.stdout).toMatch(/sh/);

    const ins = await cedanaOk(['inspect', archive]);
    expect(ins.checksums).toMatchObject({ ok: true, verified: true, algorithm: 'blake3' });
    expect(ins.containerArchive).toMatchObject({ engine: 'cedana', name: id, deletedFiles: ['/bin/ls'], image: { name: imageName } });

    ownContainer(owned, id);
    await podmanOk(['container', 'restore', '--import', archive]);
    const inPodman = async (): Promise<string> => (await podman(['exec', id, 'cat', '/data/count'])).stdout;
    await waitFor('counting again under Podman', async () => lines(await inPodman()) > at + 5);
    expect(consecutive(await inPodman())).toBe(true);
    expect((await podman(['exec', id, 'ls', '/bin/ls'])).exitCode, 'deleted.files applied by Podman').not.toBe(0);

    // The same checkpoint as an OCI checkpoint image: Podman restores it from the image.
    await podmanOk(['rm', '-f', '-t', '0', id]);
    const ociImage = join(parent, 'ck.oci.tar');
    const tag = `localhost/${uniqueName('ck')}:v1`;
    const built = await cedanaOk(['image', 'build', archive, '-o', ociImage, '--tag', tag]);
    expect(built.annotations).toMatchObject({ 'io.podman.annotations.checkpoint.runtime.name': 'runc', 'io.kubernetes.cri-o.annotations.checkpoint.name': id, 'org.criu.checkpoint.container.name': id, 'io.podman.annotations.checkpoint.rootfsImageName': imageName });
    ownImage(owned, tag);
    await podmanOk(['load', '-i', ociImage]);
    await podmanOk(['container', 'restore', tag]);
    await waitFor('counting again, restored from the image', async () => lines(await inPodman()) > at + 5);
    expect(consecutive(await inPodman())).toBe(true);
  });

  it('dump --format checkpointctl --rootfs of a container on a plain directory: Podman restores it over the image with all of it', async () => {
    const image = await busyboxImage(owned);
    const parent = await owned.tempDir('cedana-ckarch-', '/var/lib');
    const { makeBundle } = await import('../helpers/containers.js');
    const bundle = await makeBundle(parent, 'i=0; while true; do echo $i >> /data/count; i=$((i+1)); sleep 0.2; done');
    chmodSync(join(bundle, 'rootfs'), statSync(await imageRootfs(image.name)).mode & 0o7777);
    const id = uniqueName('rf');
    await runContainer(owned, id, bundle);
    const count = join(bundle, 'rootfs', 'data', 'count');
    await waitFor('counting under runc', () => lines(readText(count)) > 3);
    const archive = join(parent, 'ck.tar');
    const d = await cedanaOk(['dump', '--container', id, '--format', 'checkpointctl', '--rootfs', '--base-image', image.name, '--base-image-id', image.id, '-o', archive]);
    expect(d).toMatchObject({ format: 'checkpointctl', rootfs: 'full' });
    expect(d.decisions.join('\n')).toMatch(/the whole root file system/);
    const at = lines(readText(count));
    const diff = (await execa('tar', ['-xOf', archive, 'rootfs-diff.tar'], { encoding: 'buffer' })).stdout as unknown as Buffer;
    expect(diff.length).toBeGreaterThan(statSync('/bin/busybox').size);
    ownContainer(owned, id);
    await podmanOk(['container', 'restore', '--import', archive]);
    const inPodman = async (): Promise<string> => (await podman(['exec', id, 'cat', '/data/count'])).stdout;
    await waitFor('counting again under Podman', async () => lines(await inPodman()) > at + 5);
    expect(consecutive(await inPodman())).toBe(true);
  });

  it('refuses an archive whose rootfs-diff.tar escapes the root file system or links out, and one with a link entry; nothing is left', async () => {
    const p = await podmanExport();
    const base = await imageRootfs(p.image.name);
    const work = await owned.tempDir();
    await execa('sh', ['-c', `mkdir -p '${work}/x' && zstd -dc '${p.archive}' | tar -C '${work}/x' -x`]);
    // Rebuilt archives, each with one bad entry (python's tarfile writes what GNU tar would refuse).
    const variant = async (tag: string, py: string): Promise<string> => {
      const out = join(work, `${tag}.tar`);
      await execa('python3', ['-c', `
import tarfile, io, sys, os
src, out = sys.argv[1], sys.argv[2]
${py}
`, join(work, 'x'), out]);
      return out;
    };
    const withDiff = (entry: string): string => `
diff = os.path.join(src, 'rootfs-diff.tar')
with tarfile.open(diff, 'a') as t:
${entry}
with tarfile.open(out, 'w') as t:
    for n in sorted(os.listdir(src)):
        t.add(os.path.join(src, n), arcname=n)
`;
    const escape = await variant('escape', withDiff(`    i = tarfile.TarInfo('tmp/../../../escaped'); data = b'x'; i.size = len(data); t.addfile(i, io.BytesIO(data))`));
    await execa('rm', ['-rf', join(work, 'x')]);
    await execa('sh', ['-c', `mkdir -p '${work}/x' && zstd -dc '${p.archive}' | tar -C '${work}/x' -x`]);
    const linkOut = await variant('linkout', withDiff(`    i = tarfile.TarInfo('tmp/evil'); i.type = tarfile.SYMTYPE; i.linkname = '../../../../../etc'; t.addfile(i)`));
    await execa('rm', ['-rf', join(work, 'x')]);
    await execa('sh', ['-c', `mkdir -p '${work}/x' && zstd -dc '${p.archive}' | tar -C '${work}/x' -x`]);
    const outerLink = await variant('outerlink', `
with tarfile.open(out, 'w') as t:
    for n in sorted(os.listdir(src)):
        t.add(os.path.join(src, n), arcname=n)
    i = tarfile.TarInfo('checkpoint/passwd.img'); i.type = tarfile.SYMTYPE; i.linkname = '/etc/passwd'; t.addfile(i)
`);
    for (const [archive, why] of [[escape, /leaves the root file system/], [linkOut, /symbolic link out of the root file system/], [outerLink, /refusing archive entry/]] as const) {
      const id = uniqueName('bad');
      ownArchiveRestore(id);
      const r = await cedana(['restore', archive, '--container', id, '--rootfs', base, '--json']);
      expect(r.exitCode, r.stdout).toBe(9);
      expect(r.json?.error).toMatchObject({ code: 'IMAGE_INVALID', message: expect.stringMatching(why) });
      expect(existsSync(join(HOMES, id)), 'nothing made for it').toBe(false);
      expect(await state(id)).toBeUndefined();
      expect((await execa('ip', ['netns', 'list'])).stdout).not.toContain(`cedana-${id}`);
    }
    expect(existsSync('/escaped') || existsSync(join(HOMES, 'escaped'))).toBe(false);
  });
});
