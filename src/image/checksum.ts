/** sha256 of every file in an image directory, and verification against a manifest. */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readdir, readlink, stat, type FileHandle } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
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

/** The images that hold process memory: by far the largest, and written by CRIU front to back. */
export const isPagesImage = (name: string): boolean => /^pages-\d+\.img$/.test(name);

/**
 * sha256 of a file another process is still appending to: each catchUp() hashes what was added
 * since the last one. CRIU writes pages images front to back, so cedana hashes them while CRIU dumps
 * instead of after, with the tree frozen.
 */
export class GrowingFileHash {
  private readonly hash = createHash('sha256');
  private offset = 0;
  private fh: FileHandle | undefined;
  private readonly buf = Buffer.allocUnsafe(4 << 20);

  constructor(readonly path: string) {}

  async catchUp(): Promise<void> {
    this.fh ??= await open(this.path, 'r');
    for (;;) {
      const { bytesRead } = await this.fh.read(this.buf, 0, this.buf.length, this.offset);
      if (bytesRead === 0) return;
      this.hash.update(this.buf.subarray(0, bytesRead));
      this.offset += bytesRead;
    }
  }

  async finish(): Promise<FileEntry> {
    await this.catchUp();
    await this.fh?.close();
    const size = (await stat(this.path)).size;
    // Only appends were expected: a file that shrank or was rewritten is hashed again from scratch.
    if (size !== this.offset) return { size, sha256: await sha256File(this.path) };
    return { size, sha256: this.hash.digest('hex') };
  }
}

/** Follows the pages images appearing in dir (CRIU dumping into it) and hashes them as they grow. */
export class PagesFollower {
  private readonly hashes = new Map<string, GrowingFileHash>();
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(private readonly dir: string) {
    this.loop = this.follow();
  }

  private async follow(): Promise<void> {
    while (!this.stopped) {
      for (const name of await readdir(this.dir).catch(() => [] as string[])) {
        if (isPagesImage(name) && !this.hashes.has(name)) this.hashes.set(name, new GrowingFileHash(join(this.dir, name)));
      }
      for (const h of this.hashes.values()) await h.catchUp().catch(() => undefined);
      await sleep(10);
    }
  }

  private finished: Promise<Record<string, FileEntry>> | undefined;

  /** Call once the writer is done: the entries of every pages image, hashed to the end. Idempotent. */
  finish(): Promise<Record<string, FileEntry>> {
    this.finished ??= (async () => {
      this.stopped = true;
      await this.loop;
      const out: Record<string, FileEntry> = {};
      for (const [name, h] of this.hashes) out[name] = await h.finish();
      return out;
    })();
    return this.finished;
  }
}

/** size and sha256 of every file but the manifest; `known` entries (already hashed) are taken as they are. */
export async function checksumDir(dir: string, known: Record<string, FileEntry> = {}): Promise<Record<string, FileEntry>> {
  const { files } = await listImageFiles(dir);
  const names = files.filter((f) => f !== MANIFEST_NAME);
  const entries = await mapLimit(names, 4, async (name) => {
    if (known[name]) return [name, known[name]] as const;
    const p = join(dir, name);
    const [st, sha256] = await Promise.all([stat(p), sha256File(p)]);
    return [name, { size: st.size, sha256 }] as const;
  });
  return Object.fromEntries(entries);
}

/**
 * Refuses an image whose files differ in any way from what the manifest lists. The set of files and
 * every size are always checked; `hash` picks the files whose contents are (all by default).
 */
export async function verifyDir(dir: string, manifest: Manifest, hash: (name: string) => boolean = () => true): Promise<void> {
  const listing = await listImageFiles(dir);
  const { files } = listing;
  // An incremental checkpoint's one link: `parent`, pointing where its manifest says.
  const others = manifest.parent && listing.others.includes('parent') && (await readlink(join(dir, 'parent')).catch(() => '')) === manifest.parent.path
    ? listing.others.filter((o) => o !== 'parent')
    : listing.others;
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
    if (hash(name) && (await sha256File(p)) !== want.sha256) bad.push(`${name} (checksum mismatch)`);
  });
  if (bad.length > 0) {
    throw new CedanaError('IMAGE_INVALID', `image is corrupt or tampered with: ${bad.sort().slice(0, 5).join(', ')}`, {
      hint: 'do not restore it; make a new dump from the original process',
      details: { corrupt: bad },
    });
  }
}
