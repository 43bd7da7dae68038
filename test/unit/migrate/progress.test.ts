import { describe, expect, it } from 'vitest';
import { progressOf } from '../../../src/migrate/context.js';

const MiB = 1 << 20;

describe('progressOf (a migration progress event)', () => {
  it('gives no ETA on the first tick, when a few KiB in 250 ms would promise hours', () => {
    const e = progressOf(40 * 1024, 1024 * MiB, 250);
    expect(e).toMatchObject({ phase: 'memory', bytes: 40 * 1024, totalBytes: 1024 * MiB });
    expect(e.etaMs).toBeUndefined();
  });

  it('gives the ETA from the rate once half a second and a MiB are in', () => {
    const e = progressOf(100 * MiB, 300 * MiB, 1000);
    expect(e.bytesPerSec).toBe(100 * MiB);
    expect(e.etaMs).toBe(2000);
  });

  it('never reports a total below what was sent (the estimate was low), and then no ETA', () => {
    const e = progressOf(30 * MiB, 20 * MiB, 2000);
    expect(e.totalBytes).toBe(30 * MiB);
    expect(e.etaMs).toBeUndefined();
  });

  it('has no total when none is known (what pre-copy left to send)', () => {
    const e = progressOf(5 * MiB, 0, 1000);
    expect(e).not.toHaveProperty('totalBytes');
    expect(e.etaMs).toBeUndefined();
  });
});
