/**
 * cedana image build: a container checkpoint archive (checkpointctl's layout, from Podman, CRI-O,
 * the kubelet or cedana) as an OCI checkpoint image in an oci-archive, annotated so that Podman
 * (`podman container restore IMAGE`), CRI-O (a pod whose container's image is it) and containerd
 * 2.1–2.3 all recognise it. Pushing it is left to the user's tools (skopeo, podman push). Needs no
 * root and no CRIU (CRIU's version is only recorded when the archive does not say).
 */
import { lstat, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CedanaError } from '../errors.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { isCheckpointArchiveDir, readArchiveMeta } from '../container/ckpt-archive.js';
import { buildCheckpointImage, isValidImageName } from '../container/oci-image.js';
import { MANIFEST_NAME } from '../image/manifest.js';
import { openImage } from '../image/open.js';
import { pathExists, privateTempDir } from '../util/paths.js';

export interface ImageBuildArgs {
  /** A checkpointctl-layout archive (.tar, .tar.gz, .tar.zst) or its unpacked directory. */
  archive: string;
  output: string;
  tag?: string;
  force?: boolean;
  reporter?: Reporter;
  signal?: AbortSignal;
}

export interface ImageBuildResult {
  command: 'image build';
  /** The oci-archive written (absolute path). */
  image: string;
  /** The name given with --tag (org.opencontainers.image.ref.name), or null. */
  tag: string | null;
  /** The manifest's digest (sha256:…). */
  digest: string;
  layerBytes: number;
  /** The container the checkpoint holds, and who checkpointed it. */
  container: { name: string; engine: string; runtime: string };
  /** The manifest's annotations (also on index.json's descriptor and the index). */
  annotations: Record<string, string>;
  /** The engines whose markers the image carries. */
  engines: ['podman', 'cri-o', 'containerd'];
}

export async function imageBuild(args: ImageBuildArgs): Promise<ImageBuildResult> {
  const report = args.reporter ?? silentReporter;
  // What can be refused at once is, before a large archive is unpacked.
  if (args.tag !== undefined && !isValidImageName(args.tag)) {
    throw new CedanaError('USAGE', `--tag ${JSON.stringify(args.tag)} is not an image name`, { hint: 'e.g. registry.example.com/team/app-checkpoint:v1, or localhost/app-checkpoint (path components in lower case)' });
  }
  const output = resolve(args.output);
  if (!args.force && (await lstat(output).catch(() => undefined))) throw new CedanaError('OUTPUT_EXISTS', `${output} exists`, { hint: 'use --force to replace it' });
  const work = await privateTempDir('cedana-image-');
  try {
    const { dir, label } = await openImage(args.archive, work, report);
    if (!(await isCheckpointArchiveDir(dir))) {
      const cedanaImage = await pathExists(join(dir, MANIFEST_NAME));
      throw new CedanaError('IMAGE_INVALID', `${label} is not a container checkpoint archive: it needs checkpoint/inventory.img, config.dump and spec.dump`, {
        hint: cedanaImage
          ? 'this is a cedana image: dump the container with the checkpointctl export format (cedana dump --container ID --format checkpointctl), then build from that'
          : 'give an archive from `podman container checkpoint --export`, the kubelet checkpoint API (CRI-O, containerd), or `cedana dump --container ID --format checkpointctl`',
      });
    }
    const meta = await readArchiveMeta(dir);
    report.phase('writing the image');
    const built = await buildCheckpointImage({
      dir,
      output,
      tag: args.tag,
      force: args.force,
      meta,
      signal: args.signal,
      onProgress: (bytes, total) => report.progress({ phase: 'writing the image', bytes, totalBytes: total }),
    });
    return {
      command: 'image build',
      image: built.path,
      tag: built.tag,
      digest: built.digest,
      layerBytes: built.layerBytes,
      container: { name: built.annotations['org.criu.checkpoint.container.name'] ?? meta.name, engine: meta.engine, runtime: built.annotations['io.podman.annotations.checkpoint.runtime.name'] ?? 'runc' },
      annotations: built.annotations,
      engines: ['podman', 'cri-o', 'containerd'],
    };
  } finally {
    report.stop();
    await rm(work, { recursive: true, force: true });
  }
}
