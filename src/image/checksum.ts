/**
 * Checksums of every file in an image directory, and verification against a manifest. cedana writes
 * BLAKE3 (format 2: ~4.5 GB/s on one core here, against ~1.6 GB/s for sha256 with the CPU's SHA
 * instructions); images of format 1 carry sha256 and are verified with it.
 */
import { readFileSync, readSync } from 'node:fs';
import { open, readdir, readlink, stat, type FileHandle } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { CedanaError } from '../errors.js';
import { MANIFEST_NAME, fileDigest, type FileEntry, type HashAlgorithm, type Manifest } from './manifest.js';

export interface Hasher {
  update(data: Buffer): void;
  /** Lower-case hex. */
  hex(): string;
}

type BlakeHash = typeof import('@napi-rs/blake-hash');
let native: BlakeHash | undefined;

/**
 * The native BLAKE3 (a prebuilt binary, an optional dependency per platform), loaded on first use:
 * where it is missing, only what hashes fails, with a clear error, not every command at start.
 */
function blakeHash(): BlakeHash {
  if (native) return native;
  try {
    const req = createRequire(import.meta.url);
    native = (linuxBinding(req) ?? req('@napi-rs/blake-hash')) as BlakeHash;
    return native;
  } catch (e) {
    throw new CedanaError('HOST_UNSUPPORTED', `BLAKE3 is not available: @napi-rs/blake-hash has no binary for ${process.platform}-${process.arch} here (${(e as Error).message.split('\n')[0]})`, {
      hint: 'cedana runs on Linux x64 and arm64 (glibc or musl); install it with its optional dependencies (npm ci, not --omit=optional)',
    });
  }
}

/**
 * On Linux x64/arm64, the platform package the loader would pick, loaded directly: the loader tells
 * glibc from musl with process.report.getReport(), ~7 ms (more on a busy machine) on every command
 * that hashes. Here the C library mapped into this process says. Anything unexpected: undefined, and
 * the package's own loader decides.
 */
function linuxBinding(req: NodeJS.Require): unknown {
  if (process.platform !== 'linux' || (process.arch !== 'x64' && process.arch !== 'arm64')) return undefined;
  try {
    const libc = readFileSync('/proc/self/maps', 'latin1').includes('/ld-musl-') ? 'musl' : 'gnu';
    return createRequire(req.resolve('@napi-rs/blake-hash'))(`@napi-rs/blake-hash-linux-${process.arch}-${libc}`);
  } catch {
    return undefined;
  }
}

export function createHasher(algorithm: HashAlgorithm): Hasher {
  if (algorithm === 'blake3') {
    const h = new (blakeHash().Blake3Hasher)();
    return { update: (d) => void h.update(d), hex: () => h.digest('hex') };
  }
  // node:crypto (~5 ms to load) only for images of format 1; BLAKE3 does not need it.
  const h = (createRequire(import.meta.url)('node:crypto') as typeof import('node:crypto')).createHash('sha256');
  return { update: (d) => void h.update(d), hex: () => h.digest('hex') };
}

/** The hex digest of bytes in memory. */
export function hashBytes(algorithm: HashAlgorithm, data: Buffer | string): string {
  const h = createHasher(algorithm);
  h.update(typeof data === 'string' ? Buffer.from(data) : data);
  return h.hex();
}

const READ_SIZE = 4 << 20;

/**
 * Feeds the file's bytes from `offset` to its current end into every hasher; returns the new offset.
 * Two buffers: the next read runs (in libuv's pool) while this one is hashed. Measured on a 1 GiB file
 * in page cache: BLAKE3 4.4 GB/s this way, 3.7 with one 4 MiB buffer, 2.2 through a read stream.
 */
async function feed(fh: FileHandle, hashers: Hasher[], offset: number, bufs: [Buffer, Buffer]): Promise<number> {
  let i = 0;
  let pending = fh.read(bufs[0], 0, bufs[0].length, offset);
  for (;;) {
    const { bytesRead } = await pending;
    if (bytesRead === 0) return offset;
    const cur = bufs[i]!.subarray(0, bytesRead);
    offset += bytesRead;
    i ^= 1;
    pending = fh.read(bufs[i]!, 0, bufs[i]!.length, offset);
    for (const h of hashers) h.update(cur);
  }
}

const SERIAL_READ = 256 << 10;
const SLICE_MS = 4;

/**
 * Feeds the file's bytes into every hasher on this thread, synchronous reads of 256 KiB into one
 * buffer that stays in the core's L2 cache, yielding to the event loop every few milliseconds.
 * Measured on a 1 GiB file in page cache (2-CPU VM, medians): ~280 ms of CPU against ~390 ms for
 * feed() (whose reads run on another core, into 4 MiB buffers that leave the cache: the copy out
 * of page cache alone costs twice the system time), on one core instead of two. For a hash that runs
 * beside something else (restore's pages, beside CRIU), CPU is what it takes from it.
 */
