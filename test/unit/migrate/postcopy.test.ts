import { execa } from 'execa';
import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freeLoopbackPort, LAZY_PIPE_BYTES, lazyPipesOk, makeTls } from '../../../src/migrate/postcopy.js';

describe('lazyPipesOk', () => {
  it('needs CAP_SYS_RESOURCE (bit 24) or a pipe-max-size of 4 MiB', () => {
    expect(lazyPipesOk('000001ffffffffff', 1048576)).toBe(true); // the capability
    expect(lazyPipesOk('000001fffeffffff', 1048576)).toBe(false); // these VMs' root: without it
    expect(lazyPipesOk('000001fffeffffff', LAZY_PIPE_BYTES)).toBe(true);
    expect(() => lazyPipesOk('', 0)).toThrow(/malformed capability mask/); // never taken for "none"
  });
});

describe('makeTls (with the real openssl)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cedana-tls-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('makes a CA and a server and a client certificate it signed; keys are private', async () => {
    const t = await makeTls(dir);
    for (const c of ['server.pem', 'client.pem']) {
      const v = await execa('openssl', ['verify', '-CAfile', join(dir, 'ca.pem'), join(dir, c)]);
      expect(v.stdout).toContain(': OK');
    }
    for (const k of ['ca.key', 'server.key', 'client.key']) expect(statSync(join(dir, k)).mode & 0o777).toBe(0o600);
    expect(t.serverArgs).toEqual(['--tls', '--tls-no-cn-verify', '--tls-cacert', join(dir, 'ca.pem'), '--tls-cert', join(dir, 'server.pem'), '--tls-key', join(dir, 'server.key')]);
    expect(t.clientFiles).toEqual({ ca: join(dir, 'ca.pem'), cert: join(dir, 'client.pem'), key: join(dir, 'client.key') });
  });
});

describe('freeLoopbackPort', () => {
  it('gives a port that can be listened on', async () => {
    const port = await freeLoopbackPort();
    const srv = createServer();
    await new Promise<void>((resolve, reject) => srv.once('error', reject).listen(port, '127.0.0.1', resolve));
    srv.close();
    expect(port).toBeGreaterThan(0);
  });
});
