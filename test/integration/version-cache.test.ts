/**
 * `criu --version` is cached between commands (src/criu/version-cache.ts): never served for another
 * binary, kept private, and not trusted when anyone else could have written it.
 */
import { execa } from 'execa';
import { chmodSync, copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana } from '../helpers/cedana.js';
import { Owned } from '../helpers/processes.js';
import { binaryKey, VERSION_CACHE_FILE, versionCacheDir } from '../../src/criu/version-cache.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const OLD_CRIU = '/var/cache/cedana-test/criu-old/usr/sbin/criu';

describe('the criu --version cache', () => {
  it('lives in /run/cedana unless CEDANA_CACHE_DIR moves it', () => {
    expect(versionCacheDir({})).toBe('/run/cedana');
    expect(versionCacheDir({ CEDANA_CACHE_DIR: '/x/y' })).toBe('/x/y');
  });

  it('is private, and a changed binary at the same path is asked again: an older CRIU is refused (CRIU_TOO_OLD), never served the cached version', async () => {
    expect(existsSync(OLD_CRIU), `${OLD_CRIU} (scripts/setup unpacks it)`).toBe(true);
    const newCriu = (await execa('sh', ['-c', 'command -v criu'])).stdout.trim();
    const dir = await owned.tempDir();
    const cacheDir = join(dir, 'cache');
    const criu = join(dir, 'bin', 'criu');
    mkdirSync(join(dir, 'bin'));
    copyFileSync(newCriu, criu);
    chmodSync(criu, 0o755);
    const env = { CEDANA_CRIU: criu, CEDANA_CACHE_DIR: cacheDir };
    const check = async (): Promise<Record<string, any>> => (await cedana(['check', '--json'], { env })).json!;

    // First run: asked, and cached in a private file in a private directory.
    expect((await check()).criu).toMatchObject({ found: true, path: criu, version: '4.2.1' });
    const file = join(cacheDir, VERSION_CACHE_FILE);
    expect(statSync(cacheDir).mode & 0o777).toBe(0o700);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(statSync(file).uid).toBe(process.getuid!());
    expect(JSON.parse(readFileSync(file, 'utf8'))[criu]).toMatchObject({ key: await binaryKey(criu), out: expect.stringContaining('4.2.1') });
    // Served from the cache now (same answer).
    expect((await check()).criu.version).toBe('4.2.1');

    // Replaced by another binary (a new file renamed over it, as package managers do): refused as too old.
    copyFileSync(OLD_CRIU, `${criu}.new`);
    chmodSync(`${criu}.new`, 0o755);
    renameSync(`${criu}.new`, criu);
    const old = await cedana(['check', '--json'], { env });
    expect(old.json!.error).toMatchObject({ code: 'CRIU_TOO_OLD', message: expect.stringContaining('3.17') });
    expect(old.exitCode).toBe(6);
    const { pid } = await owned.counter();
    const oldDump = await cedana(['dump', String(pid), '--json'], { env });
    expect(oldDump.json!.error).toMatchObject({ code: 'CRIU_TOO_OLD', message: expect.stringContaining('3.17') });
    expect(oldDump.exitCode).toBe(6);

    // Back to 4.2.1, rewritten in place (same inode) with the old mtime put back: asked again.
    const { mtime } = statSync(criu);
    writeFileSync(criu, readFileSync(newCriu));
    utimesSync(criu, mtime, mtime);
    expect((await check()).criu.version).toBe('4.2.1');

    // And the old one again, in place, mtime kept: refused again.
    writeFileSync(criu, readFileSync(OLD_CRIU));
    utimesSync(criu, mtime, mtime);
    expect((await cedana(['check', '--json'], { env })).json!.error.code).toBe('CRIU_TOO_OLD');
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('ignores a cache that others could have written, and uses only a private one', async () => {
    const dir = await owned.tempDir();
    const cacheDir = join(dir, 'cache');
    const criu = join(dir, 'criu');
    copyFileSync(OLD_CRIU, criu);
    chmodSync(criu, 0o755);
    const env = { CEDANA_CRIU: criu, CEDANA_CACHE_DIR: cacheDir };
    // A planted entry that claims the old CRIU is 9.9, with the right key.
    mkdirSync(cacheDir, { mode: 0o700 });
    const file = join(cacheDir, VERSION_CACHE_FILE);
    const plant = async (mode: number): Promise<void> => {
      writeFileSync(file, JSON.stringify({ [criu]: { key: await binaryKey(criu), out: 'Version: 9.9' } }));
      chmodSync(file, mode);
    };
    await plant(0o666);
    expect((await cedana(['check', '--json'], { env })).json!.error.code).toBe('CRIU_TOO_OLD');
    // The same entry in a private file, as cedana writes it, is used (so the cache is read at all).
    await plant(0o600);
    expect((await cedana(['check', '--json'], { env })).json!.criu.version).toBe('9.9');
    // In a directory others can write: ignored again.
    await plant(0o600);
    chmodSync(cacheDir, 0o777);
    expect((await cedana(['check', '--json'], { env })).json!.error.code).toBe('CRIU_TOO_OLD');
  });
});
