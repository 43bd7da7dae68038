import { describe, expect, it } from 'vitest';
import { defaultOutputName, parseOutput } from '../../../src/dump/output.js';

const NOW = new Date('2025-03-04T05:06:07.891Z');

describe('defaultOutputName', () => {
  it('is cedana-<pid>-<UTC stamp without separators or milliseconds>', () => {
    expect(defaultOutputName(4242, NOW)).toBe('cedana-4242-20250304T050607Z');
  });

  it('uses the current time by default', () => {
    expect(defaultOutputName(1)).toMatch(/^cedana-1-\d{8}T\d{6}Z$/);
  });
});

describe('parseOutput', () => {
  it('"-" is a stream on stdout', () => {
    expect(parseOutput('-', 42, '/cwd', NOW)).toEqual({ kind: 'stream' });
  });

  it('no output: a directory named after the PID and time, in cwd', () => {
    expect(parseOutput(undefined, 42, '/srv/ckpt', NOW)).toEqual({ kind: 'dir', path: '/srv/ckpt/cedana-42-20250304T050607Z' });
  });

  it('a relative directory resolves against cwd', () => {
    expect(parseOutput('img', 42, '/srv', NOW)).toEqual({ kind: 'dir', path: '/srv/img' });
    expect(parseOutput('../img/', 42, '/srv/a', NOW)).toEqual({ kind: 'dir', path: '/srv/img' });
  });

  it('an absolute path ignores cwd', () => {
    expect(parseOutput('/var/img', 42, '/srv', NOW)).toEqual({ kind: 'dir', path: '/var/img' });
  });

  it.each([
    ['x.tar', 'none'],
    ['x.tar.gz', 'gzip'],
    ['x.tgz', 'gzip'],
    ['x.tar.zst', 'zstd'],
    ['x.tar.zstd', 'zstd'],
    ['x.tzst', 'zstd'],
  ])('%s is an archive with compression %s', (name, compression) => {
    expect(parseOutput(name, 42, '/out', NOW)).toEqual({ kind: 'archive', path: `/out/${name}`, compression });
  });

  it.each(['x.gz', 'x.zst', 'x.tar.bz2', 'x.tar.d', 'x.tarball'])('%s is a directory', (name) => {
    expect(parseOutput(name, 42, '/out', NOW)).toEqual({ kind: 'dir', path: `/out/${name}` });
  });

  it('"--" or "./-" is a path, not a stream', () => {
    expect(parseOutput('./-', 42, '/out', NOW)).toEqual({ kind: 'dir', path: '/out/-' });
  });
});
