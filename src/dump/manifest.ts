/** Builds the manifest of a fresh dump from what cedana knew and decided. Pure. */
import type { CriuDecisions } from '../criu/options.js';
import type { HostFacts } from '../host.js';
import { FORMAT, FORMAT_VERSION, type FileEntry, type Manifest, type ManifestContainer, type ManifestParent } from '../image/manifest.js';
import type { TreeFacts } from '../proc/tree.js';
import type { ShippedEntry } from '../image/ship.js';
import type { ManifestGpu } from '../gpu/cuda.js';
import { CEDANA_VERSION } from '../version.js';

export interface ManifestInput {
  criuVersion: string;
  host: HostFacts;
  pid: number;
  facts: TreeFacts;
  decisions: CriuDecisions;
  leaveRunning: boolean;
  networkLock: string;
  files: Record<string, FileEntry>;
  memoryBytes: number;
  shipped?: ShippedEntry[];
  parent?: ManifestParent;
  gpu?: ManifestGpu;
  container?: ManifestContainer;
  layout?: Manifest['layout'];
  now?: Date;
}

export function makeManifest(i: ManifestInput): Manifest {
  return {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    createdAt: (i.now ?? new Date()).toISOString(),
    cedanaVersion: CEDANA_VERSION,
    criuVersion: i.criuVersion,
    kernel: i.host.kernel,
    arch: i.host.arch,
    cpuFlags: i.host.cpuFlags,
    hostname: i.host.hostname,
    pid: i.pid,
    processes: i.facts.processes.map((p) => ({ pid: p.pid, ppid: p.ppid, comm: p.comm, argv: p.argv })),
    memoryBytes: i.memoryBytes,
    options: {
      shellJob: i.decisions.shellJob,
      tcpEstablished: i.decisions.tcpEstablished,
      tcpClose: i.decisions.tcpClose,
      fileLocks: i.decisions.fileLocks,
      externalUnix: i.decisions.externalUnix,
      leaveRunning: i.leaveRunning,
      networkLock: i.networkLock,
    },
    tcp: i.facts.tcp.map((s) => ({ state: s.state, local: s.local, remote: s.remote })),
    notes: i.decisions.notes,
    files: i.files,
    ...(i.shipped && i.shipped.length > 0 ? { shipped: i.shipped } : {}),
    ...(i.parent ? { parent: i.parent } : {}),
    ...(i.gpu ? { gpu: i.gpu } : {}),
    ...(i.container ? { container: i.container } : {}),
    ...(i.layout ? { layout: i.layout } : {}),
  };
}

/** The pages images' share of a checksum table: the process memory dumped. */
export function pagesBytes(files: Record<string, FileEntry>, dir = ''): number {
  const prefix = dir ? `${dir}/` : '';
  return Object.entries(files)
    .filter(([n]) => n.startsWith(prefix) && /^pages-\d+\.img$/.test(n.slice(prefix.length)))
    .reduce((a, [, f]) => a + f.size, 0);
}
