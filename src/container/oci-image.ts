/**
 * Checkpoint images: an OCI image whose one layer is a container checkpoint archive unpacked at `/`
 * (checkpoint/, config.dump, spec.dump, …), written as an `oci-archive` (a tar of an OCI image
 * layout: oci-layout, index.json, blobs/sha256/…) that `podman load`, `podman pull oci-archive:` and
 * `skopeo copy oci-archive:` read (containerd's `ctr images import` reads the same layout). The markers that make the engines treat
 * it as a checkpoint are OCI manifest annotations: Podman's `io.podman.annotations.checkpoint.*`
 * (runtime.name is required and must name the host's runtime), CRI-O's
 * `io.kubernetes.cri-o.annotations.checkpoint.*` (name marks it) and checkpointctl's
 * `org.criu.checkpoint.*` (container.name, read by containerd 2.1–2.3 from the blob its image
 * points to). All three are set, on the manifest and again on index.json's manifest descriptor and
 * the index itself. docs/design/checkpoint-archive-format.md §4–5 has the sources.
 *
 * The layer is written once, straight into the output: the outer tar's header for the layer blob
 * is written with a placeholder name (its size is known from the walk), the layer streams after it
 * while sha256 is computed, then the header is rewritten in place with the digest. Nothing of the
 * checkpoint is held in memory beyond one read buffer, and it costs no second copy on disk.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { constants } from 'node:fs';
import { link, lstat, open, readdir, readFile, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { machine, release } from 'node:os';
import { basename, dirname, join, relative, resolve, isAbsolute } from 'node:path';
import { Header, Pax } from 'tar';
import { CedanaError, toCedanaError } from '../errors.js';
import { parseCriuVersion, parseVersionText, type Version } from '../criu/version.js';
import { execFileResult } from '../util/exec.js';
import { findOnPath, pathExists } from '../util/paths.js';
import { readArchiveMeta, type ArchiveMeta, type Engine } from './ckpt-archive.js';

export const MEDIA_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const MEDIA_INDEX = 'application/vnd.oci.image.index.v1+json';
export const MEDIA_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const MEDIA_LAYER = 'application/vnd.oci.image.layer.v1.tar';

export const ANNOTATION_REF_NAME = 'org.opencontainers.image.ref.name';
export const ANNOTATION_CREATED = 'org.opencontainers.image.created';
/** The key each engine looks for to treat an image as a checkpoint. */
export const PODMAN_MARKER = 'io.podman.annotations.checkpoint.runtime.name';
export const CRIO_MARKER = 'io.kubernetes.cri-o.annotations.checkpoint.name';
export const CONTAINERD_MARKER = 'org.criu.checkpoint.container.name';

const PODMAN = 'io.podman.annotations.checkpoint.';
const CRIO = 'io.kubernetes.cri-o.annotations.checkpoint.';
const CRIU = 'org.criu.checkpoint.';

/** What the annotations say about the host that checkpointed (this one where the archive does not say). */
export interface CheckpointHost {
  /** Go's naming (amd64, arm64), as Podman writes it. */
  arch: string;
  kernel: string;
  /** 'v1' or 'v2'. */
  cgroupVersion?: string;
  distribution?: { name?: string; version?: string };
  /** CRIU's version as Podman writes it: major*10000 + minor*100 + patch (4.2.1 → "40201"). */
  criuVersion?: string;
  /** The engine's version, where the archive records it (cedana's own). */
  engineVersion?: string;
}

export interface BuildImageOptions {
  /** The unpacked checkpoint archive (checkpoint/, config.dump, spec.dump, …). */
  dir: string;
  /** The oci-archive to write. */
  output: string;
  /** Names the image: `org.opencontainers.image.ref.name` on index.json's descriptor. */
  tag?: string;
  /** Replace an existing output file. */
  force?: boolean;
  /** The archive's metadata (read from dir when not given). */
  meta?: ArchiveMeta;
  /** Host facts for the annotations (found here when not given). */
  host?: CheckpointHost;
  now?: Date;
  signal?: AbortSignal;
  /** Bytes of the layer written so far, of the total. */
  onProgress?: (bytes: number, total: number) => void;
}

export interface BuiltImage {
  path: string;
  tag: string | null;
  /** The manifest's digest (sha256:…): the image's digest in a registry. */
  digest: string;
  configDigest: string;
  layerDigest: string;
  layerBytes: number;
  /** The layer's entries (files and directories), as named in it. */
  entries: number;
  annotations: Record<string, string>;
}

