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
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';
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
    // S is not on T yet when the preflight looks: --tcp-established says to rely on the hook.
    const r = await cedanaOk(['migrate', String(server), '--to', t.name, '--hook', hook, '--tcp-established'], { env: bed.env });
    expect(r.decisions.join('\n')).toMatch(/--tcp-established: keeping all 1 connection\(s\) as asked \(1 rely on --hook/);
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

describe('a connection whose address stays behind, and a port taken on the target', () => {
  it('refuses a taken port (--map-port moves it) and an impossible --tcp-established before freezing; closes that connection by default', async () => {
    const [t, c] = bed.hosts as [NonNullable<(typeof bed.hosts)[0]>, NonNullable<(typeof bed.hosts)[1]>];
    const [P2, P3] = [7072, 7073];
    // An address of the source only (the first test moved S to T).
    const S2 = '10.231.250.5';
    await ip('addr', 'add', `${S2}/32`, 'dev', 'lo');
    owned.onCleanup(async () => void (await execa('ip', ['addr', 'del', `${S2}/32`, 'dev', 'lo'], { reject: false })));
    await ip('-n', c.netns, 'route', 'add', `${S2}/32`, 'via', c.gateway);
    const server = owned.python('echoserver.py', ['tcp', '0.0.0.0', String(P2)]);
    await waitFor('server listening', async () => (await execa('ss', ['-ltnH', `sport = :${P2}`])).stdout.includes(`:${P2}`));
    const state = join(shared, 'client2');
    const client = owned.python('tcpclient.py', [S2, String(P2), state], { wrap: ['nsenter', `--net=/run/netns/${c.netns}`] });
    await waitFor('client exchanging', () => fields(state)[0]! > 10);
    const blocker = Number((await bed.onHost(t, `nohup python3 -c 'import socket, time; s = socket.socket(); s.bind(("0.0.0.0", ${P2})); s.listen(); time.sleep(300)' >/dev/null 2>&1 & echo $!`)).stdout.trim());
    owned.onCleanup(async () => void (await bed.onHost(t, `kill ${blocker}`)));
    await waitFor('the port taken on T', async () => (await bed.onHost(t, `ss -ltnH 'sport = :${P2}'`)).stdout.includes(`:${P2}`));

    const taken = await cedana(['migrate', String(server), '--to', t.name, '--json'], { env: bed.env });
    expect(taken.exitCode).toBe(36);
    expect(taken.json!.error).toMatchObject({ code: 'TARGET_PORT_IN_USE', sourceResumed: true });
    expect(taken.json!.error.hint).toContain(`--map-port ${P2}:`);

    const keep = await cedana(['migrate', String(server), '--to', t.name, '--map-port', `${P2}:${P3}`, '--tcp-established', '--json'], { env: bed.env });
    expect(keep.exitCode).toBe(17);
    expect(keep.json!.error).toMatchObject({ code: 'TCP_KEEP_IMPOSSIBLE', sourceResumed: true });
    expect(keep.json!.error.message).toContain(`${S2} does not exist on ${t.name}`);
    const n = fields(state)[0]!;
    await waitFor('the client going on, unharmed', () => fields(state)[0]! > n + 10);
    expect(fields(state)[1]).toBe(0);

    const r = await cedanaOk(['migrate', String(server), '--to', t.name, '--map-port', `${P2}:${P3}`], { env: bed.env });
    expect(r.decisions.join('\n')).toMatch(new RegExp(`closing ${S2.replace(/\./g, '\\.')}:${P2} ↔ ${c.address.replace(/\./g, '\\.')}:\\d+: ${S2.replace(/\./g, '\\.')} does not exist on ${t.name}`));
    // The client learns at once that its connection is gone: the source resets it (it may be waiting
    // for an echo, with nothing of its own left to send, so no retransmission of its would do it).
    await waitFor('the client to see its connection end', () => fields(state)[1]! > 0, 20_000);
    await waitGone(client);
    // …and the service, on the target under its new port, serves a new one.
    const fresh = await execa('nsenter', [`--net=/run/netns/${c.netns}`, 'python3', '-c',
      `import socket; s=socket.create_connection(("${link.t}", ${P3}), timeout=5); s.sendall(b"ping"); print(s.recv(4).decode())`]);
    expect(fresh.stdout.trim()).toBe('ping');
    await bed.onHost(t, `kill -9 ${server}`);
  });
});
