import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { CAP_NAMES, capNames, hasCap, parseCapEff, parseCapMask } from '../../../src/proc/caps.js';

describe('CAP_NAMES', () => {
  it('puts each name at its bit of include/uapi/linux/capability.h', () => {
    expect(CAP_NAMES).toHaveLength(41);
    expect(CAP_NAMES.indexOf('CAP_CHOWN')).toBe(0);
    expect(CAP_NAMES.indexOf('CAP_DAC_OVERRIDE')).toBe(1);
    expect(CAP_NAMES.indexOf('CAP_KILL')).toBe(5);
    expect(CAP_NAMES.indexOf('CAP_NET_ADMIN')).toBe(12);
    expect(CAP_NAMES.indexOf('CAP_SYS_CHROOT')).toBe(18);
    expect(CAP_NAMES.indexOf('CAP_SYS_PTRACE')).toBe(19);
    expect(CAP_NAMES.indexOf('CAP_SYS_ADMIN')).toBe(21);
    expect(CAP_NAMES.indexOf('CAP_SYS_RESOURCE')).toBe(24);
    expect(CAP_NAMES.indexOf('CAP_BPF')).toBe(39);
    expect(CAP_NAMES.indexOf('CAP_CHECKPOINT_RESTORE')).toBe(40);
  });
});

describe('capNames', () => {
  it('names every bit of a full mask (kernel >= 5.9)', () => {
    expect(capNames('000001ffffffffff')).toEqual([...CAP_NAMES]);
  });

  it("these VMs' root: everything but CAP_SYS_RESOURCE", () => {
    const names = capNames('000001fffeffffff');
    expect(names).toHaveLength(40);
    expect(names).not.toContain('CAP_SYS_RESOURCE');
    expect(names).toContain('CAP_SYS_ADMIN');
    expect(names).toContain('CAP_CHECKPOINT_RESTORE');
  });

  it('an empty mask (a user without capabilities) has none', () => {
    expect(capNames('0000000000000000')).toEqual([]);
  });

  it('a single bit, in either case of hex', () => {
    expect(capNames('0000000000200000')).toEqual(['CAP_SYS_ADMIN']);
    expect(capNames('00000000000A0000')).toEqual(['CAP_SYS_RAWIO', 'CAP_SYS_PTRACE']);
    expect(capNames('00000000000a0000')).toEqual(['CAP_SYS_RAWIO', 'CAP_SYS_PTRACE']);
  });

  it('names a bit newer than the table by its number', () => {
    expect(capNames('0000060000000000')).toEqual(['CAP_41', 'CAP_42']);
  });
});

describe('parseCapMask and hasCap', () => {
  it('refuses what is not a hex mask rather than read it as "no capabilities"', () => {
    for (const bad of ['', 'xyz', '0x1ff', '1 2', '00000000000000000']) expect(() => parseCapMask(bad), bad).toThrow(/malformed capability mask/);
    expect(parseCapMask('000001fffeffffff')).toBe(0x1fffeffffffn);
  });

  it('tests one named bit', () => {
    expect(hasCap('000001fffeffffff', 'CAP_SYS_RESOURCE')).toBe(false);
    expect(hasCap('000001fffeffffff', 'CAP_SYS_ADMIN')).toBe(true);
    expect(hasCap('0000000001000000', 'CAP_SYS_RESOURCE')).toBe(true);
    expect(hasCap('0000000001000000', 'CAP_SYS_NICE')).toBe(false);
    expect(hasCap('000000ffffffffff', 'CAP_CHECKPOINT_RESTORE')).toBe(false); // a kernel before 5.9
  });
});

describe('parseCapEff', () => {
  it('takes the CapEff line, not CapPrm or CapBnd', () => {
    const status = 'Name:\tbash\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000000000003000\nCapBnd:\t000001ffffffffff\n';
    expect(parseCapEff(status)).toBe('0000000000003000');
  });

  it('refuses a status text without it', () => {
    expect(() => parseCapEff('Name:\tbash\n')).toThrow(/no CapEff/);
  });

  it('reads this very process', async () => {
    expect(parseCapEff(await readFile('/proc/self/status', 'utf8'))).toMatch(/^[0-9a-f]{16}$/);
  });
});
