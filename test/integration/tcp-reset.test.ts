/**
 * A connection whose socket went with a dumped tree (CRIU's repair mode: no FIN, no reset) leaves
 * an idle peer waiting in recv() for ever, even once CRIU's network lock is lifted: it has nothing
 * to send, so nothing of it reaches this host to be answered. resetPeers ends it at once (a SYN from
 * the same address and port, the peer's challenge ACK, this host's reset).
 */
import { execa } from 'execa';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { releaseSourceLocks, resetPeers } from '../../src/migrate/netlock.js';
import { Owned, readText, waitFor, waitGone } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const PORT = 7791;

describe('resetPeers', () => {
  it('ends an idle peer of a connection dumped away, which lifting the lock alone does not', async () => {
    const dir = await owned.tempDir();
    writeFileSync(join(dir, 'srv.py'), `import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", ${PORT})); s.listen()
c, _ = s.accept()
while True: time.sleep(1)
`);
    writeFileSync(join(dir, 'cli.py'), `import socket, time
c = socket.create_connection(("127.0.0.1", ${PORT}))
open("${dir}/port", "w").write(str(c.getsockname()[1]))
try:
    r = "eof" if not c.recv(10) else "data"
except OSError as e:
    r = "error %d" % e.errno
open("${dir}/result", "w").write(r)
time.sleep(600)
`);
    const server = owned.start('python3', [join(dir, 'srv.py')]);
    await waitFor('listening', async () => (await execa('ss', ['-ltnH', `sport = :${PORT}`])).stdout.includes(`:${PORT}`));
    owned.start('python3', [join(dir, 'cli.py')]);
    const port = await waitFor('connected', () => readText(join(dir, 'port')));
    const r = await execa('criu', ['dump', '-t', String(server), '-D', dir, '-o', 'dump.log', '--tcp-established', '--shell-job'], { reject: false });
    expect(r.exitCode, readText(join(dir, 'dump.log'))?.split('\n').slice(-5).join('\n')).toBe(0);
    await waitGone(server);
    const conns = [{ local: `127.0.0.1:${PORT}`, remote: `127.0.0.1:${port}` }];
    expect(await releaseSourceLocks(conns)).toBeGreaterThan(0);
    await new Promise((res) => setTimeout(res, 1500));
    expect(readText(join(dir, 'result')), 'the peer still waits, the lock lifted').toBeUndefined();
    expect(await resetPeers(conns)).toBe(1);
    expect(await waitFor('the peer reset', () => readText(join(dir, 'result')), 5000)).toBe('error 104'); // ECONNRESET
  });
});
