import { describe, expect, it } from 'vitest';
import { contentFinalLoses, precopyStop } from '../../../src/migrate/precopy/rounds.js';

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

describe('contentFinalLoses (after rounds by content: the final step by content, or stop-and-copy)', () => {
  const r = (...xs: [number, number][]) => xs.map(([pagesWritten, durationMs], i) => ({ round: i + 1, pagesWritten, durationMs }));
  it('goes stop-and-copy where the link keeps up with cedana and the tree changes fast (the bench: 1 GiB at 10% a second, unshaped)', () => {
    const why = contentFinalLoses(r([263903, 3128], [81945, 2022], [57217, 1814], [56917, 1849]));
    expect(why).toMatch(/^round 1 crossed at 346 MB\/s .* ~11\.9% of its memory a second: the final step goes stop-and-copy/);
  });
  it('stays by content where the tree changes slowly (1 GiB at 1% a second, unshaped) or the link is slow (1 Gbit/s)', () => {
    expect(contentFinalLoses(r([263901, 4019], [14803, 2035], [9213, 1811], [8575, 1620]))).toBeUndefined();
    expect(contentFinalLoses(r([263903, 9400], [81945, 4022], [57217, 3814]))).toBeUndefined(); // ~115 MB/s
  });
  it('the highest rate of the rounds counts: a last round small by chance does not hide a fast-changing tree', () => {
    expect(contentFinalLoses(r([67295, 700], [4557, 358], [48, 251]))).toMatch(/~9\.7% of its memory a second/);
  });
  it('decides nothing for a small process, or without a second round', () => {
    expect(contentFinalLoses(r([2780, 64], [49, 40]))).toBeUndefined();
    expect(contentFinalLoses(r([263903, 3128]))).toBeUndefined();
  });
});
