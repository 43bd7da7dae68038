/**
 * A TCP client and server in a private network namespace: the established connection survives
 * dump and restore (cedana detects it and picks --tcp-established by itself).
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedanaOk } from '../helpers/cedana.js';
import { Owned, readText, waitFor, waitGone } from '../helpers/processes.js';

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
});
