import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ActionGate } from '../../../src/criu/gate.js';

/** Runs the gate's script as CRIU would at `action`; resolves its exit code. */
function runScript(gate: ActionGate, action: string): Promise<number | null> {
  const child = spawn(gate.script, [], { env: { ...process.env, CRTOOLS_SCRIPT_ACTION: action }, stdio: 'ignore' });
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

describe('ActionGate', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-gate-test-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('sees CRIU reach the action at once, and commit lets the script exit 0', async () => {
    const gate = await ActionGate.create(dir, 'post-restore');
    const never = new Promise<void>(() => undefined);
    const t = performance.now();
    const script = runScript(gate, 'post-restore');
    expect(await gate.waitReady(never)).toBe('ready');
    expect(performance.now() - t).toBeLessThan(2000);
    await gate.commit();
    expect(await script).toBe(0);
  });

  it('abort makes the script exit 1; other actions pass at once', async () => {
    const gate = await ActionGate.create(dir, 'post-dump');
    expect(await runScript(gate, 'pre-dump')).toBe(0);
    const script = runScript(gate, 'post-dump');
    expect(await gate.waitReady(new Promise<void>(() => undefined))).toBe('ready');
    await gate.abort();
    expect(await script).toBe(1);
  });

  it('says exited when CRIU ends before the action', async () => {
    const gate = await ActionGate.create(dir, 'post-restore');
    expect(await gate.waitReady(sleep(30))).toBe('exited');
    expect(await gate.waitReady(Promise.reject(new Error('criu failed')))).toBe('exited');
  });

  it('a ready flag written without an event is still seen (the safety-net poll)', async () => {
    const gate = await ActionGate.create(dir, 'post-restore');
    const waiting = gate.waitReady(new Promise<void>(() => undefined));
    await sleep(20);
    await writeFile(join(gate.dir, 'ready'), '');
    expect(await waiting).toBe('ready');
  });

  it('the script aborts when its owner is gone', async () => {
    const owner = spawn('sleep', ['30'], { stdio: 'ignore' });
    const gate = await ActionGate.create(dir, 'post-dump', owner.pid);
    const script = runScript(gate, 'post-dump');
    expect(await gate.waitReady(new Promise<void>(() => undefined))).toBe('ready');
    owner.kill('SIGKILL');
    expect(await script).toBe(1);
  });
});
