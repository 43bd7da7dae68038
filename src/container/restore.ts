/**
 * `cedana restore IMAGE --container [NEW-ID]`: the bundle put in place, the image checked, the
 * runtime restoring through CRIU.
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { locateCriu } from '../criu/criu.js';
import { CedanaError } from '../errors.js';
import { hostFacts, requireRoot } from '../host.js';
import { verifyDir } from '../image/checksum.js';
import { openImage, readManifest } from '../image/open.js';
import { silentReporter, type Reporter } from '../cli/reporter.js';
import { privateTempDir } from '../util/paths.js';
import { checkContainerId, refuseExistingContainer, restoreArgs, Runtime, type RuntimeName } from './runtime.js';
import { checkCompatible } from '../commands/restore.js';
import { RESTORE_BUNDLES, placeBundle, restoreConfig } from './bundle.js';
import { isCheckpointArchiveDir, readArchiveMeta } from './ckpt-archive.js';
import { restoreFromArchive, type ArchiveRestoreResult } from './archive-restore.js';
import { MANIFEST_NAME } from '../image/manifest.js';
import { pathExists } from '../util/paths.js';

export interface ContainerRestoreArgs {
  image: string;
  /** The id to restore as (default: the image's). */
  id?: string;
  runtime?: string;
  /** For a checkpointctl-layout archive: the container image's root file system here. */
  rootfs?: string;
  stdin?: Readable;
  reporter?: Reporter;
}

export interface ContainerRestoreResult {
  command: 'restore';
  container: string;
  runtime: RuntimeName;
  pid: number;
  image: string;
  /** The container's bundle (its config.json and root file system), as where it was dumped. */
  bundle: string;
  /** The bundle runc restored it from (the config with the hook that brings its loopback up). */
  restoreBundle: string;
  /** What was put in place for the bundle: nothing (it was there), its config, or config and root file system. */
  bundleCreated: 'none' | 'config' | 'config+rootfs';
  processes: number;
  durationMs: number;
}

export async function restoreContainer(args: ContainerRestoreArgs): Promise<ContainerRestoreResult | ArchiveRestoreResult> {
  const started = performance.now();
  const report = args.reporter ?? silentReporter;
  requireRoot('restore');
  const criu = await locateCriu();
  const work = await privateTempDir('cedana-ctr-restore-');
  try {
    const { dir, label, digests } = await openImage(args.image, work, report, args.stdin);
    if (await isCheckpointArchiveDir(dir)) {
      // Kubernetes', CRI-O's, Podman's layout (or cedana's own export of it, which carries its manifest).
      const meta = await readArchiveMeta(dir);
      let verified = false;
      if (await pathExists(join(dir, MANIFEST_NAME))) {
        report.phase('verifying the archive');
        await verifyDir(dir, await readManifest(dir), undefined, digests);
        verified = true;
      }
      const r = await restoreFromArchive({ dir, meta, label, id: args.id, runtime: args.runtime, rootfs: args.rootfs, reporter: report });
      return { ...r, checksums: verified ? 'verified' : 'unverified' };
    }
    if (args.rootfs !== undefined) throw new CedanaError('USAGE', '--rootfs DIR is for container checkpoint archives (Podman, CRI-O, the kubelet); a cedana image knows its root file system', { hint: 'drop --rootfs' });
    report.phase('verifying the image');
    const manifest = await readManifest(dir);
    if (!manifest.container) {
      throw new CedanaError('USAGE', 'this image is of a process tree, not of a container', { hint: 'restore it without --container' });
    }
    await verifyDir(dir, manifest, undefined, digests);
    checkCompatible(manifest, await hostFacts(), criu);
    const c = manifest.container;
    const id = args.id ?? c.id;
    checkContainerId(id);
    const runtimes = await Runtime.available(args.runtime);
    const runtime = runtimes.find((r) => r.name === c.runtime) ?? runtimes[0]!;
    await refuseExistingContainer(id);
    const placed = await placeBundle(dir, c);
    const restoreBundle = join(RESTORE_BUNDLES, id);
    try {
      report.phase(`restoring container ${id} (${runtime.name})`);
      const criuWork = join(work, 'criu');
      await mkdir(criuWork, { mode: 0o700 });
      await mkdir(restoreBundle, { recursive: true, mode: 0o700 });
      const config = JSON.parse(await readFile(join(dir, c.config), 'utf8')) as Record<string, any>;
      await writeFile(join(restoreBundle, 'config.json'), JSON.stringify(restoreConfig(config, c.rootfs.path), null, 1), { mode: 0o600 });
      const o = manifest.options;
      // The container inherits runc's stdio where it had pipes: a file that outlives cedana, not cedana's pipes.
      await runtime.run(restoreArgs(id, { imagesDir: dir, workDir: criuWork, bundle: restoreBundle, tcpEstablished: o.tcpEstablished, fileLocks: o.fileLocks, externalUnix: o.externalUnix.length > 0 }), {
        log: join(criuWork, 'restore.log'), label: `${runtime.name}-restore-${id}`, output: join(restoreBundle, 'stdio.log'),
      });
      const s = await runtime.state(id);
      if (!s || s.status !== 'running') throw new CedanaError('RUNTIME_FAILED', `${runtime.name} restored container ${id}, and it is ${s?.status ?? 'gone'}`);
      return {
        command: 'restore', container: id, runtime: runtime.name, pid: s.pid, image: label, bundle: c.bundle, restoreBundle, bundleCreated: placed.created,
        processes: manifest.processes.length, durationMs: Math.round(performance.now() - started),
      };
    } catch (e) {
      await runtime.run(['delete', '--force', id]).catch(() => undefined);
      await rm(restoreBundle, { recursive: true, force: true });
      await placed.undo();
      throw e;
    }
  } finally {
    report.stop();
    await rm(work, { recursive: true, force: true });
  }
}
