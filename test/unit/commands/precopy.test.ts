import { describe, expect, it } from 'vitest';
import { precopyStop } from '../../../src/migrate/precopy/rounds.js';

const rounds = (...w: number[]) => w.map((pagesWritten) => ({ pagesWritten }));

describe('precopyStop (the pre-copy stop rule)', () => {
  it('stops when a round wrote 64 pages or fewer', () => {
    expect(precopyStop(rounds(26000, 64), 8)).toBe('round 2 wrote 64 pages (≤ 64)');
    expect(precopyStop(rounds(10), 8)).toMatch(/round 1 wrote 10 pages/);
  });
  it('stops when a round wrote over 110% of the one before (not converging)', () => {
    expect(precopyStop(rounds(26000, 3000, 3301), 8)).toBe('not converging: round 3 wrote 3301 pages, over 110% of the 3000 before');
    expect(precopyStop(rounds(26000, 3000, 3300), 8)).toMatch(/^no longer shrinking/);
  });
  it('stops when a round is within 10% of the one before (the floor the process rewrites all the time)', () => {
    expect(precopyStop(rounds(13716, 90, 90), 8)).toBe('no longer shrinking: round 3 wrote 90 pages, the 90 before');
    expect(precopyStop(rounds(13716, 900, 811), 8)).toMatch(/^no longer shrinking/);
    expect(precopyStop(rounds(13716, 900, 809), 8)).toBeUndefined();
  });
  it('stops after --max-rounds, and goes on while rounds shrink', () => {
    expect(precopyStop(rounds(26000, 5000, 1000), 3)).toBe('the last of --max-rounds 3');
    expect(precopyStop(rounds(26000, 5000, 1000), 8)).toBeUndefined();
    expect(precopyStop(rounds(26000), 1)).toBe('the last of --max-rounds 1');
  });
});
