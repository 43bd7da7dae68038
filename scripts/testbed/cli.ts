/**
 * scripts/testbed up [N] | down | status: extra hosts on this machine to try `cedana migrate` by
 * hand. `up` starts hosts cedana-h1 … cedana-hN (default 1) and adds their entries to ~/.ssh/config
 * and ~/.ssh/known_hosts (marked, so `down` removes exactly those); state lives in /run.
 */
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createHost, createUserKey, destroyHost, forgetHost, type TestHost } from './host.js';

const STATE = '/run/cedana-testbed.json';
const sshDir = join(homedir(), '.ssh');

async function load(): Promise<TestHost[]> {
  return existsSync(STATE) ? (JSON.parse(await readFile(STATE, 'utf8')) as TestHost[]) : [];
}

async function up(n: number): Promise<void> {
  const hosts = await load();
  if (hosts.length > 0) throw new Error(`a test bed is already up (${hosts.map((h) => h.name).join(', ')}): run 'down' first`);
  const ssh = await createUserKey(sshDir);
  try {
    for (let i = 1; i <= n; i++) {
      const h = await createHost(i, ssh);
      hosts.push(h);
      await writeFile(STATE, JSON.stringify(hosts, null, 2));
      process.stdout.write(`${h.name}: ${h.address} (sshd PID ${h.initPid}); try: ssh ${h.name} hostname\n`);
    }
  } catch (e) {
    await down();
    throw e;
  }
}

async function down(): Promise<void> {
  for (const h of await load()) {
    await destroyHost(h);
    await forgetHost(h, sshDir);
    process.stdout.write(`${h.name}: down\n`);
  }
  await rm(STATE, { force: true });
}

async function main(): Promise<void> {
  const [cmd = 'status', arg] = process.argv.slice(2);
  if (cmd === 'up') await up(Number(arg ?? 1));
  else if (cmd === 'down') await down();
  else if (cmd === 'status') for (const h of await load()) process.stdout.write(`${h.name}: ${h.address} (sshd PID ${h.initPid})\n`);
  else throw new Error('usage: scripts/testbed up [N] | down | status');
}

main().catch((e: Error) => {
  process.stderr.write(`testbed: ${e.message}\n`);
  process.exitCode = 1;
});
