/**
 * A container's bundle: its config.json and root file system as the image holds them (the overlay
 * layers, the rootfs archives), and the bundle a restore puts in place.
 */
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { CedanaError } from '../errors.js';
import { type ManifestContainer } from '../image/manifest.js';
import { ContainerRestoreResult } from './restore.js';

export const CONFIG_IMAGE = 'container/config.json';

export const ROOTFS_IMAGE = 'container/rootfs.tar';

export const CHANGES_IMAGE = 'container/rootfs-changes.tar';

/** Unescapes a mountinfo field (\040 for a space…). Pure. */
export const unescapeMount = (s: string): string => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

/** The options of the overlay mounted (last, visibly) at `path`, from /proc/self/mountinfo text. Pure. */
function overlayOptionsAt(mountinfo: string, path: string): Map<string, string> | undefined {
  let found: Map<string, string> | undefined;
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    if (unescapeMount(pre.split(' ')[4] ?? '') !== path) continue;
    const [fstype, , opts = ''] = post.split(' ');
    // A later mount over it hides the overlay.
    found = fstype === 'overlay' ? new Map(opts.split(',').map((kv) => [kv.split('=')[0]!, unescapeMount(kv.slice(kv.indexOf('=') + 1))])) : undefined;
  }
  return found;
}

/** Where an overlay mounted at `path` keeps its layers, from /proc/self/mountinfo text. Pure. */
export function overlayAt(mountinfo: string, path: string): { base: string[]; upper: string; work: string } | undefined {
  const o = overlayOptionsAt(mountinfo, path);
  const lower = o?.get('lowerdir');
  const upper = o?.get('upperdir');
  const work = o?.get('workdir');
  return lower && upper && work ? { base: lower.split(':'), upper, work } : undefined;
}

/**
 * The directories an overlay mounted at `path` shows, top first (its upper layer, where it has one,
 * then its lower layers); undefined when no overlay is mounted there. Pure.
 */
export function overlayLayersAt(mountinfo: string, path: string): string[] | undefined {
  const o = overlayOptionsAt(mountinfo, path);
  const lower = o?.get('lowerdir');
  const upper = o?.get('upperdir');
  return lower ? [...(upper ? [upper] : []), ...lower.split(':')] : undefined;
}

/** Where a restored container's runtime bundle lives: its config for the restore (see restoreConfig). */
export const RESTORE_BUNDLES = '/run/cedana/bundles';

/** In a migration's image: the config the target restores with. */
export const RESTORE_CONFIG_IMAGE = 'container/restore.json';

export const LO_HOOK_MARK = 'cedana: network namespace back up after a restore';

/** A bundle cedana made for a restore goes with its container (the image keeps its config). */
export async function forgetRestoreBundle(bundle: string): Promise<void> {
  if (dirname(bundle) === RESTORE_BUNDLES) await rm(bundle, { recursive: true, force: true });
}

/**
 * The config a container is restored with. runc never checkpoints the network namespace's
 * configuration ("runc doesn't manage network devices": it always passes CRIU --empty-ns network),
 * so CRIU restores the container into a new network namespace whose loopback is down, and every TCP
 * socket on it fails to come back ("Network is unreachable"). A prestart hook — runc runs those when
 * CRIU has made the namespaces, before it restores the sockets — brings loopback up. The root file
 * system is named by its absolute path (the restore bundle lives elsewhere). Pure.
 */
export function restoreConfig(config: Record<string, any>, rootfs: string): Record<string, any> {
  const c = structuredClone(config) as Record<string, any>;
  c.root = { ...(c.root ?? {}), path: rootfs };
  const ours = {
    path: '/bin/sh',
    args: ['sh', '-c', `# ${LO_HOOK_MARK}\npid=$(sed -n 's/.*"pid": *\\([0-9]*\\).*/\\1/p'); [ -n "$pid" ] && nsenter -t "$pid" -n ip link set lo up; exit 0`],
  };
  const prestart = ((c.hooks?.prestart ?? []) as { args?: string[] }[]).filter((h) => !(h.args ?? []).some((a) => a.includes(LO_HOOK_MARK)));
  c.hooks = { ...(c.hooks ?? {}), prestart: [...prestart, ours] };
  return c;
}

/** The bundle's config and the root file system's absolute path. */
export async function readBundle(bundle: string): Promise<{ config: Record<string, any>; rootfs: string }> {
  let config: Record<string, any>;
  try {
    config = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as Record<string, any>;
  } catch (e) {
    throw new CedanaError('IO_ERROR', `cannot read the bundle's config.json in ${bundle}: ${(e as Error).message}`, { hint: 'the container must have been started from an OCI bundle' });
  }
  const root = typeof config.root?.path === 'string' ? (config.root.path as string) : 'rootfs';
  return { config, rootfs: isAbsolute(root) ? root : resolve(bundle, root) };
}

