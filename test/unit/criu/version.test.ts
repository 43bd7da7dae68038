import { describe, expect, it } from 'vitest';
import { compareVersions, MIN_CRIU, parseCriuVersion, parseVersionText, type Version } from '../../../src/criu/version.js';

describe('parseCriuVersion', () => {
  it('reads `criu --version` with a patch level', () => {
    expect(parseCriuVersion('Version: 4.2.1\nGitID: v4.2.1-3-gabcdef\n')).toEqual({ major: 4, minor: 2, patch: 1, text: '4.2.1' });
  });

  it('reads a version without a patch level', () => {
    expect(parseCriuVersion('Version: 4.2\n')).toEqual({ major: 4, minor: 2, patch: 0, text: '4.2' });
  });

  it('reads multi-digit parts', () => {
    expect(parseCriuVersion('Version: 3.19\n')).toMatchObject({ major: 3, minor: 19, patch: 0 });
  });

  it('gives undefined for output without a version', () => {
    expect(parseCriuVersion('criu: command not found')).toBeUndefined();
    expect(parseCriuVersion('')).toBeUndefined();
    expect(parseCriuVersion('Version: x.y')).toBeUndefined();
  });
});

describe('parseVersionText', () => {
  it('parses a bare version text as stored in a manifest', () => {
    expect(parseVersionText('4.1.1')).toEqual({ major: 4, minor: 1, patch: 1, text: '4.1.1' });
    expect(parseVersionText('5.0')).toMatchObject({ major: 5, minor: 0, patch: 0, text: '5.0' });
  });

  it('gives undefined for garbage', () => {
    expect(parseVersionText('unknown')).toBeUndefined();
  });
});

describe('compareVersions', () => {
  const v = (t: string): Version => parseVersionText(t)!;

  it('orders by major, then minor, then patch', () => {
    expect(compareVersions(v('4.2'), v('4.2.0'))).toBe(0);
    expect(compareVersions(v('4.2.1'), v('4.2'))).toBeGreaterThan(0);
    expect(compareVersions(v('4.1.9'), v('4.2'))).toBeLessThan(0);
    expect(compareVersions(v('5.0'), v('4.99.99'))).toBeGreaterThan(0);
    expect(compareVersions(v('3.19'), v('4.0'))).toBeLessThan(0);
    expect(compareVersions(v('4.10'), v('4.9'))).toBeGreaterThan(0);
  });

  it('MIN_CRIU is 4.2 and compares as such', () => {
    expect(MIN_CRIU.text).toBe('4.2');
    expect(compareVersions(v('4.2.0'), MIN_CRIU)).toBe(0);
    expect(compareVersions(v('4.1'), MIN_CRIU)).toBeLessThan(0);
  });
});
