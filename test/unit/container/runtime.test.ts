import { describe, expect, it } from 'vitest';
import { checkpointArgs, parseState, restoreArgs, validContainerId } from '../../../src/container/runtime.js';
import { overlayAt, overlayLayersAt, restoreConfig } from '../../../src/container/bundle.js';
import { containerCleanupScript, containerRestoreScript, parseContainerPreflight } from '../../../src/container/migrate.js';
import { validateManifest } from '../../../src/image/manifest.js';
import { CedanaError } from '../../../src/errors.js';

describe('container ids and runtime state', () => {
  it('accepts OCI-style ids and nothing a path or a shell could misread', () => {
    expect(['web', 'a1', 'job_2.v-3', 'x'.repeat(128)].every(validContainerId)).toBe(true);
    expect(['', '-x', '.x', '../etc', 'a/b', 'a b', 'a;b', '$(x)', 'x'.repeat(129)].some(validContainerId)).toBe(false);
  });

  it('reads runc and crun state, refusing what is not one', () => {
    expect(parseState('{"ociVersion":"1.2.0","id":"c1","pid":6906,"status":"running","bundle":"/b","rootfs":"/b/rootfs"}')).toEqual({ id: 'c1', pid: 6906, status: 'running', bundle: '/b' });
    expect(parseState('{"id":"c1","status":"stopped","bundle":"/b"}')).toEqual({ id: 'c1', pid: 0, status: 'stopped', bundle: '/b' });
    expect(parseState('container does not exist')).toBeUndefined();
    expect(parseState('{"id":1}')).toBeUndefined();
  });

  it('builds the checkpoint and restore command lines both runtimes take', () => {
    expect(checkpointArgs('c1', { imagesDir: '/i', workDir: '/w', leaveRunning: true, tcpEstablished: true, fileLocks: false, externalUnix: true })).toEqual([
      'checkpoint', '--image-path', '/i', '--work-path', '/w', '--leave-running', '--tcp-established', '--ext-unix-sk', 'c1',
    ]);
    expect(restoreArgs('c1', { imagesDir: '/i', workDir: '/w', bundle: '/b', tcpEstablished: false, fileLocks: true, externalUnix: false })).toEqual([
      'restore', '--detach', '--image-path', '/i', '--work-path', '/w', '--bundle', '/b', '--file-locks', 'c1',
    ]);
  });
});

describe('restoreConfig', () => {
  const config = { ociVersion: '1.2.0', root: { path: 'rootfs', readonly: false }, process: { args: ['sh'] }, hooks: { prestart: [{ path: '/usr/bin/theirs' }] } };

  it('names the root file system absolutely and adds one loopback hook, keeping the user\'s hooks', () => {
    const c = restoreConfig(config, '/srv/b/rootfs');
    expect(c.root).toEqual({ path: '/srv/b/rootfs', readonly: false });
    expect(c.hooks.prestart).toHaveLength(2);
    expect(c.hooks.prestart[0]).toEqual({ path: '/usr/bin/theirs' });
    expect(c.hooks.prestart[1].args.join(' ')).toMatch(/nsenter -t "\$pid" -n ip link set lo up/);
    // Restoring a container restored before does not stack hooks.
    expect(restoreConfig(c, '/srv/b/rootfs').hooks.prestart).toHaveLength(2);
    expect(config.root.path).toBe('rootfs');
  });

  it('its hook finds the PID in the state runc writes on its stdin', async () => {
    const { execa } = await import('execa');
    const script = restoreConfig(config, '/r').hooks.prestart[1].args[2] as string;
    const sed = script.split('\n')[1]!.replace(/^pid=\$\((.*)\);.*$/, '$1');
    const r = await execa('sh', ['-c', sed], { input: '{"ociVersion":"1.2.0","id":"c","status":"creating","pid":4242,"bundle":"/b"}' });
    expect(r.stdout).toBe('4242');
  });
});

