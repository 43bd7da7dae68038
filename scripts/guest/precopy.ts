/**
 * Runs inside the test guest (scripts/guest/run scripts/guest/precopy-run.sh), whose kernel tracks
 * dirty pages: a test-bed host, a process holding random memory and touching some of it all along,
 * and `cedana migrate` with no mode given — which must pick pre-copy there; then another such
 * process moved with `--precopy-by content` (cedana's rounds by page contents, as on kernels without
 * soft-dirty) on the same kernel. Prints one line, GUEST-RESULT {json}, with cedana's results and
 * what the processes reported on the target.
 */
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { createHost, createUserKey, destroyHost } from '../testbed/host.js';

const root = fileURLToPath(new URL('../../..', import.meta.url));
const read = (p: string): string | undefined => (existsSync(p) ? readFileSync(p, 'utf8').trim() : undefined);

async function waitFor<T>(what: string, f: () => T | undefined, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

const home = mkdtempSync('/root/cedana-guest-home-');
const ssh = await createUserKey(join(home, '.ssh'));
const t0 = Date.now();
const host = await createHost(30, ssh);
const bedMs = Date.now() - t0;
const mib = Number(process.env.CEDANA_GUEST_MIB ?? 48);
const sshArgs = ['-F', join(ssh.sshDir, 'config'), '-o', `UserKnownHostsFile=${join(ssh.sshDir, 'known_hosts')}`, host.name];

/** A memhog migrated with `extra` arguments: cedana's result and what the process reported there. */
async function moveOne(extra: string[]): Promise<Record<string, unknown>> {
  const dir = mkdtempSync('/var/lib/cedana-guest-test-');
  const proc = spawn('python3', [join(root, 'test/fixtures/memhog.py'), String(mib), dir], { detached: true, stdio: 'ignore' });
  const pid = proc.pid!;
  const result: Record<string, unknown> = { pid, mib };
  try {
    result.sha0 = await waitFor('memory filled', () => read(join(dir, 'sha0')));
    const m0 = Date.now();
    // Everything in the guest is emulated: its frozen step took 46–57 s on an idle host, more on a
    // busy one, against a default deadline of ~62 s for this size. The test is of pre-copy, not of
    // the emulator's speed: the deadline is set far above it (the migrate's own timeout is 10 min).
    const r = await execa('node', [join(root, 'bin/cedana'), 'migrate', String(pid), '--to', host.name, '--freeze-timeout', '8m', ...extra, '--json'], { env: { HOME: home }, reject: false, timeout: 600_000 });
    result.exitCode = r.exitCode;
    result.migrateMs = Date.now() - m0;
    result.cedana = JSON.parse(String(r.stdout).trim().split('\n').pop() || '{}');
    result.events = String(r.stderr).split('\n').filter((l) => l.includes('pre-copy round'));
    result.sourceAlive = existsSync(`/proc/${pid}`);
    if (r.exitCode === 0) {
      await execa('ssh', [...sshArgs, `kill -USR1 ${pid}`]);
      result.shaOnTarget = await waitFor('the checksum on the target', () => read(join(dir, 'sha-1')));
      await execa('ssh', [...sshArgs, `kill -9 ${pid}; while [ -e /proc/${pid} ]; do sleep 0.1; done`], { reject: false });
    }
  } catch (e) {
    result.error = String((e as Error).message);
  } finally {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // moved away
    }
  }
  return result;
}

let result: Record<string, unknown> = { bedMs };
try {
  result.kernel = (await execa('uname', ['-r'])).stdout;
  result = { ...result, ...(await moveOne([])) };
  result.byContent = await moveOne(['--precopy-by', 'content', '--max-rounds', '3']);
} catch (e) {
  result.error = String((e as Error).message);
} finally {
  await destroyHost(host);
}
process.stdout.write(`GUEST-RESULT ${JSON.stringify(result)}\n`);
