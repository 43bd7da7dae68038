/**
 * The GPU side of a migration target, reached through the SSH session: its cuda-checkpoint, driver
 * and GPUs (one round trip), and an Exec so that the same CudaCheckpoint code drives it there.
 * Nothing of cedana is installed there: the target needs its own cuda-checkpoint (NVIDIA's).
 */
import type { SshSession } from '../transport/ssh.js';
import { shq } from '../transport/ssh.js';
import { APPS_QUERY, GPU_QUERY, parseApps, parseGpus, type Exec, type GpuHost } from './cuda.js';

/** Runs one command there, bounded by coreutils' timeout (exit 124 when it ran out). */
export function sshExec(session: SshSession): Exec {
  return async (file, args, timeoutMs) => {
    const r = await session.exec(`timeout -s KILL ${Math.ceil(timeoutMs / 1000)} ${[file, ...args].map(shq).join(' ')}`);
    const code = r.code ?? -1;
    return { code, out: `${r.stdout}${r.stderr}`.trim(), timedOut: code === 124 || code === 137 };
  };
}

/** The script that reports a host's GPU facts, each line tagged. cuda-checkpoint: as given, else on PATH; nvidia-smi: on PATH, else beside it. */
export function gpuFactsScript(cudaCheckpoint?: string): string {
  const cc = shq(cudaCheckpoint ?? 'cuda-checkpoint');
  return [
    `cc=$(command -v ${cc} 2>/dev/null)`,
    'echo "C:$cc"',
    '[ -n "$cc" ] && "$cc" --help 2>&1 | sed "s/^/H:/"',
    'smi=$(command -v nvidia-smi 2>/dev/null)',
    '[ -z "$smi" ] && [ -n "$cc" ] && [ -x "$(dirname "$cc")/nvidia-smi" ] && smi="$(dirname "$cc")/nvidia-smi"',
    `[ -n "$smi" ] && "$smi" ${GPU_QUERY.map(shq).join(' ')} 2>/dev/null | sed "s/^/G:/"`,
    `[ -n "$smi" ] && "$smi" ${APPS_QUERY.map(shq).join(' ')} 2>/dev/null | sed "s/^/A:/"`,
    'sed "s/^/V:/" /proc/driver/nvidia/version 2>/dev/null',
    'exit 0',
  ].join('\n');
}

/** Parses gpuFactsScript's output. Pure. */
export function parseGpuFacts(text: string): GpuHost {
  const tagged = (t: string): string => text.split('\n').filter((l) => l.startsWith(`${t}:`)).map((l) => l.slice(2)).join('\n');
  const cc = tagged('C').trim();
  const { gpus, driver } = parseGpus(tagged('G'));
  return {
    cudaCheckpoint: cc || undefined,
    help: tagged('H'),
    gpus,
    apps: parseApps(tagged('A')),
    driver: driver ?? /Kernel Module\s+([\d.]+)/.exec(tagged('V'))?.[1],
  };
}

export async function remoteGpuHost(session: SshSession, cudaCheckpoint?: string): Promise<GpuHost> {
  const r = await session.exec('sh -s', gpuFactsScript(cudaCheckpoint));
  return parseGpuFacts(r.stdout);
}
