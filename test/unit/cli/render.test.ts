import { Chalk } from 'chalk';
import { describe, expect, it } from 'vitest';
import { errorJson, formatBytes, formatMs, renderError, renderHuman, resultJson } from '../../../src/cli/render.js';
import type { CheckResultData } from '../../../src/commands/check.js';
import type { DumpResult } from '../../../src/commands/dump.js';
import type { RestoreResult } from '../../../src/commands/restore.js';
import { CedanaError } from '../../../src/errors.js';
import { judgeCapabilities } from '../../../src/criu/capabilities.js';

const plain = new Chalk({ level: 0 });
const colour = new Chalk({ level: 1 });

const DUMP: DumpResult = {
  command: 'dump',
  pid: 4242,
  image: '/srv/img.tar.zst',
  bytes: 3 * 1024 * 1024,
  memoryBytes: 10 * 1024 * 1024,
  processes: 2,
  frozenMs: 87,
  durationMs: 1234,
  leftRunning: false,
  decisions: ['--tcp-established: 1 established TCP connection(s), e.g. a ↔ b', '--file-locks: requested'],
  shipped: [],
};

const RESTORE: RestoreResult = { command: 'restore', pid: 4242, image: '/srv/img', processes: 1, restoreMs: 45, durationMs: 2500, remapped: [], remappedPorts: [], placed: [], decisions: [] };

const CHECK_OK: CheckResultData = {
  command: 'check',
  ok: true,
  root: true,
  criu: { found: true, path: '/usr/sbin/criu', version: '4.2', check: 'ok' },
  capabilities: judgeCapabilities('000001ffffffffff'),
  features: [
    { name: 'mem_dirty_track', available: true, enables: 'pre-copy migration', detail: 'memory dirty tracking' },
    { name: 'cuda-checkpoint', available: false, enables: 'checkpointing CUDA processes', detail: 'cuda-checkpoint not found' },
  ],
};

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [1024 * 1024, '1.0 MiB'],
    [5.25 * 1024 ** 3, '5.3 GiB'],
    [2 * 1024 ** 4, '2.0 TiB'],
    [3 * 1024 ** 5, '3072.0 TiB'],
  ])('%d → %s', (n, want) => {
    expect(formatBytes(n)).toBe(want);
  });
});

describe('formatMs', () => {
  it.each([
    [0, '0 ms'],
    [87, '87 ms'],
    [999, '999 ms'],
    [1000, '1.00 s'],
    [1234, '1.23 s'],
    [65_000, '65.00 s'],
  ])('%d → %s', (n, want) => {
    expect(formatMs(n)).toBe(want);
  });
});

describe('errorJson', () => {
  it('has ok=false, the command, and code/message/hint', () => {
    const e = new CedanaError('PID_NOT_FOUND', 'no process with PID 7', { hint: 'check the PID' });
    expect(errorJson('dump', e)).toEqual({
      ok: false,
      command: 'dump',
      error: { code: 'PID_NOT_FOUND', message: 'no process with PID 7', hint: 'check the PID' },
    });
  });

  it('a missing hint is null, not absent', () => {
    const j = errorJson('restore', new CedanaError('INTERNAL', 'boom'));
    expect(j.error).toEqual({ code: 'INTERNAL', message: 'boom', hint: null });
    expect(JSON.parse(JSON.stringify(j)).error).toHaveProperty('hint', null);
  });

  it('merges details into the error object', () => {
    const e = new CedanaError('IMAGE_INVALID', 'missing files', { details: { missing: ['a.img', 'b.img'], count: 2 } });
    expect(errorJson('restore', e).error).toEqual({ code: 'IMAGE_INVALID', message: 'missing files', hint: null, missing: ['a.img', 'b.img'], count: 2 });
  });
});

