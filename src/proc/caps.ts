/** Linux capabilities as /proc/<pid>/status shows them (CapEff: a hex bit mask). Pure, but for readCapEff. */
import { readFile } from 'node:fs/promises';

/** include/uapi/linux/capability.h, in bit order (0 … 40). */
export const CAP_NAMES = [
  'CAP_CHOWN', 'CAP_DAC_OVERRIDE', 'CAP_DAC_READ_SEARCH', 'CAP_FOWNER', 'CAP_FSETID', 'CAP_KILL', 'CAP_SETGID', 'CAP_SETUID',
  'CAP_SETPCAP', 'CAP_LINUX_IMMUTABLE', 'CAP_NET_BIND_SERVICE', 'CAP_NET_BROADCAST', 'CAP_NET_ADMIN', 'CAP_NET_RAW', 'CAP_IPC_LOCK',
  'CAP_IPC_OWNER', 'CAP_SYS_MODULE', 'CAP_SYS_RAWIO', 'CAP_SYS_CHROOT', 'CAP_SYS_PTRACE', 'CAP_SYS_PACCT', 'CAP_SYS_ADMIN',
  'CAP_SYS_BOOT', 'CAP_SYS_NICE', 'CAP_SYS_RESOURCE', 'CAP_SYS_TIME', 'CAP_SYS_TTY_CONFIG', 'CAP_MKNOD', 'CAP_LEASE',
  'CAP_AUDIT_WRITE', 'CAP_AUDIT_CONTROL', 'CAP_SETFCAP', 'CAP_MAC_OVERRIDE', 'CAP_MAC_ADMIN', 'CAP_SYSLOG', 'CAP_WAKE_ALARM',
  'CAP_BLOCK_SUSPEND', 'CAP_AUDIT_READ', 'CAP_PERFMON', 'CAP_BPF', 'CAP_CHECKPOINT_RESTORE',
] as const;

export type CapName = (typeof CAP_NAMES)[number];

/** The CapEff (or CapPrm…) hex mask as a number; a malformed mask is an error, not "no capabilities". Pure. */
export function parseCapMask(hex: string): bigint {
  if (!/^[0-9a-f]{1,16}$/i.test(hex.trim())) throw new Error(`malformed capability mask: ${JSON.stringify(hex)}`);
  return BigInt(`0x${hex.trim()}`);
}

/** The names of the capabilities set in a mask, in bit order; a bit newer than this table is CAP_<bit>. Pure. */
export function capNames(hex: string): string[] {
  const mask = parseCapMask(hex);
  const out: string[] = [];
  for (let bit = 0; bit < 64; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(CAP_NAMES[bit] ?? `CAP_${bit}`);
  return out;
}

export function hasCap(hex: string, name: CapName): boolean {
  return ((parseCapMask(hex) >> BigInt(CAP_NAMES.indexOf(name))) & 1n) === 1n;
}

/** The CapEff line of a /proc/<pid>/status text. Pure. */
export function parseCapEff(status: string): string {
  const m = /^CapEff:\s*([0-9a-f]+)\s*$/im.exec(status);
  if (!m) throw new Error('no CapEff line in the status text');
  return m[1]!;
}

/** This process's effective capabilities: what the CRIU it starts inherits (root's, as root). */
export async function readCapEff(): Promise<string> {
  return parseCapEff(await readFile('/proc/self/status', 'utf8'));
}
