/**
 * The container checkpoint layout that Kubernetes (the kubelet's checkpoint API through CRI-O or
 * containerd), Podman (`podman container checkpoint --export`) and checkpointctl share: a tar of one
 * directory holding `checkpoint/` (the OCI runtime's CRIU images), `config.dump` (the engine's
 * container config), `spec.dump` (the OCI runtime spec), and optionally `network.status`,
 * `stats-dump`, `rootfs-diff.tar`, `deleted.files`, `devshm-checkpoint.tar`, `bind.mounts`.
 * docs/design/checkpoint-archive-format.md has the sources. This module reads its metadata; the
 * archive itself is unpacked by image/archive.ts (which refuses unsafe entries).
 */
import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { CedanaError } from '../errors.js';
import { readDumpStats, type DumpStats } from '../image/criu/stats.js';
import { pathExists } from '../util/paths.js';

export const CK_DIR = 'checkpoint';
export const CK_CONFIG = 'config.dump';
export const CK_SPEC = 'spec.dump';
export const CK_NETWORK = 'network.status';
export const CK_STATS = 'stats-dump';
export const CK_ROOTFS_DIFF = 'rootfs-diff.tar';
export const CK_DELETED = 'deleted.files';
export const CK_DEVSHM = 'devshm-checkpoint.tar';
export const CK_BIND_MOUNTS = 'bind.mounts';

/** Who wrote the archive: the spec's `io.container.manager` (and cedana's own marker). */
export type Engine = 'podman' | 'cri-o' | 'containerd' | 'cedana';

export interface ArchiveInterface {
  network: string;
  name: string;
  /** CIDR addresses (ipnet), e.g. 10.88.0.2/16. */
  addresses: string[];
  gateways: string[];
  mac?: string;
}

export interface ArchiveMeta {
  engine: Engine;
  id: string;
  name: string;
  image: { name?: string; id?: string; ref?: string; requested?: string };
  runtime?: string;
  created?: string;
  checkpointed?: string;
  pod?: { name?: string; namespace?: string };
  command: string[];
  hostname?: string;
  /** The container's config, from spec.dump: what it runs as and with (environment by names only: values may be secrets). */
  containerConfig: {
    cwd?: string;
    user?: { uid: number; gid: number };
    env: string[];
    mounts: { destination: string; type?: string; source?: string }[];
    namespaces: { type: string; path?: string }[];
  };
  /** From network.status (Podman): the container's interfaces and addresses at the checkpoint. */
  interfaces: ArchiveInterface[];
  /** From stats-dump: CRIU's own figures of the dump. */
  stats?: DumpStats;
  rootfsDiffBytes?: number;
  deletedFiles: string[];
  devShm: boolean;
  /** config.dump and spec.dump as parsed. */
  config: Record<string, any>;
  spec: Record<string, any>;
}

/**
 * Whether dir is (meant to be) this layout: a checkpoint/ directory, config.dump or spec.dump (a
 * cedana image has none of them). readArchiveMeta then says what of it is missing.
 */
export async function isCheckpointArchiveDir(dir: string): Promise<boolean> {
  for (const p of [CK_DIR, CK_SPEC, CK_CONFIG]) if (await pathExists(join(dir, p))) return true;
  return false;
}

async function readJson(dir: string, name: string, required: boolean): Promise<any> {
  let text: string;
  try {
    text = await readFile(join(dir, name), 'utf8');
  } catch {
    if (!required) return undefined;
    throw new CedanaError('IMAGE_INVALID', `${name} is missing: not a complete container checkpoint archive`, { hint: 'give an archive written by `podman container checkpoint --export`, the kubelet, or `cedana dump --container --format checkpointctl`' });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CedanaError('IMAGE_INVALID', `${name} is not valid JSON: ${(e as Error).message}`);
  }
}

/** The engine by the spec's annotations (checkpointctl's rule: libpod, cri-o, anything else containerd). Pure. */
export function engineOf(spec: Record<string, any>): Engine {
  const a = (spec.annotations ?? {}) as Record<string, string>;
  if (a['io.cedana.checkpoint'] !== undefined) return 'cedana';
  if (a['io.container.manager'] === 'libpod') return 'podman';
  if (a['io.container.manager'] === 'cri-o') return 'cri-o';
  return 'containerd';
}

