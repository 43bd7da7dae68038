/**
 * Incremental checkpoints without the kernel's dirty-page tracking (CONFIG_MEM_SOFT_DIRTY is off on
 * these machines): after CRIU dumped every page, each page is hashed and compared with the page at the
 * same address in the parent checkpoint; the pages that did not change are marked "in the parent"
 * (CRIU's PE_PARENT) and dropped from this image's pages file. CRIU restores such a chain itself,
 * following the `parent` link of each image directory.
 *
 * Every image keeps an index of all its pages (address and a 128-bit prefix of their sha256,
 * cedana-pages.idx), also of those in its parent, so that the next checkpoint compares against one
 * index and never reads the parent's pages. The work runs after the tree was let go: it costs the
 * process no frozen time. The index stays sha256 while the image checksums are BLAKE3: hashed a 4 KiB
 * page at a time, the call's own cost dominates and BLAKE3 measured no faster (~1 GB/s both here),
 * and the same index lets a child use a parent made by an earlier cedana.
 */
import { createHash } from 'node:crypto';
import { open, readdir, readFile, readlink, rename, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { hashBytes, verifyDir } from './checksum.js';
import { MANIFEST_NAME, parentDigest, parseManifest, type Manifest } from './manifest.js';
import { CedanaError } from '../errors.js';
import { decodeImage, encodeImage, type DecodedImage, type ImageEntry, type MessageEntry } from './criu/codec.js';
import { PAGE_SIZE, PE_PARENT, PE_PRESENT } from './criu/kinds.js';

export const PAGE_INDEX = 'cedana-pages.idx';
/** CRIU's name for the link from an image directory to its parent (CR_PARENT_LINK). */
export const PARENT_LINK = 'parent';
const HASH_BYTES = 16;
const INDEX_MAGIC = 0x43504931; // "CPI1"

/** Per process: page addresses in ascending order, and their hashes (HASH_BYTES each). */
export interface PidIndex {
  vaddrs: Float64Array;
  hashes: Buffer;
}
export type PageIndex = Map<number, PidIndex>;

export interface DedupeResult {
  index: PageIndex;
  pagesWritten: number;
  pagesInParent: number;
}

/** The hash of the page at vaddr in the index, or undefined. Pure. */
export function lookup(idx: PidIndex | undefined, vaddr: number): Buffer | undefined {
  if (!idx) return undefined;
  let lo = 0;
  let hi = idx.vaddrs.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    const v = idx.vaddrs[mid]!;
    if (v === vaddr) return idx.hashes.subarray(mid * HASH_BYTES, (mid + 1) * HASH_BYTES);
    if (v < vaddr) lo = mid + 1;
    else hi = mid - 1;
  }
  return undefined;
}

export function encodeIndex(index: PageIndex): Buffer {
  const parts: Buffer[] = [];
  const head = Buffer.alloc(8);
  head.writeUInt32LE(INDEX_MAGIC, 0);
  head.writeUInt32LE(index.size, 4);
  parts.push(head);
  for (const [pid, idx] of [...index].sort((a, b) => a[0] - b[0])) {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(pid, 0);
    h.writeUInt32LE(idx.vaddrs.length, 4);
    parts.push(h, Buffer.from(idx.vaddrs.buffer, idx.vaddrs.byteOffset, idx.vaddrs.byteLength), idx.hashes);
  }
  return Buffer.concat(parts);
}

/** Parses an index, refusing anything malformed (it comes from an image on disk). */
export function decodeIndex(buf: Buffer): PageIndex {
  const bad = (why: string): CedanaError => new CedanaError('IMAGE_INVALID', `${PAGE_INDEX} is malformed: ${why}`, { hint: 'the checkpoint chain is damaged; make a full dump (without --parent)' });
  if (buf.length < 8 || buf.readUInt32LE(0) !== INDEX_MAGIC) throw bad('bad magic');
  const n = buf.readUInt32LE(4);
  const index: PageIndex = new Map();
  let off = 8;
  for (let i = 0; i < n; i++) {
    if (off + 8 > buf.length) throw bad('truncated');
    const pid = buf.readUInt32LE(off);
    const count = buf.readUInt32LE(off + 4);
    off += 8;
    const need = count * (8 + HASH_BYTES);
    if (off + need > buf.length) throw bad('truncated');
    const vaddrs = new Float64Array(count);
    Buffer.from(vaddrs.buffer).set(buf.subarray(off, off + count * 8));
    off += count * 8;
    const hashes = Buffer.from(buf.subarray(off, off + count * HASH_BYTES));
    off += count * HASH_BYTES;
    for (let k = 1; k < count; k++) if (!(vaddrs[k]! > vaddrs[k - 1]!)) throw bad('addresses out of order');
    index.set(pid, { vaddrs, hashes });
  }
  if (off !== buf.length) throw bad('trailing bytes');
  return index;
}

