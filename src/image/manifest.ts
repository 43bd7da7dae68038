/**
 * cedana.json: what an image is, where and how it was made, and a checksum of every file.
 * validateManifest is strict because an image can come from anywhere (a download, another host).
 */
import { posix } from 'node:path';
import { CedanaError } from '../errors.js';
import type { ShippedEntry } from './ship.js';
import type { ManifestGpu } from '../gpu/cuda.js';

export const MANIFEST_NAME = 'cedana.json';
export const FORMAT = 'cedana-image';
/**
 * 2: every file's BLAKE3 (what cedana writes). 1: sha256, images of earlier versions, still read,
 * verified and restored.
 */
export const FORMAT_VERSION = 2;

export type HashAlgorithm = 'blake3' | 'sha256';

/** The digest each format version gives every file (and its parent's manifest). */
export const HASH_OF_VERSION: Readonly<Record<number, HashAlgorithm>> = { 1: 'sha256', 2: 'blake3' };

/** A file's size and digest (lower-case hex): BLAKE3 in format 2, sha256 in format 1. */
export type FileEntry = { size: number; blake3: string; sha256?: never } | { size: number; sha256: string; blake3?: never };

/** The algorithm and digest of an entry. */
export function fileDigest(f: FileEntry): { algorithm: HashAlgorithm; hex: string } {
  return f.blake3 !== undefined ? { algorithm: 'blake3', hex: f.blake3 } : { algorithm: 'sha256', hex: f.sha256! };
}

/** The algorithm of an image's checksums. */
export const hashAlgorithmOf = (m: Pick<Manifest, 'formatVersion'>): HashAlgorithm => HASH_OF_VERSION[m.formatVersion] ?? 'blake3';

export interface ManifestProcess {
  pid: number;
  ppid: number;
  comm: string;
  argv: string[];
}

export interface ManifestOptions {
  shellJob: boolean;
  tcpEstablished: boolean;
  tcpClose: boolean;
  fileLocks: boolean;
  externalUnix: number[];
  leaveRunning: boolean;
  networkLock: string;
}

export interface ManifestSocket {
  state: string;
  local: string;
  remote: string;
}

export interface Manifest {
  format: typeof FORMAT;
  formatVersion: number;
  createdAt: string;
  cedanaVersion: string;
  criuVersion: string;
  kernel: string;
  arch: string;
  cpuFlags: string[];
  hostname: string;
  pid: number;
  processes: ManifestProcess[];
  memoryBytes: number;
  options: ManifestOptions;
  tcp: ManifestSocket[];
  notes: string[];
  files: Record<string, FileEntry>;
  /** Files and directories the image carries (--ship-files); absent in images that carry none. */
  shipped?: ShippedEntry[];
  /** An incremental checkpoint: the image its unchanged pages are in (the `parent` link). */
  parent?: ManifestParent;
  /** The tree used the GPU: its GPUs, driver and device memory (moved through host memory). */
  gpu?: ManifestGpu;
  /** A container's image: its id, runtime, bundle and what of its root file system travels. */
  container?: ManifestContainer;
  /**
   * checkpointctl: the image is a container checkpoint archive in the layout Kubernetes, CRI-O and
   * Podman share (CRIU's images under checkpoint/, config.dump, spec.dump, rootfs-diff.tar…), this
   * manifest beside them; absent for cedana's own layout.
   */
  layout?: 'checkpointctl';
}

export interface ManifestContainer {
  id: string;
  runtime: 'runc' | 'crun';
  /** The bundle's absolute path where it was dumped (re-created there where missing). */
  bundle: string;
  /** The bundle's config.json, as an image file. */
  config: string;
  /**
   * none: the root file system is expected where it was (`path`); full: the image carries all of it
   * (`image`, a tar of `bytes` bytes), so the container restores on a host that has nothing of it;
   * changes: it was an overlay, and the image carries its upper directory (the container's changes)
   * while the base image (`base`, the lower directories) must be there.
   */
  rootfs: { mode: 'none' | 'full' | 'changes'; path: string; image?: string; bytes?: number; base?: string[]; upper?: string; work?: string };
}

