/**
 * `cedana restore ARCHIVE --container [NEW-ID] --rootfs DIR` for a checkpointctl-layout archive
 * (Podman's export, the kubelet's checkpoint through CRI-O, containerd, or cedana's own): the
 * container comes back under runc (or crun) as cedana's own container restores do.
 *
 * Where it lives: /var/lib/cedana/containers/ID holds the bundle (config.json), the root file system
 * (an overlay: the base the user names, read-only, below; the archive's rootfs-diff.tar unpacked in
 * the upper layer; deleted.files removed in the merged view), /dev/shm's contents, and stand-ins for
 * the engine's own bind mounts (resolv.conf, hosts, hostname, …) that exist only on the engine's host.
 * A container that had its own network namespace from the engine (a path in the spec: Podman's and
 * Kubernetes' pod networks) gets a new one, `cedana-ID`, with loopback up and the addresses
 * network.status names on a dummy interface (so sockets bound to them come back; it is not connected
 * to any network).
 *
 * These archives carry no checksums (cedana's own carry its manifest, verified); every entry of the
 * archive, of rootfs-diff.tar and of devshm-checkpoint.tar is checked before anything is written:
 * nothing may escape its directory, link out of it, or be a device.
 */
import { execa } from 'execa';
import { createReadStream } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rm, stat, writeFile, lstat, readlink, readdir } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { CedanaError } from '../errors.js';
import { decodeImage, type MessageEntry } from '../image/criu/codec.js';
import type { Reporter } from '../cli/reporter.js';
import { pathExists } from '../util/paths.js';
import { CK_DELETED, CK_DEVSHM, CK_DIR, CK_ROOTFS_DIFF, type ArchiveMeta } from './ckpt-archive.js';
import { overlayLayersAt, restoreConfig, untarInto } from './bundle.js';
import { checkContainerId, refuseExistingContainer, restoreArgs, Runtime, RUNTIMES } from './runtime.js';
import type { ContainerRestoreResult } from './restore.js';

/** Where containers restored from an archive keep their bundle and root file system. */
export const ARCHIVE_CONTAINERS = '/var/lib/cedana/containers';

/** Bind mounts an engine makes from files of its own (not directories); stand-ins are files too. */
const FILE_MOUNTS = new Set(['/etc/resolv.conf', '/etc/hosts', '/etc/hostname', '/run/.containerenv', '/dev/termination-log']);

const refuse = (what: string, entry: string, why: string): CedanaError =>
  new CedanaError('IMAGE_INVALID', `refusing ${what} entry ${JSON.stringify(entry)}: ${why}`, {
    hint: 'the archive tries to write outside the container, links out of it, or holds devices; it was not restored',
    details: { entry, in: what },
  });

/**
 * Checks every entry of a tar that is to be unpacked into a container's root file system (or its
 * /dev/shm): no absolute or `..` names, nothing through a symbolic link the tar itself makes, hard
 * links only to entries inside, symbolic links whose target stays inside the root (an absolute
 * target is the container's own absolute path), and no devices. Streams; never unpacks.
 */