describe('resultJson', () => {
  it('dump: ok=true with every result field', () => {
    expect(resultJson(DUMP)).toEqual({ ok: true, ...DUMP });
    expect(resultJson(DUMP).command).toBe('dump');
  });

  it('restore: ok=true with every result field', () => {
    expect(resultJson(RESTORE)).toEqual({ ok: true, command: 'restore', pid: 4242, image: '/srv/img', processes: 1, restoreMs: 45, durationMs: 2500, remapped: [], remappedPorts: [], placed: [], decisions: [] });
  });

  it('check that passes: ok=true and no error key', () => {
    const j = resultJson(CHECK_OK);
    expect(j.ok).toBe(true);
    expect(j.command).toBe('check');
    expect(j).not.toHaveProperty('error');
    expect(j.features).toEqual(CHECK_OK.features);
  });

  it('check: the capabilities as plain JSON, each missing one with what it prevents', () => {
    const j = JSON.parse(JSON.stringify(resultJson({ ...CHECK_OK, capabilities: judgeCapabilities('000001fffeffffff') })));
    expect(j.capabilities.capEff).toBe('000001fffeffffff');
    expect(j.capabilities.effective).toContain('CAP_SYS_ADMIN');
    expect(j.capabilities.effective).not.toContain('CAP_SYS_RESOURCE');
    expect(j.capabilities.missing).toEqual([{ name: 'CAP_SYS_RESOURCE', required: false, prevents: expect.stringMatching(/processes of other users cannot be dumped/) }]);
  });

  it('check that fails: ok=false with the error as JSON, not a CedanaError', () => {
    const r: CheckResultData = {
      ...CHECK_OK,
      ok: false,
      root: false,
      error: new CedanaError('NOT_ROOT', 'cedana must run as root', { hint: 'run it with sudo' }),
    };
    const j = resultJson(r);
    expect(j.ok).toBe(false);
    expect(j.command).toBe('check');
    expect(j.root).toBe(false);
    expect(j.error).toEqual({ code: 'NOT_ROOT', message: 'cedana must run as root', hint: 'run it with sudo' });
    expect(j.error).not.toBeInstanceOf(Error);
    expect(JSON.parse(JSON.stringify(j)).error.code).toBe('NOT_ROOT');
  });
});