const num = (v: unknown): number => (typeof v === 'bigint' ? Number(v) : typeof v === 'number' ? v : 0);

/** Reads a pages file front to back in large chunks, a page at a time. */
class PageReader {
  private buf = Buffer.alloc(0);
  private pos = 0;
  private fileOff = 0;
  private constructor(private readonly fh: Awaited<ReturnType<typeof open>>) {}
  static async open(path: string): Promise<PageReader> {
    return new PageReader(await open(path, 'r'));
  }
  async next(): Promise<Buffer> {
    if (this.pos + PAGE_SIZE > this.buf.length) {
      const chunk = Buffer.alloc(1024 * 1024);
      const rest = this.buf.subarray(this.pos);
      const { bytesRead } = await this.fh.read(chunk, 0, chunk.length, this.fileOff);
      this.fileOff += bytesRead;
      this.buf = Buffer.concat([rest, chunk.subarray(0, bytesRead)]);
      this.pos = 0;
      if (this.buf.length < PAGE_SIZE) throw new CedanaError('IMAGE_INVALID', 'a pages image is shorter than its pagemap says', { hint: 'the dump is damaged' });
    }
    const page = this.buf.subarray(this.pos, this.pos + PAGE_SIZE);
    this.pos += PAGE_SIZE;
    return page;
  }
  async close(): Promise<void> {
    await this.fh.close();
  }
}

/** Buffers the pages kept into a new pages file. */
class PageWriter {
  private parts: Buffer[] = [];
  private size = 0;
  private constructor(private readonly fh: Awaited<ReturnType<typeof open>>) {}
  static async open(path: string): Promise<PageWriter> {
    return new PageWriter(await open(path, 'w', 0o600));
  }
  async write(page: Buffer): Promise<void> {
    this.parts.push(Buffer.from(page));
    this.size += page.length;
    if (this.size >= 4 * 1024 * 1024) await this.flush();
  }
  async flush(): Promise<void> {
    if (this.parts.length === 0) return;
    await this.fh.write(Buffer.concat(this.parts));
    this.parts = [];
    this.size = 0;
  }
  async close(): Promise<void> {
    await this.flush();
    await this.fh.close();
  }
}

/**
 * Hashes every page of a fresh full dump in `dir` and, given the parent's index, rewrites each
 * pagemap and pages file so that unchanged pages are in the parent. Writes this image's index.
 * Without a parent it only indexes (the first, full checkpoint of a chain).
 */
export async function dedupeAgainstParent(dir: string, parent?: PageIndex, opts: { readOnly?: boolean } = {}): Promise<DedupeResult> {
  const index: PageIndex = new Map();
  let pagesWritten = 0;
  let pagesInParent = 0;
  const pagemaps = (await readdir(dir)).filter((n) => /^pagemap-\d+\.img$/.test(n));
  for (const name of pagemaps) {
    const pid = Number(/^pagemap-(\d+)\.img$/.exec(name)![1]);
    const img = decodeImage(await readFile(join(dir, name)), name);
    const head = img.entries[0] as MessageEntry;
    const pagesName = `pages-${num(head.value.pages_id)}.img`;
    const pidParent = parent?.get(pid);
    const vaddrs: number[] = [];
    const hashes: Buffer[] = [];
    const out: ImageEntry[] = [head];
    const reader = await PageReader.open(join(dir, pagesName));
    const writer = parent && !opts.readOnly ? await PageWriter.open(join(dir, `${pagesName}.new`)) : undefined;
    try {
      // Consecutive pages of the same fate become one entry.
      let run: { vaddr: number; n: number; flags: number } | undefined;
      const close = (): void => {
        if (!run) return;
        out.push({ type: 'pagemap_entry', value: { vaddr: BigInt(run.vaddr), compat_nr_pages: 0, flags: run.flags, nr_pages: BigInt(run.n) } });
        run = undefined;
      };
      const add = (vaddr: number, flags: number): void => {
        if (run && run.flags === flags && run.vaddr + run.n * PAGE_SIZE === vaddr) run.n++;
        else {
          close();
          run = { vaddr, n: 1, flags };
        }
      };
      for (const e of img.entries.slice(1) as MessageEntry[]) {
        const flags = num(e.value.flags);
        const base = num(e.value.vaddr);
        const n = num(e.value.nr_pages) || num(e.value.compat_nr_pages);
        for (let i = 0; i < n; i++) {
          const vaddr = base + i * PAGE_SIZE;
          if (flags & PE_PRESENT) {
            const page = await reader.next();
            const h = createHash('sha256').update(page).digest().subarray(0, HASH_BYTES);
            vaddrs.push(vaddr);
            hashes.push(h);
            if (!writer) continue;
            const before = lookup(pidParent, vaddr);
            if (before && before.equals(h)) {
              add(vaddr, PE_PARENT);
              pagesInParent++;
            } else {
              await writer.write(page);
              add(vaddr, flags);
              pagesWritten++;
            }
          } else {
            // Not in this dump's pages (a fresh dump has none such): carried over as it is.
            const h = lookup(pidParent, vaddr);
            if (h && flags & PE_PARENT) {
              vaddrs.push(vaddr);
              hashes.push(Buffer.from(h));
            }
            if (writer) add(vaddr, flags);
          }
        }
      }
      close();
      if (!writer) pagesWritten += vaddrs.length;
    } finally {
      await reader.close();
      await writer?.close();
    }
    if (writer) {
      await rename(join(dir, `${pagesName}.new`), join(dir, pagesName));
      await writeFile(join(dir, name), encodeImage({ ...img, entries: out } as DecodedImage), { mode: 0o600 });
    }
    const order = vaddrs.map((_, k) => k).sort((a, b) => vaddrs[a]! - vaddrs[b]!);
    index.set(pid, { vaddrs: Float64Array.from(order.map((k) => vaddrs[k]!)), hashes: Buffer.concat(order.map((k) => hashes[k]!)) });
  }
  if (!opts.readOnly) await writeFile(join(dir, PAGE_INDEX), encodeIndex(index), { mode: 0o600 });
  return { index, pagesWritten, pagesInParent };
}

