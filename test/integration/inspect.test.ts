/**
 * cedana inspect on images of real processes dumped with the real CRIU: what it shows matches what
 * the test knows of each process (its pid, argv, working directory, the file it writes and where,
 * the port it listens on, the memory dumped), and a flipped byte is reported with IMAGE_INVALID's
 * exit status while the rest is still shown.
 */
import { execa } from 'execa';
import { cpSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { pagesImage, toFormat1 } from '../helpers/images.js';
import { FIXTURES, Owned, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterAll(() => owned.cleanup());

const PORT = 7600 + (process.pid % 300);
const facts = { appender: 0, appenderDir: '', log: '', logSize: 0, server: 0, serverArchive: '' };

const pagesBytes = (dir: string): number =>
  readdirSync(dir).filter((n) => /^pages-\d+\.img$/.test(n)).reduce((sum, n) => sum + statSync(join(dir, n)).size, 0);

beforeAll(async () => {
  facts.appenderDir = await owned.tempDir();
  facts.log = join(facts.appenderDir, 'out.log');
  facts.appender = owned.python('appender.py', [facts.log], { cwd: facts.appenderDir });
  await waitFor('appender lines', () => (readText(facts.log)?.split('\n').length ?? 0) > 5);
  await cedanaOk(['dump', String(facts.appender), '-o', join(facts.appenderDir, 'img')]);
  await waitGone(facts.appender);
  facts.logSize = statSync(facts.log).size; // nothing writes it any more: the offset it had at the dump

  const { ns, inNs } = await owned.netns('i');
  const d = await owned.tempDir();
  facts.server = owned.python('echoserver.py', ['tcp', '127.0.0.1', String(PORT)], { wrap: inNs });
  await waitFor('server listening', async () => (await execa('ip', ['netns', 'exec', ns, 'ss', '-Hltn', `sport = :${PORT}`])).stdout.includes(String(PORT)));
  facts.serverArchive = join(d, 'server.tar.gz');
  await cedanaOk(['dump', String(facts.server), '-o', facts.serverArchive], { wrap: inNs });
}, 120_000);

describe('cedana inspect', () => {
  it('shows the process, its argv, cwd, the file it writes at its offset, its memory; checksums hold', async () => {
    const img = join(facts.appenderDir, 'img');
    const r = await cedana(['inspect', img, '--json']);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    const j = r.json!;
    expect(j).toMatchObject({ ok: true, command: 'inspect', image: img, checksums: { ok: true, algorithm: 'blake3', problems: [], verified: true }, gpu: null });
    expect(j.manifest).toMatchObject({ pid: facts.appender, criuVersion: expect.stringMatching(/^4\./), arch: expect.any(String), hostname: expect.any(String) });
    expect(j.manifest.files).toBeUndefined();
    expect(j.processes).toHaveLength(1);
    const p = j.processes[0];
    expect(p).toMatchObject({ pid: facts.appender, state: 'running', cwd: facts.appenderDir });
    expect(p.argv.slice(-3)).toEqual(['-u', join(FIXTURES, 'appender.py'), facts.log]);
    const log = p.files.find((f: { path: string }) => f.path === facts.log);
    expect(log).toMatchObject({ type: 'REG', flags: 'write', offset: facts.logSize, size: facts.logSize });
    expect(facts.logSize).toBeGreaterThan(0);
    expect(p.memory.vmaCount).toBe(p.memory.mappings.length);
    expect(p.memory.mappings.some((m: { file: string | null }) => m.file?.includes('python'))).toBe(true);
    expect(p.memory.dumpedBytes).toBe(pagesBytes(img));
    expect(j.sizes.pages).toBe(pagesBytes(img));
    expect(j.sizes.total).toBe(j.sizes.pages + j.sizes.metadata + j.sizes.shipped + j.sizes.manifest);

    const human = await cedana(['inspect', img]);
    expect(human.exitCode).toBe(0);
    expect(human.stdout).toContain(`PID ${facts.appender}`);
    expect(human.stdout).toContain(facts.log);
    expect(human.stdout).toContain('checksums (BLAKE3) ok');
    expect(human.stdout).toContain('GPU: none');
  });

  it('an image of format 1 (before BLAKE3): its sha256 checksums are verified and named', async () => {
    const img = join(await owned.tempDir(), 'img-v1');
    cpSync(join(facts.appenderDir, 'img'), img, { recursive: true });
    toFormat1(img);
    const r = await cedana(['inspect', img, '--json']);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    expect(r.json).toMatchObject({ ok: true, checksums: { ok: true, algorithm: 'sha256', problems: [], verified: true }, manifest: { formatVersion: 1, pid: facts.appender } });
    expect((await cedana(['inspect', img])).stdout).toContain('checksums (sha256, image format 1) ok');
    const core = readdirSync(img).find((n) => /^core-\d+\.img$/.test(n))!;
    const buf = readFileSync(join(img, core));
    buf[buf.length - 1]! ^= 0x01;
    writeFileSync(join(img, core), buf);
    const bad = await cedana(['inspect', img, '--json']);
    expect(bad.exitCode).toBe(9);
    expect(bad.json!.checksums).toEqual({ ok: false, algorithm: 'sha256', problems: [`${core} (checksum mismatch)`], verified: false });
  });

  it('shows a listening TCP port, from an archive', async () => {
    const r = await cedana(['inspect', facts.serverArchive, '--json']);
    expect(r.exitCode, r.stdout + r.stderr).toBe(0);
    const p = r.json!.processes[0];
    expect(p.pid).toBe(facts.server);
    expect(p.argv.slice(-4)).toEqual([join(FIXTURES, 'echoserver.py'), 'tcp', '127.0.0.1', String(PORT)]);
    expect(p.sockets).toContainEqual(expect.objectContaining({ proto: 'tcp', state: 'LISTEN', local: `127.0.0.1:${PORT}`, remote: null }));
    expect(r.json!.checksums.ok).toBe(true);

    const human = await cedana(['inspect', facts.serverArchive]);
    expect(human.stdout).toContain(`PID ${facts.server}`);
    expect(human.stdout).toContain(`tcp LISTEN 127.0.0.1:${PORT}`);
  });

  it('a flipped byte in the pages image: checksums fail, exit 9, the rest is still shown', async () => {
    const img = join(facts.appenderDir, 'img');
    const pagesName = pagesImage(img);
    const pages = join(img, pagesName);
    const buf = readFileSync(pages);
    buf[Math.floor(buf.length / 2)]! ^= 0xff;
    writeFileSync(pages, buf);

    const r = await cedana(['inspect', img, '--json']);
    expect(r.exitCode).toBe(9);
    expect(r.json).toMatchObject({ ok: false, command: 'inspect', checksums: { ok: false, problems: [`${pagesName} (checksum mismatch)`] }, error: { code: 'IMAGE_INVALID' } });
    expect(r.json!.processes[0]).toMatchObject({ pid: facts.appender, cwd: facts.appenderDir });

    const human = await cedana(['inspect', img]);
    expect(human.exitCode).toBe(9);
    expect(human.stdout).toContain(`${pagesName} (checksum mismatch)`);
    expect(human.stdout).toContain(`PID ${facts.appender}`);
  });

  it('refuses what is not an image', async () => {
    const r = await cedana(['inspect', join(facts.appenderDir, 'nothing-here'), '--json']);
    expect(r.exitCode).toBe(9);
    expect(r.json).toMatchObject({ ok: false, error: { code: 'IMAGE_INVALID' } });
  });
});
