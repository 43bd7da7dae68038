/**
 * Fuzzes decodeImage with images derived from real CRIU dumps (test/fixtures/criu-images, made by
 * make-seeds.sh): bit flips, truncations, corrupted entry lengths and varints, inserted, deleted and
 * duplicated bytes, images spliced together, magics swapped for other kinds'. Every mutant must
 * either decode — and then encode back to exactly its bytes — or be refused with IMAGE_INVALID;
 * any other exception, a hang or a runaway allocation is a bug.
 *
 * The run is reproducible: CEDANA_FUZZ_SEED=<n> CEDANA_FUZZ_ITERATIONS=<n> replays it, and a failure
 * names the seed, the iteration and the mutations.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../../src/errors.js';
import { decodeImage, encodeImage } from '../../../../src/image/criu/codec.js';
import { IMG_COMMON, IMG_SERVICE, MAGICS } from '../../../../src/image/criu/kinds.js';

const SEEDS_DIR = fileURLToPath(new URL('../../../fixtures/criu-images/', import.meta.url));
const SEED = Number(process.env.CEDANA_FUZZ_SEED ?? 0x5eed_c0de);
const ITERATIONS = Number(process.env.CEDANA_FUZZ_ITERATIONS ?? 20_000);

interface Seed {
  name: string;
  buf: Buffer;
  /** Offsets of the entries' u32 length fields. */
  lengths: number[];
}

function loadSeeds(): Seed[] {
  const seeds: Seed[] = [];
  for (const dir of readdirSync(SEEDS_DIR, { withFileTypes: true }).filter((d) => d.isDirectory())) {
    for (const name of readdirSync(join(SEEDS_DIR, dir.name)).sort()) {
      const buf = readFileSync(join(SEEDS_DIR, dir.name, name));
      const img = decodeImage(buf, name);
      const lengths: number[] = [];
      let pos = img.head === undefined ? 4 : 8;
      for (const e of img.entries) {
        lengths.push(pos);
        pos += 4 + buf.readUInt32LE(pos) + (e.type === null ? 0 : e.extra?.length ?? 0);
      }
      seeds.push({ name: `${dir.name}/${name}`, buf, lengths });
    }
  }
  return seeds;
}

/** mulberry32: small, fast, and the same sequence on every machine. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const MAGIC_VALUES = [...Object.values(MAGICS), IMG_COMMON, IMG_SERVICE, 0, 0xffffffff];

function mutator(rand: () => number, seeds: Seed[]) {
  const int = (n: number): number => Math.floor(rand() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const u32 = (b: Buffer, at: number, v: number): void => {
    if (at + 4 <= b.length) b.writeUInt32LE(v >>> 0, at);
  };
  type Mutation = (b: Buffer, s: Seed) => [Buffer, string];
  const mutations: Mutation[] = [
    (b) => {
      const at = int(b.length);
      const bit = int(8);
      b[at]! ^= 1 << bit;
      return [b, `flip bit ${bit} at ${at}`];
    },
    (b) => {
      const at = int(b.length);
      const v = pick([0x00, 0xff, 0x7f, 0x80, int(256)]);
      b[at] = v;
      return [b, `byte ${v} at ${at}`];
    },
    (b) => {
      const n = int(b.length);
      return [b.subarray(0, n), `truncate to ${n}`];
    },
    (b, s) => {
      if (s.lengths.length === 0) return [b, 'no entry'];
      const at = pick(s.lengths);
      const len = b.length >= at + 4 ? b.readUInt32LE(at) : 0;
      const v = pick([0, len + 1, len - 1, len + int(16), len - int(16), 0xffffffff, 0x7fffffff, 0x80000000, b.length - at - 4, b.length, int(2 ** 32)]);
      u32(b, at, v);
      return [b, `entry length at ${at}: ${len} → ${v >>> 0}`];
    },
    (b, s) => {
      // Inside a message: make a varint run on (continuation bits) or turn a byte into a tag.
      const at = s.lengths.length ? pick(s.lengths) + 4 + int(32) : int(b.length);
      const run = 1 + int(12);
      for (let i = 0; i < run && at + i < b.length; i++) b[at + i]! |= 0x80;
      return [b, `varint run of ${run} at ${at}`];
    },
    (b) => {
      const at = int(b.length + 1);
      const ins = Buffer.from(Array.from({ length: 1 + int(16) }, () => int(256)));
      return [Buffer.concat([b.subarray(0, at), ins, b.subarray(at)]), `insert ${ins.length} bytes at ${at}`];
    },
    (b) => {
      const at = int(b.length);
      const n = 1 + int(16);
      return [Buffer.concat([b.subarray(0, at), b.subarray(at + n)]), `delete ${n} bytes at ${at}`];
    },
    (b) => {
      const other = pick(seeds);
      const cut = int(b.length + 1);
      const from = int(other.buf.length + 1);
      return [Buffer.concat([b.subarray(0, cut), other.buf.subarray(from)]), `splice ${cut} bytes + ${other.name} from ${from}`];
    },
    (b) => {
      const from = int(b.length);
      const n = 1 + int(64);
      const at = int(b.length + 1);
      return [Buffer.concat([b.subarray(0, at), b.subarray(from, from + n), b.subarray(at)]), `duplicate ${n} bytes from ${from} at ${at}`];
    },
    (b) => {
      const which = int(2) * 4;
      const v = pick(MAGIC_VALUES);
      u32(b, which, v);
      return [b, `magic at ${which} → 0x${v.toString(16)}`];
    },
    (b) => {
      const junk = Buffer.from(Array.from({ length: 1 + int(8) }, () => int(256)));
      return [Buffer.concat([b, junk]), `append ${junk.length} bytes`];
    },
  ];
  return (s: Seed): [Buffer, string[]] => {
    let b = Buffer.from(s.buf); // a copy: mutations write into it
    const steps: string[] = [];
    for (let n = 1 + (rand() < 0.3 ? int(3) : 0); n > 0; n--) {
      const [next, what] = pick(mutations)(b, s);
      b = Buffer.from(next);
      steps.push(what);
    }
    return [b, steps];
  };
}

/** Decodes `buf`: null when it decoded and round-tripped or was refused as IMAGE_INVALID, else what went wrong. */
function check(buf: Buffer, name: string): 'decoded' | 'refused' | string {
  let img;
  try {
    img = decodeImage(buf, name);
  } catch (e) {
    if (e instanceof CedanaError && e.code === 'IMAGE_INVALID' && /at offset \d+ \(0x[0-9a-f]+\)$/.test(e.message)) return 'refused';
    return `threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`;
  }
  try {
    const out = encodeImage(img);
    return out.equals(buf) ? 'decoded' : `decoded, but encodes to other bytes (${out.length} vs ${buf.length})`;
  } catch (e) {
    return `decoded, but encodeImage threw ${e instanceof Error ? e.message : String(e)}`;
  }
}

