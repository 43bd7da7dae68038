import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from 'vitest';
import { main } from '../../../src/cli/run.js';
import { CEDANA_VERSION } from '../../../src/version.js';

let stdout: string;
let stderr: string;
let outSpy: MockInstance;
let errSpy: MockInstance;

beforeEach(() => {
  stdout = '';
  stderr = '';
  outSpy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stdout += chunk.toString();
    return true;
  });
  errSpy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    // Colour depends on the environment (FORCE_COLOR in CI); the text is what is checked.
    stderr += chunk.toString().replace(/\x1b\[[0-9;]*m/g, '');
    return true;
  });
});

afterEach(() => {
  outSpy.mockRestore();
  errSpy.mockRestore();
});

/** The one JSON object a --json run printed on stdout. */
function jsonOut(): Record<string, any> {
  const lines = stdout.split('\n').filter((l) => l !== '');
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0]!) as Record<string, any>;
}

describe('main: usage errors', () => {
  it('an unknown option is USAGE (exit 2), reported on stderr', async () => {
    expect(await main(['--bogus'])).toBe(2);
    expect(stdout).toBe('');
    expect(stderr).toContain('[USAGE]');
    expect(stderr).toContain("unknown option '--bogus'");
    expect(stderr).toContain('hint:');
  });

  it('an unknown option with --json: one JSON error on stdout, nothing on stderr', async () => {
    expect(await main(['--bogus', '--json'])).toBe(2);
    const j = jsonOut();
    expect(j.ok).toBe(false);
    expect(j.error.code).toBe('USAGE');
    expect(stderr).toBe('');
  });

  it('image build without -o: USAGE named as the subcommand, in text and JSON', async () => {
    expect(await main(['image', 'build', '/nonexistent'])).toBe(2);
    expect(stderr).toMatch(/\[USAGE\] cedana image build: .*-o, --output/);
    stderr = '';
    expect(await main(['image', 'build', '/nonexistent', '--json'])).toBe(2);
    expect(jsonOut()).toMatchObject({ ok: false, command: 'image build', error: { code: 'USAGE' } });
  });

  it('restore --rootfs without --container, and dump --format without --container: USAGE', async () => {
    expect(await main(['restore', '/nonexistent', '--rootfs', '/tmp', '--json'])).toBe(2);
    expect(jsonOut()).toMatchObject({ ok: false, command: 'restore', error: { code: 'USAGE', message: expect.stringMatching(/--rootfs goes with --container/) } });
    stdout = '';
    expect(await main(['dump', '1', '--format', 'checkpointctl', '--json'])).toBe(2);
    expect(jsonOut()).toMatchObject({ ok: false, command: 'dump', error: { code: 'USAGE', message: expect.stringMatching(/go with --container/) } });
  });

  it('dump with a non-numeric PID and --json: exit 2 and a JSON USAGE error on stdout', async () => {
    expect(await main(['dump', 'abc', '--json'])).toBe(2);
    const j = jsonOut();
    expect(j).toMatchObject({ ok: false, command: 'dump', error: { code: 'USAGE' } });
    expect(j.error.message).toMatch(/positive integer PID/);
    expect(j.error.hint).toMatch(/--help/);
    expect(stderr).toBe('');
  });

  it.each([['0'], ['-5'], ['12x'], ['99999999999999999999']])('dump PID %j is a usage error', async (pid) => {
    expect(await main(['dump', pid, '--json'])).toBe(2);
    expect(jsonOut().error.code).toBe('USAGE');
  });

  it('dump without a PID is a usage error', async () => {
    expect(await main(['dump'])).toBe(2);
    expect(stderr).toContain('[USAGE] cedana dump:');
    expect(stderr).toMatch(/dump needs a PID, or --container ID/);
  });

  it('conflicting --tcp-established and --tcp-close is a usage error', async () => {
    expect(await main(['dump', '123', '--tcp-established', '--tcp-close', '--json'])).toBe(2);
    expect(jsonOut().error.code).toBe('USAGE');
  });

  it('an unknown command is a usage error', async () => {
    expect(await main(['migrate', '--json'])).toBe(2);
    const j = jsonOut();
    expect(j.command).toBe('migrate');
    expect(j.error.code).toBe('USAGE');
  });

  it('restore --pid-wait with a non-number is a usage error', async () => {
    expect(await main(['restore', 'img', '--pid-wait', 'soon', '--json'])).toBe(2);
    expect(jsonOut().error.message).toMatch(/milliseconds/);
  });

  it('no command at all shows help and is a usage error', async () => {
    expect(await main([])).toBe(2);
    expect(stderr).toContain('Usage: cedana');
    expect(stdout).toBe('');
  });
});

describe('main: version and help', () => {
  it('--version prints the version and returns 0', async () => {
    expect(await main(['--version'])).toBe(0);
    expect(stdout.trim()).toBe(CEDANA_VERSION);
    expect(CEDANA_VERSION).toMatch(/^\d+\.\d+\.\d+/);
  });

  it('-V is the same', async () => {
    expect(await main(['-V'])).toBe(0);
    expect(stdout.trim()).toBe(CEDANA_VERSION);
  });

  it('--help prints help on stdout and returns 0', async () => {
    expect(await main(['--help'])).toBe(0);
    expect(stdout).toContain('Usage: cedana');
    expect(stdout).toContain('dump');
    expect(stdout).toContain('restore');
  });

  it('dump --help returns 0, and shows the PID as required unless --container', async () => {
    expect(await main(['dump', '--help'])).toBe(0);
    expect(stdout).toContain('--leave-running');
    expect(stdout).toContain('Usage: cedana dump <pid> [options]');
    expect(stdout).toContain('cedana dump --container <id> [options]');
    expect(stdout).not.toContain('[pid]');
  });

  it('migrate --help shows the PID and --to as required', async () => {
    expect(await main(['migrate', '--help'])).toBe(0);
    expect(stdout).toContain('Usage: cedana migrate <pid> --to <destination> [options]');
    expect(stdout).toMatch(/--to <destination>\s+required:/);
    expect(stdout).not.toContain('[pid]');
  });

  it('`help restore` returns 0', async () => {
    expect(await main(['help', 'restore'])).toBe(0);
    expect(stdout).toContain('--pid-wait');
  });
});

describe('main: bare help command', () => {
  it('`help` alone prints help and returns 0', async () => {
    expect(await main(['help'])).toBe(0);
    expect(stdout).toContain('Usage: cedana');
  });
});
