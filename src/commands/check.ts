/**
 * cedana check: can this host dump and restore, and which optional features does it have?
 * It never throws for a missing capability: it reports each item, and `ok` says whether dump and
 * restore can work (root, CRIU >= 4.2, the capabilities CRIU cannot do without, `criu check` passing,
 * iptables or nft for CRIU's network lock).
 */
import { capabilityBlocker, judgeCapabilities, type CapabilityReport } from '../criu/capabilities.js';
import { readCapEff } from '../proc/caps.js';
import { criuCheck, criuFeature, locateCriu, networkLockBackend, type Criu } from '../criu/criu.js';
import { checkLazySource } from '../migrate/postcopy.js';
import { CedanaError, toCedanaError, type ErrorCode } from '../errors.js';
import { decisiveLines } from '../criu/log.js';
import { execFileResult } from '../util/exec.js';
import { RUNTIMES } from '../container/runtimes.js';
import { findOnPath } from '../util/paths.js';
import { DRIVER_ACTIONS, driverMajor, localGpuHost, type GpuHost } from '../gpu/cuda.js';

export interface Feature {
  name: string;
  available: boolean;
  enables: string;
  detail?: string;
  /** cuda-checkpoint only: what was found. */
  gpu?: { cudaCheckpoint: string; driverVersion: string | null; gpus: { uuid: string; name: string; memoryTotalMiB: number }[] };
}

export interface CheckResultData {
  command: 'check';
  ok: boolean;
  root: boolean;
  /** hint: how to get a usable CRIU, when none was found (reported even when not being root comes first). */
  criu: { found: boolean; path?: string; version?: string; check: 'ok' | 'failed' | 'not run'; detail?: string; hint?: string };
  /** cedana's effective capabilities (CRIU inherits them) and those CRIU uses that are missing. */
  capabilities: CapabilityReport;
  features: Feature[];
  /** The reason dump/restore cannot work, when ok is false. */
  error?: CedanaError;
}

export async function check(opts: { cudaCheckpoint?: string } = {}): Promise<CheckResultData> {
  const root = typeof process.getuid !== 'function' || process.getuid() === 0;
  let criu: Criu | undefined;
  let error: CedanaError | undefined;
  const capabilities = judgeCapabilities(await readCapEff());
  const out: CheckResultData = { command: 'check', ok: false, root, criu: { found: false, check: 'not run' }, capabilities, features: [] };
  try {
    criu = await locateCriu();
    out.criu = { found: true, path: criu.path, version: criu.version.text, check: 'not run' };
  } catch (e) {
    error = toCedanaError(e);
    out.criu.detail = error.message;
    out.criu.hint = error.hint;
  }
  // Before `criu check`, which fails too without them but says less.
  if (root) error ??= capabilityBlocker(capabilities);
  if (criu && root) {
    const r = await criuCheck(criu);
    out.criu.check = r.ok ? 'ok' : 'failed';
    if (!r.ok) {
      out.criu.detail = decisiveLines(r.output).join('\n');
      error ??= new CedanaError('HOST_UNSUPPORTED', `\`criu check\` fails on this host:\n  ${decisiveLines(r.output).join('\n  ')}`, {
        hint: 'the kernel lacks features CRIU needs; see `criu check --all`',
      });
    }
    out.features.push(await feature(criu, 'mem_dirty_track', 'memory dirty tracking', 'pre-copy migration and pre-dump (needs CONFIG_MEM_SOFT_DIRTY)'));
    out.features.push(await feature(criu, 'uffd-noncoop', 'userfaultfd (non-cooperative)', 'post-copy migration (lazy pages) to this host'));
    const pipes = await checkLazySource().then(() => undefined, (e: CedanaError) => e.message);
    out.features.push({ name: 'lazy-pages-server', available: pipes === undefined, enables: 'post-copy migration from this host (migrate --postcopy)', detail: pipes ?? 'CRIU can size its 4 MiB page pipes' });
  }
  if (!root) {
    error = new CedanaError('NOT_ROOT', 'cedana must run as root to dump and restore', { hint: 'run it with sudo' });
  }
  const lock = await networkLockBackend();
  out.features.push({ name: 'network-lock', available: lock !== undefined, enables: 'dump and migrate (CRIU locks the network while it works); TCP connections kept (--tcp-established)', detail: lock ?? 'neither iptables nor nft found' });
  // Not optional: dump and migrate refuse to start without one.
  if (!lock) error ??= new CedanaError('HOST_UNSUPPORTED', 'neither iptables nor nft is installed: CRIU cannot lock the network during a dump', { hint: 'install iptables or nftables (nft) from your distribution' });
  out.features.push(await cudaFeature(opts.cudaCheckpoint));
  out.features.push(await runtimeFeature());
  out.ok = error === undefined && out.criu.check === 'ok';
  if (!out.ok) out.error = error ?? new CedanaError('HOST_UNSUPPORTED', 'criu check could not run');
  return out;
}

async function feature(criu: Criu, name: string, label: string, enables: string): Promise<Feature> {
  const r = await criuFeature(criu, name);
  return { name, available: r.ok, enables, detail: r.ok ? label : `${label}: ${decisiveLines(r.output, 1)[0] ?? 'not supported'}` };
}

async function cudaFeature(explicit?: string): Promise<Feature> {
  const enables = 'checkpointing CUDA processes (GPU memory and contexts)';
  let host: GpuHost;
  try {
    host = await localGpuHost(explicit);
  } catch (e) {
    return { name: 'cuda-checkpoint', available: false, enables, detail: (e as Error).message };
  }
  const gpus = host.gpus.length ? `; ${host.gpus.length} GPU(s): ${[...new Set(host.gpus.map((g) => g.name))].join(', ')}` : '';
  const driver = host.driver ? `NVIDIA driver ${host.driver}` : 'no NVIDIA driver';
  if (!host.cudaCheckpoint) return { name: 'cuda-checkpoint', available: false, enables, detail: `cuda-checkpoint not found (${driver}${gpus})` };
  const steps = driverMajor(host.driver) >= DRIVER_ACTIONS && host.help.includes('--action');
  return {
    name: 'cuda-checkpoint',
    available: steps,
    enables,
    detail: `${host.cudaCheckpoint}, ${driver}${gpus}${steps ? '' : ` (lock/checkpoint/restore/unlock need driver ≥ ${DRIVER_ACTIONS})`}`,
    gpu: { cudaCheckpoint: host.cudaCheckpoint, driverVersion: host.driver ?? null, gpus: host.gpus.map((g) => ({ uuid: g.uuid, name: g.name, memoryTotalMiB: g.memoryTotalMiB })) },
  };
}

async function runtimeFeature(): Promise<Feature> {
  const found: string[] = [];
  for (const name of RUNTIMES) {
    const path = await findOnPath(name);
    if (!path) continue;
    const v = await execFileResult(path, ['--version'], { timeout: 10_000 });
    found.push(`${name} ${/version\s+(\S+)/.exec(String(v.stdout))?.[1] ?? '(version unknown)'}`);
  }
  return { name: 'oci-runtime', available: found.length > 0, enables: 'containers (dump/restore/migrate --container)', detail: found.length ? found.join(', ') : 'neither runc nor crun found' };
}

export function checkExitCode(r: CheckResultData): ErrorCode | undefined {
  return r.ok ? undefined : r.error?.code ?? 'HOST_UNSUPPORTED';
}