/**
 * The digest of the parent's cedana.json, whatever the parent's own format: a parent replaced by
 * another image is refused. BLAKE3 in format 2 (manifestBlake3), sha256 in format 1 (manifestSha256).
 */
export type ParentIdentity = { manifestBlake3: string; manifestSha256?: never } | { manifestSha256: string; manifestBlake3?: never };

export type ManifestParent = ParentIdentity & {
  /** The `parent` link's target, relative to this image's directory. */
  path: string;
  pagesInParent: number;
  pagesWritten: number;
};

/** The algorithm and digest a child names its parent's manifest by. */
export function parentDigest(p: ParentIdentity): { algorithm: HashAlgorithm; hex: string } {
  return p.manifestBlake3 !== undefined ? { algorithm: 'blake3', hex: p.manifestBlake3 } : { algorithm: 'sha256', hex: p.manifestSha256! };
}

function invalid(why: string): CedanaError {
  return new CedanaError('IMAGE_INVALID', `invalid manifest (${MANIFEST_NAME}): ${why}`, {
    hint: 'the image is damaged or was not made by cedana; make a new dump',
  });
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isNat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
const isStr = (v: unknown): v is string => typeof v === 'string';
const isStrArr = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);
const isHex256 = (v: unknown): v is string => isStr(v) && /^[0-9a-f]{64}$/.test(v);

/** An image-relative file name that cannot point outside the image directory. */
export function isSafeRelativePath(p: string): boolean {
  if (p === '' || p.length > 4096 || p.includes('\0') || p.includes('\\')) return false;
  if (p.startsWith('/')) return false;
  const norm = posix.normalize(p);
  if (norm !== p) return false;
  return !norm.split('/').some((c) => c === '..' || c === '.' || c === '');
}

