import { describe, expect, it } from 'vitest';
import { checkCompatible, waitPidsFree } from '../../../src/commands/restore.js';
import { parseVersionText, type Version } from '../../../src/criu/version.js';
import { CedanaError } from '../../../src/errors.js';
import type { HostFacts } from '../../../src/host.js';
import type { Manifest } from '../../../src/image/manifest.js';

function manifest(over: Partial<Manifest> = {}): Manifest {
  return {
    format: 'cedana-image',
    formatVersion: 1,
    createdAt: '2025-01-01T00:00:00.000Z',
    cedanaVersion: '0.1.0',
    criuVersion: '4.2',
    kernel: '6.8.0',
    arch: 'x86_64',
    cpuFlags: ['avx2', 'fpu', 'hypervisor', 'sse4_2'],
    hostname: 'a',
    pid: 100,
    processes: [{ pid: 100, ppid: 1, comm: 'x', argv: ['x'] }],
    memoryBytes: 0,
    options: { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], leaveRunning: false, networkLock: 'iptables' },
    tcp: [],
    notes: [],
    files: { 'inventory.img': { size: 1, sha256: '0'.repeat(64) } },
    ...over,
  };
}

const HOST: HostFacts = { arch: 'x86_64', kernel: '6.8.0', hostname: 'b', cpuFlags: ['avx2', 'fpu', 'hypervisor', 'sse4_2'] };
const criu = (v: string): { version: Version } => ({ version: parseVersionText(v)! });

function thrown(f: () => unknown): CedanaError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(CedanaError);
    return e as CedanaError;
  }
  throw new Error('expected a CedanaError');
}

describe('checkCompatible', () => {
  it('accepts an image from an identical host', () => {
    expect(() => checkCompatible(manifest(), HOST, criu('4.2'))).not.toThrow();
  });

  it('accepts an image made by an older or equal CRIU', () => {
    expect(() => checkCompatible(manifest({ criuVersion: '4.2.0' }), HOST, criu('4.2'))).not.toThrow();
    expect(() => checkCompatible(manifest({ criuVersion: '4.1' }), HOST, criu('4.2.1'))).not.toThrow();
  });

  it('refuses another architecture with IMAGE_INCOMPATIBLE', () => {
    const e = thrown(() => checkCompatible(manifest({ arch: 'aarch64' }), HOST, criu('4.2')));
    expect(e.code).toBe('IMAGE_INCOMPATIBLE');
    expect(e.message).toBe('image was made on aarch64, this host is x86_64');
    expect(e.exitCode).toBe(10);
  });

  it('refuses an image made by a newer CRIU with CRIU_TOO_OLD', () => {
    const e = thrown(() => checkCompatible(manifest({ criuVersion: '4.2.1' }), HOST, criu('4.2')));
    expect(e.code).toBe('CRIU_TOO_OLD');
    expect(e.message).toContain('CRIU 4.2.1');
    expect(e.message).toContain('this host has 4.2');
    expect(thrown(() => checkCompatible(manifest({ criuVersion: '5.0' }), HOST, criu('4.9.9'))).code).toBe('CRIU_TOO_OLD');
  });

  it('ignores an unparseable CRIU version in the manifest', () => {
    expect(() => checkCompatible(manifest({ criuVersion: 'unknown' }), HOST, criu('4.2'))).not.toThrow();
  });

  it('checks the architecture before the CRIU version', () => {
    const e = thrown(() => checkCompatible(manifest({ arch: 'aarch64', criuVersion: '9.0' }), HOST, criu('4.2')));
    expect(e.code).toBe('IMAGE_INCOMPATIBLE');
  });

  it('refuses when this CPU lacks an instruction-set flag the image\'s CPU had', () => {
    const host = { ...HOST, cpuFlags: ['fpu', 'hypervisor', 'sse4_2'] };
    const e = thrown(() => checkCompatible(manifest({ cpuFlags: ['avx2', 'avx512f', 'fpu', 'sse4_2'] }), host, criu('4.2')));
    expect(e.code).toBe('IMAGE_INCOMPATIBLE');
    expect(e.message).toContain('avx2 avx512f');
    expect(e.details).toEqual({ missingCpuFlags: ['avx2', 'avx512f'] });
  });

  it.each(['sse4_1', 'ssse3', 'aes', 'sha_ni', 'bmi2', 'xsaves', 'amx_tile', 'cx16', 'popcnt'])('%s is an instruction-set flag', (flag) => {
    const e = thrown(() => checkCompatible(manifest({ cpuFlags: [flag] }), { ...HOST, cpuFlags: ['fpu'] }, criu('4.2')));
    expect(e.details.missingCpuFlags).toEqual([flag]);
  });

  it('ignores flags that no program uses (hypervisor, errata, power management)', () => {
    const m = manifest({ cpuFlags: ['fpu', 'hypervisor', 'arch_perfmon', 'constant_tsc', 'md_clear', 'ibrs', 'vme'] });
    expect(() => checkCompatible(m, { ...HOST, cpuFlags: ['fpu'] }, criu('4.2'))).not.toThrow();
  });

  it('does not compare flags when this host\'s flags are unknown', () => {
    expect(() => checkCompatible(manifest({ cpuFlags: ['avx512f'] }), { ...HOST, cpuFlags: [] }, criu('4.2'))).not.toThrow();
  });

  it('extra flags on this host are fine', () => {
    expect(() => checkCompatible(manifest({ cpuFlags: ['sse4_2'] }), { ...HOST, cpuFlags: ['avx512f', 'sse4_2'] }, criu('4.2'))).not.toThrow();
  });
});

describe('waitPidsFree', () => {
  /** A PID above pid_max cannot exist. */
  const NO_SUCH_PID = 2 ** 22 + 12345;

  it('resolves at once for PIDs that do not exist', async () => {
    const t = performance.now();
    await expect(waitPidsFree([NO_SUCH_PID, NO_SUCH_PID + 1], 5000)).resolves.toBeUndefined();
    expect(performance.now() - t).toBeLessThan(1000);
  });

  it('resolves for an empty list', async () => {
    await expect(waitPidsFree([], 0)).resolves.toBeUndefined();
  });

  it('a PID that stays taken is PID_IN_USE after the timeout', async () => {
    const t = performance.now();
    const err = await waitPidsFree([NO_SUCH_PID, process.pid], 50).then(
      () => undefined,
      (e: unknown) => e,
    );
    const waited = performance.now() - t;
    expect(err).toBeInstanceOf(CedanaError);
    const e = err as CedanaError;
    expect(e.code).toBe('PID_IN_USE');
    expect(e.exitCode).toBe(12);
    expect(e.message).toBe(`PID ${process.pid} needed by the image is in use on this host`);
    expect(e.details).toEqual({ pids: [process.pid] });
    expect(waited).toBeGreaterThanOrEqual(45);
    expect(waited).toBeLessThan(2000);
  });

  it('names every taken PID', async () => {
    const err = (await waitPidsFree([process.pid, process.ppid], 0).catch((e: unknown) => e)) as CedanaError;
    expect(err.code).toBe('PID_IN_USE');
    expect(err.message).toBe(`PID ${process.pid}, ${process.ppid} needed by the image are in use on this host`);
  });
});
