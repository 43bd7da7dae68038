import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { machine, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Parser, type ReadEntry } from 'tar';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { imageBuild } from '../../../src/commands/image.js';
import {
  buildCheckpointImage, checkpointAnnotations, criuVersionNumber, goArch, isValidImageName, parseOsRelease, runtimeName,
  CONTAINERD_MARKER, CRIO_MARKER, PODMAN_MARKER, type CheckpointHost,
} from '../../../src/container/oci-image.js';
import { readArchiveMeta } from '../../../src/container/ckpt-archive.js';

interface TarEntry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Date | undefined;
  body: Buffer;
}

/** Every entry of a tar (in a buffer), by path, in order. */
async function readTar(buf: Buffer): Promise<Map<string, TarEntry>> {
  const out = new Map<string, TarEntry>();
  await new Promise<void>((resolve, reject) => {
    const p = new Parser({
      strict: true,
      onReadEntry: (e: ReadEntry) => {
        const chunks: Buffer[] = [];
        e.on('data', (c: Buffer) => chunks.push(c));
        e.on('end', () => out.set(e.path, { type: e.type, mode: e.mode ?? -1, uid: e.uid ?? -1, gid: e.gid ?? -1, size: e.size ?? -1, mtime: e.mtime, body: Buffer.concat(chunks) }));
      },
    });
    p.on('error', reject);
    p.on('warn', (code: string, message: string) => reject(new Error(`${code}: ${message}`)));
    p.on('end', () => resolve());
    p.end(buf);
  });
  return out;
}

const sha = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

const HOST: CheckpointHost = { arch: 'amd64', kernel: '6.1.0-test', cgroupVersion: 'v2', distribution: { name: 'debian', version: '12' }, criuVersion: '40201' };
const NOW = new Date('2026-01-02T03:04:05.678Z');
const LONG = `${'d'.repeat(60)}/${'f'.repeat(90)}.img`;

let root: string;
let ck: string;