export function validateManifest(raw: unknown): Manifest {
  if (!isObj(raw)) throw invalid('not a JSON object');
  if (raw.format !== FORMAT) throw invalid(`format is ${JSON.stringify(raw.format)}, expected "${FORMAT}"`);
  if (!isNat(raw.formatVersion)) throw invalid('formatVersion missing');
  if (raw.formatVersion > FORMAT_VERSION) {
    throw new CedanaError('IMAGE_INCOMPATIBLE', `image format version ${raw.formatVersion} is newer than this cedana understands (${FORMAT_VERSION})`, {
      hint: 'upgrade cedana on this host',
    });
  }
  const algorithm = HASH_OF_VERSION[raw.formatVersion];
  if (!algorithm) throw invalid(`formatVersion ${raw.formatVersion} was never written by cedana (1: sha256 checksums, 2: BLAKE3)`);
  const other: HashAlgorithm = algorithm === 'blake3' ? 'sha256' : 'blake3';
  for (const k of ['createdAt', 'cedanaVersion', 'criuVersion', 'kernel', 'arch', 'hostname'] as const) {
    if (!isStr(raw[k])) throw invalid(`${k} missing or not a string`);
  }
  if (!isStrArr(raw.cpuFlags)) throw invalid('cpuFlags must be a list of strings');
  if (!isNat(raw.pid) || raw.pid === 0) throw invalid('pid missing');
  if (!isNat(raw.memoryBytes)) throw invalid('memoryBytes missing');
  if (!Array.isArray(raw.processes) || raw.processes.length === 0) throw invalid('processes must be a non-empty list');
  for (const p of raw.processes) {
    if (!isObj(p) || !isNat(p.pid) || !isNat(p.ppid) || !isStr(p.comm) || !isStrArr(p.argv)) throw invalid('malformed process entry');
  }
  if (!raw.processes.some((p) => (p as ManifestProcess).pid === raw.pid)) throw invalid('root pid is not among processes');
  const o = raw.options;
  if (!isObj(o)) throw invalid('options missing');
  for (const k of ['shellJob', 'tcpEstablished', 'tcpClose', 'fileLocks', 'leaveRunning'] as const) {
    if (typeof o[k] !== 'boolean') throw invalid(`options.${k} must be true or false`);
  }
  if (!Array.isArray(o.externalUnix) || !o.externalUnix.every(isNat)) throw invalid('options.externalUnix must be a list of inodes');
  if (!isStr(o.networkLock)) throw invalid('options.networkLock missing');
  if (!Array.isArray(raw.tcp) || !raw.tcp.every((s) => isObj(s) && isStr(s.state) && isStr(s.local) && isStr(s.remote))) {
    throw invalid('tcp must be a list of sockets');
  }
  if (!isStrArr(raw.notes)) throw invalid('notes must be a list of strings');
  if (!isObj(raw.files) || Object.keys(raw.files).length === 0) throw invalid('files must list the image files');
  for (const [name, f] of Object.entries(raw.files)) {
    if (!isSafeRelativePath(name) || name === MANIFEST_NAME) throw invalid(`unsafe file name ${JSON.stringify(name)}`);
    if (!isObj(f) || !isNat(f.size) || !isHex256(f[algorithm]) || other in f) {
      throw invalid(`bad checksum entry for ${name}: format ${raw.formatVersion} gives each file its size and ${algorithm} (64 lower-case hex digits)${isObj(f) && other in f ? `, not ${other}` : ''}`);
    }
  }
  if (raw.layout !== undefined && raw.layout !== 'checkpointctl') throw invalid(`layout ${JSON.stringify(raw.layout)}: cedana knows checkpointctl`);
  const inventory = raw.layout === 'checkpointctl' ? 'checkpoint/inventory.img' : 'inventory.img';
  if (!Object.keys(raw.files).includes(inventory)) throw invalid(`${inventory} is not listed: not a CRIU image`);
  if (raw.shipped !== undefined) validateShipped(raw.shipped, raw.files);
  if (raw.parent !== undefined) {
    const pp = raw.parent;
    const id = algorithm === 'blake3' ? 'manifestBlake3' : 'manifestSha256';
    const otherId = algorithm === 'blake3' ? 'manifestSha256' : 'manifestBlake3';
    if (!isObj(pp) || !isStr(pp.path) || pp.path === '' || pp.path.length > 4096 || /[\n\0]/.test(pp.path) || !isHex256(pp[id]) || otherId in pp || !isNat(pp.pagesInParent) || !isNat(pp.pagesWritten)) {
      throw invalid(`parent must name the parent image (path, ${id}, page counts)`);
    }
  }
  if (raw.gpu !== undefined) validateGpu(raw.gpu, raw.processes as ManifestProcess[]);
  if (raw.container !== undefined) validateContainer(raw.container, raw.files, raw.layout === 'checkpointctl');
  return raw as unknown as Manifest;
}

