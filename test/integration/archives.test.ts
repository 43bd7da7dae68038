/** Archive outputs and the stdout → stdin stream, each restored and checked by the process itself. */
import { execa } from 'execa';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, cedanaOk, parseJsonLine } from '../helpers/cedana.js';
import { Owned, count, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const startCounter = () => owned.counter();

async function expectCarriesOn(state: string, from: number): Promise<void> {
  await waitFor('restored process to count on', () => count(state) > from + 10);
}

describe('archives and streams', () => {
  for (const ending of ['tar', 'tar.gz', 'tar.zst']) {
    it(`round-trips a .${ending} archive`, async () => {
      const { dir, state, pid } = await startCounter();
      const archive = join(dir, `image.${ending}`);
      const d = await cedanaOk(['dump', String(pid), '-o', archive]);
      expect(d.image).toBe(archive);
      expect(d.bytes).toBe(statSync(archive).size);
      expect(statSync(archive).mode & 0o777).toBe(0o600);
      const at = count(state);
      await waitGone(pid);
      const r = await cedanaOk(['restore', archive]);
      owned.own(r.pid);
      expect(r.pid).toBe(pid);
      await expectCarriesOn(state, at);
    });
  }

  it('streams `dump -o -` into `restore -` through a pipe', async () => {
    const { state, pid } = await startCounter();
    // The JSON of the dump goes to stderr, because stdout carries the image.
    const sh = `node ${BIN} dump ${pid} -o - --json 2>dump.json | node ${BIN} restore - --json`;
    const dir = await owned.tempDir();
    const r = await execa('sh', ['-c', sh], { cwd: dir, reject: false, env: { NO_COLOR: '1' } });
    const restored = parseJsonLine(String(r.stdout));
    if (restored?.pid) owned.own(restored.pid);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const dumped = parseJsonLine(readText(join(dir, 'dump.json'))!);
    expect(dumped).toMatchObject({ ok: true, command: 'dump', pid, image: '-' });
    expect(dumped!.bytes).toBeGreaterThan(dumped!.memoryBytes);
    expect(restored).toMatchObject({ ok: true, command: 'restore', pid, image: '-' });
    await expectCarriesOn(state, count(state));
  });
});