/** A small checkpoint archive directory as Podman lays it out (the CRIU images are any bytes here). */
async function fabricate(dir: string): Promise<Record<string, Buffer>> {
  const files: Record<string, Buffer> = {
    'checkpoint/inventory.img': randomBytes(86),
    'checkpoint/pages-1.img': randomBytes(5 * 1024 * 1024 + 123), // more than one read chunk
    'checkpoint/empty.img': Buffer.alloc(0),
    [`checkpoint/${LONG}`]: Buffer.from('long name'),
    'config.dump': Buffer.from(JSON.stringify({ id: 'a'.repeat(64), name: 'web', rootfsImageID: 'b'.repeat(64), rootfsImageName: 'localhost/bb:latest', RawImageName: 'localhost/bb', runtime: '/usr/bin/runc', createdTime: '2026-01-01T00:00:00Z' })),
    'spec.dump': Buffer.from(JSON.stringify({ hostname: 'web', process: { args: ['sh', '-c', 'true'] }, annotations: { 'io.container.manager': 'libpod' } })),
    'network.status': Buffer.from('{}'),
  };
  for (const [rel, body] of Object.entries(files)) {
    await mkdir(join(dir, rel, '..'), { recursive: true });
    await writeFile(join(dir, rel), body, { mode: 0o640 });
  }
  await mkdir(join(dir, 'artifacts'), { mode: 0o750 });
  await utimes(join(dir, 'config.dump'), new Date('2025-05-05T05:05:05.900Z'), new Date('2025-05-05T05:05:05.900Z'));
  return files;
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'cedana-oci-image-test-'));
  ck = join(root, 'ck');
  await mkdir(ck);
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('buildCheckpointImage', () => {
  it('writes an oci-archive whose blobs match their digests, with one layer holding exactly the checkpoint', async () => {
    const files = await fabricate(ck);
    const out = join(root, 'ck.oci.tar');
    const built = await buildCheckpointImage({ dir: ck, output: out, tag: 'localhost/web-ck:v1', host: HOST, now: NOW });
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    expect(await readdir(root)).toEqual(['ck', 'ck.oci.tar']); // no temporary file left

    const outer = await readTar(await readFile(out));
    expect([...outer.keys()].filter((p) => !p.startsWith('blobs/sha256/') || p.endsWith('/'))).toEqual(['oci-layout', 'blobs/', 'blobs/sha256/', 'index.json']);
    for (const [path, e] of outer) {
      expect(e.uid, path).toBe(0);
      expect(e.gid, path).toBe(0);
      if (path.startsWith('blobs/sha256/') && e.type === 'File') {
        expect(sha(e.body), path).toBe(`sha256:${path.slice('blobs/sha256/'.length)}`);
        expect(e.body.length, path).toBe(e.size);
      }
    }
    expect(JSON.parse(outer.get('oci-layout')!.body.toString())).toEqual({ imageLayoutVersion: '1.0.0' });
    const blob = (digest: string): Buffer => outer.get(`blobs/sha256/${digest.slice(7)}`)!.body;

    const index = JSON.parse(outer.get('index.json')!.body.toString());
    expect(index).toMatchObject({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json' });
    expect(index.manifests).toHaveLength(1);
    const desc = index.manifests[0];
    expect(desc).toMatchObject({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: built.digest, size: blob(built.digest).length, platform: { architecture: 'amd64', os: 'linux' } });
    expect(desc.annotations['org.opencontainers.image.ref.name']).toBe('localhost/web-ck:v1');

    const manifest = JSON.parse(blob(built.digest).toString());
    expect(manifest).toMatchObject({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json' });
    expect(manifest.config).toEqual({ mediaType: 'application/vnd.oci.image.config.v1+json', digest: built.configDigest, size: blob(built.configDigest).length });
    expect(manifest.layers).toEqual([{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: built.layerDigest, size: built.layerBytes }]);
    const layer = blob(built.layerDigest);
    expect(layer.length).toBe(built.layerBytes);

    const config = JSON.parse(blob(built.configDigest).toString());
    expect(config).toMatchObject({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [sha(layer)] } });

    // The annotations: all three families, on the manifest, the index's descriptor and the index.
    const a = manifest.annotations as Record<string, string>;
    expect(a).toEqual(built.annotations);
    expect(a[CRIO_MARKER]).toBe('web');
    expect(a[CONTAINERD_MARKER]).toBe('web');
    expect(a[PODMAN_MARKER]).toBe('runc');
    expect(a).toMatchObject({
      'org.opencontainers.image.created': '2026-01-02T03:04:05.000Z',
      'io.podman.annotations.checkpoint.name': 'web',
      'io.podman.annotations.checkpoint.rootfsImageID': 'b'.repeat(64),
      'io.podman.annotations.checkpoint.rootfsImageName': 'localhost/bb:latest',
      'io.podman.annotations.checkpoint.rawImageName': 'localhost/bb',
      'io.podman.annotations.checkpoint.criu.version': '40201',
      'io.podman.annotations.checkpoint.host.arch': 'amd64',
      'io.podman.annotations.checkpoint.host.kernel': '6.1.0-test',
      'io.podman.annotations.checkpoint.cgroups.version': 'v2',
      'io.podman.annotations.checkpoint.distribution.name': 'debian',
      'io.podman.annotations.checkpoint.distribution.version': '12',
      'io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID': 'b'.repeat(64),
      'io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName': 'localhost/bb:latest',
      'io.kubernetes.cri-o.annotations.checkpoint.criu.version': '40201',
      'org.criu.checkpoint.engine.name': 'Podman',
      'org.criu.checkpoint.runtime.name': 'runc',
      'org.criu.checkpoint.rootfsImageName': 'localhost/bb:latest',
      'org.criu.checkpoint.cgroup.version': 'v2',
    });
    for (const v of Object.values(a)) expect(v).not.toBe('');
    const { 'org.opencontainers.image.ref.name': ref, ...descAnnotations } = desc.annotations as Record<string, string>;
    expect(ref).toBe('localhost/web-ck:v1');
    expect(descAnnotations).toEqual(a);
    expect(index.annotations).toEqual(a);

    // The layer: exactly the directory's entries, at /, owner 0:0, modes and mtimes kept.
    const entries = await readTar(layer);
    const dirs = ['artifacts/', 'checkpoint/', `checkpoint/${LONG.split('/')[0]}/`];
    expect([...entries.keys()].sort()).toEqual([...dirs, ...Object.keys(files)].sort());
    for (const [path, body] of Object.entries(files)) {
      const e = entries.get(path)!;
      expect(e.type, path).toBe('File');
      expect(e.body.equals(body), path).toBe(true);
      expect(e.mode & 0o7777, path).toBe(0o640);
      expect([e.uid, e.gid], path).toEqual([0, 0]);
    }
    expect(entries.get('artifacts/')).toMatchObject({ type: 'Directory', mode: 0o750, uid: 0, gid: 0 });
    expect(entries.get('config.dump')!.mtime?.toISOString()).toBe('2025-05-05T05:05:05.000Z');
    // Directories come before what they hold.
    const order = [...entries.keys()];
    expect(order.indexOf('checkpoint/')).toBeLessThan(order.indexOf('checkpoint/inventory.img'));
    expect(built).toMatchObject({ path: out, tag: 'localhost/web-ck:v1', entries: entries.size });
  });

  it('builds the same layer twice from the same directory (its digest depends only on the files)', async () => {
    await fabricate(ck);
    const a = await buildCheckpointImage({ dir: ck, output: join(root, 'a.tar'), host: HOST, now: NOW });
    const b = await buildCheckpointImage({ dir: ck, output: join(root, 'b.tar'), host: HOST, now: NOW });
    expect(b.layerDigest).toBe(a.layerDigest);
    expect(b.digest).toBe(a.digest);
    // Without --tag the descriptor names nothing.
    const index = JSON.parse((await readTar(await readFile(join(root, 'a.tar')))).get('index.json')!.body.toString());
    expect(index.manifests[0].annotations['org.opencontainers.image.ref.name']).toBeUndefined();
  });

  it('refuses a symbolic link in the checkpoint, and leaves nothing behind', async () => {
    await fabricate(ck);
    await symlink('/etc/shadow', join(ck, 'checkpoint', 'parent'));
    const out = join(root, 'ck.oci.tar');
    const err = await buildCheckpointImage({ dir: ck, output: out, host: HOST }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CedanaError);
    expect(err).toMatchObject({ code: 'IMAGE_INVALID', message: expect.stringMatching(/checkpoint\/parent.*symbolic link/) });
    expect(await readdir(root)).toEqual(['ck']);
  });

  it('refuses an existing output without force, replaces it with force', async () => {
    await fabricate(ck);
    const out = join(root, 'ck.oci.tar');
    await writeFile(out, 'keep me');
    await expect(buildCheckpointImage({ dir: ck, output: out, host: HOST })).rejects.toMatchObject({ code: 'OUTPUT_EXISTS' });
    expect(await readFile(out, 'utf8')).toBe('keep me');
    await mkdir(join(root, 'adir'));
    await expect(buildCheckpointImage({ dir: ck, output: join(root, 'adir'), host: HOST, force: true })).rejects.toMatchObject({ code: 'OUTPUT_EXISTS' });
    await writeFile(out, 'replace me', { mode: 0o644 });
    await buildCheckpointImage({ dir: ck, output: out, host: HOST, force: true });
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    expect((await readTar(await readFile(out))).has('index.json')).toBe(true);
    expect((await readdir(root)).sort()).toEqual(['adir', 'ck', 'ck.oci.tar']);
  });

  it('removes the partial output when the build fails mid-way (a file changed under it)', async () => {
    await fabricate(ck);
    const out = join(root, 'ck.oci.tar');
    let truncated = false;
    const onProgress = (): void => {
      // spec.dump comes after checkpoint/ in the layer: it changes while pages-1.img is copied.
      if (!truncated) writeFileSync(join(ck, 'spec.dump'), '{}');
      truncated = true;
    };
    await expect(buildCheckpointImage({ dir: ck, output: out, host: HOST, onProgress })).rejects.toMatchObject({ code: 'IO_ERROR', message: expect.stringMatching(/spec\.dump changed/) });
    expect(truncated).toBe(true);
    expect(await readdir(root)).toEqual(['ck']);
  });

  it('refuses an output inside the checkpoint, and a tag that is not an image name', async () => {
    await fabricate(ck);
    await expect(buildCheckpointImage({ dir: ck, output: join(ck, 'x.tar'), host: HOST })).rejects.toMatchObject({ code: 'USAGE' });
    await expect(buildCheckpointImage({ dir: ck, output: join(root, 'x.tar'), host: HOST, tag: 'Bad Name' })).rejects.toMatchObject({ code: 'USAGE' });
  });

  it('refuses a directory that is not a checkpoint archive', async () => {
    await mkdir(join(ck, 'checkpoint'));
    await writeFile(join(ck, 'config.dump'), '{}');
    await expect(buildCheckpointImage({ dir: ck, output: join(root, 'x.tar'), host: HOST })).rejects.toMatchObject({ code: 'IMAGE_INVALID' });
    expect(await readdir(root)).toEqual(['ck']);
  });
});

describe('cedana image build (the command)', () => {
  it('builds from a directory and reports the image', async () => {
    await fabricate(ck);
    const out = join(root, 'ck.oci.tar');
    const r = await imageBuild({ archive: ck, output: out, tag: 'localhost/web-ck' });
    expect(r).toMatchObject({ command: 'image build', image: out, tag: 'localhost/web-ck', engines: ['podman', 'cri-o', 'containerd'], container: { name: 'web', engine: 'podman', runtime: 'runc' } });
    expect(r.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(r.annotations[PODMAN_MARKER]).toBe('runc');
    expect(r.annotations['io.podman.annotations.checkpoint.host.arch']).toBe(goArch(machine()));
  });

  it('refuses what is not a checkpoint archive, with a hint; a cedana image is told apart', async () => {
    await writeFile(join(ck, 'some-file'), 'x');
    const err = await imageBuild({ archive: ck, output: join(root, 'x.tar') }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'IMAGE_INVALID', hint: expect.stringMatching(/podman container checkpoint --export/) });
    await writeFile(join(ck, 'cedana.json'), '{}');
    await writeFile(join(ck, 'inventory.img'), 'x');
    const err2 = await imageBuild({ archive: ck, output: join(root, 'x.tar') }).catch((e: unknown) => e);
    expect(err2).toMatchObject({ code: 'IMAGE_INVALID', hint: expect.stringMatching(/cedana image/) });
    await expect(imageBuild({ archive: join(root, 'nothing'), output: join(root, 'x.tar') })).rejects.toMatchObject({ code: 'IMAGE_INVALID' });
    expect((await readdir(root)).sort()).toEqual(['ck']);
  });

  it('refuses an existing output before reading the archive', async () => {
    await writeFile(join(root, 'x.tar'), '');
    await expect(imageBuild({ archive: join(root, 'nothing'), output: join(root, 'x.tar') })).rejects.toMatchObject({ code: 'OUTPUT_EXISTS' });
  });
});

describe('annotations and host facts', () => {
  it('derives the families from CRI-O metadata (pod, image ref) and leaves unknown values out', async () => {
    await mkdir(join(ck, 'checkpoint'));
    await writeFile(join(ck, 'checkpoint', 'inventory.img'), 'x');
    await writeFile(join(ck, 'config.dump'), JSON.stringify({ id: 'c'.repeat(64), name: 'counter', rootfsImage: 'quay.io/x/counter:latest', rootfsImageRef: 'd'.repeat(64), rootfsImageName: 'quay.io/x/counter:latest', runtime: '' }));
    await writeFile(join(ck, 'spec.dump'), JSON.stringify({ annotations: { 'io.container.manager': 'cri-o', 'io.kubernetes.cri-o.Metadata': '{"name":"counter"}', 'io.kubernetes.pod.name': 'counters', 'io.kubernetes.pod.namespace': 'default', 'io.kubernetes.pod.uid': 'u-1', 'io.kubernetes.cri-o.SandboxID': 'e'.repeat(64) } }));
    const a = checkpointAnnotations(await readArchiveMeta(ck), { arch: 'arm64', kernel: '6.8.0' }, NOW);
    expect(a).toMatchObject({
      [CRIO_MARKER]: 'counter',
      [CONTAINERD_MARKER]: 'counter',
      [PODMAN_MARKER]: 'runc', // the archive names none
      'org.criu.checkpoint.engine.name': 'CRI-O',
      'org.criu.checkpoint.pod.name': 'counters',
      'org.criu.checkpoint.pod.namespace': 'default',
      'org.criu.checkpoint.pod.uid': 'u-1',
      'org.criu.checkpoint.pod.id': 'e'.repeat(64),
      'org.criu.checkpoint.rootfsImageUserRequested': 'quay.io/x/counter:latest',
      'org.criu.checkpoint.rootfsImageID': 'd'.repeat(64),
      'io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID': 'd'.repeat(64),
      'io.kubernetes.cri-o.annotations.checkpoint.rawImageName': 'quay.io/x/counter:latest',
      'org.criu.checkpoint.host.arch': 'arm64',
    });
    expect(Object.keys(a).filter((k) => /criu\.version|cgroup|distribution|engine\.version/.test(k))).toEqual([]);
  });

  it('takes the CRIU version, arch and kernel from cedana.json when the archive has one', async () => {
    await fabricate(ck);
    await writeFile(join(ck, 'cedana.json'), JSON.stringify({ criuVersion: '4.1', arch: 'aarch64', kernel: '6.6.6', cedanaVersion: '0.1.0' }));
    const built = await buildCheckpointImage({ dir: ck, output: join(root, 'x.tar'), now: NOW });
    expect(built.annotations).toMatchObject({
      'io.podman.annotations.checkpoint.criu.version': '40100',
      'io.podman.annotations.checkpoint.host.arch': 'arm64',
      'io.podman.annotations.checkpoint.host.kernel': '6.6.6',
      'org.criu.checkpoint.engine.version': '0.1.0',
    });
  });

  it('names architectures as Go does, CRIU versions as Podman does, distributions by os-release', () => {
    expect(goArch('x86_64')).toBe('amd64');
    expect(goArch('aarch64')).toBe('arm64');
    expect(goArch('riscv64')).toBe('riscv64');
    expect(criuVersionNumber({ major: 4, minor: 2, patch: 1, text: '4.2.1' })).toBe('40201');
    expect(criuVersionNumber({ major: 3, minor: 17, patch: 0, text: '3.17' })).toBe('31700');
    expect(parseOsRelease('NAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n')).toEqual({ name: 'debian', version: '12' });
    expect(parseOsRelease('ID=arch\n')).toEqual({ name: 'arch', version: undefined });
    expect(runtimeName(undefined)).toBe('runc');
    expect(runtimeName('/usr/bin/crun')).toBe('crun');
  });

  it('accepts image names by the reference grammar', () => {
    for (const ok of ['web', 'localhost/web-ck:v1', 'registry.example.com:5000/team/app_ck:2026-01-01', 'quay.io/a/b.c']) expect(isValidImageName(ok), ok).toBe(true);
    for (const bad of ['', 'Web', 'a b', 'a/', '/a', 'a:', 'a:-x', 'a@sha256:00', 'x'.repeat(300)]) expect(isValidImageName(bad), bad).toBe(false);
  });
});