async function feedOneCore(fh: FileHandle, hashers: Hasher[], buf: Buffer): Promise<void> {
  let offset = 0;
  for (;;) {
    const until = performance.now() + SLICE_MS;
    do {
      const n = readSync(fh.fd, buf, 0, buf.length, offset);
      if (n === 0) return;
      const cur = n === buf.length ? buf : buf.subarray(0, n);
      for (const h of hashers) h.update(cur);
      offset += n;
    } while (performance.now() < until);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Two read buffers, no larger than a file of `sizeHint` bytes needs. */
const readBuffers = (sizeHint = READ_SIZE): [Buffer, Buffer] => {
  const size = Math.max(64 << 10, Math.min(READ_SIZE, sizeHint + 1));
  return [Buffer.allocUnsafe(size), Buffer.allocUnsafe(size)];
};

/**
 * Hex digests of a whole file, one per algorithm, in one read. `oneCore`: read and hash on this
 * thread (feedOneCore: less CPU, one core), for hashing beside other work; else pipelined over two.
 */
export async function hashFile(path: string, algorithms: HashAlgorithm[], sizeHint?: number, oneCore = false): Promise<string[]> {
  const hashers = algorithms.map(createHasher);
  const fh = await open(path, 'r');
  try {
    if (oneCore) await feedOneCore(fh, hashers, Buffer.allocUnsafe(Math.max(4096, Math.min(SERIAL_READ, (sizeHint ?? SERIAL_READ) + 1))));
    else await feed(fh, hashers, 0, readBuffers(sizeHint));
  } finally {
    await fh.close();
  }
  return hashers.map((h) => h.hex());
}

export const blake3File = async (path: string): Promise<string> => (await hashFile(path, ['blake3']))[0]!;
export const sha256File = async (path: string): Promise<string> => (await hashFile(path, ['sha256']))[0]!;

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

/** BLAKE3 digests already computed, by relative path (see verifyDir). */
export type KnownDigests = ReadonlyMap<string, { size: number; blake3: string }>;

/** The images that hold process memory: by far the largest, and written by CRIU front to back. */
export const isPagesImage = (name: string): boolean => /^pages-\d+\.img$/.test(name);

/**
 * BLAKE3 of a file another process is still appending to: each catchUp() hashes what was added
 * since the last one. CRIU writes pages images front to back, so cedana hashes them while CRIU dumps
 * instead of after, with the tree frozen.
 */
export class GrowingFileHash {
  private readonly hash = createHasher('blake3');
  private offset = 0;
  private fh: FileHandle | undefined;
  private bufs: [Buffer, Buffer] | undefined;

  constructor(readonly path: string) {}

  async catchUp(): Promise<void> {
    this.fh ??= await open(this.path, 'r');
    this.bufs ??= readBuffers();
    this.offset = await feed(this.fh, [this.hash], this.offset, this.bufs);
  }

  async finish(): Promise<FileEntry> {
    await this.catchUp();
    await this.fh?.close();
    const size = (await stat(this.path)).size;
    // Only appends were expected: a file that shrank or was rewritten is hashed again from scratch.
    if (size !== this.offset) return { size, blake3: await blake3File(this.path) };
    return { size, blake3: this.hash.hex() };
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

/** size and BLAKE3 of every file but the manifest; `known` entries (already hashed) are taken as they are. */
export async function checksumDir(dir: string, known: Record<string, FileEntry> = {}): Promise<Record<string, FileEntry>> {
  return (await hashDir(dir, known, false)).files;
}

/**
 * For an image sent to a host that has nothing of cedana (a migration target): the manifest's
 * entries (BLAKE3), and the same files' sha256 as a `sha256sum -c` list, which the target's
 * coreutils check. Both from one read of each file.
 */
export async function checksumDirForTransfer(dir: string): Promise<{ files: Record<string, FileEntry>; sha256sums: string }> {
  const { files, sha256 } = await hashDir(dir, {}, true);
  return { files, sha256sums: Object.keys(files).map((name) => `${sha256[name]}  ${name}\n`).join('') };
}

async function hashDir(dir: string, known: Record<string, FileEntry>, withSha256: boolean): Promise<{ files: Record<string, FileEntry>; sha256: Record<string, string> }> {
  const { files } = await listImageFiles(dir);
  const names = files.filter((f) => f !== MANIFEST_NAME);
  const sha256: Record<string, string> = {};
  const entries = await mapLimit(names, 4, async (name) => {
    if (known[name]) return [name, known[name]] as const;
    const p = join(dir, name);
    const { size } = await stat(p);
    const [blake3, sha] = await hashFile(p, withSha256 ? ['blake3', 'sha256'] : ['blake3'], size);
    if (sha) sha256[name] = sha;
    return [name, { size, blake3: blake3! }] as const;
  });
  return { files: Object.fromEntries(entries), sha256 };
}

/**
 * Refuses an image whose files differ in any way from what the manifest lists. The set of files and
 * every size are always checked; `hash` picks the files whose contents are (all by default), each
 * with the algorithm its entry names (BLAKE3, or sha256 in an image of format 1). `known` gives the
 * BLAKE3 of files cedana itself wrote into its private directory (an archive extracted, hashed as it
 * was written): those are compared without being read again. `oneCore`: hash as hashFile's
 * oneCore does (beside other work: restore's pages beside CRIU).
 */
export async function verifyDir(dir: string, manifest: Manifest, hash: (name: string) => boolean = () => true, known?: KnownDigests, oneCore = false): Promise<void> {
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
    if (!hash(name)) return;
    const { algorithm, hex } = fileDigest(want);
    const seen = algorithm === 'blake3' ? known?.get(name) : undefined;
    const got = seen && seen.size === st.size ? seen.blake3 : (await hashFile(p, [algorithm], st.size, oneCore))[0];
    if (got !== hex) bad.push(`${name} (checksum mismatch)`);
  });
  if (bad.length > 0) {
    throw new CedanaError('IMAGE_INVALID', `image is corrupt or tampered with: ${bad.sort().slice(0, 5).join(', ')}`, {
      hint: 'do not restore it; make a new dump from the original process',
      details: { corrupt: bad },
    });
  }
}
