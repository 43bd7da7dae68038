/**
 * Files that travel with an image (--ship-files): open files, mapped files and working directories
 * that may not exist where the image is restored — a log in the source's private /tmp, a job's
 * scratch directory. They are copied into the image (shipped/N) while the tree is frozen, so their
 * contents match the offsets CRIU recorded, listed in the manifest with owner, mode and mtime, and
 * put in place on restore only where nothing is there: an existing file is never overwritten.
 *
 * Deleted-but-open files are CRIU's own business (it stores them as "ghost" files); cedana only
 * raises CRIU's ghost limit to the shipping limit and refuses, before freezing, one that is larger.
 */
import { chmod, chown, copyFile, lstat, mkdir, readdir, readFile, readlink, rename, rm, rmdir, stat, utimes } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import type { Stats } from 'node:fs';
import { CedanaError } from '../errors.js';
import { PROC } from '../proc/procfs.js';
import { mappedPaths } from '../migrate/footprint.js';
import { remapPath, type PathMap } from './remap-args.js';

export type ShipPolicy = 'auto' | 'all' | 'none';

/** Each file shipped by default is at most this big… */
export const SHIP_FILE_LIMIT = 64 * 1024 * 1024;
/** …and all of them together at most this; larger ones need --ship-files or --map-path. */
export const SHIP_TOTAL_LIMIT = 256 * 1024 * 1024;
/** CRIU's own default limit for deleted-but-open files, kept with --no-ship-files. */
export const CRIU_GHOST_LIMIT = 1024 * 1024;

/** One file or directory the image carries, as listed in the manifest. */
export interface ShippedEntry {
  /** Absolute path the process had it at, on the dumping host. */
  path: string;
  kind: 'file' | 'dir';
  mode: number;
  uid: number;
  gid: number;
  /** Bytes (0 for a directory). */
  size: number;
  mtimeMs: number;
  /** Image-relative name of the copy (files only), e.g. shipped/0. */
  image?: string;
}

/** A file or directory a process uses, with where to read it from. */
export interface Candidate {
  path: string;
  kind: 'file' | 'dir';
  size: number;
  /** Why the process needs it: an open descriptor, a mapping, a working directory. */
  use: 'open' | 'mapped' | 'cwd' | 'exe';
  /** A path to read it through that works whatever mount namespace the process is in. */
  source: string;
  /** The process's root as seen from here (/proc/<pid>/root): its ancestors are read through it. */
  root: string;
}

/** System software and configuration: never shipped by default (install the same software there). */
export function isSystemPath(p: string): boolean {
  return /^\/(usr|lib|lib32|lib64|libx32|bin|sbin|etc|opt|nix|snap|boot)(\/|$)/.test(p);
}

/** Paths no file can be shipped to: pseudo file systems (but /dev/shm) and anything a shell line would break on. Pure. */
export function isShippablePath(p: string): boolean {
  return p.startsWith('/') && !p.endsWith('/') && !/[\n\0]/.test(p) && posix.normalize(p) === p && !/^\/(proc|sys)(\/|$)|^\/dev(\/(?!shm\/)|$)/.test(p);
}

export interface ShipPlan {
  ship: Candidate[];
  /** Left out for size (or by --no-ship-files); system paths are left out silently. */
  left: Candidate[];
}

/**
 * Which candidates travel. auto: every non-system file up to SHIP_FILE_LIMIT, smallest first, up to
 * SHIP_TOTAL_LIMIT in all; all: every candidate; none: nothing. Directories always travel unless
 * none. Pure.
 */
export function planShipping(cands: Candidate[], policy: ShipPolicy, limits = { file: SHIP_FILE_LIMIT, total: SHIP_TOTAL_LIMIT }): ShipPlan {
  const unique = [...new Map(cands.filter((c) => isShippablePath(c.path)).map((c) => [c.path, c])).values()];
  if (policy === 'none') return { ship: [], left: unique.filter((c) => c.kind === 'file') };
  if (policy === 'all') return { ship: unique, left: [] };
  const ship: Candidate[] = [];
  const left: Candidate[] = [];
  let total = 0;
  for (const c of unique.filter((c) => !isSystemPath(c.path)).sort((a, b) => a.size - b.size || a.path.localeCompare(b.path))) {
    if (c.kind === 'dir') ship.push(c);
    else if (c.size <= limits.file && total + c.size <= limits.total) {
      ship.push(c);
      total += c.size;
    } else left.push(c);
  }
  return { ship: ship.sort((a, b) => a.path.localeCompare(b.path)), left };
}

/** Every ancestor directory of path, outermost first, '/' excluded. Pure. */
export function ancestors(path: string): string[] {
  const out: string[] = [];
  for (let d = posix.dirname(path); d !== '/' && d !== '.'; d = posix.dirname(d)) out.unshift(d);
  return out;
}

/**
 * What the tree uses that a restore elsewhere may lack: regular files open by descriptor, files
 * mapped into memory, executables and working directories (deleted files excluded: CRIU carries them).
 */
