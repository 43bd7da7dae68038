import { describe, expect, it } from 'vitest';
import { CedanaError } from '../../../src/errors.js';
import {
  fileDigest,
  FORMAT,
  FORMAT_VERSION,
  hashAlgorithmOf,
  isSafeRelativePath,
  MANIFEST_NAME,
  parentDigest,
  parseManifest,
  validateManifest,
} from '../../../src/image/manifest.js';

const SHA = 'a'.repeat(64);
const B3 = 'c'.repeat(64);

/** A valid manifest as plain JSON data; each test changes one field. */
function good(): Record<string, any> {
  return {
    format: FORMAT,
    formatVersion: FORMAT_VERSION,
    createdAt: '2025-01-02T03:04:05.000Z',
    cedanaVersion: '0.1.0',
    criuVersion: '4.2',
    kernel: '6.8.0-45-generic',
    arch: 'x86_64',
    cpuFlags: ['avx2', 'sse4_2'],
    hostname: 'host-a',
    pid: 4242,
    processes: [
      { pid: 4242, ppid: 1, comm: 'python3', argv: ['python3', 'counter.py'] },
      { pid: 4243, ppid: 4242, comm: 'sleep', argv: ['sleep', '100'] },
    ],
    memoryBytes: 1 << 20,
    options: { shellJob: false, tcpEstablished: false, tcpClose: false, fileLocks: false, externalUnix: [], leaveRunning: false, networkLock: 'iptables' },
    tcp: [{ state: 'ESTABLISHED', local: '127.0.0.1:8080', remote: '127.0.0.1:40000' }],
    notes: ['--tcp-established: requested'],
    files: {
      'inventory.img': { size: 40, blake3: B3 },
      'pages-1.img': { size: 4096, blake3: 'b'.repeat(64) },
    },
  };
}

function refusal(m: unknown): CedanaError {
  try {
    validateManifest(m);
  } catch (e) {
    expect(e).toBeInstanceOf(CedanaError);
    return e as CedanaError;
  }
  throw new Error('validateManifest accepted a bad manifest');
}

