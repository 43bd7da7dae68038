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

/** A bundle under `parent` whose container runs `script` with /bin/sh. Returns its directory. */
export async function makeBundle(parent: string, script: string): Promise<string> {
  const bundle = join(parent, 'bundle');
  const rootfs = join(bundle, 'rootfs');
  for (const d of ['bin', 'data', 'proc', 'dev', 'sys', 'tmp']) mkdirSync(join(rootfs, d), { recursive: true });
  copyFileSync(await busybox(), join(rootfs, 'bin', 'busybox'));
  chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) symlinkSync('busybox', join(rootfs, 'bin', a));
  await execa('runc', ['spec'], { cwd: bundle });
  const config = JSON.parse(readFileSync(join(bundle, 'config.json'), 'utf8'));
  config.process.terminal = false;
  config.process.args = ['/bin/sh', '-c', script];
  config.root.readonly = false;
  writeFileSync(join(bundle, 'config.json'), JSON.stringify(config, null, 1));
  return bundle;
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