/** Go's GOARCH for Node's os.machine() / uname -m. Pure. */
export function goArch(m: string): string {
  const map: Record<string, string> = {
    x86_64: 'amd64', amd64: 'amd64', aarch64: 'arm64', arm64: 'arm64', armv7l: 'arm', armv6l: 'arm', armv8l: 'arm',
    i386: '386', i486: '386', i586: '386', i686: '386', ppc64le: 'ppc64le', ppc64: 'ppc64', s390x: 's390x', riscv64: 'riscv64',
    mips64: 'mips64', loongarch64: 'loong64',
  };
  return map[m] ?? m;
}

/** CRIU's version as Podman and go-criu write it (4.2.1 → "40201"). Pure. */
export function criuVersionNumber(v: Version): string {
  return String(v.major * 10000 + v.minor * 100 + v.patch);
}

/** ID and VERSION_ID of os-release text (Podman's distribution name and version). Pure. */
export function parseOsRelease(text: string): { name?: string; version?: string } {
  const field = (k: string): string | undefined => {
    const m = new RegExp(`^${k}=(.*)$`, 'm').exec(text);
    if (!m) return undefined;
    const v = m[1]!.trim().replace(/^(["'])(.*)\1$/, '$2');
    return v || undefined;
  };
  return { name: field('ID'), version: field('VERSION_ID') };
}

/**
 * A reference an image can be named by (docker/distribution's grammar): [domain[:port]/]path[:tag],
 * path components lower case. Pure.
 */
export function isValidImageName(ref: string): boolean {
  if (ref.length === 0 || ref.length > 255 + 129) return false;
  const domainComponent = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
  const domain = `${domainComponent}(?:\\.${domainComponent})*(?::[0-9]+)?`;
  const component = '[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*';
  const re = new RegExp(`^(?:${domain}/)?${component}(?:/${component})*(?::[\\w][\\w.-]{0,127})?$`);
  if (!re.test(ref)) return false;
  const name = ref.replace(/:[\w][\w.-]{0,127}$/, '');
  return name.length <= 255;
}

/** This host's facts for the annotations; what cannot be found is left out. */
export async function thisHost(): Promise<CheckpointHost> {
  const host: CheckpointHost = { arch: goArch(machine()), kernel: release() };
  // Podman: cgroup v2 when /sys/fs/cgroup is the unified hierarchy (its root has cgroup.controllers).
  if (await pathExists('/sys/fs/cgroup')) host.cgroupVersion = (await pathExists('/sys/fs/cgroup/cgroup.controllers')) ? 'v2' : 'v1';
  for (const f of ['/etc/os-release', '/usr/lib/os-release']) {
    const text = await readFile(f, 'utf8').catch(() => undefined);
    if (text !== undefined) {
      host.distribution = parseOsRelease(text);
      break;
    }
  }
  const criu = await findOnPath(process.env.CEDANA_CRIU ?? 'criu');
  if (criu) {
    const r = await execFileResult(criu, ['--version'], { timeout: 10_000 });
    const v = r.exitCode === 0 ? parseCriuVersion(r.stdout) : undefined;
    if (v) host.criuVersion = criuVersionNumber(v);
  }
  return host;
}

/**
 * What cedana's own manifest (cedana.json, in archives cedana writes) says of the host that made
 * the checkpoint, over `host`. Anything unreadable is ignored: the manifest is only informative here.
 */
export async function recordedHost(dir: string, host: CheckpointHost): Promise<CheckpointHost> {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(await readFile(join(dir, 'cedana.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    return host;
  }
  if (!m || typeof m !== 'object') return host;
  const s = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
  const criu = s(m.criuVersion) ? parseVersionText(s(m.criuVersion)!) : undefined;
  return {
    ...host,
    ...(s(m.arch) ? { arch: goArch(s(m.arch)!) } : {}),
    ...(s(m.kernel) ? { kernel: s(m.kernel)! } : {}),
    ...(criu ? { criuVersion: criuVersionNumber(criu) } : {}),
    ...(s(m.cedanaVersion) ? { engineVersion: s(m.cedanaVersion)! } : {}),
  };
}

/** The engine as checkpointctl names it (its `engine.name`). */
const ENGINE_NAMES: Record<Engine, string> = { podman: 'Podman', 'cri-o': 'CRI-O', containerd: 'containerd', cedana: 'cedana' };

/** The OCI runtime's name (a path's last part: Podman compares names). */
export function runtimeName(runtime: string | undefined): string {
  const r = (runtime ?? '').trim();
  return r === '' ? 'runc' : basename(r);
}

/** The name the engines will know the container by: its name, else its id, else "checkpoint". Pure. */
export function containerName(meta: ArchiveMeta): string {
  return meta.name || meta.id || 'checkpoint';
}

/**
 * The three annotation families for an archive's metadata, plus org.opencontainers.image.created.
 * Keys whose value is unknown are left out. Pure.
 */
export function checkpointAnnotations(meta: ArchiveMeta, host: CheckpointHost, created: Date): Record<string, string> {
  const a = (meta.spec.annotations ?? {}) as Record<string, unknown>;
  const s = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
  const name = containerName(meta);
  const imageId = meta.image.id ?? meta.image.ref;
  const raw = meta.image.requested ?? meta.image.name;
  const runtime = runtimeName(meta.runtime);
  // cedana's own exports name its version in the spec too.
  const engineVersion = host.engineVersion ?? (meta.engine === 'cedana' ? s(a['io.cedana.checkpoint']) : undefined);
  const out: Record<string, string | undefined> = {
    [ANNOTATION_CREATED]: created.toISOString(),
    // Podman (libpod/define/annotations.go).
    [`${PODMAN}name`]: name,
    [`${PODMAN}rawImageName`]: raw,
    [`${PODMAN}rootfsImageID`]: imageId,
    [`${PODMAN}rootfsImageName`]: meta.image.name,
    [`${PODMAN}podman.version`]: meta.engine === 'podman' ? engineVersion : undefined,
    [`${PODMAN}criu.version`]: host.criuVersion,
    [`${PODMAN}runtime.name`]: runtime,
    [`${PODMAN}host.arch`]: host.arch,
    [`${PODMAN}host.kernel`]: host.kernel,
    [`${PODMAN}cgroups.version`]: host.cgroupVersion,
    [`${PODMAN}distribution.name`]: host.distribution?.name,
    [`${PODMAN}distribution.version`]: host.distribution?.version,
    // CRI-O (internal/annotations/checkpoint.go).
    [`${CRIO}name`]: name,
    [`${CRIO}rawImageName`]: raw,
    [`${CRIO}rootfsImageID`]: imageId,
    [`${CRIO}rootfsImageName`]: meta.image.name,
    [`${CRIO}cri-o.version`]: meta.engine === 'cri-o' ? engineVersion : undefined,
    [`${CRIO}criu.version`]: host.criuVersion,
    // checkpointctl (lib/annotations.go), read by containerd 2.1–2.3.
    [`${CRIU}engine.name`]: ENGINE_NAMES[meta.engine],
    [`${CRIU}engine.version`]: engineVersion,
    [`${CRIU}container.name`]: name,
    [`${CRIU}pod.name`]: meta.pod?.name,
    [`${CRIU}pod.namespace`]: meta.pod?.namespace,
    [`${CRIU}pod.id`]: s(a['io.kubernetes.cri-o.SandboxID']) ?? s(a['io.kubernetes.cri.sandbox-id']),
    [`${CRIU}pod.uid`]: s(a['io.kubernetes.pod.uid']) ?? s(a['io.kubernetes.cri.sandbox-uid']),
    [`${CRIU}rootfsImageName`]: meta.image.name,
    [`${CRIU}rootfsImageUserRequested`]: meta.image.requested,
    [`${CRIU}rootfsImageID`]: imageId,
    [`${CRIU}rawImageName`]: raw,
    [`${CRIU}runtime.name`]: runtime,
    [`${CRIU}criu.version`]: host.criuVersion,
    [`${CRIU}host.arch`]: host.arch,
    [`${CRIU}host.kernel`]: host.kernel,
    [`${CRIU}cgroup.version`]: host.cgroupVersion,
    [`${CRIU}distribution.name`]: host.distribution?.name,
    [`${CRIU}distribution.version`]: host.distribution?.version,
  };
  return Object.fromEntries(Object.entries(out).filter((e): e is [string, string] => e[1] !== undefined && e[1] !== '').sort(([x], [y]) => (x < y ? -1 : x > y ? 1 : 0)));
}

// ---- the layer ------------------------------------------------------------------------------------

interface LayerEntry {
  /** Path relative to the directory, '/'-separated. */
  rel: string;
  kind: 'file' | 'dir';
  size: number;
  /** The entry's header blocks (a pax header first where one is needed). */
  header: Buffer;
}

/** tar header blocks for an entry: ustar, with a pax header before it where ustar cannot hold it. */
function headerBlocks(data: { path: string; type: 'File' | 'Directory'; mode: number; size: number; mtime: Date }): Buffer {
  const fields = { path: data.path, type: data.type, mode: data.mode, size: data.size, mtime: data.mtime, uid: 0, gid: 0, uname: '', gname: '' };
  const h = new Header(fields);
  const block = Buffer.alloc(512);
  const needPax = h.encode(block, 0);
  if (!needPax) return block;
  const pax = new Pax({ path: data.path, size: data.size, mtime: data.mtime, uid: 0, gid: 0 }).encode();
  return Buffer.concat([pax, block]);
}

const pad = (n: number): number => (512 - (n % 512)) % 512;

/**
 * Every entry under dir, directories before what they hold, in byte order of names: regular
 * files and directories only (IMAGE_INVALID names anything else). Owner 0:0, permission bits kept
 * (set-id and sticky bits dropped), mtime kept to the second.
 */
export async function layerEntries(dir: string): Promise<LayerEntry[]> {
  const out: LayerEntry[] = [];
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(rel ? join(dir, rel) : dir)).sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    for (const name of names) {
      const r = rel ? `${rel}/${name}` : name;
      const st = await lstat(join(dir, r));
      const mtime = new Date(Math.floor(st.mtimeMs / 1000) * 1000);
      const mode = st.mode & 0o777;
      if (st.isDirectory()) {
        out.push({ rel: r, kind: 'dir', size: 0, header: headerBlocks({ path: `${r}/`, type: 'Directory', mode, size: 0, mtime }) });
        await walk(r);
      } else if (st.isFile()) {
        out.push({ rel: r, kind: 'file', size: st.size, header: headerBlocks({ path: r, type: 'File', mode, size: st.size, mtime }) });
      } else {
        const what = st.isSymbolicLink() ? 'a symbolic link' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : 'a device';
        throw new CedanaError('IMAGE_INVALID', `${r} in the checkpoint is ${what}: a checkpoint image holds only regular files and directories`, {
          hint: 'engines refuse links and devices in checkpoint images (containerd drops them); remove it from the archive',
          details: { path: r },
        });
      }
    }
  };
  await walk('');
  return out;
}

/** Sequential writes to a file at a tracked position; bytes written while a hash is set are hashed too. */
class Output {
  pos = 0;
  hash: Hash | undefined;
  constructor(readonly fh: FileHandle) {}

  async write(b: Buffer): Promise<void> {
    this.hash?.update(b);
    let off = 0;
    while (off < b.length) {
      const { bytesWritten } = await this.fh.write(b, off, b.length - off, this.pos);
      off += bytesWritten;
      this.pos += bytesWritten;
    }
  }

  async pwrite(b: Buffer, at: number): Promise<void> {
    let off = 0;
    while (off < b.length) off += (await this.fh.write(b, off, b.length - off, at + off)).bytesWritten;
  }
}

const CHUNK = 4 << 20;

/** Copies a file of the checkpoint (exactly `size` bytes, as listed) into out, reading while the last chunk is written. */
async function copyFile(path: string, rel: string, size: number, out: Output, tick: (n: number) => void, signal?: AbortSignal): Promise<void> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    const st = await fh.stat();
    if (!st.isFile() || st.size !== size) throw new CedanaError('IO_ERROR', `${rel} changed while the image was being built`, { hint: 'build the image from a checkpoint nothing writes to' });
    const bufs = [Buffer.allocUnsafe(Math.min(CHUNK, Math.max(size, 1))), Buffer.allocUnsafe(Math.min(CHUNK, Math.max(size, 1)))];
    let done = 0;
    let which = 0;
    const readInto = async (buf: Buffer, at: number): Promise<number> => {
      const want = Math.min(buf.length, size - at);
      let got = 0;
      while (got < want) {
        const { bytesRead } = await fh.read(buf, got, want - got, at + got);
        if (bytesRead === 0) throw new CedanaError('IO_ERROR', `${rel} was truncated while the image was being built`, { hint: 'build the image from a checkpoint nothing writes to' });
        got += bytesRead;
      }
      return got;
    };
    let n = size > 0 ? await readInto(bufs[0]!, 0) : 0;
    while (n > 0) {
      if (signal?.aborted) throw new CedanaError('INTERRUPTED', 'image build interrupted; nothing was written');
      const writing = out.write(bufs[which]!.subarray(0, n));
      done += n;
      const next = done < size ? readInto(bufs[1 - which]!, done) : Promise.resolve(0);
      const [, m] = await Promise.all([writing, next]);
      tick(n);
      which = 1 - which;
      n = m;
    }
  } finally {
    await fh.close();
  }
}

// ---- the oci-archive ------------------------------------------------------------------------------

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const json = (o: unknown): Buffer => Buffer.from(JSON.stringify(o));

/** The outer tar's header blocks for an entry of the layout. */
function layoutHeader(path: string, size: number, mtime: Date, dir = false): Buffer {
  return headerBlocks({ path: dir ? `${path}/` : path, type: dir ? 'Directory' : 'File', mode: dir ? 0o700 : 0o600, size, mtime });
}

async function writeLayoutFile(out: Output, path: string, body: Buffer, mtime: Date): Promise<void> {
  await out.write(layoutHeader(path, body.length, mtime));
  await out.write(body);
  await out.write(Buffer.alloc(pad(body.length)));
}

/** Whether `path` (absolute) is `dir` or under it. */
const within = (dir: string, path: string): boolean => {
  const r = relative(dir, path);
  return r === '' || (!r.startsWith('..') && !isAbsolute(r));
};

/**
 * Writes the checkpoint in `dir` as an OCI image in an oci-archive at `output` (mode 0600; written
 * under a temporary name beside it and renamed at the end; removed on failure).
 */
export async function buildCheckpointImage(opts: BuildImageOptions): Promise<BuiltImage> {
  const dir = resolve(opts.dir);
  const output = resolve(opts.output);
  if (opts.tag !== undefined && !isValidImageName(opts.tag)) {
    throw new CedanaError('USAGE', `--tag ${JSON.stringify(opts.tag)} is not an image name`, { hint: 'e.g. registry.example.com/team/app-checkpoint:v1, or localhost/app-checkpoint (path components in lower case)' });
  }
  if (within(dir, output)) throw new CedanaError('USAGE', `the output ${output} is inside the checkpoint ${dir}`, { hint: 'write the image somewhere else' });
  const existing = await lstat(output).catch(() => undefined);
  if (existing?.isDirectory()) throw new CedanaError('OUTPUT_EXISTS', `${output} is a directory`, { hint: 'the image is one file: give a file name, e.g. -o checkpoint.oci.tar' });
  if (existing && !opts.force) throw new CedanaError('OUTPUT_EXISTS', `${output} exists`, { hint: 'use --force to replace it' });

  const meta = opts.meta ?? (await readArchiveMeta(dir));
  const host = opts.host ?? (await recordedHost(dir, await thisHost()));
  const now = opts.now ?? new Date();
  const created = new Date(Math.floor(now.getTime() / 1000) * 1000);
  const annotations = checkpointAnnotations(meta, host, created);
  const entries = await layerEntries(dir);
  const layerBytes = entries.reduce((n, e) => n + e.header.length + e.size + pad(e.size), 0) + 1024;

  const tmp = join(dirname(output), `.${basename(output)}.${randomBytes(6).toString('hex')}.partial`);
  let fh: FileHandle;
  try {
    fh = await open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    throw ioError(e, `cannot write in ${dirname(output)}`);
  }
  let renamed = false;
  try {
    await fh.chmod(0o600);
    const out = new Output(fh);
    await writeLayoutFile(out, 'oci-layout', json({ imageLayoutVersion: '1.0.0' }), created);
    await out.write(layoutHeader('blobs', 0, created, true));
    await out.write(layoutHeader('blobs/sha256', 0, created, true));

    // The layer: its header with a placeholder digest, rewritten once the digest is known.
    const placeholder = `blobs/sha256/${'0'.repeat(64)}`;
    const layerHeaderAt = out.pos;
    const layerHeader = layoutHeader(placeholder, layerBytes, created);
    await out.write(layerHeader);
    const layerStart = out.pos;
    const hash = createHash('sha256');
    out.hash = hash;
    let written = 0;
    const tick = (n: number): void => {
      written += n;
      opts.onProgress?.(written, layerBytes);
    };
    for (const e of entries) {
      if (opts.signal?.aborted) throw new CedanaError('INTERRUPTED', 'image build interrupted; nothing was written');
      await out.write(e.header);
      if (e.kind === 'file') {
        await copyFile(join(dir, e.rel), e.rel, e.size, out, tick, opts.signal);
        await out.write(Buffer.alloc(pad(e.size)));
      }
    }
    await out.write(Buffer.alloc(1024));
    out.hash = undefined;
    if (out.pos - layerStart !== layerBytes) throw new CedanaError('INTERNAL', `layer is ${out.pos - layerStart} bytes, ${layerBytes} expected`);
    const layerHex = hash.digest('hex');
    const layerDigest = `sha256:${layerHex}`;
    const finalHeader = layoutHeader(`blobs/sha256/${layerHex}`, layerBytes, created);
    if (finalHeader.length !== layerHeader.length) throw new CedanaError('INTERNAL', 'the layer header changed size');
    await out.pwrite(finalHeader, layerHeaderAt);
    await out.write(Buffer.alloc(pad(layerBytes)));

    const arch = host.arch;
    const config = json({
      created: created.toISOString(),
      architecture: arch,
      os: 'linux',
      config: {},
      rootfs: { type: 'layers', diff_ids: [layerDigest] },
      history: [{ created: created.toISOString(), created_by: 'cedana image build', comment: `checkpoint of container ${containerName(meta)} (${ENGINE_NAMES[meta.engine]})` }],
    });
    const configDigest = sha256(config);
    await writeLayoutFile(out, `blobs/sha256/${configDigest.slice(7)}`, config, created);

    const manifest = json({
      schemaVersion: 2,
      mediaType: MEDIA_MANIFEST,
      config: { mediaType: MEDIA_CONFIG, digest: configDigest, size: config.length },
      layers: [{ mediaType: MEDIA_LAYER, digest: layerDigest, size: layerBytes }],
      annotations,
    });
    const digest = sha256(manifest);
    await writeLayoutFile(out, `blobs/sha256/${digest.slice(7)}`, manifest, created);

    const index = json({
      schemaVersion: 2,
      mediaType: MEDIA_INDEX,
      manifests: [{
        mediaType: MEDIA_MANIFEST,
        digest,
        size: manifest.length,
        platform: { architecture: arch, os: 'linux' },
        annotations: { ...annotations, ...(opts.tag !== undefined ? { [ANNOTATION_REF_NAME]: opts.tag } : {}) },
      }],
      annotations,
    });
    await writeLayoutFile(out, 'index.json', index, created);
    await out.write(Buffer.alloc(1024));
    await fh.sync();
    await fh.close();

    if (opts.force) {
      await rename(tmp, output);
    } else {
      // link() fails if the output appeared meanwhile: never replace a file without --force.
      try {
        await link(tmp, output);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw new CedanaError('OUTPUT_EXISTS', `${output} exists`, { hint: 'use --force to replace it' });
        throw e;
      }
      await unlink(tmp);
    }
    renamed = true;
    await syncDir(dirname(output));
    return { path: output, tag: opts.tag ?? null, digest, configDigest, layerDigest, layerBytes, entries: entries.length, annotations };
  } catch (e) {
    await fh.close().catch(() => undefined);
    if (!renamed) await rm(tmp, { force: true });
    throw e instanceof CedanaError ? e : ioError(e, 'writing the image failed');
  }
}

/** A failed system call as IO_ERROR (what failed, then the system's words); anything else as it is. */
function ioError(e: unknown, what: string): CedanaError {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code !== 'string' || !/^E[A-Z]+$/.test(code)) return toCedanaError(e);
  return new CedanaError('IO_ERROR', `${what}: ${(e as Error).message}`, {
    hint: code === 'ENOSPC' || code === 'EDQUOT' ? 'free some space or write the image elsewhere (-o)' : undefined,
    details: { errno: code },
    cause: e,
  });
}

/** Makes the rename durable; a failure here only costs durability, so it is not reported. */
async function syncDir(dir: string): Promise<void> {
  try {
    const fh = await open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch {
    // best effort
  }
}