describe('validateManifest', () => {
  it('accepts a good manifest and returns it', () => {
    const m = good();
    const v = validateManifest(m);
    expect(v).toBe(m);
    expect(v.pid).toBe(4242);
  });

  it('writes format 2, whose checksums are BLAKE3', () => {
    expect(FORMAT_VERSION).toBe(2);
    expect(hashAlgorithmOf(validateManifest(good()))).toBe('blake3');
  });

  it('accepts empty lists and external unix inodes', () => {
    const m = good();
    m.tcp = [];
    m.notes = [];
    m.cpuFlags = [];
    m.options.externalUnix = [1234, 5678];
    expect(() => validateManifest(m)).not.toThrow();
  });

  it('accepts files in subdirectories', () => {
    const m = good();
    m.files['sub/dir/x.img'] = { size: 0, blake3: B3 };
    expect(() => validateManifest(m)).not.toThrow();
  });

  const cases: [string, (m: Record<string, any>) => unknown, RegExp][] = [
    ['not an object: null', () => null, /not a JSON object/],
    ['not an object: array', () => [], /not a JSON object/],
    ['not an object: string', () => 'cedana', /not a JSON object/],
    ['wrong format', (m) => ((m.format = 'tarball'), m), /format is "tarball"/],
    ['missing format', (m) => (delete m.format, m), /format is undefined/],
    ['formatVersion missing', (m) => (delete m.formatVersion, m), /formatVersion missing/],
    ['formatVersion a string', (m) => ((m.formatVersion = '1'), m), /formatVersion missing/],
    ['formatVersion negative', (m) => ((m.formatVersion = -1), m), /formatVersion missing/],
    ['formatVersion fractional', (m) => ((m.formatVersion = 0.5), m), /formatVersion missing/],
    ['createdAt missing', (m) => (delete m.createdAt, m), /createdAt missing or not a string/],
    ['cedanaVersion a number', (m) => ((m.cedanaVersion = 1), m), /cedanaVersion/],
    ['criuVersion missing', (m) => (delete m.criuVersion, m), /criuVersion/],
    ['kernel null', (m) => ((m.kernel = null), m), /kernel/],
    ['arch missing', (m) => (delete m.arch, m), /arch missing/],
    ['hostname an object', (m) => ((m.hostname = {}), m), /hostname/],
    ['cpuFlags not a list', (m) => ((m.cpuFlags = 'avx2 sse4_2'), m), /cpuFlags must be a list of strings/],
    ['cpuFlags with a number', (m) => ((m.cpuFlags = ['avx2', 3]), m), /cpuFlags/],
    ['pid missing', (m) => (delete m.pid, m), /pid missing/],
    ['pid zero', (m) => ((m.pid = 0), m), /pid missing/],
    ['pid negative', (m) => ((m.pid = -4242), m), /pid missing/],
    ['pid a string', (m) => ((m.pid = '4242'), m), /pid missing/],
    ['memoryBytes missing', (m) => (delete m.memoryBytes, m), /memoryBytes missing/],
    ['memoryBytes unsafe integer', (m) => ((m.memoryBytes = 2 ** 60), m), /memoryBytes missing/],
    ['processes not a list', (m) => ((m.processes = {}), m), /processes must be a non-empty list/],
    ['processes empty', (m) => ((m.processes = []), m), /processes must be a non-empty list/],
    ['process entry null', (m) => ((m.processes[1] = null), m), /malformed process entry/],
    ['process entry without comm', (m) => (delete m.processes[1].comm, m), /malformed process entry/],
    ['process argv not strings', (m) => ((m.processes[1].argv = [1]), m), /malformed process entry/],
    ['process ppid negative', (m) => ((m.processes[1].ppid = -1), m), /malformed process entry/],
    ['root pid not among processes', (m) => ((m.pid = 9999), m), /root pid is not among processes/],
    ['options missing', (m) => (delete m.options, m), /options missing/],
    ['options an array', (m) => ((m.options = []), m), /options missing/],
    ['options.shellJob a string', (m) => ((m.options.shellJob = 'false'), m), /options\.shellJob must be true or false/],
    ['options.tcpEstablished missing', (m) => (delete m.options.tcpEstablished, m), /options\.tcpEstablished/],
    ['options.tcpClose a number', (m) => ((m.options.tcpClose = 0), m), /options\.tcpClose/],
    ['options.fileLocks null', (m) => ((m.options.fileLocks = null), m), /options\.fileLocks/],
    ['options.leaveRunning missing', (m) => (delete m.options.leaveRunning, m), /options\.leaveRunning/],
    ['options.externalUnix missing', (m) => (delete m.options.externalUnix, m), /options\.externalUnix must be a list of inodes/],
    ['options.externalUnix with a string', (m) => ((m.options.externalUnix = ['12']), m), /options\.externalUnix/],
    ['options.networkLock missing', (m) => (delete m.options.networkLock, m), /options\.networkLock missing/],
    ['tcp not a list', (m) => ((m.tcp = 'none'), m), /tcp must be a list of sockets/],
    ['tcp entry without remote', (m) => (delete m.tcp[0].remote, m), /tcp must be a list of sockets/],
    ['notes with a number', (m) => ((m.notes = [1]), m), /notes must be a list of strings/],
    ['files missing', (m) => (delete m.files, m), /files must list the image files/],
    ['files empty', (m) => ((m.files = {}), m), /files must list the image files/],
    ['files a list', (m) => ((m.files = [{ size: 1, blake3: B3 }]), m), /files must list the image files/],
    ['file name with ..', (m) => ((m.files['../etc/passwd'] = { size: 1, blake3: B3 }), m), /unsafe file name "..\/etc\/passwd"/],
    ['file name absolute', (m) => ((m.files['/etc/passwd'] = { size: 1, blake3: B3 }), m), /unsafe file name/],
    ['file name is the manifest', (m) => ((m.files[MANIFEST_NAME] = { size: 1, blake3: B3 }), m), /unsafe file name "cedana.json"/],
    ['file entry without size', (m) => ((m.files['inventory.img'] = { blake3: B3 }), m), /bad checksum entry for inventory.img/],
    ['file entry size negative', (m) => ((m.files['inventory.img'].size = -1), m), /bad checksum entry/],
    ['blake3 too short', (m) => ((m.files['inventory.img'].blake3 = 'abc'), m), /bad checksum entry/],
    ['blake3 upper case', (m) => ((m.files['inventory.img'].blake3 = 'A'.repeat(64)), m), /bad checksum entry/],
    ['blake3 not hex', (m) => ((m.files['inventory.img'].blake3 = 'g'.repeat(64)), m), /bad checksum entry/],
    ['format 2 with a sha256 entry', (m) => ((m.files['inventory.img'] = { size: 40, sha256: SHA }), m), /bad checksum entry for inventory\.img: format 2 gives each file its size and blake3 .*, not sha256/],
    ['format 2 with both digests', (m) => ((m.files['inventory.img'].sha256 = SHA), m), /bad checksum entry for inventory\.img: .*not sha256/],
    ['format 1 with BLAKE3 entries', (m) => ((m.formatVersion = 1), m), /bad checksum entry for inventory\.img: format 1 gives each file its size and sha256 .*, not blake3/],
    ['format version 0 (never written)', (m) => ((m.formatVersion = 0), m), /formatVersion 0 was never written by cedana \(1: sha256 checksums, 2: BLAKE3\)/],
    ['a parent named by sha256 in format 2', (m) => ((m.parent = { path: '../p', manifestSha256: SHA, pagesInParent: 1, pagesWritten: 1 }), m), /parent must name the parent image \(path, manifestBlake3, page counts\)/],
    ['a parent without its digest', (m) => ((m.parent = { path: '../p', pagesInParent: 1, pagesWritten: 1 }), m), /manifestBlake3/],
    ['a parent with both digests', (m) => ((m.parent = { path: '../p', manifestBlake3: B3, manifestSha256: SHA, pagesInParent: 1, pagesWritten: 1 }), m), /manifestBlake3/],
    ['file entry not an object', (m) => ((m.files['inventory.img'] = SHA), m), /bad checksum entry/],
    ['inventory.img not listed', (m) => (delete m.files['inventory.img'], m), /inventory\.img is not listed/],
  ];

  it.each(cases)('refuses: %s', (_name, mutate, why) => {
    const e = refusal(mutate(good()));
    expect(e.code).toBe('IMAGE_INVALID');
    expect(e.message).toMatch(/^invalid manifest \(cedana\.json\): /);
    expect(e.message).toMatch(why);
    expect(e.hint).toMatch(/make a new dump/);
    expect(e.exitCode).toBe(9);
  });

  it('accepts a format 1 image (cedana before BLAKE3): sha256 entries, a parent named by sha256', () => {
    const m = good();
    m.formatVersion = 1;
    m.files = { 'inventory.img': { size: 40, sha256: SHA }, 'pages-1.img': { size: 4096, sha256: 'b'.repeat(64) } };
    m.parent = { path: '../ckpt-1', manifestSha256: 'd'.repeat(64), pagesInParent: 3, pagesWritten: 2 };
    const v = validateManifest(m);
    expect(hashAlgorithmOf(v)).toBe('sha256');
    expect(fileDigest(v.files['inventory.img']!)).toEqual({ algorithm: 'sha256', hex: SHA });
    expect(parentDigest(v.parent!)).toEqual({ algorithm: 'sha256', hex: 'd'.repeat(64) });
  });

  it('a format 2 parent is named by the BLAKE3 of its manifest', () => {
    const m = good();
    m.parent = { path: '../ckpt-1', manifestBlake3: 'e'.repeat(64), pagesInParent: 3, pagesWritten: 2 };
    const v = validateManifest(m);
    expect(fileDigest(v.files['pages-1.img']!)).toEqual({ algorithm: 'blake3', hex: 'b'.repeat(64) });
    expect(parentDigest(v.parent!)).toEqual({ algorithm: 'blake3', hex: 'e'.repeat(64) });
  });

  it('a format 1 image with a parent named by BLAKE3 is refused', () => {
    const m = good();
    m.formatVersion = 1;
    m.files = { 'inventory.img': { size: 40, sha256: SHA } };
    m.parent = { path: '../p', manifestBlake3: B3, pagesInParent: 1, pagesWritten: 1 };
    const e = refusal(m);
    expect(e.code).toBe('IMAGE_INVALID');
    expect(e.message).toMatch(/parent must name the parent image \(path, manifestSha256, page counts\)/);
  });

  it('a newer format version is IMAGE_INCOMPATIBLE, not IMAGE_INVALID', () => {
    const m = good();
    m.formatVersion = FORMAT_VERSION + 1;
    const e = refusal(m);
    expect(e.code).toBe('IMAGE_INCOMPATIBLE');
    expect(e.message).toContain(`image format version ${FORMAT_VERSION + 1} is newer`);
    expect(e.hint).toMatch(/upgrade cedana/);
  });

  it('checks the format before the version', () => {
    const m = good();
    m.format = 'other';
    m.formatVersion = 99;
    expect(refusal(m).code).toBe('IMAGE_INVALID');
  });
});

