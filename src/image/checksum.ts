/** sha256 of every file in an image directory, and verification against a manifest. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CedanaError } from '../errors.js';
import { MANIFEST_NAME, type FileEntry, type Manifest } from './manifest.js';

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  // 1 MiB reads: fewer syscalls, bounded memory.
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Relative paths of all regular files below dir (symlinks and others are reported, not followed). */
export async function listImageFiles(dir: string, rel = ''): Promise<{ files: string[]; others: string[] }> {
  const files: string[] = [];
  const others: string[] = [];
  for (const ent of await readdir(join(dir, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${ent.name}` : ent.name;
    if (ent.isFile()) files.push(p);
    else if (ent.isDirectory()) {
      const sub = await listImageFiles(dir, p);
      files.push(...sub.files);
      others.push(...sub.others);
    } else others.push(p);
  }
  return { files: files.sort(), others };
}

/** Checksums several files at once: a large pages image then overlaps the small ones. */
async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  });
  await Promise.all(workers);
  return out;
}

export async function checksumDir(dir: string): Promise<Record<string, FileEntry>> {
  const { files } = await listImageFiles(dir);
  const names = files.filter((f) => f !== MANIFEST_NAME);
  const entries = await mapLimit(names, 4, async (name) => {
    const p = join(dir, name);
    const [st, sha256] = await Promise.all([stat(p), sha256File(p)]);
    return [name, { size: st.size, sha256 }] as const;
  });
  return Object.fromEntries(entries);
}

/** Refuses an image whose files differ in any way from what the manifest lists. */
export async function verifyDir(dir: string, manifest: Manifest): Promise<void> {
  const { files, others } = await listImageFiles(dir);
  if (others.length > 0) {
    throw new CedanaError('IMAGE_INVALID', `image contains entries that are not regular files: ${others.slice(0, 5).join(', ')}`, {
      hint: 'images hold only regular files; this one was altered',
    });
  }
  const present = new Set(files.filter((f) => f !== MANIFEST_NAME));
  const listed = Object.keys(manifest.files);
  const missing = listed.filter((f) => !present.has(f));
  if (missing.length > 0) {
    throw new CedanaError('IMAGE_INVALID', `image is incomplete: missing ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`, {
      hint: 'the image was truncated or files were deleted; make a new dump',
      details: { missing },
    });
  }
  const extra = [...present].filter((f) => !(f in manifest.files));
  if (extra.length > 0) {
    throw new CedanaError('IMAGE_INVALID', `image contains files its manifest does not list: ${extra.slice(0, 5).join(', ')}`, {
      hint: 'files were added to the image after the dump; it cannot be trusted',
      details: { extra },
    });
  }
  const bad: string[] = [];
  await mapLimit(listed, 4, async (name) => {
    const want = manifest.files[name]!;
    const p = join(dir, name);
    const st = await stat(p);
    if (st.size !== want.size) {
      bad.push(`${name} (size ${st.size}, expected ${want.size})`);
      return;
    }
    if ((await sha256File(p)) !== want.sha256) bad.push(`${name} (checksum mismatch)`);
  });
  if (bad.length > 0) {
    throw new CedanaError('IMAGE_INVALID', `image is corrupt or tampered with: ${bad.sort().slice(0, 5).join(', ')}`, {
      hint: 'do not restore it; make a new dump from the original process',
      details: { corrupt: bad },
    });
  }
}
