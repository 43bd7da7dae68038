/**
 * cedana inspect: what a checkpoint holds — processes, memory, open files, sockets, working
 * directories, provenance, sizes — and whether its checksums hold. It only reads files: no root and
 * no CRIU. A damaged image is still shown as far as it can be decoded, with ok false and the
 * problems listed (IMAGE_INVALID's exit status).
 */
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { CedanaError, toCedanaError } from '../errors.js';
import { listImageFiles, verifyDir } from '../image/checksum.js';
import { decodeImage, type DecodedImage } from '../image/criu/codec.js';
import { assembleInspection, type Inspection } from '../image/inspect.js';
import { hashAlgorithmOf, type HashAlgorithm, type Manifest } from '../image/manifest.js';
import { openImage, readManifest } from '../image/open.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { privateTempDir } from '../util/paths.js';
import { CK_DIR, isCheckpointArchiveDir, readArchiveMeta, type ArchiveMeta } from '../container/ckpt-archive.js';

export interface InspectArgs {
  image: string;
  stdin?: Readable;
  reporter?: Reporter;
}

/** What a Kubernetes/CRI-O/Podman (checkpointctl-layout) archive says of its container, beside the CRIU images. */
export type InspectContainerArchive = Omit<ArchiveMeta, 'config' | 'spec'> & {
  /** The layout: CRIU's images under checkpoint/, the engine's config.dump and spec.dump. */
  layout: 'checkpointctl';
};

export interface InspectResult extends Inspection {
  command: 'inspect';
  /** For a checkpointctl-layout archive (Podman, CRI-O, the kubelet, containerd): its container's metadata; else absent. */
  containerArchive?: InspectContainerArchive;
  /** False when the checksums do not hold or part of the image could not be decoded. */
  ok: boolean;
  image: string;
  /** algorithm: what the manifest's checksums are (blake3; sha256 in an image of format 1), null without a readable manifest. */
  checksums: { ok: boolean; algorithm: HashAlgorithm | null; problems: string[]; verified: boolean };
  /** Images that could not be decoded (the rest is shown without them). */
  undecodable: string[];
  /** IMAGE_INVALID when ok is false. */
  error?: CedanaError;
}

/** Metadata images are decoded; memory (pages-*.img) and other raw images are only measured. */
const decodable = (name: string): boolean => name.endsWith('.img') && !/^pages-\d+\.img$/.test(name);

export async function inspect(args: InspectArgs): Promise<InspectResult> {
  const report = args.reporter ?? silentReporter;
  const work = await privateTempDir('cedana-inspect-');
  try {
    const { dir: top, label, digests } = await openImage(args.image, work, report, args.stdin);
    const problems: string[] = [];
    let manifest: Manifest | null = null;
    // A checkpointctl-layout archive: its CRIU images are under checkpoint/, with no checksums
    // unless cedana wrote it (then its manifest covers every file of the archive).
    const archive = (await isCheckpointArchiveDir(top)) ? await readArchiveMeta(top) : undefined;
    const dir = archive ? join(top, CK_DIR) : top;
    const manifestDir = archive ? top : dir;
    try {
      manifest = await readManifest(manifestDir);
    } catch (e) {
      if (!archive) problems.push(toCedanaError(e).message);
    }

    const { files } = await listImageFiles(dir);
    if (!files.includes('inventory.img') && !manifest) {
      throw new CedanaError('IMAGE_INVALID', `${label} is not a checkpoint: neither cedana.json nor inventory.img is there`, {
        hint: 'give a directory or archive made by `cedana dump`',
      });
    }
    const fileSizes: Record<string, number> = {};
    for (const name of files) fileSizes[name] = (await stat(join(dir, name))).size;

    if (manifest) {
      report.phase('verifying the checksums');
      try {
        await verifyDir(manifestDir, manifest, undefined, digests);
      } catch (e) {
        const err = toCedanaError(e);
        const d = err.details as { corrupt?: string[]; missing?: string[]; extra?: string[] };
        const listed = [...(d.missing ?? []).map((f) => `${f} (missing)`), ...(d.extra ?? []).map((f) => `${f} (not in the manifest)`), ...(d.corrupt ?? [])];
        problems.push(...(listed.length > 0 ? listed : [err.message]));
      }
    }

    report.phase('decoding the images');
    const images = new Map<string, DecodedImage>();
    const undecodable: string[] = [];
    for (const name of files.filter(decodable)) {
      try {
        images.set(name, decodeImage(await readFile(join(dir, name)), name));
      } catch (e) {
        undecodable.push(`${name}: ${toCedanaError(e).message}`);
      }
    }

    const inspection = assembleInspection({ images, manifest, fileSizes });
    const ok = problems.length === 0 && undecodable.length === 0;
    const result: InspectResult = {
      command: 'inspect',
      ok,
      image: label,
      ...inspection,
      checksums: { ok: problems.length === 0, algorithm: manifest ? hashAlgorithmOf(manifest) : null, problems, verified: manifest !== null && problems.length === 0 },
      undecodable,
    };
    if (archive) {
      const { config: _c, spec: _s, ...meta } = archive;
      result.containerArchive = { layout: 'checkpointctl', ...meta };
    }
    if (!ok) {
      const what = [...problems, ...undecodable];
      result.error = new CedanaError('IMAGE_INVALID', `image is damaged or tampered with: ${what.slice(0, 5).join(', ')}${what.length > 5 ? ` and ${what.length - 5} more` : ''}`, {
        hint: 'do not restore it; make a new dump from the original process',
      });
    }
    return result;
  } finally {
    report.stop();
    await rm(work, { recursive: true, force: true });
  }
}
