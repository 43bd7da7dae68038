import { afterEach, describe, expect, it } from 'vitest';
import { chooseReporter, describeProgress, silentReporter, type Reporter } from '../../../src/cli/reporter.js';

const MiB = 1048576;

/** A stand-in for process.stderr: records what is written. */
function fakeStream(isTTY: boolean): NodeJS.WriteStream & { written: string[] } {
  const written: string[] = [];
  const s = {
    isTTY,
    columns: 100,
    rows: 40,
    written,
    write(chunk: string | Uint8Array): boolean {
      written.push(String(chunk));
      return true;
    },
    cursorTo: () => true,
    moveCursor: () => true,
    clearLine: () => true,
    on: () => s,
    once: () => s,
    removeListener: () => s,
  };
  return s as unknown as NodeJS.WriteStream & { written: string[] };
}

describe('describeProgress', () => {
  it('shows the phase and the bytes moved', () => {
    expect(describeProgress({ phase: 'sending pages', bytes: 5 * MiB })).toBe('sending pages: 5 MiB');
  });

  it('adds the total, the rate and the ETA when known', () => {
    expect(describeProgress({ phase: 'sending pages', bytes: 100 * MiB, totalBytes: 400 * MiB, bytesPerSec: 250e6, etaMs: 1250 })).toBe(
      'sending pages: 100 MiB of ~400 MiB, 250 MB/s, ETA 1.3 s',
    );
  });

  it('shows an ETA of zero, but not a zero rate or a zero total', () => {
    expect(describeProgress({ phase: 'p', bytes: 0, totalBytes: 0, bytesPerSec: 0, etaMs: 0 })).toBe('p: 0 MiB, ETA 0.0 s');
  });

  it('rounds MiB to whole numbers', () => {
    expect(describeProgress({ phase: 'p', bytes: 1.6 * MiB, totalBytes: 2.4 * MiB })).toBe('p: 2 MiB of ~2 MiB');
  });
});

describe('chooseReporter', () => {
  let reporter: Reporter | undefined;
  afterEach(() => {
    reporter?.stop();
    reporter = undefined;
  });

  it('JSON events: one JSON object per line, with a timestamp', async () => {
    const stream = fakeStream(false);
    const before = Date.now();
    reporter = await chooseReporter({ json: true, events: true, env: {}, stream });
    reporter.phase('freezing and dumping');
    reporter.progress({ phase: 'sending pages', bytes: 10, totalBytes: 100, bytesPerSec: 5, etaMs: 18000 });
    reporter.stop();
    expect(stream.written).toHaveLength(2);
    expect(stream.written.every((w) => w.endsWith('\n') && w.indexOf('\n') === w.length - 1)).toBe(true);
    const [a, b] = stream.written.map((w) => JSON.parse(w) as Record<string, unknown>);
    expect(a).toEqual({ event: 'phase', phase: 'freezing and dumping', t: expect.any(Number) });
    expect(b).toEqual({ event: 'progress', phase: 'sending pages', bytes: 10, totalBytes: 100, bytesPerSec: 5, etaMs: 18000, t: expect.any(Number) });
    expect(a!.t as number).toBeGreaterThanOrEqual(before);
    expect(b!.t as number).toBeLessThanOrEqual(Date.now());
  });

  it('JSON events are written even on a TTY and in CI', async () => {
    const stream = fakeStream(true);
    reporter = await chooseReporter({ json: true, events: true, env: { CI: 'true' }, stream });
    reporter.phase('x');
    expect(stream.written.map((w) => JSON.parse(w).event)).toEqual(['phase']);
  });

  it('--json without events is silent, even on a TTY', async () => {
    const stream = fakeStream(true);
    reporter = await chooseReporter({ json: true, env: {}, stream });
    expect(reporter).toBe(silentReporter);
    reporter.phase('x');
    reporter.progress({ phase: 'x', bytes: 1 });
    expect(stream.written).toEqual([]);
  });

  it('is silent when the stream is not a TTY', async () => {
    const stream = fakeStream(false);
    reporter = await chooseReporter({ json: false, env: {}, stream });
    expect(reporter).toBe(silentReporter);
    reporter.phase('dumping');
    reporter.progress({ phase: 'dumping', bytes: 5 });
    expect(stream.written).toEqual([]);
  });

  it.each([['true'], ['1'], ['yes']])('is silent with CI=%s, even on a TTY', async (ci) => {
    const stream = fakeStream(true);
    reporter = await chooseReporter({ json: false, env: { CI: ci }, stream });
    expect(reporter).toBe(silentReporter);
    reporter.phase('dumping');
    expect(stream.written).toEqual([]);
  });

  it.each([[''], ['false'], ['0']])('CI=%j does not count as CI: a TTY gets the spinner', async (ci) => {
    reporter = await chooseReporter({ json: false, env: { CI: ci }, stream: fakeStream(true) });
    expect(reporter).not.toBe(silentReporter);
  });

  it('a TTY outside CI gets a live display that shows the phase and the progress', async () => {
    const stream = fakeStream(true);
    reporter = await chooseReporter({ json: false, env: {}, stream });
    expect(reporter).not.toBe(silentReporter);
    reporter.phase('freezing and dumping');
    reporter.progress({ phase: 'sending pages', bytes: 3 * MiB, totalBytes: 9 * MiB });
    reporter.stop();
    const all = stream.written.join('');
    expect(all).toContain('freezing and dumping');
    const after = stream.written.length;
    await new Promise((r) => setTimeout(r, 150)); // a running spinner would redraw by now
    expect(stream.written.length).toBe(after);
    reporter.stop(); // twice is harmless
  });
});
