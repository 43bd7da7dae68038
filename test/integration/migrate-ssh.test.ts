/**
 * cedana honours what users already have for SSH: a key held only by ssh-agent, a Host alias with
 * ProxyJump through another host. Real OpenSSH servers, a real ssh-agent.
 */
import { execa } from 'execa';
import { readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, count, waitFor } from '../helpers/processes.js';
import { startBed, type Bed } from '../helpers/testbed.js';

const owned = new Owned();
let bed: Bed;
let shared: string;

beforeAll(async () => {
  bed = await startBed([17, 18]);
  shared = await mkdtemp('/var/lib/cedana-test-');
});
afterAll(async () => {
  await bed?.destroy();
  await rm(shared, { recursive: true, force: true });
});
afterEach(() => owned.cleanup());

const counter = async () => owned.counter(await mkdtemp(join(shared, 'c-')));

describe('SSH as the user has it', () => {
  it('authenticates with a key that only ssh-agent holds', async () => {
    const [h] = bed.hosts;
    const config = join(bed.ssh.sshDir, 'config');
    const original = readFileSync(config, 'utf8');
    const sock = join(bed.home, 'agent.sock');
    const agent = await execa('ssh-agent', ['-a', sock, '-s']);
    const agentPid = Number(/SSH_AGENT_PID=(\d+)/.exec(agent.stdout)![1]);
    owned.own(agentPid);
    await execa('ssh-add', [bed.ssh.identity], { env: { SSH_AUTH_SOCK: sock } });
    // No IdentityFile, and the key file moved away: only the agent can authenticate.
    writeFileSync(config, original.replace(/^\s*IdentityFile .*$/gm, ''));
    await execa('mv', [bed.ssh.identity, `${bed.ssh.identity}.away`]);
    try {
      const { state, pid } = await counter();
      const denied = await cedana(['migrate', String(pid), '--to', h!.name, '--json'], { env: { ...bed.env, SSH_AUTH_SOCK: '' } });
      expect(denied.json!.error.code).toBe('SSH_AUTH_FAILED');
      expect(denied.exitCode).toBe(21);
      const r = await cedanaOk(['migrate', String(pid), '--to', h!.name], { env: { ...bed.env, SSH_AUTH_SOCK: sock } });
      expect(r.targetPid).toBe(pid);
      const at = count(state);
      await waitFor('counting on the target', () => count(state) > at + 10);
      await bed.onHost(h!, `kill -9 ${pid}`);
    } finally {
      await execa('mv', [`${bed.ssh.identity}.away`, bed.ssh.identity]);
      writeFileSync(config, original);
    }
  });

  it('reaches the target through ProxyJump', async () => {
    const [jump, target] = bed.hosts;
    const config = join(bed.ssh.sshDir, 'config');
    const original = readFileSync(config, 'utf8');
    // Hosts of the test bed do not route to each other: a link between these two lets the jump
    // host reach the target's sshd address (only the jump host can).
    const [vj, vt] = [`cdnj${process.pid % 10000}`, `cdnk${process.pid % 10000}`];
    await execa('ip', ['link', 'add', vj, 'netns', jump!.netns, 'type', 'veth', 'peer', 'name', vt, 'netns', target!.netns]);
    await execa('ip', ['-n', jump!.netns, 'addr', 'add', '10.231.252.1/30', 'dev', vj]);
    await execa('ip', ['-n', target!.netns, 'addr', 'add', '10.231.252.2/30', 'dev', vt]);
    await execa('ip', ['-n', jump!.netns, 'link', 'set', vj, 'up']);
    await execa('ip', ['-n', target!.netns, 'link', 'set', vt, 'up']);
    await execa('ip', ['-n', jump!.netns, 'route', 'add', `${target!.address}/32`, 'via', '10.231.252.2']);
    // The alias resolves to the target, reached through the jump host's sshd (direct-tcpip).
    writeFileSync(config, `${original}\nHost via-jump\n  HostName ${target!.address}\n  User root\n  IdentityFile ${bed.ssh.identity}\n  ProxyJump ${jump!.name}\n`);
    try {
      const { state, pid } = await counter();
      const r = await cedanaOk(['migrate', String(pid), '--to', 'via-jump'], { env: bed.env });
      expect(r).toMatchObject({ target: 'via-jump', targetPid: pid });
      expect((await bed.onHost(target!, `cat /proc/${pid}/comm`)).stdout.trim()).toBe('python3');
      // The jump host saw a forwarding session from cedana.
      expect(readFileSync(join(jump!.stateDir, 'sshd.log'), 'utf8')).toMatch(/Accepted publickey for root/);
      const at = count(state);
      await waitFor('counting on the target', () => count(state) > at + 10);
      await bed.onHost(target!, `kill -9 ${pid}`);
    } finally {
      writeFileSync(config, original);
    }
  });
});
