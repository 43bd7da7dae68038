/**
 * The checkpointctl layout's pure parts: engine and network metadata, the checks of tars unpacked
 * into a root file system, path resolution inside a root, the restore spec.
 */
import { execa } from 'execa';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { engineOf, interfacesOf, isCheckpointArchiveDir, readArchiveMeta } from '../../../src/container/ckpt-archive.js';
import { checkRootfsTar, defaultIdOf, resolveInRoot, restoreSpecOf } from '../../../src/container/archive-restore.js';
import { parseFormat } from '../../../src/container/archive-export.js';

const dir = mkdtempSync(join(tmpdir(), 'cedana-ckarch-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A tar made by python's tarfile from (name, kind, target) entries: it writes what GNU tar would refuse. */
async function tarOf(name: string, entries: [string, 'file' | 'dir' | 'sym' | 'hard' | 'chr', string?][]): Promise<string> {
  const out = join(dir, name);
  const py = `
import tarfile, io, sys, json
with tarfile.open(sys.argv[1], 'w') as t:
    for n, kind, target in json.loads(sys.argv[2]):
        i = tarfile.TarInfo(n)
        if kind == 'file':
            i.size = 1; t.addfile(i, io.BytesIO(b'x')); continue
        i.type = {'dir': tarfile.DIRTYPE, 'sym': tarfile.SYMTYPE, 'hard': tarfile.LNKTYPE, 'chr': tarfile.CHRTYPE}[kind]
        if target: i.linkname = target
        t.addfile(i)
`;
  await execa('python3', ['-c', py, out, JSON.stringify(entries.map(([n, k, t]) => [n, k, t ?? null]))]);
  return out;
}

describe('archive metadata', () => {
  it("tells the engine by the spec's io.container.manager, cedana's own by its annotation", () => {
    expect(engineOf({ annotations: { 'io.container.manager': 'libpod' } })).toBe('podman');
    expect(engineOf({ annotations: { 'io.container.manager': 'cri-o' } })).toBe('cri-o');
    expect(engineOf({ annotations: { 'io.kubernetes.cri.container-name': 'x' } })).toBe('containerd');
    expect(engineOf({})).toBe('containerd');
    expect(engineOf({ annotations: { 'io.container.manager': 'libpod', 'io.cedana.checkpoint': '0.1.0' } })).toBe('cedana');
  });

  it('reads network.status into interfaces, ignoring what is not there', () => {
    expect(interfacesOf({ podman: { interfaces: { eth0: { subnets: [{ ipnet: '10.88.0.9/16', gateway: '10.88.0.1' }], mac_address: 'f2:00:00:00:00:01' } } } })).toEqual([
      { network: 'podman', name: 'eth0', addresses: ['10.88.0.9/16'], gateways: ['10.88.0.1'], mac: 'f2:00:00:00:00:01' },
    ]);
    expect(interfacesOf(undefined)).toEqual([]);
    expect(interfacesOf({ n: { interfaces: { e: { subnets: [{ ipnet: 3 }] } } } })).toEqual([{ network: 'n', name: 'e', addresses: [], gateways: [] }]);
  });

  it('takes the name as the id where runc accepts it, else the id, else asks for one', () => {
    expect(defaultIdOf({ name: 'web', id: 'a'.repeat(64) })).toBe('web');
    expect(defaultIdOf({ name: 'not ok/name', id: 'b'.repeat(64) })).toBe('b'.repeat(64));
    expect(() => defaultIdOf({ name: '', id: '' })).toThrow(/names no container id/);
  });

  it('knows the layout by any of its parts, and says which part is missing or malformed', async () => {
    const a = join(dir, 'partial');
    mkdirSync(join(a, 'checkpoint'), { recursive: true });
    writeFileSync(join(a, 'checkpoint', 'inventory.img'), 'x');
    writeFileSync(join(a, 'config.dump'), '{"name":"web"}');
    expect(await isCheckpointArchiveDir(a)).toBe(true);
    await expect(readArchiveMeta(a)).rejects.toMatchObject({ code: 'IMAGE_INVALID', message: expect.stringMatching(/spec\.dump is missing/) });
    writeFileSync(join(a, 'spec.dump'), '{"annotations":{"io.container.manager":"libpod"},"process":{"args":["sh"]}}');
    writeFileSync(join(a, 'deleted.files'), '{"not":"a list"}');
    await expect(readArchiveMeta(a)).rejects.toMatchObject({ message: expect.stringMatching(/deleted\.files must be a JSON array/) });
    writeFileSync(join(a, 'deleted.files'), '["/bin/ls"]');
    expect(await readArchiveMeta(a)).toMatchObject({ engine: 'podman', name: 'web', command: ['sh'], deletedFiles: ['/bin/ls'], interfaces: [], devShm: false, containerConfig: { env: [], mounts: [], namespaces: [] } });
    rmSync(join(a, 'checkpoint'), { recursive: true });
    await expect(readArchiveMeta(a)).rejects.toMatchObject({ message: expect.stringMatching(/inventory\.img is missing/) });
    const plain = join(dir, 'cedana-image');
    mkdirSync(plain);
    writeFileSync(join(plain, 'inventory.img'), 'x');
    expect(await isCheckpointArchiveDir(plain)).toBe(false);
  });

  it('--format is cedana or checkpointctl', () => {
    expect(parseFormat(undefined)).toBe('cedana');
    expect(parseFormat('checkpointctl')).toBe('checkpointctl');
    expect(() => parseFormat('docker')).toThrow(/checkpointctl/);
  });
});

describe('checkRootfsTar', () => {
  it('passes a plain root file system diff, with links inside and absolute links (the container\'s own paths)', async () => {
    const ok = await tarOf('ok.tar', [['./', 'dir'], ['./tmp/', 'dir'], ['./tmp/count', 'file'], ['bin/sh', 'sym', 'busybox'], ['etc/alt', 'sym', '/usr/bin/x'], ['tmp/up', 'sym', '../bin'], ['tmp/h', 'hard', 'tmp/count']]);
    expect(await checkRootfsTar(ok, 'rootfs-diff.tar')).toEqual({ entries: 7 });
  });

  it.each([
    ['a name with ..', [['tmp/../../x', 'file']], /leaves the root file system/],
    ['an absolute name', [['/etc/passwd', 'file']], /leaves the root file system/],
    ['a relative link above the root', [['tmp/evil', 'sym', '../../etc']], /symbolic link out/],
    ['a link climbing out from the top', [['evil', 'sym', '..']], /symbolic link out/],
    ['a hard link out', [['tmp/h', 'hard', '../etc/shadow']], /hard link out/],
    ['a device', [['dev/sda', 'chr']], /a device/],
    ['a write through a link the tar made', [['tmp/l', 'sym', '/etc'], ['tmp/l/passwd', 'file']], /through a symbolic link/],
  ] as const)('refuses %s', async (_what, entries, why) => {
    const bad = await tarOf(`bad-${Math.random().toString(36).slice(2)}.tar`, entries as unknown as [string, 'file' | 'dir' | 'sym' | 'hard' | 'chr', string?][]);
    await expect(checkRootfsTar(bad, 'rootfs-diff.tar')).rejects.toMatchObject({ code: 'IMAGE_INVALID', message: expect.stringMatching(why) });
  });
});

describe('resolveInRoot', () => {
  it('follows links inside the root (absolute ones from the root), never leaves it, and does not follow the last component', async () => {
    const root = join(dir, 'root');
    mkdirSync(join(root, 'usr', 'bin'), { recursive: true });
    writeFileSync(join(root, 'usr', 'bin', 'ls'), 'x');
    symlinkSync('usr/bin', join(root, 'bin'));
    symlinkSync('/usr', join(root, 'abs'));
    symlinkSync('../../../../etc', join(root, 'up'));
    symlinkSync('/etc/passwd', join(root, 'last'));
    expect(await resolveInRoot(root, '/bin/ls')).toBe(join(root, 'usr', 'bin', 'ls'));
    expect(await resolveInRoot(root, '/abs/bin/ls')).toBe(join(root, 'usr', 'bin', 'ls'));
    expect(await resolveInRoot(root, '/../../usr/bin/ls')).toBe(join(root, 'usr', 'bin', 'ls'));
    // `up` climbs out: resolved inside the root, where etc does not exist.
    expect(await resolveInRoot(root, '/up/passwd')).toBeUndefined();
    expect(await resolveInRoot(root, '/last')).toBe(join(root, 'last'));
    expect(await resolveInRoot(root, '/missing/x')).toBeUndefined();
  });
});

describe('restoreSpecOf', () => {
  it("re-points the engine's namespaces and cgroup, stands in for bind mounts that are not here, keeps those that are", async () => {
    const here = join(dir, 'volume');
    mkdirSync(here, { recursive: true });
    const spec = {
      root: { path: '/var/lib/containers/storage/overlay/x/merged' },
      linux: { cgroupsPath: 'kubepods-besteffort.slice:crio:abc', namespaces: [{ type: 'pid' }, { type: 'network', path: '/var/run/netns/pod' }, { type: 'ipc', path: '/var/run/ipcns/pod' }, { type: 'mount' }] },
      mounts: [
        { destination: '/proc', type: 'proc', source: 'proc' },
        { destination: '/etc/hosts', type: 'bind', source: '/run/containers/x/hosts', options: ['bind'] },
        { destination: '/dev/shm', type: 'bind', source: '/run/containers/x/shm', options: ['bind'] },
        { destination: '/data', type: 'bind', source: here, options: ['rbind'] },
        { destination: '/var/cache', source: '/nowhere/cache', options: ['rbind', 'rw'] },
      ],
      process: { args: ['sh'] },
    };
    const notes: string[] = [];
    const { spec: s, standIns } = await restoreSpecOf(spec, { id: 'c1', dir: '/var/lib/cedana/containers/c1', rootfs: '/var/lib/cedana/containers/c1/rootfs', netnsPath: '/run/netns/cedana-c1', shm: '/var/lib/cedana/containers/c1/shm' }, notes);
    expect(s.root.path).toBe('/var/lib/cedana/containers/c1/rootfs');
    expect(s.linux.cgroupsPath).toBe('/cedana/c1');
    expect(s.linux.namespaces).toEqual([{ type: 'pid' }, { type: 'network', path: '/run/netns/cedana-c1' }, { type: 'ipc' }, { type: 'mount' }]);
    const src = Object.fromEntries((s.mounts as { destination: string; source: string }[]).map((m) => [m.destination, m.source]));
    expect(src['/dev/shm']).toBe('/var/lib/cedana/containers/c1/shm');
    expect(src['/data']).toBe(here);
    expect(src['/proc']).toBe('proc');
    expect(standIns.map((x) => [x.dest, x.file])).toEqual([['/etc/hosts', true], ['/var/cache', false]]);
    expect(src['/etc/hosts']).toBe(standIns[0]!.path);
    expect(standIns[0]!.path.startsWith('/var/lib/cedana/containers/c1/mounts/')).toBe(true);
    expect(notes.join('\n')).toMatch(/ipc namespace was shared/);
    expect(notes.join('\n')).toMatch(/stand-ins.*\/etc\/hosts, \/var\/cache/);
    // The original is not changed.
    expect(spec.linux.namespaces[1]).toEqual({ type: 'network', path: '/var/run/netns/pod' });
  });
});