export async function shipCandidates(pids: number[]): Promise<Candidate[]> {
  const out: Candidate[] = [];
  for (const pid of pids) {
    const root = `${PROC}/${pid}/root`;
    const add = async (path: string, use: Candidate['use'], source: string): Promise<void> => {
      if (!path.startsWith('/') || path.endsWith(' (deleted)')) return;
      const st = await stat(source).catch(() => undefined);
      if (!st) return;
      if (st.isFile()) out.push({ path, kind: 'file', size: st.size, use, source, root });
      else if (st.isDirectory() && use === 'cwd') out.push({ path, kind: 'dir', size: 0, use, source, root });
    };
    const cwd = await readlink(`${PROC}/${pid}/cwd`).catch(() => '');
    if (cwd && cwd !== '/') await add(cwd, 'cwd', `${root}${cwd}`);
    const exe = await readlink(`${PROC}/${pid}/exe`).catch(() => '');
    if (exe) await add(exe, 'exe', `${root}${exe}`);
    const maps = await readFile(`${PROC}/${pid}/maps`, 'utf8').catch(() => '');
    for (const p of new Set(mappedPaths(maps))) await add(p, 'mapped', `${root}${p}`);
    const fds = await readdir(`${PROC}/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      const target = await readlink(`${PROC}/${pid}/fd/${fd}`).catch(() => '');
      if (target.startsWith('/')) await add(target, 'open', `${PROC}/${pid}/fd/${fd}`);
    }
  }
  return out;
}

/** Deleted files the tree holds open, with their sizes: CRIU must put them in the image. */
export async function deletedOpenFiles(pids: number[]): Promise<{ path: string; size: number }[]> {
  const out = new Map<string, number>();
  for (const pid of pids) {
    for (const fd of await readdir(`${PROC}/${pid}/fd`).catch(() => [] as string[])) {
      const target = await readlink(`${PROC}/${pid}/fd/${fd}`).catch(() => '');
      if (!target.startsWith('/') || !target.endsWith(' (deleted)')) continue;
      const st = await stat(`${PROC}/${pid}/fd/${fd}`).catch(() => undefined);
      if (st?.isFile()) out.set(target.slice(0, -' (deleted)'.length), st.size);
    }
  }
  return [...out].map(([path, size]) => ({ path, size }));
}

/** CRIU's --ghost-limit for a policy, or a refusal (before anything is frozen) of a file over it. */
export function ghostLimit(deleted: { path: string; size: number }[], policy: ShipPolicy): number {
  const limit = policy === 'all' ? Math.max(CRIU_GHOST_LIMIT, ...deleted.map((d) => d.size)) : policy === 'auto' ? SHIP_FILE_LIMIT : CRIU_GHOST_LIMIT;
  const over = deleted.filter((d) => d.size > limit);
  if (over.length > 0) {
    throw new CedanaError('FILE_TOO_LARGE', `deleted-but-open file${over.length > 1 ? 's' : ''} over the ${mib(limit)} limit: ${over.map((d) => `${d.path} (${mib(d.size)})`).join(', ')}`, {
      hint: policy === 'none' ? 'drop --no-ship-files, or add --ship-files to carry it whatever its size' : 'add --ship-files to carry it whatever its size',
      details: { files: over },
    });
  }
  return limit;
}

/**
 * Copies the planned files into dir/shipped/ (the tree must be frozen) and returns the manifest's
 * entries: each file, and every ancestor directory, with owner, mode and mtime.
 */
export async function copyShipped(plan: Candidate[], dir: string): Promise<ShippedEntry[]> {
  if (plan.length === 0) return [];
  await mkdir(join(dir, 'shipped'), { mode: 0o700 });
  const entries = new Map<string, ShippedEntry>();
  let n = 0;
  for (const c of plan) {
    // The plan was made before the freeze: a descriptor may have been closed (or reused) since.
    // What the frozen tree holds now is what CRIU saw.
    if (c.use === 'open' && (await readlink(c.source).catch(() => '')) !== c.path) continue;
    const st = await stat(c.source).catch(() => undefined);
    if (!st || (c.kind === 'dir' ? !st.isDirectory() : !st.isFile())) continue;
    // Ancestors are read through the process's root (its view of the file system).
    for (const a of ancestors(c.path)) {
      if (entries.has(a)) continue;
      const ast = await stat(`${c.root}${a}`).catch(() => undefined);
      if (ast?.isDirectory()) entries.set(a, entryOf(a, 'dir', ast));
    }
    if (c.kind === 'dir') {
      entries.set(c.path, entryOf(c.path, 'dir', st));
      continue;
    }
    const image = `shipped/${n++}`;
    await copyFile(c.source, join(dir, image));
    const copied = await stat(join(dir, image));
    if (copied.size !== st.size) throw new CedanaError('IO_ERROR', `${c.path} changed size while it was copied into the image`, { hint: 'a process outside the tree writes to it; dump again' });
    entries.set(c.path, { ...entryOf(c.path, 'file', st), image });
  }
  return [...entries.values()].sort((a, b) => a.path.localeCompare(b.path));
}

/** A manifest entry for path from its stat: owner, mode and mtime kept; a directory's size is 0. */
function entryOf(path: string, kind: ShippedEntry['kind'], st: Stats): ShippedEntry {
  return { path, kind, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, size: kind === 'dir' ? 0 : st.size, mtimeMs: Math.trunc(st.mtimeMs) };
}

/** Where an entry goes on restore: its path, or under NEW for --map-path OLD=NEW. Pure. */
export const destination = (e: ShippedEntry, maps: PathMap[]): string => remapPath(e.path, maps) ?? e.path;

export interface Placement {
  /** Files and directories created, in creation order. */
  created: string[];
  /** Files already there with the size of the shipped copy (left as they are). */
  present: string[];
  /** Removes what was created (after a failed restore). */
  undo(): Promise<void>;
}

/**
 * Puts the shipped entries of an image in place where nothing is: directories first (outermost
 * first), then each file through a temporary name and a rename, so no half-written file is ever
 * seen under its name. A file already there is kept if its size is the shipped one's; another size
 * is a FILE_CONFLICT, after everything created so far is removed.
 */
export async function placeShipped(imageDir: string, entries: ShippedEntry[], maps: PathMap[]): Promise<Placement> {
  const created: string[] = [];
  const present: string[] = [];
  const undo = async (): Promise<void> => {
    for (const p of [...created].reverse()) await rm(p, { force: true }).catch(() => rmdir(p).catch(() => undefined));
  };
  try {
    const dirs = entries.filter((e) => e.kind === 'dir').sort((a, b) => a.path.split('/').length - b.path.split('/').length);
    for (const e of dirs) {
      const to = destination(e, maps);
      const st = await lstat(to).catch(() => undefined);
      if (st?.isDirectory()) continue;
      if (st) throw conflict(`${to} exists and is not a directory`);
      await mkdir(to, { mode: e.mode & 0o777 }).catch((err: NodeJS.ErrnoException) => {
        throw err.code === 'ENOENT' ? conflict(`the parent directory of ${to} does not exist`) : err;
      });
      created.push(to);
      await chown(to, e.uid, e.gid);
      await chmod(to, e.mode & 0o7777);
    }
    for (const e of entries.filter((x) => x.kind === 'file')) {
      const to = destination(e, maps);
      const st = await lstat(to).catch(() => undefined);
      if (st) {
        if (st.isFile() && st.size === e.size) {
          present.push(to);
          continue;
        }
        throw conflict(st.isFile() ? `${to} exists with ${st.size} bytes; the image carries it with ${e.size}` : `${to} exists and is not a regular file`);
      }
      const { randomBytes } = await import('node:crypto'); // loaded only when a file is placed
      const tmp = join(dirname(to), `.cedana-${randomBytes(6).toString('hex')}`);
      await copyFile(join(imageDir, e.image!), tmp).catch((err: NodeJS.ErrnoException) => {
        throw err.code === 'ENOENT' ? conflict(`the parent directory of ${to} does not exist`) : err;
      });
      try {
        await chown(tmp, e.uid, e.gid);
        await chmod(tmp, e.mode & 0o7777);
        await utimes(tmp, new Date(e.mtimeMs), new Date(e.mtimeMs));
        await rename(tmp, to);
      } catch (err) {
        await rm(tmp, { force: true });
        throw err;
      }
      created.push(to);
    }
  } catch (e) {
    await undo();
    throw e;
  }
  return { created, present, undo };
}

function conflict(why: string): CedanaError {
  return new CedanaError('FILE_CONFLICT', `a file the image carries cannot be put in place: ${why}`, {
    hint: 'move the existing file away, or restore the image\'s files elsewhere with --map-path OLD=NEW',
  });
}

const mib = (n: number): string => `${(n / 1048576).toFixed(n < 1048576 ? 2 : 0)} MiB`;

/** The plan in words, for the command's decisions. Pure. */
export function shippingNotes(plan: ShipPlan): string[] {
  const notes: string[] = [];
  const files = plan.ship.filter((c) => c.kind === 'file');
  if (plan.ship.length > 0) {
    const bytes = files.reduce((a, c) => a + c.size, 0);
    notes.push(`shipping ${files.length} file(s) (${mib(bytes)}) and ${plan.ship.length - files.length} dir(s) with the image: ${plan.ship.slice(0, 5).map(describeShipped).join(', ')}${plan.ship.length > 5 ? ', …' : ''}`);
  }
  if (plan.left.length > 0) {
    notes.push(`not shipped (over the limit or --no-ship-files; a restore elsewhere needs them there or --map-path): ${plan.left.slice(0, 5).map(describeShipped).join(', ')}${plan.left.length > 5 ? ', …' : ''}`);
  }
  return notes;
}

export const describeShipped = (e: Pick<Candidate, 'path' | 'kind' | 'size'>): string => (e.kind === 'dir' ? `${e.path}/` : `${e.path} (${mib(e.size)})`);