describe('decodeImage under fuzzing', () => {
  const seeds = loadSeeds();

  it('has real seed images to start from', () => {
    expect(seeds.length).toBeGreaterThan(30);
    expect(new Set(seeds.map((s) => decodeImage(s.buf).kind)).size).toBeGreaterThan(15);
  });

  it(`${ITERATIONS} mutated images either decode (and round-trip) or are IMAGE_INVALID`, () => {
    const rand = prng(SEED);
    const mutate = mutator(rand, seeds);
    const counts = { decoded: 0, refused: 0 };
    const failures: string[] = [];
    const heap0 = process.memoryUsage().heapUsed;
    let peak = heap0;
    const t0 = performance.now();
    for (let i = 0; i < ITERATIONS; i++) {
      const seed = seeds[Math.floor(rand() * seeds.length)]!;
      const [buf, steps] = mutate(seed);
      const r = check(buf, seed.name.split('/')[1]!);
      if (r === 'decoded' || r === 'refused') counts[r]++;
      else if (failures.length < 5) {
        failures.push(`CEDANA_FUZZ_SEED=${SEED} iteration ${i}: ${seed.name} after [${steps.join('; ')}]: ${r}\n  mutant (base64): ${buf.toString('base64')}`);
      }
      if (i % 500 === 0) peak = Math.max(peak, process.memoryUsage().heapUsed);
    }
    const ms = performance.now() - t0;
    peak = Math.max(peak, process.memoryUsage().heapUsed);
    console.log(
      `fuzz: seed ${SEED}, ${ITERATIONS} mutants from ${seeds.length} seed images in ${Math.round(ms)} ms: ` +
        `${counts.decoded} decoded and round-tripped, ${counts.refused} refused as IMAGE_INVALID; ` +
        `heap ${Math.round(heap0 / 2 ** 20)} MiB → peak ${Math.round(peak / 2 ** 20)} MiB`,
    );
    expect(failures).toEqual([]);
    // Both outcomes must be common, or the mutations are too mild or too wild to test anything.
    expect(counts.decoded).toBeGreaterThan(ITERATIONS / 20);
    expect(counts.refused).toBeGreaterThan(ITERATIONS / 4);
    expect(ms).toBeLessThan(15_000);
    expect(peak - heap0).toBeLessThan(256 * 2 ** 20);
  });

  it('every seed read as every other kind of image (its magic swapped) decodes or is IMAGE_INVALID', () => {
    const failures: string[] = [];
    let n = 0;
    for (const s of seeds) {
      const at = s.buf.readUInt32LE(0) === MAGICS.INVENTORY ? 0 : 4;
      for (const magic of Object.values(MAGICS)) {
        const buf = Buffer.from(s.buf);
        buf.writeUInt32LE(magic, at);
        const r = check(buf, 'x.img');
        if (r !== 'decoded' && r !== 'refused') failures.push(`${s.name} as 0x${magic.toString(16)}: ${r}`);
        n++;
      }
    }
    expect(failures.slice(0, 5)).toEqual([]);
    expect(n).toBeGreaterThan(2000);
  });
});
