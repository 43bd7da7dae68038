import { execFileSync } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { utils } from 'ssh2';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  findKnownKeys,
  hostKeyAlgorithms,
  hostToken,
  judgeHostKey,
  keyType,
  readKnownHosts,
  recordHostKey,
  type KnownKey,
} from '../../../src/transport/known-hosts.js';

/** A real OpenSSH public key: the type and the base64 blob. */
function realKey(type: 'ed25519' | 'ecdsa' = 'ed25519'): { type: string; b64: string; blob: Buffer } {
  const pub = (type === 'ecdsa' ? utils.generateKeyPairSync('ecdsa', { bits: 256 }) : utils.generateKeyPairSync('ed25519')).public;
  const [t, b64] = pub.split(' ');
  return { type: t!, b64: b64!, blob: Buffer.from(b64!, 'base64') };
}

/** An SSH wire-format blob that starts with `type` (enough for keyType and comparisons). */
function fakeBlob(type: string, body = randomBytes(32)): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(type.length);
  return Buffer.concat([len, Buffer.from(type, 'latin1'), body]);
}

/** What `ssh-keygen -H` writes for a host token: |1|base64(salt)|base64(HMAC-SHA1(salt, token)). */
function hashed(token: string, salt = randomBytes(20)): string {
  return `|1|${salt.toString('base64')}|${createHmac('sha1', salt).update(token).digest('base64')}`;
}

const ED = realKey();
const ED2 = realKey();
const EC = realKey('ecdsa');

describe('hostToken', () => {
  it('is the bare host on port 22 and [host]:port elsewhere', () => {
    expect(hostToken('example.com', 22)).toBe('example.com');
    expect(hostToken('10.0.0.1', 2222)).toBe('[10.0.0.1]:2222');
    expect(hostToken('::1', 2222)).toBe('[::1]:2222');
  });
});

