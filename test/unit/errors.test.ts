import { describe, expect, it } from 'vitest';
import { CedanaError, ERROR_CODES, exitCodeFor, toCedanaError, type ErrorCode } from '../../src/errors.js';

const EXPECTED: Record<ErrorCode, number> = {
  INTERNAL: 1,
  USAGE: 2,
  NOT_ROOT: 3,
  PID_NOT_FOUND: 4,
  PID_REFUSED: 5,
  CRIU_MISSING: 6,
  CRIU_TOO_OLD: 6,
  HOST_UNSUPPORTED: 7,
  CRIU_FAILED: 8,
  IMAGE_INVALID: 9,
  IMAGE_INCOMPATIBLE: 10,
  OUTPUT_EXISTS: 11,
  PID_IN_USE: 12,
  IO_ERROR: 13,
  REMAP_INVALID: 14,
  FILE_TOO_LARGE: 15,
  SHARED_FILE_LOCKED: 18,
  TARGET_LOCK_BLOCKED: 19,
  FREEZE_TIMEOUT: 39,
  TARGET_PTY_IN_USE: 49,
  LOCK_LOST: 50,
  FILE_CONFLICT: 16,
  TCP_KEEP_IMPOSSIBLE: 17,
  SSH_UNREACHABLE: 20,
  SSH_AUTH_FAILED: 21,
  HOST_KEY_UNKNOWN: 22,
  HOST_KEY_MISMATCH: 23,
  SSH_FAILED: 24,
  CONNECTION_LOST: 25,
  TARGET_NOT_ROOT: 26,
  TARGET_CRIU_MISSING: 27,
  TARGET_UNSUPPORTED: 28,
  CPU_INCOMPATIBLE: 29,
  TARGET_NO_SPACE: 30,
  TARGET_NO_MEMORY: 31,
  TARGET_PID_IN_USE: 32,
  FILES_MISSING_ON_TARGET: 33,
  TARGET_RESTORE_FAILED: 34,
  HOOK_FAILED: 35,
  TARGET_PORT_IN_USE: 36,
  LINK_TOO_SLOW: 37,
  PROCESS_LOST: 38,
  GPU_UNSUPPORTED: 40,
  GPU_FAILED: 41,
  GPU_MISMATCH: 42,
  CONTAINER_NOT_FOUND: 43,
  CONTAINER_NOT_RUNNING: 44,
  CONTAINER_EXISTS: 45,
  RUNTIME_FAILED: 46,
  ROOTFS_MISSING: 47,
  CAPABILITY_MISSING: 48,
  TARGET_UNRESPONSIVE: 51,
  INTERRUPTED: 130,
};

describe('ERROR_CODES', () => {
  it('has exactly the documented codes and exit statuses', () => {
    const actual = Object.fromEntries(Object.entries(ERROR_CODES).map(([k, v]) => [k, v.exit]));
    expect(actual).toEqual(EXPECTED);
  });

  it('every exit status is a valid, non-zero shell status with a description', () => {
    for (const [code, { exit, what }] of Object.entries(ERROR_CODES)) {
      expect(Number.isInteger(exit), code).toBe(true);
      expect(exit, code).toBeGreaterThan(0);
      expect(exit, code).toBeLessThan(256);
      expect(what.length, code).toBeGreaterThan(10);
    }
  });

  it('codes share an exit status only for the two CRIU-availability failures', () => {
    const byExit = new Map<number, string[]>();
    for (const [code, { exit }] of Object.entries(ERROR_CODES)) byExit.set(exit, [...(byExit.get(exit) ?? []), code]);
    const shared = [...byExit.values()].filter((codes) => codes.length > 1);
    expect(shared).toEqual([['CRIU_MISSING', 'CRIU_TOO_OLD']]);
  });

  it('every row of the README exit-code table agrees with ERROR_CODES', async () => {
    const { readFile } = await import('node:fs/promises');
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const rows = [...readme.matchAll(/^\| (\d+) \| `([A-Z_]+)` \| (.*) \|$/gm)];
    expect(rows.length).toBeGreaterThanOrEqual(15);
    for (const [, exit, code, what] of rows) {
      expect(ERROR_CODES, code).toHaveProperty(code!);
      expect(ERROR_CODES[code as ErrorCode].exit, code).toBe(Number(exit));
      expect(ERROR_CODES[code as ErrorCode].what, code).toBe(what);
    }
  });

  it('exitCodeFor and CedanaError.exitCode agree with the table', () => {
    for (const code of Object.keys(EXPECTED) as ErrorCode[]) {
      expect(exitCodeFor(code)).toBe(EXPECTED[code]);
      expect(new CedanaError(code, 'x').exitCode).toBe(EXPECTED[code]);
    }
  });
});

describe('CedanaError', () => {
  it('keeps code, message, hint, details and cause', () => {
    const cause = new Error('root cause');
    const e = new CedanaError('PID_IN_USE', 'PID 5 is taken', { hint: 'end it', details: { pids: [5] }, cause });
    expect(e).toBeInstanceOf(Error);
    expect(e.name).toBe('CedanaError');
    expect(e.code).toBe('PID_IN_USE');
    expect(e.message).toBe('PID 5 is taken');
    expect(e.hint).toBe('end it');
    expect(e.details).toEqual({ pids: [5] });
    expect(e.cause).toBe(cause);
  });

  it('defaults to no hint, empty details and no cause', () => {
    const e = new CedanaError('USAGE', 'bad');
    expect(e.hint).toBeUndefined();
    expect(e.details).toEqual({});
    expect('cause' in e).toBe(false);
  });
});

function errno(code: string, message = `${code}: something`): NodeJS.ErrnoException {
  return Object.assign(new Error(message), { code });
}

describe('toCedanaError', () => {
  it('returns a CedanaError unchanged', () => {
    const e = new CedanaError('CRIU_FAILED', 'x');
    expect(toCedanaError(e)).toBe(e);
  });

  it.each(['ENOSPC', 'EDQUOT', 'EPIPE', 'EACCES', 'EROFS', 'EIO', 'EEXIST', 'ENOENT', 'EPERM', 'EMFILE'])('maps %s to IO_ERROR', (code) => {
    const err = errno(code);
    const e = toCedanaError(err);
    expect(e.code).toBe('IO_ERROR');
    expect(e.exitCode).toBe(13);
    expect(e.message).toBe(`${code}: something`);
    expect(e.details).toEqual({ errno: code });
    expect(e.cause).toBe(err);
  });

  it('gives ENOSPC a hint about space', () => {
    expect(toCedanaError(errno('ENOSPC')).hint).toMatch(/free some space/);
    expect(toCedanaError(errno('EACCES')).hint).toBeUndefined();
  });

  it('maps other errors to INTERNAL', () => {
    const plain = new TypeError('x is not a function');
    const e = toCedanaError(plain);
    expect(e.code).toBe('INTERNAL');
    expect(e.exitCode).toBe(1);
    expect(e.message).toBe('x is not a function');
    expect(e.cause).toBe(plain);
  });

  it('maps unknown errno codes to INTERNAL', () => {
    expect(toCedanaError(errno('Z_DATA_ERROR')).code).toBe('INTERNAL');
    expect(toCedanaError(errno('ECONNRESET')).code).toBe('INTERNAL');
  });

  it('handles thrown non-errors', () => {
    expect(toCedanaError('a string').message).toBe('a string');
    expect(toCedanaError(undefined).code).toBe('INTERNAL');
    expect(toCedanaError(null).code).toBe('INTERNAL');
    expect(toCedanaError({ code: 42 }).code).toBe('INTERNAL');
  });
});