export async function checkRootfsTar(path: string, what: string): Promise<{ entries: number }> {
  const { Parser } = await import('tar');
  const links = new Set<string>();
  let entries = 0;
  let failure: CedanaError | undefined;
  const parser = new Parser({ strict: true });
  parser.on('entry', (e) => {
    entries++;
    if (!failure) {
      const name = String(e.path).replace(/^(\.\/)+/, '').replace(/\/+$/, '');
      const norm = posix.normalize(name);
      if (name === '' || name === '.') {
        // the root directory itself
      } else if (name.startsWith('/') || norm.startsWith('..') || norm.split('/').includes('..') || name.includes('\0')) {
        failure = refuse(what, String(e.path), 'its name leaves the root file system');
      } else if ([...links].some((l) => norm.startsWith(`${l}/`))) {
        failure = refuse(what, String(e.path), 'it would be written through a symbolic link the archive makes');
      } else if (e.type === 'CharacterDevice' || e.type === 'BlockDevice') {
        failure = refuse(what, String(e.path), 'a device');
      } else if (e.type === 'SymbolicLink') {
        const target = String(e.linkpath ?? '');
        const resolved = target.startsWith('/') ? posix.normalize(target) : posix.normalize(posix.join('/', posix.dirname(norm), target));
        // Lexically: `..` above the root of a relative target means the link points out.
        const depth = target.startsWith('/') ? 0 : posix.dirname(norm).split('/').filter((c) => c && c !== '.').length;
        let d = depth;
        let out = false;
        for (const c of target.split('/')) {
          if (c === '..') d--;
          else if (c && c !== '.') d++;
          if (d < 0) out = true;
        }
        if (out || !resolved.startsWith('/')) failure = refuse(what, String(e.path), `a symbolic link out of the root file system (to ${target})`);
        links.add(norm);
      } else if (e.type === 'Link') {
        const target = posix.normalize(String(e.linkpath ?? '').replace(/^(\.\/)+/, ''));
        if (target.startsWith('/') || target.startsWith('..') || target.split('/').includes('..')) failure = refuse(what, String(e.path), `a hard link out of the archive (to ${e.linkpath})`);
      }
    }
    e.resume();
  });
  await new Promise<void>((resolve, reject) => {
    const src = createReadStream(path);
    src.on('error', reject);
    parser.on('error', (err: Error) => reject(new CedanaError('IMAGE_INVALID', `${what} is not a valid tar: ${err.message}`)));
    parser.on('end', () => resolve());
    parser.on('close', () => resolve());
    src.pipe(parser as unknown as NodeJS.WritableStream);
  });
  if (failure) throw failure;
  return { entries };
}

/**
 * Resolves `p` (a path inside the container) under `root` as the container would see it: symbolic
 * links are followed inside root (an absolute target from root), `..` stops at root. Never leaves
 * root. Returns the host path, or undefined when some component does not exist.
 */
export async function resolveInRoot(root: string, p: string): Promise<string | undefined> {
  const todo = p.split('/').filter((c) => c && c !== '.');
  const done: string[] = [];
  let hops = 0;
  while (todo.length > 0) {
    const c = todo.shift()!;
    if (c === '..') {
      done.pop();
      continue;
    }
    const host = join(root, ...done, c);
    const st = await lstat(host).catch(() => undefined);
    if (!st) return undefined;
    // The last component is what is removed, never followed.
    if (st.isSymbolicLink() && todo.length > 0) {
      if (++hops > 40) return undefined;
      const t = await readlink(host);
      if (t.startsWith('/')) done.length = 0;
      todo.unshift(...t.split('/').filter((x) => x && x !== '.'));
      continue;
    }
    done.push(c);
  }
  return join(root, ...done);
}

export interface ArchiveRestoreArgs {
  /** The unpacked archive (config.dump, spec.dump, checkpoint/, …). */
  dir: string;
  meta: ArchiveMeta;
  label: string;
  id?: string;
  runtime?: string;
  /** The base root file system: the container image's, unpacked (or mounted) here. */
  rootfs?: string;
  reporter: Reporter;
}

export interface ArchiveRestoreResult extends Omit<ContainerRestoreResult, 'bundleCreated'> {
  bundleCreated: 'config+rootfs';
  /** The archive's engine and container (Podman, CRI-O, containerd, cedana). */
  from: { engine: ArchiveMeta['engine']; name: string; id: string; image?: string };
  /** The network namespace cedana made for it (ip netns), if any. */
  netns?: string;
  /** What cedana decided or had to stand in for. */
  notes: string[];
  checksums: 'verified' | 'unverified';
}

/** Whether the archive's sockets include an established TCP connection, and its file locks any. */
async function criuOptionsOf(images: string): Promise<{ tcpEstablished: boolean; fileLocks: boolean; processes: number }> {
  const entries = async (name: string): Promise<Record<string, any>[]> => {
    try {
      return decodeImage(await readFile(join(images, name)), name).entries.filter((e): e is MessageEntry => e.type !== null).map((e) => e.value as Record<string, any>);
    } catch {
      return [];
    }
  };
  const files = await entries('files.img');
  const tcpEstablished = files.some((f) => f.isk && Number(f.isk.proto) === 6 && Number(f.isk.state) === 1);
  const fileLocks = (await entries('filelocks.img')).length > 0;
  const processes = (await entries('pstree.img')).length;
  return { tcpEstablished, fileLocks, processes };
}