describe('findKnownKeys', () => {
  it('finds a plain entry for port 22', () => {
    const text = `example.com ${ED.type} ${ED.b64}\nother.com ${ED2.type} ${ED2.b64}\n`;
    expect(findKnownKeys(text, 'example.com', 22)).toEqual([{ type: ED.type, key: ED.b64, revoked: false }]);
    expect(findKnownKeys(text, 'nothere.com', 22)).toEqual([]);
  });

  it('finds every line of a host (several key types), keeping comments after the key out', () => {
    const text = `h ${ED.type} ${ED.b64} root@h\nh ${EC.type} ${EC.b64}\n`;
    expect(findKnownKeys(text, 'h', 22)).toEqual([
      { type: ED.type, key: ED.b64, revoked: false },
      { type: EC.type, key: EC.b64, revoked: false },
    ]);
  });

  it('matches any name in a comma list', () => {
    const text = `web,10.0.0.7,[10.0.0.7]:2222 ${ED.type} ${ED.b64}\n`;
    expect(findKnownKeys(text, 'web', 22)).toHaveLength(1);
    expect(findKnownKeys(text, '10.0.0.7', 22)).toHaveLength(1);
    expect(findKnownKeys(text, '10.0.0.7', 2222)).toHaveLength(1);
    expect(findKnownKeys(text, '10.0.0.7', 2223)).toEqual([]);
    expect(findKnownKeys(text, 'we', 22)).toEqual([]);
  });

  it('a non-22 port looks only for [host]:port, not the bare host', () => {
    const text = `10.0.0.1 ${ED.type} ${ED.b64}\n[10.0.0.1]:2222 ${ED2.type} ${ED2.b64}\n`;
    expect(findKnownKeys(text, '10.0.0.1', 2222).map((k) => k.key)).toEqual([ED2.b64]);
    expect(findKnownKeys(text, '10.0.0.1', 22).map((k) => k.key)).toEqual([ED.b64]);
  });

  it('an explicit [host]:22 entry is not used for port 22 (OpenSSH writes the bare host)', () => {
    expect(findKnownKeys(`[h]:22 ${ED.type} ${ED.b64}\n`, 'h', 22)).toEqual([]);
  });

  it('matches wildcard patterns', () => {
    const text = `*.example.com ${ED.type} ${ED.b64}\n10.0.0.? ${ED2.type} ${ED2.b64}\n`;
    expect(findKnownKeys(text, 'a.example.com', 22).map((k) => k.key)).toEqual([ED.b64]);
    expect(findKnownKeys(text, '10.0.0.9', 22).map((k) => k.key)).toEqual([ED2.b64]);
    expect(findKnownKeys(text, '10.0.0.19', 22)).toEqual([]);
    expect(findKnownKeys(text, 'example.com', 22)).toEqual([]);
  });

  it('a negated pattern removes a host from a line', () => {
    const text = `*.example.com,!evil.example.com ${ED.type} ${ED.b64}\n`;
    expect(findKnownKeys(text, 'good.example.com', 22)).toHaveLength(1);
    expect(findKnownKeys(text, 'evil.example.com', 22)).toEqual([]);
    // The order of the negation in the list does not matter.
    expect(findKnownKeys(`!evil.example.com,*.example.com ${ED.type} ${ED.b64}\n`, 'evil.example.com', 22)).toEqual([]);
  });

  it('matches host names case-insensitively', () => {
    expect(findKnownKeys(`Example.COM ${ED.type} ${ED.b64}\n`, 'example.com', 22)).toHaveLength(1);
  });

  it('finds hashed entries (|1|salt|hmac) for port 22 and for [host]:port', () => {
    const text = [`${hashed('example.com')} ${ED.type} ${ED.b64}`, `${hashed('[10.0.0.1]:2222')} ${ED2.type} ${ED2.b64}`].join('\n');
    expect(findKnownKeys(text, 'example.com', 22).map((k) => k.key)).toEqual([ED.b64]);
    expect(findKnownKeys(text, '10.0.0.1', 2222).map((k) => k.key)).toEqual([ED2.b64]);
    expect(findKnownKeys(text, '10.0.0.1', 22)).toEqual([]);
    expect(findKnownKeys(text, 'example.org', 22)).toEqual([]);
  });

  it('a hashed entry is exact: not a pattern, not case-folded, not another salt', () => {
    const salt = randomBytes(20);
    const good = hashed('host', salt);
    expect(findKnownKeys(`${good} ${ED.type} ${ED.b64}`, 'host', 22)).toHaveLength(1);
    expect(findKnownKeys(`${good} ${ED.type} ${ED.b64}`, 'HOST', 22)).toEqual([]);
    expect(findKnownKeys(`${hashed('h*')} ${ED.type} ${ED.b64}`, 'host', 22)).toEqual([]);
    const [, , , hmac] = good.split('|');
    expect(findKnownKeys(`|1|${randomBytes(20).toString('base64')}|${hmac} ${ED.type} ${ED.b64}`, 'host', 22)).toEqual([]);
  });

  it('skips malformed hashed entries', () => {
    expect(findKnownKeys(`|1|| ${ED.type} ${ED.b64}\n|1|abc ${ED.type} ${ED.b64}\n`, 'host', 22)).toEqual([]);
  });

  it('reads hashed entries written by the real ssh-keygen -H', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cedana-kh-'));
    try {
      const file = join(dir, 'known_hosts');
      await writeFile(file, `target.example,10.9.8.7 ${ED.type} ${ED.b64}\n[10.9.8.7]:2222 ${ED2.type} ${ED2.b64}\n`);
      execFileSync('ssh-keygen', ['-H', '-f', file], { stdio: 'ignore' });
      const text = await readFile(file, 'utf8');
      // Every name is now hashed: no host name is left in clear.
      expect(text).not.toContain('target.example');
      expect(text).not.toContain('10.9.8.7');
      expect(text.split('\n').filter((l) => l.startsWith('|1|'))).toHaveLength(3);
      expect(findKnownKeys(text, 'target.example', 22).map((k) => k.key)).toEqual([ED.b64]);
      expect(findKnownKeys(text, '10.9.8.7', 22).map((k) => k.key)).toEqual([ED.b64]);
      expect(findKnownKeys(text, '10.9.8.7', 2222).map((k) => k.key)).toEqual([ED2.b64]);
      expect(findKnownKeys(text, 'target.example', 2222)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('marks @revoked entries and skips @cert-authority lines', () => {
    const text = [`@revoked h ${ED.type} ${ED.b64}`, `@cert-authority h ${ED2.type} ${ED2.b64}`, `@cert-authority * ${EC.type} ${EC.b64}`, `h ${EC.type} ${EC.b64}`].join('\n');
    expect(findKnownKeys(text, 'h', 22)).toEqual([
      { type: ED.type, key: ED.b64, revoked: true },
      { type: EC.type, key: EC.b64, revoked: false },
    ]);
  });

  it('@revoked works with a hashed host too', () => {
    expect(findKnownKeys(`@revoked ${hashed('[h]:2200')} ${ED.type} ${ED.b64}`, 'h', 2200)).toEqual([{ type: ED.type, key: ED.b64, revoked: true }]);
  });

  it('skips comments, blank and short lines; tolerates tabs, indentation and CRLF', () => {
    const text = [
      '# h ssh-ed25519 AAAA',
      '   # indented comment',
      '',
      'h',
      `h ${ED.type}`,
      `\th\t${ED.type}\t${ED2.b64}\r`,
      `  h  ${EC.type}   ${EC.b64}  `,
    ].join('\n');
    expect(findKnownKeys(text, 'h', 22)).toEqual([
      { type: ED.type, key: ED2.b64, revoked: false },
      { type: EC.type, key: EC.b64, revoked: false },
    ]);
  });
});

describe('keyType', () => {
  it('reads the type string at the start of a real blob', () => {
    expect(keyType(ED.blob)).toBe('ssh-ed25519');
    expect(keyType(EC.blob)).toBe('ecdsa-sha2-nistp256');
    expect(keyType(fakeBlob('ssh-rsa'))).toBe('ssh-rsa');
  });

  it('is empty for a blob too short to hold a length', () => {
    expect(keyType(Buffer.alloc(0))).toBe('');
    expect(keyType(Buffer.from([0, 0, 1]))).toBe('');
  });
});

describe('judgeHostKey', () => {
  const known = (k: { type: string; b64: string }, revoked = false): KnownKey => ({ type: k.type, key: k.b64, revoked });

  it('match: the presented key is recorded', () => {
    expect(judgeHostKey([known(ED)], ED.blob)).toBe('match');
    expect(judgeHostKey([known(EC), known(ED)], ED.blob)).toBe('match');
  });

  it('unknown: nothing recorded for the host', () => {
    expect(judgeHostKey([], ED.blob)).toBe('unknown');
  });

  it('mismatch: another key of the same type is recorded', () => {
    expect(judgeHostKey([known(ED2)], ED.blob)).toBe('mismatch');
  });

  it('mismatch: one key of the type matches nothing even if another type is recorded too', () => {
    expect(judgeHostKey([known(EC), known(ED2)], ED.blob)).toBe('mismatch');
  });

  it('mismatch: only keys of other types are recorded', () => {
    expect(judgeHostKey([known(EC)], ED.blob)).toBe('mismatch');
  });

  it('mismatch: the presented key is revoked, even if also recorded as valid', () => {
    expect(judgeHostKey([known(ED, true)], ED.blob)).toBe('mismatch');
    expect(judgeHostKey([known(ED), known(ED, true)], ED.blob)).toBe('mismatch');
    expect(judgeHostKey([known(ED, true), known(ED)], ED.blob)).toBe('mismatch');
  });

  it('a revoked entry of another key does not count as a recorded key', () => {
    expect(judgeHostKey([known(ED2, true)], ED.blob)).toBe('unknown');
    expect(judgeHostKey([known(ED2, true), known(ED)], ED.blob)).toBe('match');
  });
});

describe('hostKeyAlgorithms', () => {
  const k = (type: string, revoked = false): KnownKey => ({ type, key: 'x', revoked });

  it('maps ssh-rsa to the SHA-2 signature algorithms first, then ssh-rsa', () => {
    expect(hostKeyAlgorithms([k('ssh-rsa')])).toEqual(['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa']);
  });

  it('keeps other types as they are, in order, without duplicates', () => {
    expect(hostKeyAlgorithms([k('ssh-ed25519'), k('ecdsa-sha2-nistp256'), k('ssh-ed25519'), k('ssh-rsa'), k('ssh-rsa')])).toEqual([
      'ssh-ed25519',
      'ecdsa-sha2-nistp256',
      'rsa-sha2-512',
      'rsa-sha2-256',
      'ssh-rsa',
    ]);
  });

  it('leaves out key types ssh2 cannot verify (it would throw on them)', () => {
    expect(hostKeyAlgorithms([k('sk-ssh-ed25519@openssh.com'), k('ssh-ed448'), k('ecdsa-sha2-nistp384')])).toEqual(['ecdsa-sha2-nistp384']);
    expect(hostKeyAlgorithms([k('sk-ecdsa-sha2-nistp256@openssh.com')])).toEqual([]);
  });

  it('leaves revoked keys out', () => {
    expect(hostKeyAlgorithms([k('ssh-rsa', true), k('ssh-ed25519')])).toEqual(['ssh-ed25519']);
    expect(hostKeyAlgorithms([])).toEqual([]);
  });
});

describe('known_hosts files', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-kh-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('recordHostKey appends "[host]:port type base64" to a new 0600 file in a new 0700 directory', async () => {
    const file = join(dir, 'ssh', 'known_hosts');
    await recordHostKey(file, '127.0.0.1', 2222, ED.blob);
    expect(await readFile(file, 'utf8')).toBe(`[127.0.0.1]:2222 ssh-ed25519 ${ED.b64}\n`);
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'ssh'))).mode & 0o777).toBe(0o700);
  });

  it('recordHostKey appends the bare host for port 22, after what is there', async () => {
    const file = join(dir, 'known_hosts');
    await writeFile(file, `old ${ED2.type} ${ED2.b64}\n`, { mode: 0o600 });
    await recordHostKey(file, 'example.com', 22, EC.blob);
    expect(await readFile(file, 'utf8')).toBe(`old ${ED2.type} ${ED2.b64}\nexample.com ecdsa-sha2-nistp256 ${EC.b64}\n`);
  });

  it('a recorded key is found again and judged a match', async () => {
    const file = join(dir, 'known_hosts');
    await recordHostKey(file, '::1', 2200, ED.blob);
    const found = findKnownKeys(await readKnownHosts([file]), '::1', 2200);
    expect(judgeHostKey(found, ED.blob)).toBe('match');
  });

  it('readKnownHosts joins several files and skips missing ones', async () => {
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    await writeFile(a, `ha ${ED.type} ${ED.b64}`);
    await writeFile(b, `hb ${ED2.type} ${ED2.b64}\n`);
    const text = await readKnownHosts([a, join(dir, 'missing'), b]);
    expect(findKnownKeys(text, 'ha', 22)).toHaveLength(1);
    expect(findKnownKeys(text, 'hb', 22)).toHaveLength(1);
    expect(await readKnownHosts([join(dir, 'missing')])).toBe('');
  });
});
