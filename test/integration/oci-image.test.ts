/**
 * OCI checkpoint images with the real Podman: a counting busybox container checkpointed by Podman
 * (--export), made into an image by `cedana image build`, loaded by `podman load` and restored by
 * `podman container restore IMAGE`: it counts on from where it was. The image's annotations are
 * read back as Podman stores them. Everything made here (containers, images, files) goes at the end.
 */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { busyboxImage, hasPodman, ownImage, podmanCount, podmanOk, podmanState, runPodman, uniqueName } from '../helpers/podman.js';
import { Owned, waitFor } from '../helpers/processes.js';

// scripts/setup installs Podman: without it these tests fail, they are not skipped.
if (!(await hasPodman())) throw new Error('podman is not installed: run scripts/setup');

const owned = new Owned();
afterAll(() => owned.cleanup());

describe('cedana image build with Podman', () => {
  it('a Podman checkpoint becomes an image that `podman container restore` brings back, counting on', async () => {
    const base = await busyboxImage(owned);
    const name = await runPodman(owned, base.name);
    await waitFor('counting', async () => ((await podmanCount(name)) ?? 0) > 3);
    const dir = await owned.tempDir('cedana-oci-image-');
    const archive = join(dir, 'ck.tar.zst');
    const before = (await podmanCount(name))!;
    await podmanOk(['container', 'checkpoint', '--export', archive, name]);
    expect(await podmanState(name)).toBe('exited');

    const out = join(dir, 'ck.oci.tar');
    const tag = `localhost/${uniqueName('ck')}:v1`;
    const r = await cedanaOk(['image', 'build', archive, '-o', out, '--tag', tag]);
    expect(r).toMatchObject({ ok: true, command: 'image build', image: out, tag, engines: ['podman', 'cri-o', 'containerd'], container: { name, engine: 'podman', runtime: 'runc' } });
    expect(r.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect((await stat(out)).mode & 0o777).toBe(0o600);
    expect(r.annotations).toMatchObject({
      'io.podman.annotations.checkpoint.runtime.name': 'runc',
      'io.podman.annotations.checkpoint.name': name,
      'io.podman.annotations.checkpoint.rootfsImageID': base.id,
      'io.podman.annotations.checkpoint.rootfsImageName': base.name,
      'io.kubernetes.cri-o.annotations.checkpoint.name': name,
      'org.criu.checkpoint.container.name': name,
      'org.criu.checkpoint.engine.name': 'Podman',
    });
    const again = await cedana(['image', 'build', archive, '-o', out, '--json']);
    expect(again.exitCode).toBe(11);
    expect(again.json?.error.code).toBe('OUTPUT_EXISTS');

    // Elsewhere this is a push and a pull; here the original goes and the image comes back in.
    await podmanOk(['rm', name]);
    ownImage(owned, tag);
    expect(await podmanOk(['load', '-i', out])).toContain(`Loaded image: ${tag}`);
    const stored = JSON.parse(await podmanOk(['image', 'inspect', tag]))[0];
    expect(stored.ManifestType).toBe('application/vnd.oci.image.manifest.v1+json');
    expect(stored.Digest).toBe(r.digest);
    expect(stored.Annotations).toEqual(r.annotations);

    await podmanOk(['container', 'restore', tag]);
    expect(await podmanState(name)).toBe('running');
    const first = await waitFor('the count in the restored container', () => podmanCount(name));
    expect(first, 'it counts on from the checkpoint, not from 0').toBeGreaterThanOrEqual(before);
    await waitFor('counting on', async () => ((await podmanCount(name)) ?? 0) > first + 3);
  });

  it('refuses what is not a container checkpoint archive', async () => {
    const dir = await owned.tempDir('cedana-oci-image-');
    const r = await cedana(['image', 'build', dir, '-o', join(dir, '..', `${uniqueName('x')}.tar`), '--json']);
    expect(r.exitCode).toBe(9);
    expect(r.json?.error).toMatchObject({ code: 'IMAGE_INVALID', hint: expect.stringMatching(/podman container checkpoint --export/) });
  });
});
