/**
 * Podman for the tests, as this host runs it: runc (crun cannot checkpoint here), cgroupfs (PID 1
 * is not systemd), events to a file, the cgroup v1 warning silenced. Images are made here from
 * busybox-static with `podman import` (no registry is reachable). Every image and container a test
 * makes is registered with its Owned and removed at cleanup, containers first, even when the test
 * failed; names carry the test's PID, so nothing of anyone else's is touched.
 */
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeRootfs } from './containers.js';
import type { Owned } from './processes.js';

export const PODMAN_FLAGS = ['--runtime', 'runc', '--cgroup-manager', 'cgroupfs', '--events-backend', 'file'];
export const PODMAN_ENV = { PODMAN_IGNORE_CGROUPSV1_WARNING: '1' };

export interface PodmanRun {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs podman with this host's flags; never throws on a failed command (see podmanOk). */
export async function podman(args: string[], opts: { timeout?: number; input?: string } = {}): Promise<PodmanRun> {
  const r = await execa('podman', [...PODMAN_FLAGS, ...args], {
    reject: false,
    timeout: opts.timeout ?? 120_000,
    env: PODMAN_ENV,
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: 'ignore' }),
  });
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout ?? '').trim(), stderr: String(r.stderr ?? '').trim() };
}

/** Runs podman and returns its stdout; throws with its stderr when it fails. */
export async function podmanOk(args: string[], opts: { timeout?: number; input?: string } = {}): Promise<string> {
  const r = await podman(args, opts);
  if (r.exitCode !== 0) throw new Error(`podman ${args.join(' ')} failed (exit ${r.exitCode}):\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/** Whether podman is installed and answers (the Podman tests are skipped without it). */
export async function hasPodman(): Promise<boolean> {
  return (await execa('podman', ['--version'], { reject: false, env: PODMAN_ENV })).exitCode === 0;
}

let seq = 0;
/** A name no other test run uses: `cedana-<tag>-<pid>-<n>` (lower case, as image names must be). */
export const uniqueName = (tag = 't'): string => `cedana-${tag}-${process.pid}-${++seq}`;

/** Removes the image at cleanup (-f: with any container of ours still using it). */
export function ownImage(owned: Owned, nameOrId: string): void {
  owned.onCleanup(async () => void (await podman(['rmi', '-f', nameOrId])));
}

/** Removes the container at cleanup, at once (-t 0: sh as PID 1 ignores SIGTERM). */
export function ownContainer(owned: Owned, nameOrId: string): void {
  owned.onCleanup(async () => void (await podman(['rm', '-f', '-t', '0', nameOrId])));
}

/**
 * A local image `localhost/<name>:latest` of a busybox root file system (busybox and its applets
 * sh, sleep, echo, cat, …, as test/helpers/containers makes for runc), by `podman import`. Removed
 * at cleanup. Returns its full name and ID.
 */
export async function busyboxImage(owned: Owned, name = uniqueName('bb')): Promise<{ name: string; id: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'cedana-podman-rootfs-'));
  try {
    await makeRootfs(join(dir, 'rootfs'));
    await execa('tar', ['-C', join(dir, 'rootfs'), '-cf', join(dir, 'rootfs.tar'), '.']);
    const full = `localhost/${name}:latest`;
    ownImage(owned, full);
    await podmanOk(['import', join(dir, 'rootfs.tar'), full]);
    const id = await podmanOk(['image', 'inspect', '--format', '{{.Id}}', full]);
    return { name: full, id };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The count script: the count, five a second, in /tmp/count (one number, rewritten). */
export const PODMAN_COUNTER = 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done';

/** Starts a detached container of `image` running `script` with sh; removed at cleanup. Returns its name. */
export async function runPodman(owned: Owned, image: string, script = PODMAN_COUNTER, name = uniqueName('c')): Promise<string> {
  ownContainer(owned, name);
  await podmanOk(['run', '-d', '--name', name, image, 'sh', '-c', script]);
  return name;
}

/** The number in /tmp/count of a container running PODMAN_COUNTER (undefined when it cannot be read). */
export async function podmanCount(name: string): Promise<number | undefined> {
  const r = await podman(['exec', name, 'cat', '/tmp/count'], { timeout: 20_000 });
  const n = Number(r.stdout);
  return r.exitCode === 0 && r.stdout !== '' && Number.isFinite(n) ? n : undefined;
}

/** The container's state (running, exited, …), undefined when there is none by that name. */
export async function podmanState(name: string): Promise<string | undefined> {
  const r = await podman(['container', 'inspect', '--format', '{{.State.Status}}', name]);
  return r.exitCode === 0 ? r.stdout : undefined;
}
