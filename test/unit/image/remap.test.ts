import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import { decodeImage, encodeImage } from '../../../src/image/criu/codec.js';
import { imageConnections, parsePathMap, parsePortMap, remapFilesImage, remapPath } from '../../../src/image/remap.js';

const SEED = fileURLToPath(new URL('../../fixtures/criu-images/fdzoo/files.img', import.meta.url));

describe('parsePathMap', () => {
  it('takes OLD=NEW with absolute paths, normalised, without a trailing slash', () => {
    expect(parsePathMap('/srv/old/=/srv//new')).toEqual({ from: '/srv/old', to: '/srv/new' });
    expect(parsePathMap('/a=/b=c')).toEqual({ from: '/a', to: '/b=c' });
  });

  it.each(['', '/a', 'a=/b', '/a=b', '=/b'])('refuses %j as a usage error', (text) => {
    try {
      parsePathMap(text);
      expect.unreachable();
    } catch (e) {
      expect((e as CedanaError).code).toBe('USAGE');
    }
  });
});

describe('remapPath', () => {
  const maps = [parsePathMap('/srv/app=/data/app'), parsePathMap('/srv=/mnt')];
  it('maps the path itself and what is below it, first map first', () => {
    expect(remapPath('/srv/app', maps)).toBe('/data/app');
    expect(remapPath('/srv/app/log/x', maps)).toBe('/data/app/log/x');
    expect(remapPath('/srv/other', maps)).toBe('/mnt/other');
  });
  it('does not map a sibling that only shares a prefix', () => {
    expect(remapPath('/srv/application', [parsePathMap('/srv/app=/x')])).toBeUndefined();
    expect(remapPath('/etc/passwd', maps)).toBeUndefined();
  });
});

describe('remapFilesImage', () => {
  const files = decodeImage(readFileSync(SEED), 'files.img');
  const names = (img: typeof files): string[] =>
    img.entries.flatMap((e) => (e.type !== null && typeof (e.value as { reg?: { name?: unknown } }).reg?.name === 'string' ? [(e.value as { reg: { name: string } }).reg.name] : []));

  it('rewrites the names under OLD, keeps everything else byte for byte, and re-encodes to a valid image', () => {
    const before = names(files);
    const dir = before.find((n) => n.endsWith('/zoo/out.log'))!.replace(/\/out\.log$/, '');
    const { image, changed } = remapFilesImage(files, [{ from: dir, to: '/new/place' }]);
    expect(changed.map((c) => c.to)).toContain('/new/place/out.log');
    expect(changed.find((c) => c.to === '/new/place/out.log')!.size).toBe(24);
    const again = decodeImage(encodeImage(image), 'files.img');
    const after = names(again);
    expect(after).toContain('/new/place/out.log');
    expect(after.filter((n) => n.startsWith(`${dir}/`))).toEqual([]);
    expect(after.filter((n) => n.startsWith('/usr/'))).toEqual(before.filter((n) => n.startsWith('/usr/')));
  });

  it('changes nothing when no name is under OLD (the same bytes come back)', () => {
    const { image, changed } = remapFilesImage(files, [{ from: '/nowhere', to: '/x' }]);
    expect(changed).toEqual([]);
    expect(encodeImage(image).equals(readFileSync(SEED))).toBe(true);
  });
});

describe('parsePortMap and listening-port remapping', () => {
  it('takes OLD:NEW ports and refuses anything else as a usage error', () => {
    expect(parsePortMap('8000:9000')).toEqual({ from: 8000, to: 9000 });
    for (const bad of ['8000', '0:1', '1:70000', 'a:b', '8000:9000:1']) expect(() => parsePortMap(bad)).toThrow(/--map-port/);
  });

  it('moves only the listening TCP socket on OLD; the connections keep their ports', () => {
    const files = decodeImage(readFileSync(SEED), 'files.img');
    const { image, changedPorts } = remapFilesImage(files, [], [{ from: 7100, to: 7200 }]);
    expect(changedPorts).toEqual([{ id: expect.any(Number), from: 7100, to: 7200 }]);
    const socks = decodeImage(encodeImage(image), 'files.img').entries.flatMap((e) => {
      const isk = e.type === null ? undefined : (e.value as { isk?: { state: number; src_port: number; dst_port: number } }).isk;
      return isk ? [isk] : [];
    });
    expect(socks.find((k) => k.state === 10)!.src_port).toBe(7200);
    // The established pair of the seed (7100 ↔ 43016) is untouched.
    expect(socks.filter((k) => k.state === 1).map((k) => [k.src_port, k.dst_port])).toEqual([[43016, 7100], [7100, 43016]]);
  });
});

describe('established connections in files.img', () => {
  const files = decodeImage(readFileSync(SEED), 'files.img');

  it('imageConnections lists them with their inodes and both ends', () => {
    const conns = imageConnections(files);
    expect(conns.map((c) => [c.local, c.remote])).toEqual([['127.0.0.1:43016', '127.0.0.1:7100'], ['127.0.0.1:7100', '127.0.0.1:43016']]);
    expect(new Set(conns.map((c) => c.ino)).size).toBe(2);
  });

  it('closing one rewrites it as an unbound, unconnected socket and leaves the other alone', () => {
    const [a, b] = imageConnections(files);
    const { image, closed } = remapFilesImage(files, [], [], new Set([a!.ino]));
    expect(closed).toEqual([a!.ino]);
    const again = decodeImage(encodeImage(image), 'files.img');
    const isks = again.entries.flatMap((e) => {
      const isk = e.type === null ? undefined : (e.value as { isk?: { ino: number; state: number; src_port: number; dst_port: number; src_addr: number[]; dst_addr: number[] } }).isk;
      return isk ? [isk] : [];
    });
    const ca = isks.find((k) => k.ino === a!.ino)!;
    expect(ca).toMatchObject({ state: 7, src_port: 0, dst_port: 0 });
    expect([...ca.src_addr, ...ca.dst_addr].every((w) => w === 0)).toBe(true);
    expect(ca.src_addr.length).toBe(isks.find((k) => k.ino === b!.ino)!.src_addr.length); // CRIU checks the address length
    expect(imageConnections(again).map((c) => c.ino)).toEqual([b!.ino]);
  });
});