describe('parseManifest', () => {
  it('parses valid JSON text', () => {
    expect(parseManifest(JSON.stringify(good())).arch).toBe('x86_64');
  });

  it('refuses text that is not JSON with IMAGE_INVALID', () => {
    let err: unknown;
    try {
      parseManifest('{"format": "cedana-image",');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(CedanaError);
    expect((err as CedanaError).code).toBe('IMAGE_INVALID');
    expect((err as CedanaError).message).toMatch(/not valid JSON/);
  });
});

describe('isSafeRelativePath', () => {
  it.each(['inventory.img', 'pages-1.img', 'a/b/c.img', 'a.b', '..x', 'x..', '.hidden'])('accepts %s', (p) => {
    expect(isSafeRelativePath(p)).toBe(true);
  });

  it.each([
    '',
    '/etc/passwd',
    '..',
    '.',
    '../evil',
    'a/../../evil',
    'a/../b',
    './a',
    'a/./b',
    'a//b',
    'a/',
    'a/..',
    'a\\..\\b',
    'a\0b',
    'x'.repeat(4097),
  ])('refuses %j', (p) => {
    expect(isSafeRelativePath(p)).toBe(false);
  });

  it('accepts a name of exactly 4096 characters', () => {
    expect(isSafeRelativePath('x'.repeat(4096))).toBe(true);
  });
});

describe('shipped entries', () => {
  const withShipped = (shipped: unknown): Record<string, any> => {
    const m = good();
    m.files['shipped/0'] = { size: 6, blake3: B3 };
    m.shipped = shipped;
    return m;
  };
  const dir = { path: '/tmp/job', kind: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, mtimeMs: 1 };
  const file = { path: '/tmp/job/log', kind: 'file', mode: 0o644, uid: 0, gid: 0, size: 6, mtimeMs: 1, image: 'shipped/0' };

  it('accepts files and directories whose copies are among the image files', () => {
    expect(validateManifest(withShipped([dir, file])).shipped).toHaveLength(2);
    expect(validateManifest(good()).shipped).toBeUndefined();
  });

  it.each([
    ['a relative path', [{ ...file, path: 'tmp/x' }]],
    ['a path with ..', [{ ...file, path: '/tmp/../etc/passwd' }]],
    ['/ itself', [{ ...dir, path: '/' }]],
    ['a newline', [{ ...file, path: '/tmp/a\nb' }]],
    ['a copy that is not an image file', [{ ...file, image: 'shipped/9' }]],
    ['a copy outside shipped/', [{ ...file, image: 'inventory.img', size: 40 }]],
    ['a size that differs from the copy', [{ ...file, size: 7 }]],
    ['an unknown kind', [{ ...file, kind: 'fifo' }]],
    ['a negative mode', [{ ...file, mode: -1 }]],
    ['the same path twice', [file, file]],
    ['not a list', { file }],
  ])('refuses %s with IMAGE_INVALID', (_why, shipped) => {
    try {
      validateManifest(withShipped(shipped));
      expect.unreachable();
    } catch (e) {
      expect((e as CedanaError).code).toBe('IMAGE_INVALID');
    }
  });
});

describe('manifest gpu', () => {
  const gpu = (): Record<string, any> => ({
    driverVersion: '580.65.06',
    memoryUsedMiB: 8,
    devices: [{ uuid: 'GPU-0a1b', name: 'NVIDIA H100 80GB HBM3', memoryTotalMiB: 81559 }],
    processes: [{ pid: 4243, uuids: ['GPU-0a1b'], memoryUsedMiB: 8 }],
  });
  const withGpu = (g: unknown): Record<string, any> => ({ ...good(), gpu: g });

  it('accepts the GPU state of a process of the image', () => {
    expect(validateManifest(withGpu(gpu())).gpu?.processes[0]?.pid).toBe(4243);
  });

  it.each([
    ['a process not in the image', { ...gpu(), processes: [{ pid: 9, uuids: ['GPU-0a1b'], memoryUsedMiB: 8 }] }],
    ['no processes', { ...gpu(), processes: [] }],
    ['a UUID with shell characters', { ...gpu(), devices: [{ uuid: 'GPU-$(reboot)', name: 'x', memoryTotalMiB: 1 }] }],
    ['a missing driver', { ...gpu(), driverVersion: 580 }],
    ['a negative memory', { ...gpu(), memoryUsedMiB: -1 }],
    ['not an object', 'H100'],
  ])('refuses %s with IMAGE_INVALID', (_why, g) => {
    expect(refusal(withGpu(g)).code).toBe('IMAGE_INVALID');
  });
});
