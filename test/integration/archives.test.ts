/** Archive outputs and the stdout → stdin stream, each restored and checked by the process itself. */
import { execFileSync } from 'node:child_process';
import { execa } from 'execa';
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, cedana, cedanaOk, parseJsonLine } from '../helpers/cedana.js';
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

  it('the pages stream from CRIU into the archive as parts; with --leave-running (or CEDANA_PAGE_SINK=0) CRIU writes them and they go in whole', async () => {
    const { dir, state, pid } = await startCounter();
    const entries = (archive: string): string[] => execFileSync('tar', ['-tf', archive], { encoding: 'utf8' }).trim().split('\n');
    const kept = join(dir, 'kept.tar');
    await cedanaOk(['dump', String(pid), '-o', kept, '--leave-running']);
    expect(entries(kept).filter((n) => /pages-\d+\.img/.test(n))).toEqual(['pages-1.img']);
    const old = join(dir, 'old.tar');
    await cedanaOk(['dump', String(pid), '-o', old, '--leave-running'], { env: { CEDANA_PAGE_SINK: '0' } });
    expect(entries(old).filter((n) => /pages-\d+\.img/.test(n))).toEqual(['pages-1.img']);
    const streamed = join(dir, 'streamed.tar');
    const d = await cedanaOk(['dump', String(pid), '-o', streamed]);
    const names = entries(streamed);
    expect(names.filter((n) => /^pages-/.test(n))).toEqual([]);
    expect(names.filter((n) => n.startsWith('.cedana-parts/'))).toContain('.cedana-parts/pages-65537.img/00000000');
    expect(names.at(-1)).toBe('cedana.json'); // the manifest last: it names the parts' files, known only once they are in
    expect(d.memoryBytes).toBeGreaterThan(0);
    await waitGone(pid);
    // Both kinds restore: the streamed one, then (the process ended again) the one CRIU wrote.
    for (const archive of [streamed, kept]) {
      const at = count(state);
      const r = await cedanaOk(['restore', archive]);
      owned.own(r.pid);
      expect(r.pid).toBe(pid);
      await expectCarriesOn(state, at);
      process.kill(pid, 'SIGKILL');
      await waitGone(pid);
    }
  });

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

  it('a .tar.zst made by cedana extracts with the system tools, and one they make restores', async () => {
    const { dir, state, pid } = await startCounter();
    const archive = join(dir, 'image.tar.zst');
    await cedanaOk(['dump', String(pid), '-o', archive]);
    await waitGone(pid);
    // GNU tar through zstd, and zstd -d | tar x: the same files, byte for byte.
    const byTar = join(dir, 'by-tar');
    const byPipe = join(dir, 'by-pipe');
    mkdirSync(byTar);
    mkdirSync(byPipe);
    execFileSync('tar', ['--zstd', '-xf', archive, '-C', byTar]);
    execFileSync('sh', ['-c', `zstd -d -q -c "${archive}" | tar -x -C "${byPipe}"`]);
    // The pages went in as CRIU streamed them, in parts: joined by the README's one line, they are
    // the pages images (what cedana's own extraction makes of them, checked against the manifest below).
    for (const d of [byTar, byPipe]) {
      expect(readdirSync(join(d, '.cedana-parts')).some((n) => /^pages-\d+\.img$/.test(n))).toBe(true);
      execFileSync('sh', ['-c', 'for d in .cedana-parts/*/; do cat "$d"* > "$(basename "$d")"; done && rm -r .cedana-parts'], { cwd: d });
    }
    const manifest = JSON.parse(readFileSync(join(byTar, 'cedana.json'), 'utf8')) as { files: Record<string, { size: number }> };
    const names = readdirSync(byTar).sort();
    expect(names).toEqual(['cedana.json', ...Object.keys(manifest.files)].sort());
    for (const n of Object.keys(manifest.files)) expect(statSync(join(byTar, n)).size, n).toBe(manifest.files[n]!.size);
    expect(names[0] === 'cedana.json' || names.includes('cedana.json')).toBe(true);
    expect(names.some((n) => /^pages-\d+\.img$/.test(n))).toBe(true);
    expect(readdirSync(byPipe).sort()).toEqual(names);
    for (const n of names) expect(readFileSync(join(byPipe, n)).equals(readFileSync(join(byTar, n))), n).toBe(true);
    // Archived again by the system's tar (GNU format, './' names, a directory entry) and zstd: cedana restores it.
    const remade = join(dir, 'remade.tar.zst');
    execFileSync('sh', ['-c', `tar -c -C "${byTar}" . | zstd -q -19 -T0 -o "${remade}"`]);
    const at = count(state);
    const r = await cedanaOk(['restore', remade]);
    owned.own(r.pid);
    expect(r.pid).toBe(pid);
    await expectCarriesOn(state, at);
  });

  it('refuses a tampered archive before CRIU runs, and a truncated .tar.zst', async () => {
    const { dir, state, pid } = await startCounter();
    const archive = join(dir, 'image.tar');
    await cedanaOk(['dump', String(pid), '-o', archive]);
    await waitGone(pid);
    const before = readFileSync(state, 'utf8');
    // One byte flipped inside the pages image's data (after the tar header of its first part).
    const tarBytes = readFileSync(archive);
    const at = tarBytes.indexOf(Buffer.from('.cedana-parts/pages-'));
    expect(at).toBeGreaterThanOrEqual(0);
    const size = parseInt(tarBytes.subarray(at + 124, at + 136).toString('latin1').replace(/\0.*$/, '').trim(), 8);
    expect(size).toBeGreaterThan(4096);
    const tampered = Buffer.from(tarBytes);
    const mid = at + 512 + (size >> 1);
    tampered[mid] = tampered[mid]! ^ 0xff;
    const bad = join(dir, 'tampered.tar');
    writeFileSync(bad, tampered);
    const t = await cedana(['restore', bad, '--json']);
    expect(t.exitCode, t.stderr).toBe(9);
    expect(t.json!.error.code).toBe('IMAGE_INVALID');
    expect(t.json!.error.message).toMatch(/pages-\d+\.img \(checksum mismatch\)/);
    // Through stdin too.
    const s = await execa('sh', ['-c', `node ${BIN} restore - --json < "${bad}"`], { reject: false, env: { NO_COLOR: '1' } });
    expect(s.exitCode).toBe(9);
    expect(parseJsonLine(String(s.stdout))!.error.message).toMatch(/checksum mismatch/);
    // A .tar.zst cut short (the pages image's data incomplete).
    const zst = join(dir, 'cut.tar.zst');
    const whole = join(dir, 'whole.tar.zst');
    execFileSync('zstd', ['-q', '-1', archive, '-o', whole]);
    writeFileSync(zst, readFileSync(whole).subarray(0, statSync(whole).size >> 1));
    const c = await cedana(['restore', zst, '--json']);
    expect(c.exitCode, c.stderr).toBe(9);
    expect(c.json!.error.code).toBe('IMAGE_INVALID');
    // The process never came back, nor counted further.
    expect(readFileSync(state, 'utf8')).toBe(before);
    const ok = await cedanaOk(['restore', archive]);
    owned.own(ok.pid);
    await expectCarriesOn(state, count(state));
  });
});
