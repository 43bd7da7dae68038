/** Facts about this host that an image records and a restore compares. */
import { readFile } from 'node:fs/promises';
import { hostname, machine, release } from 'node:os';
import { CedanaError } from './errors.js';

export interface HostFacts {
  arch: string;
  kernel: string;
  hostname: string;
  cpuFlags: string[];
}

/** The "flags" line of the first CPU in /proc/cpuinfo (x86), or "Features" (arm64). Pure. */
export function parseCpuFlags(cpuinfo: string): string[] {
  const m = /^(?:flags|Features)\s*:\s*(.*)$/m.exec(cpuinfo);
  return m ? [...new Set(m[1]!.trim().split(/\s+/).filter(Boolean))].sort() : [];
}

export async function hostFacts(): Promise<HostFacts> {
  let cpuinfo = '';
  try {
    cpuinfo = await readFile('/proc/cpuinfo', 'utf8');
  } catch {
    // no /proc/cpuinfo: flags stay empty and are not compared
  }
  return { arch: machine(), kernel: release(), hostname: hostname(), cpuFlags: parseCpuFlags(cpuinfo) };
}

export function requireRoot(what: string): void {
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new CedanaError('NOT_ROOT', `cedana ${what} must run as root (uid ${process.getuid()})`, {
      hint: 'CRIU needs CAP_SYS_ADMIN and ptrace over the tree: run it with sudo',
    });
  }
}
