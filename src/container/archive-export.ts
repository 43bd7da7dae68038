/**
 * `cedana dump --container ID --format checkpointctl`: the container's checkpoint in the layout
 * Podman, CRI-O and checkpointctl share (see ckpt-archive.ts), so that `podman container restore
 * --import` brings it back under Podman and `checkpointctl inspect` reads it. cedana's manifest goes
 * in too (cedana.json at the top: every file's BLAKE3), so cedana still verifies it; the other tools
 * ignore the extra file.
 *
 * - checkpoint/: the runtime's CRIU images, as runc writes them (descriptors.json included);
 * - spec.dump: the bundle's config.json, annotated `io.container.manager: libpod` (the engine whose
 *   restore takes it) and `io.cedana.checkpoint` (cedana's version);
 * - config.dump: the fields Podman's restore needs (id, name, runtime, rootfsImageID and
 *   rootfsImageName — the image it restores over, --base-image), and CRI-O's rootfsImageRef;
 * - rootfs-diff.tar and deleted.files: what the container changed — an overlay's upper layer (its
 *   whiteouts become deleted.files), or with --rootfs the whole root file system;
 * - stats-dump: CRIU's statistics of the dump.
 */
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, lstat, stat, writeFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { CedanaError } from '../errors.js';
import { CEDANA_VERSION } from '../version.js';
import { findOnPath } from '../util/paths.js';
import { CK_CONFIG, CK_DELETED, CK_DIR, CK_ROOTFS_DIFF, CK_SPEC, CK_STATS } from './ckpt-archive.js';
import { overlayAt } from './bundle.js';
import type { Runtime } from './runtime.js';

export type DumpFormat = 'cedana' | 'checkpointctl';

export function parseFormat(v: string | undefined): DumpFormat {
  if (v === undefined || v === 'cedana') return 'cedana';
  if (v === 'checkpointctl') return 'checkpointctl';
  throw new CedanaError('USAGE', `--format ${v}: cedana writes cedana (its own image) or checkpointctl (Kubernetes', CRI-O's and Podman's layout)`, { hint: '--format checkpointctl' });
}

/** The base image a Podman restore needs: its name and id, from `podman image inspect` unless given. */
export async function resolveBaseImage(name: string | undefined, id: string | undefined): Promise<{ name: string; id: string } | undefined> {
  if (!name) {
    if (id) throw new CedanaError('USAGE', '--base-image-id goes with --base-image NAME');
    return undefined;
  }
  if (id) {
    if (!/^[0-9a-f]{64}$/.test(id)) throw new CedanaError('USAGE', `--base-image-id ${id}: an image id is 64 hex digits`);
    return { name, id };
  }
  const podman = await findOnPath('podman');
  if (!podman) throw new CedanaError('USAGE', `--base-image ${name}: Podman is not here to look up its id`, { hint: 'give it: --base-image-id ID (`podman image inspect --format {{.Id}} NAME` where the image is)' });
  const r = await execa(podman, ['image', 'inspect', '--format', '{{.Id}}', name], { reject: false, all: true, env: { PODMAN_IGNORE_CGROUPSV1_WARNING: '1' } });
  const found = String(r.stdout ?? '').trim();
  if (r.exitCode !== 0 || !/^[0-9a-f]{64}$/.test(found)) {
    throw new CedanaError('USAGE', `--base-image ${name}: Podman has no such image here (${String(r.all ?? '').trim().split('\n').pop()})`, { hint: 'podman images lists them; or give --base-image-id ID' });
  }
  return { name, id: found };
}

/**
 * The directories of an overlay's upper layer that replace the image's whole (opaque: the xattr
 * trusted.overlay.opaque=y; Node has no xattr call, so python3 reads them, in one walk). Undefined
 * when python3 is not here to tell.
 */
async function opaqueDirs(upper: string): Promise<string[] | undefined> {
  const py = [
    'import os, sys',
    'top = sys.argv[1]',
    'for d, subdirs, _ in os.walk(top):',
    '    for s in subdirs:',
    '        p = os.path.join(d, s)',
    '        try:',
    "            if os.getxattr(p, 'trusted.overlay.opaque', follow_symlinks=False) == b'y': print('/' + os.path.relpath(p, top))",
    '        except OSError: pass',
  ].join('\n');
  const r = await execa('python3', ['-c', py, upper], { reject: false });
  return r.exitCode === 0 ? String(r.stdout).split('\n').filter(Boolean) : undefined;
}

