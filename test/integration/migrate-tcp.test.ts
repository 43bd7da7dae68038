/**
 * A TCP service with a connected client, migrated with its address. The service listens on a
 * floating address S; the client lives on a third host C. A --hook moves S from the source to the
 * target while the source is frozen (as a cloud's floating IP would move), and the established
 * connection carries on, unbroken, with the target.
 *
 *   C (client, netns) ──veth── main namespace (source, S on lo)
 *   C ──────────────────veth── T (target, netns)
 */
import { execa } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';

const owned = new Owned();
let bed: Bed;
let shared: string;
const S = '10.231.250.1';
const PORT = 7071;
const link = { c: '10.231.251.1', t: '10.231.251.2' };

const ip = (...a: string[]) => execa('ip', a);

beforeAll(async () => {
  bed = await startBed([15, 16]);
  shared = await mkdtemp('/var/lib/cedana-test-');
  const [t, c] = bed.hosts as [typeof bed.hosts[0] & object, typeof bed.hosts[0] & object];
  const [vc, vt] = [`cdnc${process.pid % 10000}`, `cdnt${process.pid % 10000}`];
  await ip('link', 'add', vc, 'netns', c.netns, 'type', 'veth', 'peer', 'name', vt, 'netns', t.netns);
  await ip('-n', c.netns, 'addr', 'add', `${link.c}/30`, 'dev', vc);
  await ip('-n', t.netns, 'addr', 'add', `${link.t}/30`, 'dev', vt);
  await ip('-n', c.netns, 'link', 'set', vc, 'up');
  await ip('-n', t.netns, 'link', 'set', vt, 'up');
  // S starts on the source (this namespace); C reaches it through its gateway, the source.
  await ip('addr', 'add', `${S}/32`, 'dev', 'lo');
  await ip('-n', c.netns, 'route', 'add', `${S}/32`, 'via', c.gateway);
});

afterAll(async () => {
  await execa('ip', ['addr', 'del', `${S}/32`, 'dev', 'lo'], { reject: false });
  await bed?.destroy(); // removes both namespaces and the veth between them
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const fields = (p: string): number[] => readText(p)?.trim().split(' ').map(Number) ?? [0, 0, 0];

describe('migrating a TCP service with a connected client', () => {
  it('moves the listening and the established socket; the client carries on over the same connection', async () => {
    const [t, c] = bed.hosts as [NonNullable<(typeof bed.hosts)[0]>, NonNullable<(typeof bed.hosts)[1]>];
    const server = owned.python('echoserver.py', ['tcp', S, String(PORT)]);
    await waitFor('server listening', async () => (await execa('ss', ['-ltnH', `src ${S}:${PORT}`])).stdout.includes(`${S}:${PORT}`));
    const state = join(shared, 'client');
    const client = owned.python('tcpclient.py', [S, String(PORT), state], { wrap: ['nsenter', `--net=/run/netns/${c.netns}`] });
    const [, , clientPort] = await waitFor('client exchanging', () => {
      const f = fields(state);
      return f[0]! > 10 ? f : undefined;
    });

    // What a floating-address fabric would do, in cedana's hook: S moves to T, C's route follows.
    const hook = [
      'set -e',
      'case "$CEDANA_HOOK" in',
      'pre-restore)', // the address moves before the target restores (CRIU binds the sockets to it)
      `  ip addr del ${S}/32 dev lo`,
      `  ip -n ${t.netns} addr add ${S}/32 dev lo`,
      `  ip -n ${t.netns} route add ${c.address}/32 via ${link.c} ;;`,
      'post-restore)', // traffic switches once the sockets are there (earlier, T would answer with RST)
      `  ip -n ${c.netns} route replace ${S}/32 via ${link.t} ;;`,
      'rollback)',
      `  ip -n ${c.netns} route replace ${S}/32 via ${c.gateway}`,
      `  ip -n ${t.netns} route del ${c.address}/32 || true`,
      `  ip -n ${t.netns} addr del ${S}/32 dev lo || true`,
      `  ip addr add ${S}/32 dev lo || true ;;`,
      'esac',
    ].join('\n');
    const r = await cedanaOk(['migrate', String(server), '--to', t.name, '--hook', hook], { env: bed.env });
    expect(r.decisions.join('\n')).toMatch(/--tcp-established: 1 established TCP connection/);
    expect(alive(server)).toBe(false);

    const at = fields(state)[0]!;
    const after = await waitFor('the client to go on with the target', () => {
      const f = fields(state);
      return f[0]! > at + 25 || f[1]! > 0 ? f : undefined;
    });
    expect(after[1]).toBe(0); // no error: the connection never broke
    expect(after[2]).toBe(clientPort); // and it is the same connection
    expect(alive(client)).toBe(true);
    // The listening socket moved too: a new client on C is served by the target.
    const fresh = await execa('nsenter', [`--net=/run/netns/${c.netns}`, 'python3', '-c',
      `import socket; s=socket.create_connection(("${S}", ${PORT}), timeout=5); s.sendall(b"ping"); print(s.recv(4).decode())`]);
    expect(fresh.stdout.trim()).toBe('ping');
    expect((await bed.onHost(t, `cat /proc/${server}/comm`)).stdout.trim()).toBe('python3');
    // CRIU's lock on the moved connection is lifted on the source.
    expect((await execa('iptables', ['-S'])).stdout).not.toContain(`--dport ${PORT}`);
  });
});
