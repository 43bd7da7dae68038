/**
 * A TCP client and server in a private network namespace: the established connection survives
 * dump and restore (cedana detects it and picks --tcp-established by itself).
 */
import { execa } from 'execa';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const fields = (p: string): number[] => readText(p)?.trim().split(' ').map(Number) ?? [0, 0, 0];

describe('TCP connections', () => {
  it('keeps an established connection across dump and restore', async () => {
    const { inNs } = await owned.netns('t');

    const dir = await owned.tempDir();
    const state = join(dir, 'state');
    const pid = owned.python('tcppair.py', [state, '7070'], { wrap: inNs });
    // nsenter execs python in place: the PID we started is python's.
    // cedana runs in the namespace too, so CRIU locks and restores the connection there.
    const [, , port] = await waitFor('client to exchange', () => {
      const f = fields(state);
      return f[0]! > 5 ? f : undefined;
    });

    const d = await cedanaOk(['dump', String(pid), '-o', join(dir, 'img')], { wrap: inNs });
    expect(d.processes).toBe(2);
    expect(d.decisions.join('\n')).toMatch(/--tcp-established: \d+ established TCP connection/);
    const at = fields(state)[0]!;
    await waitGone(pid);

    const r = await cedanaOk(['restore', join(dir, 'img')], { wrap: inNs });
    owned.own(r.pid);
    const after = await waitFor('client to go on over the same connection', () => {
      const f = fields(state);
      return f[0]! > at + 10 || f[1]! > 0 ? f : undefined;
    });
    expect(after[1]).toBe(0); // no error, no reconnect: the client never reconnects
    expect(after[2]).toBe(port); // the same client socket
  });

  it('restores a connection whose local address is gone closed, and says so; an explicit --tcp-established is refused', async () => {
    const { ns, inNs } = await owned.netns('u');
    const A = '10.9.9.9';
    await execa('ip', ['-n', ns, 'addr', 'add', `${A}/32`, 'dev', 'lo']);
    const dir = await owned.tempDir();
    const server = owned.python('echoserver.py', ['tcp', '0.0.0.0', '7080'], { wrap: inNs });
    const inside = (...a: string[]) => execa(inNs[0]!, [...inNs.slice(1), ...a], { reject: false });
    await waitFor('listening', async () => (await inside('ss', '-ltnH', 'sport = :7080')).stdout.includes(':7080'));
    const state = join(dir, 'state');
    owned.python('tcpclient.py', [A, '7080', state], { wrap: inNs });
    await waitFor('client exchanging', () => fields(state)[0]! > 5);
    await cedanaOk(['dump', String(server), '-o', join(dir, 'img')], { wrap: inNs });
    await waitGone(server);
    await execa('ip', ['-n', ns, 'addr', 'del', `${A}/32`, 'dev', 'lo']);

    const keep = await cedana(['restore', join(dir, 'img'), '--tcp-established', '--json'], { wrap: inNs });
    expect(keep.exitCode).toBe(17);
    expect(keep.json!.error).toMatchObject({ code: 'TCP_KEEP_IMPOSSIBLE' });
    expect(keep.json!.error.message).toContain(`${A} does not exist here`);
    expect(alive(server)).toBe(false);

    const r = await cedanaOk(['restore', join(dir, 'img')], { wrap: inNs });
    owned.own(r.pid);
    expect(r.decisions.join('\n')).toMatch(new RegExp(`closing 10\\.9\\.9\\.9:7080 ↔ 10\\.9\\.9\\.9:\\d+: ${A.replace(/\./g, '\\.')} does not exist here`));
    // The server runs, dropped the closed connection, and serves a new one.
    const echo = await inside('python3', '-c', 'import socket; s=socket.create_connection(("127.0.0.1", 7080), timeout=5); s.sendall(b"ping"); print(s.recv(4).decode())');
    expect(echo.stdout.trim()).toBe('ping');
    expect((await inside('ss', '-tnH', 'state', 'established', '( sport = :7080 )')).stdout.trim()).toBe('');
  });
});