describe('the target side of a container migration', () => {
  it('reads the preflight answers', () => {
    expect(parseContainerPreflight('RT=/usr/sbin/runc\nCRIU=4.2.1\nROOTFS=1\nDIR=/var/tmp/cedana-container.x\n')).toEqual({
      runtime: '/usr/sbin/runc', criu: '4.2.1', exists: false, bundle: false, rootfs: true, base: false, dir: '/var/tmp/cedana-container.x',
    });
    expect(parseContainerPreflight('RT=\nCRIU=\nEXISTS=1\n')).toMatchObject({ runtime: undefined, criu: undefined, exists: true });
  });

  it('quotes every path it is given', () => {
    const c = { id: 'c1', runtime: 'runc' as const, bundle: "/srv/it's here", config: 'container/config.json', rootfs: { mode: 'none' as const, path: "/srv/it's here/rootfs" } };
    const s = containerRestoreScript('runc', 'c1', '/var/tmp/d', c, ['--tcp-established']);
    expect(s).toContain(`'/srv/it'\\''s here'/config.json`);
    expect(s).toMatch(/runc restore --detach .* '--tcp-established' 'c1'/);
    expect(containerCleanupScript('runc', 'c1', '/var/tmp/d', false)).not.toMatch(/runc (kill|delete)/);
    expect(containerCleanupScript('runc', 'c1', '/var/tmp/d', true)).toMatch(/runc delete --force 'c1'/);
  });
});

describe('manifest container', () => {
  const good = (container: unknown): Record<string, unknown> => ({
    format: 'cedana-image', formatVersion: 1, createdAt: 'x', cedanaVersion: '0.1.0', criuVersion: '4.2', kernel: 'k', arch: 'x86_64', cpuFlags: [], hostname: 'h',
    pid: 5, processes: [{ pid: 5, ppid: 1, comm: 'sh', argv: ['sh'] }], memoryBytes: 0,
    options: { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], leaveRunning: false, networkLock: 'iptables' },
    tcp: [], notes: [], files: { 'inventory.img': { size: 1, sha256: 'a'.repeat(64) }, 'container/config.json': { size: 1, sha256: 'b'.repeat(64) } },
    container,
  });
  const c = { id: 'c1', runtime: 'runc', bundle: '/srv/b', config: 'container/config.json', rootfs: { mode: 'none', path: '/srv/b/rootfs' } };

  it('accepts a container image, refuses unsafe or inconsistent ones', () => {
    expect(validateManifest(good(c)).container?.id).toBe('c1');
    for (const bad of [
      { ...c, id: '../x' }, { ...c, runtime: 'docker' }, { ...c, bundle: 'relative' }, { ...c, bundle: '/srv/../etc' },
      { ...c, config: 'config.json' }, { ...c, rootfs: { mode: 'full', path: '/srv/b/rootfs', image: 'container/rootfs.tar', bytes: 1 } },
    ]) {
      expect(() => validateManifest(good(bad)), JSON.stringify(bad)).toThrow(CedanaError);
    }
  });
});

describe('overlayAt', () => {
  const info = [
    '27 1 0:25 / / rw - ext4 /dev/vda rw',
    '45 27 0:39 / /srv/b/rootfs rw,relatime - overlay overlay rw,lowerdir=/img/l1:/img/l2,upperdir=/srv/u\\040x,workdir=/srv/w,uuid=on',
  ].join('\n');
  it('reads the layers of the overlay mounted at a path, and nothing for other paths', () => {
    expect(overlayAt(info, '/srv/b/rootfs')).toEqual({ base: ['/img/l1', '/img/l2'], upper: '/srv/u x', work: '/srv/w' });
    expect(overlayAt(info, '/srv/b')).toBeUndefined();
    expect(overlayAt(`${info}\n46 45 0:40 / /srv/b/rootfs rw - tmpfs tmpfs rw`, '/srv/b/rootfs')).toBeUndefined();
  });

  it('lists the layers an overlay shows, top first, a read-only one (no upper layer) too', () => {
    expect(overlayLayersAt(info, '/srv/b/rootfs')).toEqual(['/srv/u x', '/img/l1', '/img/l2']);
    const ro = `${info}\n50 27 0:41 / /var/lib/containers/storage/overlay/abc/merged ro - overlay overlay ro,lowerdir=/l/A:/l/B`;
    expect(overlayLayersAt(ro, '/var/lib/containers/storage/overlay/abc/merged')).toEqual(['/l/A', '/l/B']);
    expect(overlayLayersAt(info, '/srv')).toBeUndefined();
  });
});
