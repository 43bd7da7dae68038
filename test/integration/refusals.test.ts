/**
 * Bad input is refused with a stable code, a hint and no side effect: the process keeps running,
 * existing files are untouched, nothing is written outside an image directory.
 */
import { execFileSync } from 'node:child_process';
import { execa } from 'execa';
import { existsSync, readFileSync, readdirSync, writeFileSync, mkdirSync, symlinkSync, truncateSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ROOT, cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, count, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const OLD_CRIU = '/var/cache/cedana-test/criu-old/usr/sbin/criu';
const counter = () => owned.counter();

/** The process was not touched: still alive and still counting. */
async function expectUntouched(state: string, pid: number): Promise<void> {
  const n = count(state);
  expect(alive(pid)).toBe(true);
  await waitFor('process to go on counting', () => count(state) > n + 3);
}

async function expectRefused(args: string[], code: string, exit: number, opts = {}): Promise<Record<string, any>> {
  const r = await cedana([...args, '--json'], opts);
  expect(r.json, r.stderr).toBeDefined();
  expect(r.json!.ok).toBe(false);
  expect(r.json!.error.code).toBe(code);
  expect(r.json!.error.message).toEqual(expect.any(String));
  expect(r.exitCode).toBe(exit);
  // The human form names the code and gives a hint on stderr.
  const human = await cedana(args, opts);
  expect(human.exitCode).toBe(exit);
  expect(human.stderr).toContain(`[${code}]`);
  expect(human.stdout).toBe('');
  return r.json!;
}

describe('dump refusals', () => {
  it('refuses a PID that does not exist', async () => {
    const j = await expectRefused(['dump', '4194000'], 'PID_NOT_FOUND', 4);
    expect(j.error.hint).toMatch(/ps -p/);
  });

  it('refuses PID 1, a kernel thread and its own ancestor', async () => {
    await expectRefused(['dump', '1'], 'PID_REFUSED', 5);
    await expectRefused(['dump', '2'], 'PID_REFUSED', 5); // kthreadd
    // The test runner is an ancestor of the cedana process it starts.
    await expectRefused(['dump', String(process.pid)], 'PID_REFUSED', 5);
    expect(alive(process.pid)).toBe(true);
  });

  it('refuses to run as a user other than root, touching nothing', async () => {
    const { state, pid } = await counter();
    const asNobody = { wrap: ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] };
    await expectRefused(['dump', String(pid), '-o', '/tmp/never'], 'NOT_ROOT', 3, asNobody);
    const check = await cedana(['check', '--json'], asNobody);
    expect(check.json).toMatchObject({ ok: false, command: 'check', root: false, error: { code: 'NOT_ROOT' } });
    expect(check.exitCode).toBe(3);
    expect(existsSync('/tmp/never')).toBe(false);
    await expectUntouched(state, pid);
  });

  it('refuses when CRIU is missing or older than 4.2 (a real older CRIU: the release’s own)', async () => {
    const { state, pid } = await counter();
    const missing = await expectRefused(['dump', String(pid)], 'CRIU_MISSING', 6, { env: { CEDANA_CRIU: '/nonexistent/criu' } });
    // The remedy names the CRIU recipe by its path here, and it is there to run.
    const recipe = join(ROOT, 'scripts', 'install-criu');
    expect(missing.error.hint).toContain(`run ${recipe} as root`);
    expect(statSync(recipe).mode & 0o111).not.toBe(0);
    expect(existsSync(OLD_CRIU), `${OLD_CRIU} (scripts/setup unpacks it)`).toBe(true);
    const old = await expectRefused(['dump', String(pid)], 'CRIU_TOO_OLD', 6, { env: { CEDANA_CRIU: OLD_CRIU } });
    const oldVersion = /Version: *(\S+)/.exec(execFileSync(OLD_CRIU, ['--version'], { encoding: 'utf8' }))?.[1];
    expect(oldVersion).toMatch(/^(\d+)\.(\d+)/);
    expect(old.error.message).toContain(oldVersion);
    expect(old.error.hint).toContain(`install CRIU >= 4.2`);
    await expectUntouched(state, pid);
  });

  it('refuses an output that exists unless --force, and replaces it with --force', async () => {
    const { dir, state, pid } = await counter();
    const out = join(dir, 'existing');
    mkdirSync(out);
    writeFileSync(join(out, 'precious'), 'keep me');
    const j = await expectRefused(['dump', String(pid), '-o', out], 'OUTPUT_EXISTS', 11);
    expect(j.error.hint).toMatch(/--force/);
    expect(readFileSync(join(out, 'precious'), 'utf8')).toBe('keep me');
    await expectUntouched(state, pid);
    await cedanaOk(['dump', String(pid), '-o', out, '--force', '--leave-running']);
    expect(readdirSync(out)).toContain('cedana.json');
    expect(readdirSync(out)).not.toContain('precious');
    await expectUntouched(state, pid);
  });

  it('refuses unknown options and malformed arguments as usage errors', async () => {
    await expectRefused(['dump', '123', '--frobnicate'], 'USAGE', 2);
    await expectRefused(['dump', 'not-a-pid'], 'USAGE', 2);
    await expectRefused(['dump', '123', '--tcp-established', '--tcp-close'], 'USAGE', 2);
    await expectRefused(['nonsense'], 'USAGE', 2);
  });
});