/** Whether a root file system is in place: a non-empty directory (a mounted overlay shows its base). */
export async function rootfsPresent(path: string): Promise<boolean> {
  return (await readdir(path).catch(() => [] as string[])).length > 0;
}

/** Unpacks a root file system's tar into `into` as it was: numeric owners, modes, every xattr (and `extra`). */
export async function untarInto(tar: string, into: string, extra: string[] = []): Promise<void> {
  const x = await execa('tar', ['--extract', '--file', tar, '--numeric-owner', '--same-permissions', '--xattrs', '--xattrs-include=*', ...extra, '-C', into], { reject: false, all: true });
  if (x.exitCode !== 0) throw new CedanaError('IO_ERROR', `unpacking ${tar} into ${into} failed: ${String(x.all).trim().split('\n').slice(-2).join(' ')}`);
}

/**
 * Puts the bundle where the image says, as far as it is not there: config.json, and the root file
 * system — unpacked from the image (full), rebuilt as an overlay of the image's changes over the base
 * that must be here (changes), or required in place (none). Returns what it created, and an undo.
 */
export async function placeBundle(dir: string, c: ManifestContainer): Promise<{ created: ContainerRestoreResult['bundleCreated']; undo: () => Promise<void> }> {
  const r = c.rootfs;
  const present = await rootfsPresent(r.path);
  if (!present && r.mode === 'none') {
    throw new CedanaError('ROOTFS_MISSING', `the container's root file system ${r.path} is not on this host (or is empty), and the image does not carry it`, { hint: 'dump with --rootfs to carry it, or put it in place first' });
  }
  if (!present && r.mode === 'changes') {
    const missing = r.base!.filter((b) => !existsSync(b));
    if (missing.length) throw new CedanaError('ROOTFS_MISSING', `the base image of the container's root file system is not here: ${missing.join(', ')}`, { hint: 'unpack the same base image there first' });
    for (const d of [r.upper!, r.work!]) {
      if ((await readdir(d).catch(() => [] as string[])).length > 0) throw new CedanaError('ROOTFS_MISSING', `the overlay's ${d} is here and not empty; cedana will not mix the image's changes into it`, { hint: 'move it away, or mount the root file system yourself' });
    }
  }
  const made: string[] = [];
  const filled: string[] = [];
  let mounted = false;
  const undo = async (): Promise<void> => {
    if (mounted) await execa('umount', [r.path], { reject: false });
    for (const d of [...made].reverse()) await rm(d, { recursive: true, force: true });
    // Directories that were there, empty: emptied again.
    for (const d of filled) for (const n of await readdir(d).catch(() => [] as string[])) await rm(join(d, n), { recursive: true, force: true });
  };
  const mk = async (d: string): Promise<void> => {
    if (existsSync(d)) return;
    // The topmost directory created is what the undo removes.
    let top = d;
    while (!existsSync(dirname(top))) top = dirname(top);
    await mkdir(d, { recursive: true, mode: 0o755 });
    made.push(top);
  };
  let created: ContainerRestoreResult['bundleCreated'] = 'none';
  try {
    if (!existsSync(join(c.bundle, 'config.json'))) {
      await mk(c.bundle);
      await copyFile(join(dir, c.config), join(c.bundle, 'config.json'));
      if (!made.includes(c.bundle)) made.push(join(c.bundle, 'config.json'));
      created = 'config';
    }
    if (!present && r.mode === 'full') {
      if (existsSync(r.path)) filled.push(r.path);
      await mk(r.path);
      await untarInto(join(dir, r.image!), r.path, ['--acls']);
      created = 'config+rootfs';
    }
    if (!present && r.mode === 'changes') {
      for (const d of [r.upper!, r.work!]) if (existsSync(d)) filled.push(d);
      for (const d of [r.upper!, r.work!, r.path]) await mk(d);
      await untarInto(join(dir, r.image!), r.upper!, ['--acls']);
      const m = await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${r.base!.join(':')},upperdir=${r.upper},workdir=${r.work}`, r.path], { reject: false, all: true });
      if (m.exitCode !== 0) throw new CedanaError('IO_ERROR', `mounting the overlay at ${r.path} failed: ${String(m.all).trim()}`);
      mounted = true;
      created = 'config+rootfs';
    }
  } catch (e) {
    await undo();
    throw e;
  }
  return { created, undo };
}
