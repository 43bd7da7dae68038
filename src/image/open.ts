/**
 * Opening an image for reading, shared by restore and inspect: a directory is used in place; an
 * archive or a tar stream on stdin is unpacked into a private work directory (the caller's).
 */
import { createReadStream } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { CedanaError } from '../errors.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import type { ExtractedDigests } from './archive.js';
import { MANIFEST_NAME, parseManifest, type Manifest } from './manifest.js';

export interface OpenedImage {
  /** The directory holding the image's files. */
  dir: string;
  /** What to call the image in results: its absolute path, or '-' for stdin. */
  label: string;
  /** For an archive or a stream: each file's size and BLAKE3, computed while it was extracted. */
  digests?: ExtractedDigests;
}

/** `image` is a directory, an archive (.tar, .tar.gz, .tar.zst) or '-' (a tar stream on `stdin`). */
export async function openImage(image: string, work: string, report: Reporter = silentReporter, stdin?: Readable): Promise<OpenedImage> {
  const into = join(work, 'image');
  if (image === '-') {
    report.phase('reading the image from stdin');
    const { unpackImage } = await import('./archive.js');
    const digests = await unpackImage(stdin ?? process.stdin, into);
    return { dir: into, label: '-', digests };
  }
  const path = resolve(image);
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new CedanaError('IMAGE_INVALID', `no image at ${path}`, { hint: 'give an image directory, an archive (.tar, .tar.gz, .tar.zst) or - for stdin' });
  }
  if (st.isDirectory()) return { dir: path, label: path };
  if (!st.isFile()) throw new CedanaError('IMAGE_INVALID', `${path} is neither a directory nor an archive file`);
  report.phase(`unpacking ${path}`);
  const { unpackImage } = await import('./archive.js'); // streams, zlib, tar: only for archives
  const digests = await unpackImage(createReadStream(path, { highWaterMark: 1 << 20 }), into, { path });
  return { dir: into, label: path, digests };
}

/** The image's validated manifest; IMAGE_INVALID when it is missing or malformed. */
export async function readManifest(dir: string): Promise<Manifest> {
  let text: string;
  try {
    text = await readFile(join(dir, MANIFEST_NAME), 'utf8');
  } catch {
    throw new CedanaError('IMAGE_INVALID', `${MANIFEST_NAME} not found: not a cedana image`, {
      hint: 'give a directory or archive made by `cedana dump`',
    });
  }
  return parseManifest(text);
}
