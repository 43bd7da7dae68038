/**
 * The OpenSSH link's pieces, checked against OpenSSH itself: `ssh -G` prints the configuration a
 * command line gives (without connecting), `ssh-keygen -F` finds a host in a known_hosts file.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { opensshError, opensshOptions, pinLine, PIN_ALIAS } from '../../../src/transport/openssh.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cedana-openssh-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function hostKey(name: string): Promise<Buffer> {
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, name)]);
  return Buffer.from((await readFile(join(dir, `${name}.pub`), 'utf8')).split(' ')[1]!, 'base64');
}

describe('the pinned known_hosts', () => {
  it('holds exactly the verified key, under the alias, as OpenSSH reads it', async () => {
    const key = await hostKey('host');
    const pin = join(dir, 'known_hosts');
    await writeFile(pin, pinLine(key));
    const found = execFileSync('ssh-keygen', ['-F', PIN_ALIAS, '-f', pin], { encoding: 'utf8' });
    expect(found).toContain(`ssh-ed25519 ${key.toString('base64')}`);
    // Under the real host name it knows nothing: only the alias is ever checked.
    expect(() => execFileSync('ssh-keygen', ['-F', '10.0.0.1', '-f', pin], { stdio: 'pipe' })).toThrow();
  });
});

describe('opensshOptions', () => {
  it('gives OpenSSH the session\'s address, user and identities, strict checking against the pin only, no prompts, nothing from a config file', async () => {
    const key = await hostKey('host');
    const pin = join(dir, 'known_hosts');
    const ident = join(dir, 'id_test');
    await writeFile(ident, 'x', { mode: 0o600 });
    const args = opensshOptions({ host: '10.231.9.2', port: 2222, user: 'root', identityFiles: [ident], hostKey: key }, pin);
    const g = execFileSync('ssh', ['-G', ...args, '10.231.9.2'], { encoding: 'utf8', env: { ...process.env, HOME: dir } });
    const conf = new Map<string, string[]>();
    for (const line of g.split('\n')) {
      const [k, ...v] = line.split(' ');
      if (k) conf.set(k, [...(conf.get(k) ?? []), v.join(' ')]);
    }
    expect(conf.get('hostname')).toEqual(['10.231.9.2']);
    expect(conf.get('port')).toEqual(['2222']);
    expect(conf.get('user')).toEqual(['root']);
    expect(conf.get('batchmode')).toEqual(['yes']);
    expect(conf.get('stricthostkeychecking')).toEqual(['true']);
    expect(conf.get('hostkeyalias')).toEqual([PIN_ALIAS]);
    expect(conf.get('userknownhostsfile')).toEqual([pin]);
    expect(conf.get('globalknownhostsfile')).toEqual(['/dev/null']);
    expect(conf.get('updatehostkeys')).toEqual(['false']);
    expect(conf.get('forwardagent')).toEqual(['no']);
    expect(conf.get('identityfile')).toContain(ident);
    expect(conf.get('ciphers')![0]!.split(',')[0]).toBe('aes128-gcm@openssh.com');
  });
});

describe('opensshError', () => {
  it('tells a changed host key, an authentication failure, a refused channel and an unreachable host apart', () => {
    expect(opensshError('@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.\n', 'h').code).toBe('HOST_KEY_MISMATCH');
    expect(opensshError('No ED25519 host key is known for cedana-migration-target and you have requested strict checking.\nHost key verification failed.\n', 'h').code).toBe('HOST_KEY_MISMATCH');
    expect(opensshError('root@10.0.0.2: Permission denied (publickey).\n', 'h').code).toBe('SSH_AUTH_FAILED');
    expect(opensshError('channel 0: open failed: connect failed: Connection refused\nstdio forwarding failed\n', 'h').code).toBe('SSH_FAILED');
    expect(opensshError('ssh: connect to host 10.0.0.2 port 22: No route to host\n', 'h').code).toBe('SSH_UNREACHABLE');
  });
});
