/**
 * known_hosts(5) lookup: plain and hashed (|1|salt|hmac) host entries, [host]:port, patterns and
 * negations. @revoked entries make a key a mismatch; @cert-authority lines are ignored. Pure except
 * for the file helpers at the end.
 */
import { createHmac } from 'node:crypto';
import { appendFile, mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { matchPattern } from './ssh-config.js';

export interface KnownKey {
  type: string;
  key: string; // base64 blob
  revoked: boolean;
}

/** The name a host is recorded under: "host" for port 22, "[host]:port" otherwise. */
export function hostToken(host: string, port: number): string {
  return port === 22 ? host : `[${host}]:${port}`;
}

function hostMatches(field: string, token: string): boolean {
  if (field.startsWith('|1|')) {
    const [, , salt, hash] = field.split('|');
    if (!salt || !hash) return false;
    const h = createHmac('sha1', Buffer.from(salt, 'base64')).update(token).digest('base64');
    return h === hash;
  }
  let hit = false;
  for (const p of field.split(',')) {
    if (p.startsWith('!')) {
      if (matchPattern(p.slice(1), token)) return false;
    } else if (matchPattern(p, token)) hit = true;
  }
  return hit;
}

export function findKnownKeys(text: string, host: string, port: number): KnownKey[] {
  const token = hostToken(host, port);
  const out: KnownKey[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    let f = line.split(/\s+/);
    let revoked = false;
    if (f[0]?.startsWith('@')) {
      if (f[0] === '@cert-authority') continue;
      revoked = f[0] === '@revoked';
      f = f.slice(1);
    }
    const [hosts, type, key] = f;
    if (!hosts || !type || !key) continue;
    if (hostMatches(hosts, token)) out.push({ type, key, revoked });
  }
  return out;
}

export type HostKeyVerdict = 'match' | 'mismatch' | 'unknown';

/** Compares the key a server presented (raw SSH blob) with the recorded ones. */
export function judgeHostKey(known: KnownKey[], blob: Buffer): HostKeyVerdict {
  const type = keyType(blob);
  const b64 = blob.toString('base64');
  if (known.some((k) => k.revoked && k.key === b64)) return 'mismatch';
  const live = known.filter((k) => !k.revoked);
  if (live.some((k) => k.key === b64)) return 'match';
  if (live.some((k) => k.type === type)) return 'mismatch';
  // Recorded under other key types only: OpenSSH treats a key of a new type for a known host as a change.
  return live.length > 0 ? 'mismatch' : 'unknown';
}

/** The key type string at the start of an SSH public key blob. */
export function keyType(blob: Buffer): string {
  if (blob.length < 4) return '';
  const n = blob.readUInt32BE(0);
  return blob.subarray(4, 4 + n).toString('latin1');
}

/** The host key algorithms ssh2 can verify (others, e.g. sk-* or ed448, make it throw when asked for). */
const SSH2_HOST_KEY_ALGORITHMS = new Set(['ssh-ed25519', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384', 'ecdsa-sha2-nistp521', 'rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa', 'ssh-dss']);

/** ssh2's serverHostKey algorithm names for the key types already recorded for a host (those ssh2 supports). */
export function hostKeyAlgorithms(known: KnownKey[]): string[] {
  const algs: string[] = [];
  for (const k of known) {
    if (k.revoked) continue;
    if (k.type === 'ssh-rsa') algs.push('rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa');
    else algs.push(k.type);
  }
  return [...new Set(algs)].filter((a) => SSH2_HOST_KEY_ALGORITHMS.has(a));
}

export async function readKnownHosts(files: string[]): Promise<string> {
  const parts: string[] = [];
  for (const f of files) parts.push(await readFile(f, 'utf8').catch(() => ''));
  return parts.join('\n');
}

export async function recordHostKey(file: string, host: string, port: number, blob: Buffer): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await appendFile(file, `${hostToken(host, port)} ${keyType(blob)} ${blob.toString('base64')}\n`, { mode: 0o600 });
}