function validateContainer(c: unknown, files: Record<string, unknown>, checkpointctl: boolean): void {
  const absolute = (p: unknown): boolean => isStr(p) && p.startsWith('/') && p.length < 4096 && !/[\n\0]/.test(p) && !p.split('/').includes('..');
  if (!isObj(c) || !isStr(c.id) || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(c.id)) throw invalid('container.id must be a container id');
  if (c.runtime !== 'runc' && c.runtime !== 'crun') throw invalid('container.runtime must be runc or crun');
  if (!absolute(c.bundle)) throw invalid('container.bundle must be an absolute path');
  if (checkpointctl) {
    // The layout's own files say the rest (spec.dump, rootfs-diff.tar, deleted.files).
    if (c.config !== 'spec.dump' || !isObj(files['spec.dump'])) throw invalid('container.config must be the archive file spec.dump');
    if (!isObj(c.rootfs) || !['none', 'full', 'changes'].includes(c.rootfs.mode as string) || !absolute(c.rootfs.path)) throw invalid('container.rootfs must give mode (none, full, changes) and an absolute path');
    return;
  }
  if (c.config !== 'container/config.json' || !isObj(files['container/config.json'])) throw invalid('container.config must be the image file container/config.json');
  const r = c.rootfs;
  if (!isObj(r) || (r.mode !== 'none' && r.mode !== 'full' && r.mode !== 'changes') || !absolute(r.path)) throw invalid('container.rootfs must give mode (none, full, changes) and an absolute path');
  if (r.mode === 'full' && (r.image !== 'container/rootfs.tar' || !isObj(files['container/rootfs.tar']) || !isNat(r.bytes))) throw invalid('container.rootfs: a full root file system is the image file container/rootfs.tar');
  if (r.mode === 'changes') {
    if (r.image !== 'container/rootfs-changes.tar' || !isObj(files['container/rootfs-changes.tar']) || !isNat(r.bytes)) throw invalid('container.rootfs: the changes are the image file container/rootfs-changes.tar');
    if (!Array.isArray(r.base) || r.base.length === 0 || !r.base.every(absolute) || !absolute(r.upper) || !absolute(r.work) || r.base.some((b) => /[,:]/.test(b as string)) || /[,:]/.test(`${r.upper}${r.work}`)) {
      throw invalid('container.rootfs: changes need the base (lower) directories and the upper and work directories, absolute, without , or :');
    }
  }
}

function validateGpu(g: unknown, processes: ManifestProcess[]): void {
  const uuid = (v: unknown): boolean => isStr(v) && /^[A-Za-z0-9-]{1,128}$/.test(v);
  if (!isObj(g) || !isStr(g.driverVersion) || !isNat(g.memoryUsedMiB)) throw invalid('gpu must give driverVersion and memoryUsedMiB');
  if (!Array.isArray(g.devices) || !g.devices.every((d) => isObj(d) && uuid(d.uuid) && isStr(d.name) && isNat(d.memoryTotalMiB))) throw invalid('gpu.devices must list uuid, name, memoryTotalMiB');
  if (!Array.isArray(g.processes) || g.processes.length === 0) throw invalid('gpu.processes must list the CUDA processes');
  for (const p of g.processes) {
    if (!isObj(p) || !isNat(p.pid) || !isNat(p.memoryUsedMiB) || !Array.isArray(p.uuids) || !p.uuids.every(uuid)) throw invalid('malformed gpu.processes entry');
    if (!processes.some((x) => x.pid === p.pid)) throw invalid(`gpu.processes names PID ${p.pid}, which is not in the image`);
  }
}

/** Shipped entries go where they say on restore: each must be a clean absolute path, and a file's copy one of the image's files. */
function validateShipped(shipped: unknown, files: Record<string, unknown>): void {
  if (!Array.isArray(shipped)) throw invalid('shipped must be a list');
  const seen = new Set<string>();
  for (const e of shipped) {
    if (!isObj(e) || !isStr(e.path) || !e.path.startsWith('/') || e.path === '/' || posix.normalize(e.path) !== e.path || /[\n\0]/.test(e.path)) {
      throw invalid(`shipped entry with an unsafe path ${JSON.stringify(isObj(e) ? e.path : e)}`);
    }
    if (seen.has(e.path)) throw invalid(`${e.path} is shipped twice`);
    seen.add(e.path);
    if (e.kind !== 'file' && e.kind !== 'dir') throw invalid(`shipped ${e.path}: kind must be file or dir`);
    for (const k of ['mode', 'uid', 'gid', 'size', 'mtimeMs'] as const) if (!isNat(e[k])) throw invalid(`shipped ${e.path}: ${k} missing`);
    if (e.kind === 'file') {
      const f = files[e.image as string];
      if (!isStr(e.image) || !e.image.startsWith('shipped/') || !isObj(f) || f.size !== e.size) throw invalid(`shipped ${e.path}: its copy is not among the image files`);
    }
  }
}

export function parseManifest(text: string): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw invalid(`not valid JSON (${(e as Error).message})`);
  }
  return validateManifest(raw);
}
