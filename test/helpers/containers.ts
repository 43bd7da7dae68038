/**
 * OCI bundles for the container tests, built here from busybox-static (nothing comes from an image
 * registry): a root file system with busybox and its applets, and runc's default config running a
 * shell script. Containers are started with runc, with stdio on /dev/null (as a daemon's).
 */
import { execa } from 'execa';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Owned } from './processes.js';

const APPLETS = ['sh', 'sleep', 'echo', 'cat', 'nc', 'tail', 'seq', 'true', 'ls'];

export async function busybox(): Promise<string> {
  return (await execa('sh', ['-c', 'command -v busybox'])).stdout.trim();
}

/** busybox and its applets in `rootfs`. */
export async function makeRootfs(rootfs: string): Promise<void> {
  for (const d of ['bin', 'data', 'proc', 'dev', 'sys', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync(await busybox(), join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) symlinkSync('busybox', join(rootfs, 'bin', a));
}

/** runc's default config in `bundle`, running `script` with /bin/sh. */
async function writeConfig(bundle: string, script: string): Promise<void> {
  mkdirSync(bundle, { recursive: true });
  await execa('runc', ['spec'], { cwd: bundle });
  const config = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8'));
  config.process.terminal = false;
  config.process.args = ['/bin/sh', '-c', script];
  config.root.readonly = false;
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config, null, 1));
}

/** A bundle under `parent` whose container runs `script` with /bin/sh. Returns its directory. */
export async function makeBundle(parent: string, script: string): Promise<string> {
  const bundle = join(parent, 'bundle');
  await makeRootfs(join(bundle, 'rootfs'));
  await writeConfig(bundle, script);
  return bundle;
}

/**
 * A bundle under `parent` whose root file system is an overlay: `base` (a busybox root file system,
 * the "image") below, `parent`/upper above, mounted at bundle/rootfs until the test's cleanup.
 */
export async function makeOverlayBundle(owned: Owned, parent: string, base: string, script: string): Promise<{ bundle: string; upper: string }> {
  const bundle = join(parent, 'bundle');
  const rootfs = join(bundle, 'rootfs');
  const upper = join(parent, 'upper');
  const work = join(parent, 'work');
  for (const d of [rootfs, upper, work]) mkdirSync(d, { recursive: true });
  await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${base},upperdir=${upper},workdir=${work}`, rootfs]);
  owned.onCleanup(async () => void (await execa('umount', [rootfs], { reject: false })));
  await writeConfig(bundle, script);
  return { bundle, upper };
}

/** Starts a container; the test's cleanup ends and deletes it (by id) whatever happens. */
export async function runContainer(owned: Owned, id: string, bundle: string): Promise<number> {
  owned.onCleanup(async () => {
    await execa('runc', ['kill', id, 'KILL'], { reject: false });
    await execa('runc', ['delete', '--force', id], { reject: false });
    await execa('rm', ['-rf', `/run/cedana/bundles/${id}`], { reject: false });
  });
  await execa('runc', ['run', '--detach', id], { cwd: bundle, stdin: 'ignore', stdout: 'ignore', stderr: 'ignore' });
  return (await state(id))!.pid;
}

export async function state(id: string): Promise<{ status: string; pid: number } | undefined> {
  const r = await execa('runc', ['state', id], { reject: false });
  return r.exitCode === 0 ? (JSON.parse(String(r.stdout)) as { status: string; pid: number }) : undefined;
}

/** Numbers written one per line from 0: true when none is missing or repeated. */
export function consecutive(text: string): boolean {
  const n = text.trim().split('\n').map(Number);
  return n.length > 0 && n.every((x, i) => x === i);
}

/** The count script: a number a line into /data/count, five a second. */
export const COUNTER = 'i=0; while true; do echo $i >> /data/count; i=$((i+1)); sleep 0.2; done';
