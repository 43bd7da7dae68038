import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { decodeImage, type DecodedImage } from '../../../src/image/criu/codec.js';
import { assembleInspection, formatInetAddr, imageSizes } from '../../../src/image/inspect.js';
import type { Manifest } from '../../../src/image/manifest.js';

const SEEDS = fileURLToPath(new URL('../../fixtures/criu-images/', import.meta.url));

function seed(name: string): { images: Map<string, DecodedImage>; fileSizes: Record<string, number> } {
  const dir = join(SEEDS, name);
  const images = new Map<string, DecodedImage>();
  const fileSizes: Record<string, number> = {};
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.img')).sort()) {
    fileSizes[f] = statSync(join(dir, f)).size;
    images.set(f, decodeImage(readFileSync(join(dir, f)), f));
  }
  return { images, fileSizes };
}

const manifest = (over: Partial<Manifest> = {}): Manifest => ({
  format: 'cedana-image',
  formatVersion: 1,
  createdAt: '2025-01-02T03:04:05.000Z',
  cedanaVersion: '0.1.0',
  criuVersion: '4.2.1',
  kernel: '6.16.0',
  arch: 'x86_64',
  cpuFlags: ['sse2'],
  hostname: 'h1',
  pid: 16514,
  processes: [{ pid: 16514, ppid: 4242, comm: 'sleep', argv: ['sleep', '1000000'] }],
  memoryBytes: 126976,
  options: { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], leaveRunning: false, networkLock: 'iptables' },
  tcp: [],
  notes: ['a decision'],
  files: { 'inventory.img': { size: 86, sha256: '0'.repeat(64) } },
  ...over,
});

describe('assembleInspection on the sleep seed', () => {
  const { images, fileSizes } = seed('sleep');
  const r = assembleInspection({ images, manifest: manifest(), fileSizes: { ...fileSizes, 'cedana.json': 1000, 'pages-1.img': 126976 } });
  const p = r.processes[0]!;

  it('takes the tree from pstree, argv and the real parent from the manifest, the state from core', () => {
    expect(r.processes).toHaveLength(1);
    expect(p).toMatchObject({ pid: 16514, ppid: 4242, argv: ['sleep', '1000000'], comm: 'sleep', state: 'running', threads: 1, cwd: '/' });
  });

  it('lists the mappings with the files mapped, and the bytes the pagemap says were dumped', () => {
    expect(p.memory.vmaCount).toBe(37);
    expect(p.memory.mappings[0]).toEqual({ start: 94385333121024, end: 94385333129216, size: 8192, prot: 'r--p', file: '/usr/bin/sleep' });
    expect(p.memory.mappings[1]!.prot).toBe('r-xp');
    expect(p.memory.mappings.map((m) => m.file)).toContain('[heap]');
    expect(p.memory.mappings.map((m) => m.file)).toContain('[vdso]');
    // PE_PRESENT runs of pagemap-16514.img: 1+2+4+2+6+1+3+1+2+2+3+1+2+1 pages.
    expect(p.memory.dumpedBytes).toBe(31 * 4096);
  });

  it('lists open files from the fdinfo of its files table', () => {
    expect(p.files.map((f) => f.fd)).toEqual([0, 1, 2, 10, 251]);
    expect(p.files[0]).toEqual({ fd: 0, type: 'REG', path: '/dev/null', flags: 'read', offset: 0, size: null });
    expect(p.files[1]).toMatchObject({ path: '/dev/null', flags: 'write' });
    expect(p.files[4]).toMatchObject({ type: 'PIPE', path: expect.stringMatching(/^pipe:\[\d+\]$/), flags: 'write', offset: null });
    expect(p.sockets).toEqual([]);
  });

  it('keeps the provenance but not the file list, says there is no GPU state, sums the sizes', () => {
    expect(r.manifest).toMatchObject({ cedanaVersion: '0.1.0', criuVersion: '4.2.1', kernel: '6.16.0', arch: 'x86_64', hostname: 'h1', notes: ['a decision'] });
    expect(r.manifest).not.toHaveProperty('files');
    expect(r.gpu).toBeNull();
    const metadata = Object.values(fileSizes).reduce((a, b) => a + b, 0);
    expect(r.sizes).toEqual({ pages: 126976, metadata, shipped: 0, manifest: 1000, total: metadata + 1000 + 126976, files: Object.keys(fileSizes).length + 2 });
    // The result is plain JSON: no bigints left.
    expect(() => JSON.stringify(r)).not.toThrow();
  });
});

