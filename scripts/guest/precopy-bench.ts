/**
 * Runs inside the test guest for `npm run bench` (phase precopy): the same process — N MiB of random
 * memory, rewriting P% of its pages every second — migrated to a test-bed host by stop-and-copy
 * (--no-precopy), by pre-copy with the kernel's soft-dirty tracking (CRIU's rounds) and by pre-copy
 * comparing page contents (--precopy-by content, what runs where there is no soft-dirty), alternated,
 * so that the ratios of their downtimes come from one run in one environment. Everything in the guest is emulated (qemu TCG): absolute times are much
 * longer than on a real machine, the ratio is what this measures. Reads cedana.mib, cedana.dirty and
 * cedana.reps from the kernel command line; prints GUEST-RESULT {json}.
 */
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { createHost, createUserKey, destroyHost } from '../testbed/host.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const cmdline = readFileSync('/proc/cmdline', 'utf8');
const param = (name: string, fallback: number): number => Number(new RegExp(`cedana\\.${name}=(\\d+(?:\\.\\d+)?)`).exec(cmdline)?.[1] ?? fallback);
const mib = param('mib', 256);
const dirty = param('dirty', 1);
const reps = param('reps', 1);

const FIXTURE = `
import os, random, sys, time
size = int(sys.argv[1]) << 20
buf = bytearray(size)
for off in range(0, size, 1 << 20):
    buf[off:off + (1 << 20)] = os.urandom(1 << 20)
pages = size >> 12
per_second = max(1, int(pages * float(sys.argv[2]) / 100))
ready = sys.argv[3]
open(ready, 'w').close()
while True:
    t = time.time()
    for _ in range(per_second):
        off = random.randrange(pages) << 12
        buf[off:off + 4096] = os.urandom(4096)
    time.sleep(max(0, 1 - (time.time() - t)))
`;

const home = mkdtempSync('/root/cedana-guest-home-');
const ssh = await createUserKey(join(home, '.ssh'));
const host = await createHost(31, ssh);
const sshArgs = ['-F', join(ssh.sshDir, 'config'), '-o', `UserKnownHostsFile=${join(ssh.sshDir, 'known_hosts')}`, host.name];
const runs: Record<string, unknown>[] = [];
try {
  for (let i = 0; i < reps; i++) {
    for (const mode of ['--no-precopy', '--precopy', '--precopy-by=content']) {
      const dir = mkdtempSync('/var/lib/cedana-guest-bench-');
      const ready = join(dir, 'ready');
      const proc = spawn('python3', ['-c', FIXTURE, String(mib), String(dirty), ready], { detached: true, stdio: 'ignore' });
      const pid = proc.pid!;
      while (!existsSync(ready)) await sleep(200);
      await sleep(3000); // let it rewrite for a while, as a running service does
      const r = await execa('node', [join(root, 'bin/cedana'), 'migrate', String(pid), '--to', host.name, mode, '--freeze-timeout', '15m', '--json'], { env: { HOME: home }, reject: false, timeout: 1_200_000 });
      const out = JSON.parse(String(r.stdout).trim().split('\n').pop() || '{}') as Record<string, any>;
      runs.push({ mode: mode === '--precopy' ? 'precopy' : mode === '--no-precopy' ? 'stop-and-copy' : 'content', exitCode: r.exitCode, downtimeMs: out.downtimeMs, durationMs: out.durationMs, bytesSent: out.bytesSent, precopy: out.precopy, error: out.error });
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // moved away
      }
      await execa('ssh', [...sshArgs, `kill -9 ${pid} 2>/dev/null; while [ -e /proc/${pid} ]; do sleep 0.1; done`], { reject: false });
    }
  }
} finally {
  await destroyHost(host);
}
process.stdout.write(`GUEST-RESULT ${JSON.stringify({ mib, dirty, reps, kernel: (await execa('uname', ['-r'])).stdout, runs })}\n`);
