import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { decodeIndex, encodeIndex, lookup, type PageIndex } from '../../../src/image/incremental.js';

const h = (b: number): Buffer => Buffer.alloc(16, b);

describe('page index', () => {
  const index: PageIndex = new Map([
    [42, { vaddrs: Float64Array.from([0x1000, 0x2000, 0x7fff_ffff_f000]), hashes: Buffer.concat([h(1), h(2), h(3)]) }],
    [7, { vaddrs: Float64Array.from([]), hashes: Buffer.alloc(0) }],
  ]);

  it('round-trips, and finds each page by address (high addresses included)', () => {
    const back = decodeIndex(encodeIndex(index));
    expect([...back.keys()].sort((a, b) => a - b)).toEqual([7, 42]);
    expect(lookup(back.get(42), 0x2000)).toEqual(h(2));
    expect(lookup(back.get(42), 0x7fff_ffff_f000)).toEqual(h(3));
    expect(lookup(back.get(42), 0x3000)).toBeUndefined();
    expect(lookup(back.get(7), 0x1000)).toBeUndefined();
    expect(lookup(undefined, 0x1000)).toBeUndefined();
  });

  it.each([
    ['a wrong magic', (b: Buffer) => b.writeUInt32LE(0, 0)],
    ['a count past the end', (b: Buffer) => b.writeUInt32LE(99, 4)],
    ['addresses out of order', (b: Buffer) => b.writeDoubleLE(0, 8 + 8 + 8 + 8)],
  ])('refuses %s with IMAGE_INVALID', (_why, damage) => {
    const b = encodeIndex(index);
    damage(b);
    expect(() => decodeIndex(b)).toThrow(CedanaError);
  });

  it('refuses truncation and trailing bytes', () => {
    const b = encodeIndex(index);
    expect(() => decodeIndex(b.subarray(0, b.length - 1))).toThrow(/truncated/);
    expect(() => decodeIndex(Buffer.concat([b, Buffer.alloc(1)]))).toThrow(/trailing/);
  });
});
