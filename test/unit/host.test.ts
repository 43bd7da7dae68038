import { describe, expect, it } from 'vitest';
import { hostFacts, parseCpuFlags } from '../../src/host.js';

const X86 = `processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) CPU
flags\t\t: fpu vme de pse sse sse2 avx avx2 hypervisor sse4_2 avx2
bugs\t\t: spectre_v1 spectre_v2
power management:

processor\t: 1
flags\t\t: fpu something_else_only_on_cpu1
`;

const ARM = `processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics
CPU implementer\t: 0x41
`;

describe('parseCpuFlags', () => {
  it('reads the first CPU\'s x86 flags, sorted and without duplicates', () => {
    expect(parseCpuFlags(X86)).toEqual(['avx', 'avx2', 'de', 'fpu', 'hypervisor', 'pse', 'sse', 'sse2', 'sse4_2', 'vme']);
  });

  it('does not mix in the "bugs" line or later CPUs', () => {
    const flags = parseCpuFlags(X86);
    expect(flags).not.toContain('spectre_v1');
    expect(flags).not.toContain('something_else_only_on_cpu1');
  });

  it('reads arm64 Features', () => {
    expect(parseCpuFlags(ARM)).toEqual(['aes', 'asimd', 'atomics', 'crc32', 'evtstrm', 'fp', 'pmull', 'sha1', 'sha2']);
  });

  it('no flags line: no flags', () => {
    expect(parseCpuFlags('')).toEqual([]);
    expect(parseCpuFlags('processor : 0\nmodel name : x\n')).toEqual([]);
  });

  it('an empty flags line gives no empty strings', () => {
    expect(parseCpuFlags('flags\t\t: \n')).toEqual([]);
  });
});

describe('hostFacts', () => {
  it('reports this host', async () => {
    const { machine, release, hostname } = await import('node:os');
    const h = await hostFacts();
    expect(h.arch).toBe(machine());
    expect(h.kernel).toBe(release());
    expect(h.hostname).toBe(hostname());
    expect([...h.cpuFlags].sort()).toEqual(h.cpuFlags);
  });
});