/** Walks an overlay's upper layer: whiteouts (0:0 character devices) are deletions; the rest the diff. */
async function upperChanges(upper: string): Promise<{ deleted: string[]; whiteouts: string[]; opaque: string[] | undefined }> {
  const deleted: string[] = [];
  const whiteouts: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    for (const e of await readdir(join(upper, rel), { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isCharacterDevice() && (await lstat(join(upper, p))).rdev === 0) {
        deleted.push(`/${p}`);
        whiteouts.push(p);
      } else if (e.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return { deleted, whiteouts, opaque: await opaqueDirs(upper) };
}

export interface ExportRequest {
  runtime: Runtime;
  id: string;
  bundle: { config: Record<string, any>; rootfs: string };
  /** Carry the whole root file system when it is not an overlay. */
  rootfs: boolean;
  base?: { name: string; id: string };
  /** CRIU's work directory of the runtime's checkpoint (stats-dump is there). */
  criuWork: string;
}

/**
 * Writes everything but checkpoint/ (which the runtime's checkpoint wrote) into imagesDir. Returns
 * the notes for the result's decisions and what of the root file system went in.
 */
export async function writeArchiveLayout(r: ExportRequest, imagesDir: string): Promise<{ notes: string[]; rootfs: 'none' | 'full' | 'changes' }> {
  const notes: string[] = [];
  const spec = structuredClone(r.bundle.config);
  spec.annotations = { ...(spec.annotations ?? {}), 'io.container.manager': 'libpod', 'io.cedana.checkpoint': CEDANA_VERSION };
  spec.root = { ...(spec.root ?? {}), path: r.bundle.rootfs };
  const state = await execa(r.runtime.path, ['state', r.id], { reject: false });
  let created: string | undefined;
  try {
    created = (JSON.parse(String(state.stdout)) as { created?: string }).created;
  } catch {
    created = undefined;
  }
  const now = new Date().toISOString();
  const config: Record<string, unknown> = {
    // Podman's ids are 64 hex digits; runc's id is kept as the name.
    id: createHash('sha256').update(`${r.id}\0${created ?? now}`).digest('hex'),
    name: r.id,
    runtime: r.runtime.name,
    createdTime: created ?? now,
    checkpointedTime: now,
    spec,
    ...(r.base ? { rootfsImageID: r.base.id, rootfsImageName: r.base.name, RawImageName: r.base.name, rootfsImage: r.base.name, rootfsImageRef: r.base.id } : {}),
  };
  await writeFile(join(imagesDir, CK_SPEC), `${JSON.stringify(spec, null, 2)}\n`, { mode: 0o600 });
  await writeFile(join(imagesDir, CK_CONFIG), `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
  if (!r.base) notes.push('no --base-image: checkpointctl and cedana read this archive, but Podman needs the image the container runs over to restore it');
  const stats = join(r.criuWork, 'stats-dump');
  if ((await stat(stats).catch(() => undefined))?.isFile()) await copyFile(stats, join(imagesDir, CK_STATS));

  const overlay = overlayAt(await readFile('/proc/self/mountinfo', 'utf8'), r.bundle.rootfs);
  const tar = async (dir: string, exclude: string[]): Promise<number> => {
    const out = join(imagesDir, CK_ROOTFS_DIFF);
    const args = ['--create', '--file', out, '--no-wildcards', '--numeric-owner', '--xattrs', '--xattrs-include=user.*', '--xattrs-include=security.capability', '--one-file-system'];
    for (const x of exclude) args.push(`--exclude=./${x}`);
    const t = await execa('tar', [...args, '-C', dir, '.'], { reject: false, all: true });
    if (t.exitCode !== 0) throw new CedanaError('IO_ERROR', `packing ${dir} failed: ${String(t.all).trim().split('\n').slice(-2).join(' ')}`);
    return (await stat(out)).size;
  };
  if (overlay) {
    // The overlay's upper layer is exactly what the container changed over its image.
    const changes = await upperChanges(overlay.upper);
    const bytes = await tar(overlay.upper, changes.whiteouts);
    if (changes.deleted.length > 0) await writeFile(join(imagesDir, CK_DELETED), `${JSON.stringify(changes.deleted, null, 2)}\n`, { mode: 0o600 });
    notes.push(`the root file system is an overlay: its changes (${(bytes / 1048576).toFixed(1)} MiB, ${changes.deleted.length} deletion(s)) go in ${CK_ROOTFS_DIFF}${changes.deleted.length ? ` and ${CK_DELETED}` : ''}, over the image ${r.base?.name ?? '(name it with --base-image)'}`);
    if (changes.opaque === undefined) notes.push('python3 is not here to find directories the container replaced whole (opaque in the overlay): any such directory is carried as its new contents, merged over the image\'s');
    else if (changes.opaque.length > 0) notes.push(`directories replaced whole (opaque) in the overlay are carried as their new contents, merged over the image's (the layout has no way to say "replaced"): ${changes.opaque.join(', ')}`);
    return { notes, rootfs: 'changes' };
  }
  if (r.rootfs) {
    const bytes = await tar(r.bundle.rootfs, []);
    notes.push(`--rootfs: the whole root file system (${(bytes / 1048576).toFixed(1)} MiB) goes in ${CK_ROOTFS_DIFF}, over the image ${r.base?.name ?? '(name it with --base-image)'}`);
    return { notes, rootfs: 'full' };
  }
  notes.push(`the root file system ${r.bundle.rootfs} is not an overlay: no changes are carried (--rootfs carries it whole); the image it is restored over must hold what it holds`);
  return { notes, rootfs: 'none' };
}

/** The runtime's checkpoint goes into checkpoint/ of the archive's directory. */
export async function archiveImagesDir(imagesDir: string): Promise<string> {
  const d = join(imagesDir, CK_DIR);
  await rm(d, { recursive: true, force: true });
  await mkdir(d, { mode: 0o700 });
  return d;
}