describe('renderHuman', () => {
  it('dump: PID, processes, destination, sizes, times, what happened to the process, decisions', () => {
    const s = renderHuman(DUMP, plain);
    expect(s).toContain('dumped PID 4242 (2 processes) to /srv/img.tar.zst');
    expect(s).toContain('memory 10.0 MiB');
    expect(s).toContain('image 3.0 MiB');
    expect(s).toContain('frozen 87 ms');
    expect(s).toContain('total 1.23 s');
    expect(s).toContain('the process was ended after the dump');
    expect(s).toContain('decided --tcp-established: 1 established TCP connection(s)');
    expect(s).toContain('decided --file-locks: requested');
    expect(s).not.toMatch(/\x1b\[/);
  });

  it('dump to stdout, one process, left running', () => {
    const s = renderHuman({ ...DUMP, image: '-', processes: 1, leftRunning: true, decisions: [] }, plain);
    expect(s).toContain('dumped PID 4242 (1 process) to stdout');
    expect(s).toContain('the process was left running');
    expect(s).not.toContain('decided');
  });

  it('restore: PID, processes, source, timings, detached', () => {
    const s = renderHuman(RESTORE, plain);
    expect(s).toContain('restored PID 4242 (1 process) from /srv/img');
    expect(s).toContain('CRIU restore 45 ms');
    expect(s).toContain('total 2.50 s');
    expect(s).toContain('detached');
  });

  it('restore from stdin', () => {
    expect(renderHuman({ ...RESTORE, image: '-', processes: 3 }, plain)).toContain('(3 processes) from stdin');
  });

  it('check that passes: root, criu version and path, check ok, features, verdict', () => {
    const s = renderHuman(CHECK_OK, plain);
    expect(s).toContain('✔ running as root');
    expect(s).toContain('✔ criu 4.2 (/usr/sbin/criu)');
    expect(s).toContain('✔ criu check: ok');
    expect(s).toContain('✔ mem_dirty_track: yes — pre-copy migration (memory dirty tracking)');
    expect(s).toContain('– cuda-checkpoint: no — checkpointing CUDA processes (cuda-checkpoint not found)');
    expect(s).toContain('✔ capabilities: all that CRIU uses');
    expect(s.split('\n').at(-1)).toBe('this host can dump and restore');
  });

  it('check: a missing capability is a warning with what it prevents; a required one is a failure', () => {
    const warned = renderHuman({ ...CHECK_OK, capabilities: judgeCapabilities('000001fffeffffff') }, plain);
    expect(warned).toContain('– capabilities: missing CAP_SYS_RESOURCE\n    CAP_SYS_RESOURCE: processes of other users cannot be dumped');
    const failed = renderHuman({ ...CHECK_OK, ok: false, capabilities: judgeCapabilities('000001fffedfffff') }, plain);
    expect(failed).toContain('✘ capabilities: missing CAP_SYS_ADMIN, CAP_SYS_RESOURCE');
    expect(failed).toContain('    CAP_SYS_ADMIN: nothing can be dumped or restored');
    expect(renderHuman({ ...CHECK_OK, capabilities: judgeCapabilities('000001fffeffffff') }, colour)).toMatch(/\x1b\[33mCAP_SYS_RESOURCE/);
  });

  it('check that fails: marks, missing criu, failing check detail, verdict', () => {
    const s = renderHuman(
      { command: 'check', ok: false, root: false, criu: { found: false, check: 'failed', detail: 'line one\nline two' }, capabilities: judgeCapabilities('0000000000000000'), features: [] },
      plain,
    );
    expect(s).toContain('✘ running as root');
    expect(s).toContain('✘ criu not usable: line one');
    expect(s).toContain('✘ criu check: failed\n    line one\n    line two');
    expect(s.split('\n').at(-1)).toBe('this host cannot dump and restore yet');
  });

  it('check that fails: the CRIU remedy under its line, the first blocker’s after the verdict, none twice', () => {
    const notRoot = renderHuman(
      {
        command: 'check',
        ok: false,
        root: false,
        criu: { found: false, check: 'not run', detail: 'criu not found', hint: 'install CRIU >= 4.2' },
        capabilities: judgeCapabilities('000001ffffffffff'),
        features: [],
        error: new CedanaError('NOT_ROOT', 'cedana must run as root', { hint: 'run it with sudo' }),
      },
      plain,
    );
    expect(notRoot).toContain('✘ criu not usable: criu not found\n    hint: install CRIU >= 4.2\n');
    expect(notRoot.split('\n').slice(-2)).toEqual(['this host cannot dump and restore yet', '  hint: run it with sudo']);
    const noCriu = renderHuman(
      {
        command: 'check',
        ok: false,
        root: true,
        criu: { found: false, check: 'not run', detail: 'criu not found', hint: 'install CRIU >= 4.2' },
        capabilities: judgeCapabilities('000001ffffffffff'),
        features: [],
        error: new CedanaError('CRIU_MISSING', 'criu not found', { hint: 'install CRIU >= 4.2' }),
      },
      plain,
    );
    expect(noCriu.match(/hint:/g)).toHaveLength(1);
    expect(noCriu.split('\n').at(-1)).toBe('this host cannot dump and restore yet');
  });

  it('uses colour only when the chalk instance has it', () => {
    expect(renderHuman(RESTORE, colour)).toMatch(/\x1b\[32m✔/);
    expect(renderHuman(RESTORE, plain)).not.toMatch(/\x1b\[/);
  });
});

describe('renderError', () => {
  it('names the code, command, message and hint', () => {
    const s = renderError('dump', new CedanaError('OUTPUT_EXISTS', '/x exists', { hint: 'use --force' }), plain);
    expect(s).toBe('error [OUTPUT_EXISTS] cedana dump: /x exists\n  hint: use --force');
  });

  it('does not repeat "cedana" for a top-level error', () => {
    expect(renderError('cedana', new CedanaError('USAGE', 'unknown option'), plain)).toBe('error [USAGE] cedana: unknown option');
  });

  it('says whether the process is still running', () => {
    const running = new CedanaError('CRIU_FAILED', 'x', { details: { processRunning: true } });
    const gone = new CedanaError('CRIU_FAILED', 'x', { details: { processRunning: false } });
    expect(renderError('dump', running, plain)).toContain('the process is still running');
    expect(renderError('dump', gone, plain)).toContain('the process is no longer running');
    expect(renderError('dump', new CedanaError('CRIU_FAILED', 'x'), plain)).not.toContain('the process');
  });
});
