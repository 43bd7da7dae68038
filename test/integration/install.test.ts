/**
 * The install path for users' hosts (README, "Installing on your hosts"): `npm pack` in this
 * checkout, `npm install -g` of the tarball into an empty prefix, and the installed cedana, run from
 * elsewhere through npm's bin symlink, checks this host and dumps and restores a process.
 */
import { execa } from 'execa';
import { lstatSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT, cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, count, waitFor, waitGone } from '../helpers/processes.js';
import { compareVersions, MIN_CRIU, parseVersionText } from '../../src/criu/version.js';

const owned = new Owned();
afterAll(() => owned.cleanup());

const npm = (args: string[], cwd: string) => execa('npm', args, { cwd, all: true });

let work: string;
let tarball: string;
let pkgDir: string;
let bin: string;
const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;

beforeAll(async () => {
  work = await owned.tempDir('cedana-install-');
  // prepack builds dist/ first: the tarball is what a user packs from a fresh checkout.
  await npm(['pack', '--pack-destination', work], ROOT);
  tarball = join(work, readdirSync(work).find((f) => f.endsWith('.tgz'))!);
  const prefix = join(work, 'prefix');
  // Dependencies come from the registry as the tarball's package.json names them (the cache first).
  await npm(['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball], work);
  pkgDir = join(prefix, 'lib', 'node_modules', 'cedana');
  bin = join(prefix, 'bin', 'cedana');
}, 120_000);

describe('install from a packed tarball', () => {
  it('packs only what runs: the CLI, its compiled code and the CRIU recipe; no tests, sources or maps', async () => {
    const entries = (await execa('tar', ['tzf', tarball])).stdout.split('\n').filter(Boolean);
    expect(entries).toEqual(expect.arrayContaining(['package/bin/cedana', 'package/dist/src/cli/main.js', 'package/scripts/install-criu', 'package/package.json']));
    const unexpected = entries.filter((e) => !/^package\/(bin\/cedana|dist\/src\/.+\.js|scripts\/install-criu|package\.json|README\.md)$/.test(e));
    expect(unexpected).toEqual([]);
    expect(entries.filter((e) => /(^|\/)test\/|\.test\.|\.map$|\.ts$/.test(e))).toEqual([]);
    // Runtime dependencies only: the build and test tools stay out of a user's install.
    const deps = readdirSync(join(pkgDir, 'node_modules'));
    expect(deps).toEqual(expect.arrayContaining(['commander', 'execa', 'ssh2', 'tar', '@napi-rs']));
    // BLAKE3's native binary for this machine, as the registry's prebuilt optional dependency.
    expect(readdirSync(join(pkgDir, 'node_modules', '@napi-rs'))).toEqual(expect.arrayContaining(['blake-hash', `blake-hash-linux-${process.arch}-gnu`]));
    expect(deps).not.toContain('typescript');
    expect(deps).not.toContain('vitest');
  });

  it('runs through npm’s bin symlink from any directory: --version, and check finds CRIU >= 4.2', async () => {
    expect(lstatSync(bin).isSymbolicLink()).toBe(true);
    const v = await cedana(['--version'], { bin, cwd: work });
    expect(v.exitCode, v.stderr).toBe(0);
    expect(v.stdout.trim()).toBe(version);
    const check = await cedana(['check', '--json'], { bin, cwd: work });
    expect(check.exitCode, check.stderr).toBe(0);
    expect(check.json).toMatchObject({ ok: true, command: 'check', root: true, criu: { found: true, check: 'ok' } });
    expect(compareVersions(parseVersionText(check.json!.criu.version)!, MIN_CRIU)).toBeGreaterThanOrEqual(0);
  });

  it('without CRIU, check names the recipe the package ships, by its installed path', async () => {
    const r = await cedana(['check', '--json'], { bin, cwd: work, env: { CEDANA_CRIU: '/nonexistent/criu' } });
    expect(r.exitCode).toBe(6);
    const recipe = join(pkgDir, 'scripts', 'install-criu');
    expect(r.json!.error).toMatchObject({ code: 'CRIU_MISSING', hint: expect.stringContaining(`run ${recipe} as root`) });
    expect(statSync(recipe).mode & 0o111).not.toBe(0);
  });

  it('dumps and restores a process; it goes on counting from where it was, with its PID', async () => {
    const { dir, state, pid } = await owned.counter();
    await waitFor('counting past 20', () => count(state) > 20);
    const img = join(dir, 'img');
    await cedanaOk(['dump', String(pid), '-o', img], { bin, cwd: work });
    const atDump = count(state);
    expect(alive(pid)).toBe(false);
    await waitGone(pid);
    const r = await cedanaOk(['restore', img], { bin, cwd: work });
    owned.own(r.pid);
    expect(r.pid).toBe(pid);
    // The process's own report: the next counts follow the one it had when dumped (a fresh start would count from 1).
    const next = await waitFor('restored counter to write', () => (count(state) !== atDump ? count(state) : undefined));
    expect(next).toBeGreaterThan(atDump);
    expect(next).toBeLessThanOrEqual(atDump + 10);
    expect(readFileSync(state, 'utf8').split(' ')[0]).toBe(String(pid));
    await waitFor('restored counter to go on', () => count(state) > next + 5);
  });
});