describe('restore refusals', () => {
  async function dumped(): Promise<{ dir: string; img: string; pid: number; state: string }> {
    const { dir, pid, state } = await counter();
    const img = join(dir, 'img');
    await cedanaOk(['dump', String(pid), '-o', img]);
    await waitGone(pid);
    return { dir, img, pid, state };
  }

  it('refuses a tampered image: the restored tree never runs', async () => {
    const { img, pid, state } = await dumped();
    const pages = readdirSync(img).find((f) => f.startsWith('pages-'))!;
    const body = readFileSync(join(img, pages));
    const mid = body.length >> 1;
    body.writeUInt8(body.readUInt8(mid) ^ 0xff, mid);
    writeFileSync(join(img, pages), body);
    const before = readFileSync(state, 'utf8');
    const j = await expectRefused(['restore', img], 'IMAGE_INVALID', 9);
    expect(j.error.message).toMatch(/checksum mismatch/);
    // CRIU may have restored the tree while the memory was checked, but it never ran: it counted no further.
    await waitGone(pid);
    expect(readFileSync(state, 'utf8')).toBe(before);
  });

  it('refuses a truncated image, a file added to it, and a missing manifest', async () => {
    const { img, pid } = await dumped();
    const pages = readdirSync(img).find((f) => f.startsWith('pages-'))!;
    const size = readFileSync(join(img, pages)).length;
    truncateSync(join(img, pages), size - 4096);
    expect((await expectRefused(['restore', img], 'IMAGE_INVALID', 9)).error.message).toMatch(/expected/);
    const dir2 = (await dumped()).img;
    writeFileSync(join(dir2, 'extra.img'), 'x');
    expect((await expectRefused(['restore', dir2], 'IMAGE_INVALID', 9)).error.message).toMatch(/does not list/);
    const dir3 = await owned.tempDir();
    await expectRefused(['restore', dir3], 'IMAGE_INVALID', 9);
    expect(existsSync(`/proc/${pid}`)).toBe(false);
  });

  it('refuses archives whose entries escape the directory, writing nothing outside', async () => {
    const dir = await owned.tempDir();
    const src = join(dir, 'src');
    mkdirSync(join(src, 'a'), { recursive: true });
    writeFileSync(join(src, 'a', 'evil'), 'pwned');
    symlinkSync('/etc/passwd', join(src, 'link'));
    const victim = join(dir, 'evil');
    // GNU tar with -P and --transform writes entry names as given: '../evil' and an absolute path.
    await execa('tar', ['-cf', join(dir, 'dotdot.tar'), '-C', join(src, 'a'), '-P', '--transform', 's,^evil,../evil,', 'evil']);
    await execa('tar', ['-cf', join(dir, 'abs.tar'), '-C', src, '-P', '--transform', `s,^a/evil,${victim},`, 'a/evil']);
    await execa('tar', ['-cf', join(dir, 'symlink.tar'), '-C', src, 'link']);
    for (const name of ['dotdot.tar', 'abs.tar', 'symlink.tar']) {
      const j = await expectRefused(['restore', join(dir, name)], 'IMAGE_INVALID', 9);
      expect(j.error.message, name).toMatch(/refusing archive entry/);
    }
    expect(existsSync(victim)).toBe(false);
  });

  it('refuses while a PID the image needs is in use, after waiting', async () => {
    const { dir, state, pid } = await counter();
    const img = join(dir, 'img');
    await cedanaOk(['dump', String(pid), '-o', img, '--leave-running']);
    const j = await expectRefused(['restore', img, '--pid-wait', '300'], 'PID_IN_USE', 12);
    expect(j.error.pids).toEqual([pid]);
    await expectUntouched(state, pid);
  });

  it('keeps images private even under a permissive umask', async () => {
    const { dir, pid } = await counter();
    const img = join(dir, 'img');
    const tar = join(dir, 'img.tar.zst');
    const permissive = { wrap: ['sh', '-c', 'umask 000; exec "$@"', 'sh'] };
    await cedanaOk(['dump', String(pid), '-o', img, '--leave-running'], permissive);
    await cedanaOk(['dump', String(pid), '-o', tar, '--leave-running'], permissive);
    expect(statSync(img).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(img)) expect(statSync(join(img, f)).mode & 0o777, f).toBe(0o600);
    expect(statSync(tar).mode & 0o777).toBe(0o600);
  });
});