describe('assembleInspection on the fdzoo seed (two processes, every kind of file)', () => {
  const { images, fileSizes } = seed('fdzoo');
  const r = assembleInspection({ images, manifest: null, fileSizes });

  it('without a manifest: argv falls back to the command name, the tree is pstree\'s', () => {
    expect(r.manifest).toBeNull();
    expect(r.processes.map((p) => [p.pid, p.ppid, p.argv, p.state])).toEqual([
      [16566, 0, ['python3'], 'running'],
      [16569, 16566, ['python3'], 'running'],
    ]);
  });

  it('open files: paths, access modes, offsets and sizes', () => {
    const files = r.processes[0]!.files;
    const byFd = (fd: number) => files.find((f) => f.fd === fd)!;
    expect(byFd(22)).toMatchObject({ type: 'REG', path: expect.stringMatching(/\/zoo\/out\.log$/), flags: 'write', offset: 24, size: 24 });
    expect(byFd(3)).toMatchObject({ type: 'PIPE', flags: 'read' });
    expect(byFd(4)).toMatchObject({ type: 'PIPE', flags: 'write' });
    expect(byFd(5)).toMatchObject({ type: 'FIFO', path: expect.stringMatching(/\/zoo\/fifo$/) });
    expect(byFd(20)).toMatchObject({ type: 'MEMFD', path: '/memfd:fdzoo', offset: 15 });
    expect(byFd(16)).toMatchObject({ type: 'EVENTFD', path: 'anon_inode:[eventfd]' });
  });

  it('sockets: TCP listening and established, UDP, unix with names and peers', () => {
    const s = r.processes[0]!.sockets;
    expect(s.filter((k) => k.proto === 'tcp')).toEqual([
      { fd: 12, proto: 'tcp', state: 'LISTEN', local: '127.0.0.1:7100', remote: null },
      { fd: 13, proto: 'tcp', state: 'ESTABLISHED', local: expect.stringMatching(/^127\.0\.0\.1:\d+$/), remote: '127.0.0.1:7100' },
      { fd: 14, proto: 'tcp', state: 'ESTABLISHED', local: '127.0.0.1:7100', remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) },
    ]);
    expect(s.find((k) => k.proto === 'udp')).toMatchObject({ local: '127.0.0.1:7101', remote: null });
    const unix = s.filter((k) => k.proto === 'unix');
    expect(unix.find((k) => k.state === 'LISTEN')).toMatchObject({ type: 'stream', local: expect.stringMatching(/\/zoo\/sock$/), remote: null });
    const pair = unix.filter((k) => k.type === 'stream' && k.state === 'ESTABLISHED');
    expect(pair).toHaveLength(2);
    expect(pair[0]!.remote).toMatch(/^socket:\[\d+\]$/);
    expect(unix.filter((k) => k.type === 'dgram')).toHaveLength(2);
  });
});

describe('pieces', () => {
  it('formats IPv4 and IPv6 addresses as CRIU stores them (u32 words, network order)', () => {
    expect(formatInetAddr([0x0100007f], 2)).toBe('127.0.0.1');
    expect(formatInetAddr([0], 2)).toBe('0.0.0.0');
    expect(formatInetAddr([0, 0, 0, 0x01000000], 10)).toBe('::1');
    expect(formatInetAddr([0, 0, 0xffff0000, 0x0100007f], 10)).toBe('::ffff:127.0.0.1');
    expect(formatInetAddr([0xb80d0120, 0, 0, 0x01000000], 10)).toBe('2001:db8::1');
  });

  it('images missing: a process from the manifest alone, with nothing known of it', () => {
    const r = assembleInspection({ images: new Map(), manifest: manifest(), fileSizes: {} });
    expect(r.processes).toEqual([{ pid: 16514, ppid: 4242, argv: ['sleep', '1000000'], comm: 'sleep', state: null, threads: 1, cwd: null, memory: { mappings: [], vmaCount: 0, dumpedBytes: 0 }, files: [], sockets: [] }]);
  });

  it('sizes: pages, metadata and the manifest apart', () => {
    expect(imageSizes({ 'pages-1.img': 8192, 'pages-2.img': 4096, 'core-1.img': 100, 'cedana.json': 10 })).toEqual({ pages: 12288, metadata: 100, shipped: 0, manifest: 10, total: 12398, files: 4 });
    expect(imageSizes({ 'core-1.img': 100, 'shipped/0': 7, 'shipped/1': 3 })).toMatchObject({ metadata: 100, shipped: 10, total: 110 });
  });
});
