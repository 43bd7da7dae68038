import { describe, expect, it } from 'vitest';
import { freezeTimeoutFor } from '../../../src/migrate/frozen.js';

const GiB = 2 ** 30;

describe('freezeTimeoutFor (the default --freeze-timeout)', () => {
  it('a minute for a tree with no memory', () => {
    expect(freezeTimeoutFor(0)).toBe(60_000);
  });

  it('20 s more per GiB', () => {
    expect(freezeTimeoutFor(GiB)).toBe(80_000);
    expect(freezeTimeoutFor(4 * GiB)).toBe(140_000);
    expect(freezeTimeoutFor(64 * GiB)).toBe(60_000 + 64 * 20_000);
  });

  it('part of a GiB counts in proportion, rounded up to the next millisecond', () => {
    expect(freezeTimeoutFor(GiB / 2)).toBe(70_000);
    expect(freezeTimeoutFor(1.5 * GiB)).toBe(90_000);
    expect(freezeTimeoutFor(1)).toBe(60_001); // 1 byte is a fraction of a millisecond: never rounded away
    expect(freezeTimeoutFor(100 * 1024 * 1024)).toBe(60_000 + Math.ceil((100 / 1024) * 20_000)); // 61954
    expect(freezeTimeoutFor(100 * 1024 * 1024)).toBe(61_954);
  });

  it('grows with the memory and is always a whole number of milliseconds', () => {
    let last = 0;
    for (const bytes of [0, 1, 4096, 10 * 2 ** 20, GiB - 1, GiB, GiB + 1, 3 * GiB + 12345]) {
      const ms = freezeTimeoutFor(bytes);
      expect(Number.isInteger(ms)).toBe(true);
      expect(ms).toBeGreaterThanOrEqual(last);
      last = ms;
    }
  });
});