/** network.status (Podman's map of network name to status block) as a list of interfaces. Pure. */
export function interfacesOf(status: unknown): ArchiveInterface[] {
  const out: ArchiveInterface[] = [];
  if (!status || typeof status !== 'object') return out;
  for (const [network, block] of Object.entries(status as Record<string, any>)) {
    for (const [name, itf] of Object.entries((block?.interfaces ?? {}) as Record<string, any>)) {
      const subnets = Array.isArray(itf?.subnets) ? (itf.subnets as { ipnet?: unknown; gateway?: unknown }[]) : [];
      out.push({
        network, name,
        addresses: subnets.map((s) => s.ipnet).filter((x): x is string => typeof x === 'string'),
        gateways: subnets.map((s) => s.gateway).filter((x): x is string => typeof x === 'string'),
        ...(typeof itf?.mac_address === 'string' ? { mac: itf.mac_address as string } : {}),
      });
    }
  }
  return out;
}

const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);

/** The archive's metadata, from the files of an unpacked archive in dir. IMAGE_INVALID when it is not one. */
export async function readArchiveMeta(dir: string): Promise<ArchiveMeta> {
  if (!(await pathExists(join(dir, CK_DIR, 'inventory.img')))) {
    throw new CedanaError('IMAGE_INVALID', `${CK_DIR}/inventory.img is missing: the archive holds no complete checkpoint`, { hint: 'a pre-checkpoint (--pre-checkpoint) archive cannot be restored alone' });
  }
  const spec = (await readJson(dir, CK_SPEC, true)) as Record<string, any>;
  const config = (await readJson(dir, CK_CONFIG, true)) as Record<string, any>;
  if (!spec || typeof spec !== 'object' || !config || typeof config !== 'object') throw new CedanaError('IMAGE_INVALID', `${CK_SPEC} and ${CK_CONFIG} must be JSON objects`);
  const engine = engineOf(spec);
  const a = (spec.annotations ?? {}) as Record<string, string>;
  let deletedFiles: string[] = [];
  const deleted = await readJson(dir, CK_DELETED, false);
  if (deleted !== undefined) {
    if (!Array.isArray(deleted) || deleted.some((d) => typeof d !== 'string')) throw new CedanaError('IMAGE_INVALID', `${CK_DELETED} must be a JSON array of paths`);
    deletedFiles = deleted as string[];
  }
  let name = str(config.name) ?? '';
  if (engine === 'cri-o' && !name) {
    try {
      name = str((JSON.parse(a['io.kubernetes.cri-o.Metadata'] ?? '{}') as { name?: unknown }).name) ?? '';
    } catch {
      // checkpointctl refuses this; cedana shows what else there is
    }
  }
  const diff = await stat(join(dir, CK_ROOTFS_DIFF)).catch(() => undefined);
  const podName = str(a['io.kubernetes.pod.name']) ?? str(a['io.kubernetes.cri.sandbox-name']);
  const podNamespace = str(a['io.kubernetes.pod.namespace']) ?? str(a['io.kubernetes.cri.sandbox-namespace']);
  return {
    engine,
    id: str(config.id) ?? '',
    name: name || (str(a['io.kubernetes.cri.container-name']) ?? ''),
    image: {
      name: str(config.rootfsImageName),
      id: str(config.rootfsImageID),
      ref: str(config.rootfsImageRef),
      requested: str(config.rootfsImage) ?? str(config.RawImageName),
    },
    runtime: str(config.runtime),
    created: str(config.createdTime),
    checkpointed: str(config.checkpointedTime),
    ...(podName || podNamespace ? { pod: { name: podName, namespace: podNamespace } } : {}),
    command: Array.isArray(spec.process?.args) ? (spec.process.args as unknown[]).map(String) : [],
    containerConfig: {
      cwd: str(spec.process?.cwd),
      ...(typeof spec.process?.user?.uid === 'number' ? { user: { uid: spec.process.user.uid as number, gid: Number(spec.process.user.gid ?? 0) } } : {}),
      env: Array.isArray(spec.process?.env) ? (spec.process.env as unknown[]).map((e) => String(e).split('=')[0]!) : [],
      mounts: Array.isArray(spec.mounts) ? (spec.mounts as Record<string, unknown>[]).map((m) => ({ destination: String(m.destination), ...(str(m.type) ? { type: str(m.type) } : {}), ...(str(m.source) ? { source: str(m.source) } : {}) })) : [],
      namespaces: Array.isArray(spec.linux?.namespaces) ? (spec.linux.namespaces as Record<string, unknown>[]).map((n) => ({ type: String(n.type), ...(str(n.path) ? { path: str(n.path) } : {}) })) : [],
    },
    hostname: str(spec.hostname),
    interfaces: interfacesOf(await readJson(dir, CK_NETWORK, false).catch(() => undefined)),
    stats: await readDumpStats(join(dir, CK_STATS)),
    ...(diff ? { rootfsDiffBytes: diff.size } : {}),
    deletedFiles,
    devShm: await pathExists(join(dir, CK_DEVSHM)),
    config,
    spec,
  };
}