/** A parent's page index: its own file, or (a full dump made without one) computed from its pages. */
export async function loadIndex(dir: string): Promise<PageIndex> {
  const buf = await readFile(join(dir, PAGE_INDEX)).catch(() => undefined);
  if (buf) return decodeIndex(buf);
  return (await dedupeAgainstParent(dir, undefined, { readOnly: true })).index;
}

/**
 * Checks the chain behind an incremental checkpoint before CRIU follows it: each `parent` link is
 * where the manifest says, each parent is still there, is the very image the child was made
 * against (its manifest's digest: BLAKE3, or sha256 in a child of format 1), and verifies in full.
 * Returns the parents' directories, nearest first.
 */
export async function verifyChain(dir: string, manifest: Manifest): Promise<string[]> {
  const chain: string[] = [];
  let here = dir;
  let m = manifest;
  while (m.parent) {
    if (chain.length >= 256) throw new CedanaError('IMAGE_INVALID', 'the checkpoint chain is longer than 256 links (or loops)', { hint: 'make a full dump' });
    const link = await readlink(join(here, PARENT_LINK)).catch(() => undefined);
    if (link !== m.parent.path) {
      throw new CedanaError('IMAGE_INVALID', `the parent link of ${here} is ${link === undefined ? 'missing' : `changed (${link})`}; the manifest names ${m.parent.path}`, {
        hint: 'an incremental checkpoint needs its parent link as it was made',
      });
    }
    const parentDir = resolve(here, m.parent.path);
    const text = await readFile(join(parentDir, MANIFEST_NAME)).catch(() => undefined);
    if (!text) {
      throw new CedanaError('IMAGE_INVALID', `the parent of ${here} is gone (${parentDir}): ${m.parent.pagesInParent} of its pages are there`, {
        hint: 'an incremental checkpoint needs every parent of its chain; keep them (dump --every --keep never removes one a kept checkpoint needs)',
        details: { missingParent: parentDir },
      });
    }
    const want = parentDigest(m.parent);
    if (hashBytes(want.algorithm, text) !== want.hex) {
      throw new CedanaError('IMAGE_INVALID', `the parent of ${here} (${parentDir}) is not the image it was made against`, {
        hint: 'the parent was replaced; restore from a full checkpoint',
      });
    }
    const pm = parseManifest(text.toString('utf8'));
    await verifyDir(parentDir, pm);
    chain.push(parentDir);
    here = parentDir;
    m = pm;
  }
  return chain;
}

export interface ParentRef {
  dir: string;
  manifest: Manifest;
  /** BLAKE3 of its cedana.json, as it was read: what the child names it by. */
  manifestBlake3: string;
  /** Its page index (hashes), when asked for. */
  index?: PageIndex;
}

/** The parent named by --parent, checked for use: a directory image of the same process. */
export async function openParent(path: string, pid: number, opts: { index: boolean } = { index: true }): Promise<ParentRef> {
  const dir = resolve(path);
  const text = await readFile(join(dir, MANIFEST_NAME)).catch(() => undefined);
  if (!text) {
    throw new CedanaError('USAGE', `--parent ${path}: not a cedana image directory`, { hint: 'give the directory of an earlier `cedana dump` of this process' });
  }
  const manifest = parseManifest(text.toString('utf8'));
  if (manifest.pid !== pid) {
    throw new CedanaError('USAGE', `--parent ${path} is a checkpoint of PID ${manifest.pid}, not of ${pid}`, { hint: 'give an earlier checkpoint of the same process' });
  }
  return { dir, manifest, manifestBlake3: hashBytes('blake3', text), index: opts.index ? await loadIndex(dir) : undefined };
}