/** The default id: the container's name where runc takes it, else its id. Pure. */
export function defaultIdOf(meta: Pick<ArchiveMeta, 'name' | 'id'>): string {
  const ok = (s: string): boolean => /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(s);
  if (ok(meta.name)) return meta.name;
  if (ok(meta.id)) return meta.id;
  throw new CedanaError('USAGE', 'the archive names no container id runc can use', { hint: 'give one: --container NEW-ID' });
}

async function makeNetns(name: string, meta: ArchiveMeta, notes: string[]): Promise<void> {
  const ip = async (args: string[]): Promise<void> => {
    const r = await execa('ip', args, { reject: false, all: true });
    if (r.exitCode !== 0) throw new CedanaError('HOST_UNSUPPORTED', `ip ${args.join(' ')} failed: ${String(r.all).trim()}`, { hint: 'install iproute2 (scripts/setup does)' });
  };
  await ip(['netns', 'add', name]);
  await ip(['-n', name, 'link', 'set', 'lo', 'up']);
  let k = 0;
  for (const itf of meta.interfaces) {
    if (itf.addresses.length === 0) continue;
    // A veth pair with both ends inside (veth is everywhere containers run; dummy is a module many
    // kernels lack): the addresses exist, so sockets bound to them come back.
    const peer = `cedana-peer${k++}`;
    await ip(['-n', name, 'link', 'add', itf.name, ...(itf.mac ? ['address', itf.mac] : []), 'type', 'veth', 'peer', 'name', peer]);
    for (const a of itf.addresses) await ip(['-n', name, 'addr', 'add', a, 'dev', itf.name]);
    await ip(['-n', name, 'link', 'set', peer, 'up']);
    await ip(['-n', name, 'link', 'set', itf.name, 'up']);
    notes.push(`${itf.name} keeps ${itf.addresses.join(', ')} (from network.status) in network namespace ${name}: its sockets come back, but it is connected to no network (its veth peer ${peer} is in the same namespace); attach one to reach it`);
  }
}

/**
 * The spec the container is restored with: its root the overlay, the engine's namespaces by path
 * replaced (network: the one made here; others: new ones), its cgroup cedana's, bind mounts whose
 * source is not here given stand-ins, security profiles this host lacks dropped. Returns the stand-ins
 * to make. Pure but for the existence checks.
 */
export async function restoreSpecOf(
  spec: Record<string, any>,
  o: { id: string; dir: string; rootfs: string; netnsPath?: string; shm: string },
  notes: string[],
): Promise<{ spec: Record<string, any>; standIns: { path: string; dest: string; file: boolean }[] }> {
  const s = restoreConfig(spec, o.rootfs);
  const namespaces = (s.linux?.namespaces ?? []) as { type: string; path?: string }[];
  for (const n of namespaces) {
    if (!n.path) continue;
    if (n.type === 'network' && o.netnsPath) n.path = o.netnsPath;
    else if (n.type === 'network') delete n.path;
    else {
      notes.push(`its ${n.type} namespace was shared (${n.path}): it gets a new one here`);
      delete n.path;
    }
  }
  if (s.linux) s.linux.cgroupsPath = `/cedana/${o.id}`;
  const standIns: { path: string; dest: string; file: boolean }[] = [];
  let k = 0;
  for (const m of (s.mounts ?? []) as { destination: string; type?: string; source?: string; options?: string[] }[]) {
    const bind = m.type === 'bind' || (m.options ?? []).some((x) => x === 'bind' || x === 'rbind');
    if (!bind || !m.source) continue;
    if (m.destination === '/dev/shm') {
      m.source = o.shm;
      continue;
    }
    if (await pathExists(m.source)) continue;
    const file = FILE_MOUNTS.has(m.destination);
    const path = join(o.dir, 'mounts', `${k++}-${m.destination.replace(/[^A-Za-z0-9._-]+/g, '_')}`);
    standIns.push({ path, dest: m.destination, file });
    m.source = path;
  }
  if (standIns.length > 0) notes.push(`bind mounts whose source is not here got stand-ins (in ${join(o.dir, 'mounts')}): ${standIns.map((x) => x.dest).join(', ')}`);
  const profile = s.process?.apparmorProfile as string | undefined;
  if (profile) {
    const loaded = await readFile('/sys/kernel/security/apparmor/profiles', 'utf8').catch(() => '');
    if (!loaded.split('\n').some((l) => l.startsWith(`${profile} `))) {
      delete s.process.apparmorProfile;
      notes.push(`AppArmor profile ${profile} is not loaded here: the container runs without it`);
    }
  }
  if (s.process?.selinuxLabel && !(await pathExists('/sys/fs/selinux/enforce'))) delete s.process.selinuxLabel;
  if (s.linux?.mountLabel && !(await pathExists('/sys/fs/selinux/enforce'))) delete s.linux.mountLabel;
  return { spec: s, standIns };
}

