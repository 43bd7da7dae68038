/**
 * restore --map-path: a process writing to a log restored with the log (and its working directory)
 * at another path keeps appending to the new file at the right offset. restore --map-port: a
 * listening service comes back on another port.
 */
import { execa } from 'execa';
import { copyFileSync, mkdirSync, readlinkSync, appendFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const lines = (p: string): string[] => (readText(p) ?? '').split('\n').slice(0, -1);

async function dumpedAppender(dumpArgs: string[] = []): Promise<{ base: string; a: string; b: string; img: string; pid: number }> {
  const base = await owned.tempDir();
  const [a, b] = [join(base, 'a'), join(base, 'b')];
  mkdirSync(a);
  mkdirSync(b);
  const pid = owned.python('appender.py', [join(a, 'out.log')], { cwd: a });
  await waitFor('lines', () => lines(join(a, 'out.log')).length > 5);
  const img = join(base, 'img');
  await cedanaOk(['dump', String(pid), '-o', img, ...dumpArgs]);
  await waitGone(pid);
  return { base, a, b, img, pid };
}

describe('restore --map-path', () => {
  it('restores open files and the working directory from the new path, at the same offset', async () => {
    const { a, b, img, pid } = await dumpedAppender();
    copyFileSync(join(a, 'out.log'), join(b, 'out.log'));
    const atDump = lines(join(b, 'out.log')).length;
    const r = await cedanaOk(['restore', img, '--map-path', `${a}=${b}`]);
    owned.own(r.pid);
    expect(r.remapped).toEqual(expect.arrayContaining([{ from: join(a, 'out.log'), to: join(b, 'out.log') }, { from: a, to: b }]));
    await waitFor('lines in the new file', () => lines(join(b, 'out.log')).length > atDump + 20);
    lines(join(b, 'out.log')).forEach((l, i) => expect(l).toBe(`line ${i}`)); // no gap, no overwrite
    expect(lines(join(a, 'out.log')).length).toBe(atDump); // the old file is left alone
    expect(readlinkSync(`/proc/${pid}/cwd`)).toBe(b);
  });

  it('puts a file missing at NEW there from the image (shipped by default), and appending goes on', async () => {
    const { a, b, img, pid } = await dumpedAppender();
    const atDump = lines(join(a, 'out.log')).length;
    const r = await cedanaOk(['restore', img, '--map-path', `${a}=${b}`]);
    owned.own(r.pid);
    expect(r.placed).toEqual([join(b, 'out.log')]);
    await waitFor('lines in the new file', () => lines(join(b, 'out.log')).length > atDump + 20);
    lines(join(b, 'out.log')).forEach((l, i) => expect(l).toBe(`line ${i}`));
    expect(readlinkSync(`/proc/${pid}/fd/3`)).toBe(join(b, 'out.log'));
  });

  it('refuses a target that is missing or differs from the file at the dump, restoring nothing', async () => {
    const { a, b, img, pid } = await dumpedAppender(['--no-ship-files']);
    const missing = await cedana(['restore', img, '--map-path', `${a}=${b}`, '--json']);
    expect(missing.exitCode).toBe(14);
    expect(missing.json!.error.code).toBe('REMAP_INVALID');
    expect(missing.json!.error.message).toContain(`${join(b, 'out.log')} (for ${join(a, 'out.log')}) does not exist`);
    copyFileSync(join(a, 'out.log'), join(b, 'out.log'));
    appendFileSync(join(b, 'out.log'), 'changed since\n');
    const differs = await cedana(['restore', img, '--map-path', `${a}=${b}`, '--json']);
    expect(differs.exitCode).toBe(14);
    expect(differs.json!.error.message).toMatch(/has \d+ bytes, .* had \d+ at the dump/);
    expect(alive(pid)).toBe(false);
    const usage = await cedana(['restore', img, '--map-path', 'relative=/x', '--json']);
    expect(usage.json!.error.code).toBe('USAGE');
  });
});

describe('restore --map-port', () => {
  it("Python's http.server restored with --map-port 8000:9000 answers on 9000", async () => {
    const { inNs } = await owned.netns('r');
    const get = (port: number) =>
      execa(inNs[0]!, [...inNs.slice(1), 'python3', '-c', `import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:${port}/", timeout=5).status)`], { reject: false });
    const root = await owned.tempDir();
    const pid = owned.start('python3', ['-m', 'http.server', '8000', '--bind', '127.0.0.1', '--directory', root], { wrap: inNs });
    await waitFor('http.server answering', async () => (await get(8000)).stdout.trim() === '200');
    const img = join(root, '..', `${root.split('/').pop()}-img`);
    owned.onCleanup(() => rm(img, { recursive: true, force: true }));
    await cedanaOk(['dump', String(pid), '-o', img], { wrap: inNs });
    await waitGone(pid);
    const r = await cedanaOk(['restore', img, '--map-port', '8000:9000'], { wrap: inNs });
    owned.own(r.pid);
    expect(r.remappedPorts).toEqual([{ from: 8000, to: 9000 }]);
    expect((await get(9000)).stdout.trim()).toBe('200');
    expect((await get(8000)).exitCode).not.toBe(0); // nothing listens there any more
  });

  it('refuses a port the image does not listen on', async () => {
    const { img } = await dumpedAppender();
    const r = await cedana(['restore', img, '--map-port', '8000:9000', '--json']);
    expect(r.exitCode).toBe(14);
    expect(r.json!.error.message).toMatch(/no listening TCP socket on port 8000/);
  });
});