const standInText = (dest: string, meta: ArchiveMeta): string => {
  const host = meta.hostname ?? meta.name;
  if (dest === '/etc/hostname') return `${host}\n`;
  if (dest === '/etc/hosts') {
    const addrs = meta.interfaces.flatMap((i) => i.addresses.map((a) => a.split('/')[0]!));
    return ['127.0.0.1\tlocalhost', '::1\tlocalhost', ...addrs.map((a) => `${a}\t${host}`)].join('\n') + '\n';
  }
  return '';
};

export async function restoreFromArchive(a: ArchiveRestoreArgs): Promise<ArchiveRestoreResult> {
  const started = performance.now();
  const report = a.reporter;
  const meta = a.meta;
  const notes: string[] = [];
  const id = a.id ?? defaultIdOf(meta);
  checkContainerId(id);
  if (!a.rootfs) {
    const img = meta.image.name ?? meta.image.requested;
    throw new CedanaError('ROOTFS_MISSING', `a container checkpoint archive carries only the changes to its root file system: give its image's root file system with --rootfs DIR${img ? ` (the image was ${img})` : ''}`, {
      hint: img ? `unpack or mount that image here, e.g. \`podman image mount ${img}\` prints a directory to give` : 'unpack the image the container ran from, and give its directory',
    });
  }
  // An OCI bundle (config.json beside rootfs/) stands for its root file system.
  const bundleRootfs = join(a.rootfs, 'rootfs');
  const isBundle = (await pathExists(join(a.rootfs, 'config.json'))) && (await stat(bundleRootfs).catch(() => undefined))?.isDirectory();
  const base = isBundle ? bundleRootfs : a.rootfs;
  if (isBundle) notes.push(`--rootfs ${a.rootfs} is an OCI bundle: its root file system ${base} is the base`);
  const baseStat = await stat(base).catch(() => undefined);
  if (!baseStat?.isDirectory() || (await readdir(base)).length === 0) {
    throw new CedanaError('ROOTFS_MISSING', `--rootfs ${base} is not a directory holding a root file system`, { hint: "give the container image's root file system, unpacked or mounted" });
  }
  const wanted = a.runtime ?? ((RUNTIMES as readonly string[]).includes(meta.runtime ?? '') ? meta.runtime : undefined);
  const runtimes = await Runtime.available(a.runtime);
  const runtime = runtimes.find((r) => r.name === wanted) ?? runtimes.find((r) => r.name === 'runc') ?? runtimes[0]!;
  await refuseExistingContainer(id);

  // Everything that will be unpacked is checked first.
  const diff = join(a.dir, CK_ROOTFS_DIFF);
  const shmTar = join(a.dir, CK_DEVSHM);
  if (await pathExists(diff)) await checkRootfsTar(diff, CK_ROOTFS_DIFF);
  if (await pathExists(shmTar)) await checkRootfsTar(shmTar, CK_DEVSHM);
  for (const d of meta.deletedFiles) {
    if (d.includes('\0') || posix.normalize(`/${d}`) === '/') throw refuse(CK_DELETED, d, 'it would remove the root itself');
  }
  const opts = await criuOptionsOf(join(a.dir, CK_DIR));

  const home = join(ARCHIVE_CONTAINERS, id);
  if ((await readdir(home).catch(() => [] as string[])).length > 0) {
    throw new CedanaError('CONTAINER_EXISTS', `${home} is there already (a container restored earlier under this id?)`, { hint: 'restore under another id: --container NEW-ID, or remove that directory (unmount its rootfs first)' });
  }
  const upper = join(home, 'upper');
  const workdir = join(home, 'work');
  const rootfs = join(home, 'rootfs');
  const shm = join(home, 'shm');
  const netns = `cedana-${id}`.slice(0, 64);
  let mounted = false;
  let madeNetns = false;
  const undo = async (): Promise<void> => {
    await runtime.run(['delete', '--force', id]).catch(() => undefined);
    if (mounted) await execa('umount', [rootfs], { reject: false });
    if (madeNetns) await execa('ip', ['netns', 'delete', netns], { reject: false });
    await rm(home, { recursive: true, force: true });
  };
  try {
    report.phase(`putting the root file system together (${base}, with the archive's changes)`);
    for (const d of [upper, workdir, rootfs, shm]) await mkdir(d, { recursive: true, mode: 0o700 });
    await chmod(home, 0o700);
    if (await pathExists(diff)) await untarInto(diff, upper);
    // The merged root has the upper layer's mode: CRIU checks the root's mode against the image's.
    await chmod(upper, baseStat.mode & 0o7777);
    await chmod(shm, 0o1777);
    // A base that is itself an overlay (`podman image mount`'s directory) is stacked by its layers:
    // CRIU cannot dump a container whose overlay has an overlay below it ("Can't lookup mount").
    const layers = overlayLayersAt(await readFile('/proc/self/mountinfo', 'utf8'), base) ?? [base];
    if (layers.length > 1 || layers[0] !== base) notes.push(`--rootfs ${base} is an overlay: its layers are stacked below the container's (${layers.length} layer(s))`);
    const m = await execa('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${layers.join(':')},upperdir=${upper},workdir=${workdir}`, rootfs], { reject: false, all: true });
    if (m.exitCode !== 0) throw new CedanaError('IO_ERROR', `mounting the overlay at ${rootfs} failed: ${String(m.all).trim()}`);
    mounted = true;
    for (const d of meta.deletedFiles) {
      const host = await resolveInRoot(rootfs, d);
      if (host && host !== rootfs) await rm(host, { recursive: true, force: true });
    }
    if (meta.deletedFiles.length > 0) notes.push(`${meta.deletedFiles.length} path(s) of deleted.files removed from the root file system`);
    if (await pathExists(shmTar)) await untarInto(shmTar, shm);

    const ns = ((meta.spec.linux?.namespaces ?? []) as { type: string; path?: string }[]).find((n) => n.type === 'network');
    let netnsPath: string | undefined;
    if (ns?.path) {
      madeNetns = true;
      await makeNetns(netns, meta, notes);
      netnsPath = `/run/netns/${netns}`;
    }
    const { spec, standIns } = await restoreSpecOf(meta.spec, { id, dir: home, rootfs, netnsPath, shm }, notes);
    if (standIns.length > 0) await mkdir(join(home, 'mounts'), { mode: 0o700 });
    for (const s of standIns) {
      if (!s.file) await mkdir(s.path, { mode: 0o755 });
      else if (s.dest === '/etc/resolv.conf') await copyFile('/etc/resolv.conf', s.path).catch(() => writeFile(s.path, ''));
      else await writeFile(s.path, standInText(s.dest, meta), { mode: 0o644 });
    }
    await writeFile(join(home, 'config.json'), JSON.stringify(spec, null, 1), { mode: 0o600 });

    report.phase(`restoring container ${id} (${runtime.name}) from ${meta.engine}'s checkpoint`);
    const criuWork = join(home, 'criu');
    await mkdir(criuWork, { mode: 0o700 });
    await runtime.run(restoreArgs(id, { imagesDir: join(a.dir, CK_DIR), workDir: criuWork, bundle: home, tcpEstablished: opts.tcpEstablished, fileLocks: opts.fileLocks, externalUnix: false }), {
      log: join(criuWork, 'restore.log'), label: `${runtime.name}-restore-${id}`, output: join(home, 'stdio.log'),
    });
    const s = await runtime.state(id);
    if (!s || s.status !== 'running') throw new CedanaError('RUNTIME_FAILED', `${runtime.name} restored container ${id}, and it is ${s?.status ?? 'gone'}`);
    await rm(criuWork, { recursive: true, force: true });
    return {
      command: 'restore', container: id, runtime: runtime.name, pid: s.pid, image: a.label, bundle: home, restoreBundle: home, bundleCreated: 'config+rootfs',
      processes: opts.processes, durationMs: Math.round(performance.now() - started),
      from: { engine: meta.engine, name: meta.name, id: meta.id, ...(meta.image.name ? { image: meta.image.name } : {}) },
      ...(madeNetns ? { netns } : {}),
      notes, checksums: 'unverified',
    };
  } catch (e) {
    await undo();
    throw e;
  }
}
