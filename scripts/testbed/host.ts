/**
 * A second "host" on this machine, for tests, the demo and the benchmarks: its own network namespace
 * (a veth pair to the main namespace, addresses in 10.231.<n>.0/24), PID, mount and UTS namespaces,
 * private /tmp, /var/tmp, /run and terminals (a devpts instance), its own cgroup in every hierarchy (so that what runs there — a
 * container runc makes — gets cgroups of its own, as on another machine), and a real OpenSSH server
 * with generated keys. Only the
 * addresses of these namespaces are ever contacted. Everything is torn down by PID and name.
 *
 * PIDs: a migration restores a tree with the PIDs it has here, inside the host's own PID namespace,
 * where they must be free. The host's own processes (sshd, its sessions, their shells) therefore
 * take numbers no process here can have — see planHostPids.
 */
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { appendFile, chmod, mkdir, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export interface TestHost {
  index: number;
  name: string;
  /** The address of the host's sshd, inside its network namespace. */
  address: string;
  /** The main namespace's side of the veth pair. */
  gateway: string;
  netns: string;
  /** PID (in the main PID namespace) of the host's init: its sshd. */
  initPid: number;
  /** PID of the `unshare` that holds the PID namespace. */
  unsharePid: number;
  stateDir: string;
  hostKeyLine: string;
  /**
   * The lowest PID the host's own processes take in its PID namespace (its init is 1), set when
   * the host boots; absent where no range apart from this machine's PIDs was found (see planHostPids).
   */
  pidStart?: number;
}

export interface SshSetup {
  /** Directory playing the user's ~/.ssh: config, known_hosts, the identity. */
  sshDir: string;
  identity: string;
}

const STATE_ROOT = '/var/lib/cedana-testbed';

const sh = async (cmd: string, args: string[]): Promise<string> => (await execa(cmd, args)).stdout;

export async function createUserKey(sshDir: string): Promise<SshSetup> {
  await mkdir(sshDir, { recursive: true, mode: 0o700 });
  const identity = join(sshDir, 'id_ed25519');
  if (!existsSync(identity)) await sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'cedana-testbed', '-f', identity]);
  return { sshDir, identity };
}

/** Brings up host number `index` (1–200); `ssh` gets config and known_hosts entries for it. */
export async function createHost(index: number, ssh: SshSetup, opts: { writeKnownHosts?: boolean } = {}): Promise<TestHost> {
  if (!Number.isInteger(index) || index < 1 || index > 200) throw new Error(`test host index out of range: ${index}`);
  const name = `cedana-h${index}`;
  const netns = `${name}-${process.pid}`;
  const address = `10.231.${index}.2`;
  const gateway = `10.231.${index}.1`;
  const stateDir = join(STATE_ROOT, netns);
  const vethOut = `cdn${index}x${process.pid % 10000}`;
  const vethIn = `cdn${index}y${process.pid % 10000}`;
  let unsharePid = 0;
  try {
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    await sh('ip', ['netns', 'add', netns]);
    await sh('ip', ['link', 'add', vethOut, 'type', 'veth', 'peer', 'name', vethIn]);
    await sh('ip', ['link', 'set', vethIn, 'netns', netns]);
    await sh('ip', ['addr', 'add', `${gateway}/24`, 'dev', vethOut]);
    await sh('ip', ['link', 'set', vethOut, 'up']);
    await sh('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
    await sh('ip', ['-n', netns, 'link', 'set', vethIn, 'name', 'eth0']);
    await sh('ip', ['-n', netns, 'addr', 'add', `${address}/24`, 'dev', 'eth0']);
    await sh('ip', ['-n', netns, 'link', 'set', 'eth0', 'up']);

    const hostKey = join(stateDir, 'ssh_host_ed25519_key');
    await sh('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', name, '-f', hostKey]);
    await writeFile(join(stateDir, 'authorized_keys'), await readFile(`${ssh.identity}.pub`), { mode: 0o600 });
    await writeFile(join(stateDir, 'sshd_config'), sshdConfig(address, stateDir), { mode: 0o600 });
    const pids = await hostPidPlan();
    if (pids.warning) warnOnce(pids.warning);
    const boot = [
      // First, before anything forks: the numbers this host's processes take (see planHostPids).
      ...(pids.start !== undefined ? [`{ echo ${pids.start - 1} > /proc/sys/kernel/ns_last_pid || true; }`] : []),
      `hostname ${name}`,
      'mount -t tmpfs -o mode=1777,size=4g tmpfs /tmp',
      'mount -t tmpfs -o mode=1777,size=4g tmpfs /var/tmp',
      'mount -t tmpfs -o mode=755 tmpfs /run',
      // Terminals of its own, as another machine has: a devpts instance whose indexes start at 0.
      'mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts',
      'mount --bind /dev/pts/ptmx /dev/ptmx',
      'mkdir -p /run/sshd',
      `exec /usr/sbin/sshd -D -f ${stateDir}/sshd_config -E ${stateDir}/sshd.log`,
    ].join(' && ');
    const child = spawn('nsenter', [`--net=/run/netns/${netns}`, 'unshare', '--pid', '--fork', '--mount', '--mount-proc', '--uts', '--propagation', 'private', 'sh', '-c', boot], {
      detached: true,
      stdio: 'ignore',
    });
    child.unref();
    // nsenter execs unshare in place: this PID is unshare's; its one child is the host's init (sshd).
    unsharePid = child.pid!;
    const initPid = await waitForChild(unsharePid);
    // Before sshd forks anything: what it starts inherits the host's own cgroups.
    await joinOwnCgroups(netns, initPid);
    await waitForPort(address, 22, 10_000, stateDir);
    const pidStart = pids.start !== undefined ? await checkPidStart(initPid, pids.start) : undefined;
    const hostKeyLine = `${address} ${(await readFile(`${hostKey}.pub`, 'utf8')).trim().split(' ').slice(0, 2).join(' ')}`;
    await appendFile(
      join(ssh.sshDir, 'config'),
      `\n# ${marker(netns)} begin\nHost ${name}\n  HostName ${address}\n  User root\n  IdentityFile ${ssh.identity}\n# ${marker(netns)} end\n`,
      { mode: 0o600 },
    );
    if (opts.writeKnownHosts !== false) await appendFile(join(ssh.sshDir, 'known_hosts'), `${hostKeyLine} ${marker(netns)}\n`, { mode: 0o600 });
    await chmod(join(ssh.sshDir, 'config'), 0o600);
    return { index, name, address, gateway, netns, initPid, unsharePid, stateDir, hostKeyLine, ...(pidStart !== undefined ? { pidStart } : {}) };
  } catch (e) {
    await destroyHost({ netns, unsharePid, initPid: 0, stateDir, vethOut });
    throw e;
  }
}

const marker = (netns: string): string => `cedana-testbed:${netns}`;

/** Room a test host's own processes get before their numbers would wrap around. */
export const HOST_PID_ROOM = 100_000;
/** Where a host's range can only lie above this machine's PIDs: how far above the highest in use. */
export const HOST_PID_MARGIN = 1_000_000;

export interface PidPlan {
  /** The first PID of the host's own processes (the boot writes start - 1 to ns_last_pid); absent: from 1, as the kernel counts. */
  start?: number;
  /** 'disjoint': no PID here can ever reach the range; 'above': far above every PID here; 'none': no range found. */
  mode: 'disjoint' | 'above' | 'none';
  warning?: string;
}

/**
 * Where a test host's own processes number theirs, given this PID namespace's pid_max (`here`), the
 * pid_max a new PID namespace gets (`nested`) and the highest PID in use here or last handed out
 * (`highest`). Pure.
 *
 * Since Linux 6.14 pid_max is per PID namespace and a new one gets the kernel's limit (4194304):
 * numbers from `here` upwards are then the host's alone — no process here can have them, ever.
 * Before that pid_max is one for all: the host's range is put at the top, HOST_PID_ROOM wide, and
 * used only while it lies at least HOST_PID_MARGIN above every PID here (this machine would have to
 * start that many processes for its counter to reach it). Otherwise the host counts from 1 as
 * before, and a migration to it may meet a PID in use there: scripts/setup raises kernel.pid_max.
 */
export function planHostPids(here: number, nested: number, highest: number): PidPlan {
  if (nested - here >= HOST_PID_ROOM) return { start: here, mode: 'disjoint' };
  const start = nested - HOST_PID_ROOM;
  if (start - highest >= HOST_PID_MARGIN) return { start, mode: 'above' };
  return {
    mode: 'none',
    warning:
      `test bed: kernel.pid_max is ${here} and PIDs up to ${highest} are in use, so a test host's processes cannot be given ` +
      `numbers apart from this machine's: a process migrated to it may find its PID taken there (the restore then fails). ` +
      `scripts/setup raises kernel.pid_max; or: sysctl -w kernel.pid_max=${SETUP_PID_MAX}`,
  };
}

/** What scripts/setup sets kernel.pid_max to (where it is lower). */
export const SETUP_PID_MAX = 2_097_152;

let nestedPidMax: Promise<number> | undefined;

/** planHostPids for this machine now. */
async function hostPidPlan(): Promise<PidPlan> {
  const read = (p: string): number => Number(readFileSync(p, 'utf8').trim());
  const here = read('/proc/sys/kernel/pid_max');
  // pid_max as a new PID namespace sees it (the sysctl reads the caller's namespace's value).
  nestedPidMax ??= sh('unshare', ['--pid', '--fork', 'cat', '/proc/sys/kernel/pid_max']).then(Number, () => here);
  let highest = read('/proc/sys/kernel/ns_last_pid');
  for (const e of await readdir('/proc')) if (/^\d+$/.test(e)) highest = Math.max(highest, Number(e));
  return planHostPids(here, await nestedPidMax, highest);
}

/** Whether the host's processes got the planned numbers: a process started there now must have one. */
async function checkPidStart(initPid: number, start: number): Promise<number | undefined> {
  const r = await execa('nsenter', ['--target', String(initPid), '--pid', 'sh', '-c', 'echo $$'], { reject: false });
  const got = Number(String(r.stdout).trim());
  if (r.exitCode === 0 && got >= start) return start;
  warnOnce(`test bed: a test host's processes were to take PIDs from ${start} up, but one got ${r.exitCode === 0 ? got : `none (${String(r.stderr).trim()})`}: a process migrated to it may find its PID taken there`);
  return undefined;
}

const warned = new Set<string>();
function warnOnce(text: string): void {
  if (warned.has(text)) return;
  warned.add(text);
  process.stderr.write(`${text}\n`);
}

/** Removes what createHost added to ~/.ssh/config and known_hosts for this host. */
export async function forgetHost(h: { netns: string }, sshDir: string): Promise<void> {
  const m = marker(h.netns);
  const config = await readFile(join(sshDir, 'config'), 'utf8').catch(() => undefined);
  if (config !== undefined) {
    const re = new RegExp(`\\n?# ${m} begin\\n[\\s\\S]*?# ${m} end\\n`, 'g');
    await writeFile(join(sshDir, 'config'), config.replace(re, ''), { mode: 0o600 });
  }
  const known = await readFile(join(sshDir, 'known_hosts'), 'utf8').catch(() => undefined);
  if (known !== undefined) {
    await writeFile(join(sshDir, 'known_hosts'), known.split('\n').filter((l) => !l.endsWith(` ${m}`)).join('\n'), { mode: 0o600 });
  }
}

function sshdConfig(address: string, dir: string): string {
  return [
    `ListenAddress ${address}`,
    'Port 22',
    `HostKey ${dir}/ssh_host_ed25519_key`,
    `AuthorizedKeysFile ${dir}/authorized_keys`,
    'PermitRootLogin prohibit-password',
    'PasswordAuthentication no',
    'KbdInteractiveAuthentication no',
    'UsePAM no',
    'PidFile none',
    'MaxStartups 100',
    'MaxSessions 100',
    'AllowTcpForwarding yes',
    '',
  ].join('\n');
}

async function waitForChild(pid: number, timeoutMs = 10_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const kids = readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim();
      if (kids) return Number(kids.split(/\s+/)[0]);
    } catch {
      throw new Error(`the test host's unshare (PID ${pid}) exited at start`);
    }
    await sleep(10);
  }
  throw new Error(`the test host's init did not start within ${timeoutMs} ms`);
}

export async function waitForPort(host: string, port: number, timeoutMs: number, stateDir?: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port, timeout: 500 });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
      s.once('timeout', () => {
        s.destroy();
        resolve(false);
      });
    });
    if (ok) return;
    await sleep(25);
  }
  const log = stateDir ? await readFile(join(stateDir, 'sshd.log'), 'utf8').catch(() => '') : '';
  throw new Error(`sshd on ${host}:${port} did not come up within ${timeoutMs} ms${log ? `:\n${log}` : ''}`);
}

/** Ends the host's init (and with it every process of its PID namespace), its netns and files. */
export async function destroyHost(h: { netns: string; unsharePid: number; initPid: number; stateDir: string; vethOut?: string }): Promise<void> {
  for (const pid of [h.initPid, h.unsharePid]) {
    if (pid > 0) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const pid of [h.initPid, h.unsharePid]) {
    for (let i = 0; pid > 0 && i < 250 && existsSync(`/proc/${pid}`); i++) await sleep(20);
  }
  await dropOwnCgroups(h.netns);
  await execa('ip', ['netns', 'del', h.netns], { reject: false });
  if (h.vethOut) await execa('ip', ['link', 'del', h.vethOut], { reject: false });
  await rm(h.stateDir, { recursive: true, force: true });
}

/** A path inside the host's private file system view (its /tmp, /var/tmp and /run are its own). */
export function hostPath(h: TestHost, path: string): string {
  return `/proc/${h.initPid}/root${path}`;
}

/** Each cgroup hierarchy this process is in: where it is mounted, and this process's cgroup in it. */
function hierarchies(): { mount: string; own: string; cpuset: boolean }[] {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => {
    const [pre, post] = l.split(' - ');
    const f = (post ?? '').split(' ');
    return { point: (pre ?? '').split(' ')[4] ?? '', fstype: f[0] ?? '', opts: (f[2] ?? '').split(',') };
  });
  const out: { mount: string; own: string; cpuset: boolean }[] = [];
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n')) {
    const [, ctrls = '', own = '/'] = /^\d+:([^:]*):(.*)$/.exec(line) ?? [];
    const names = ctrls.split(',').filter(Boolean);
    const m = names.length === 0 ? mounts.find((x) => x.fstype === 'cgroup2') : mounts.find((x) => x.fstype === 'cgroup' && names.every((n) => x.opts.includes(n)));
    if (m) out.push({ mount: m.point, own, cpuset: names.includes('cpuset') });
  }
  return out;
}

const ownCgroup = (netns: string): string => `cedana-bed-${netns}`;

/** Moves the host's init into a cgroup of its own, under this process's, in every hierarchy. */
async function joinOwnCgroups(netns: string, pid: number): Promise<void> {
  for (const h of hierarchies()) {
    const parent = join(h.mount, h.own);
    const dir = join(parent, ownCgroup(netns));
    await mkdir(dir, { recursive: true });
    if (h.cpuset) {
      for (const f of ['cpuset.cpus', 'cpuset.mems']) await writeFile(join(dir, f), (await readFile(join(parent, f), 'utf8')).trim());
    }
    await writeFile(join(dir, 'cgroup.procs'), String(pid));
  }
}

/** Removes the host's cgroups, deepest first (what runc left there included, once empty). */
async function dropOwnCgroups(netns: string): Promise<void> {
  const drop = async (dir: string): Promise<void> => {
    const kids = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const k of kids) if (k.isDirectory()) await drop(join(dir, k.name));
    // The host's processes may still be dying (a PID namespace ends with its init): a busy cgroup is retried.
    for (let i = 0; i < 50; i++) {
      const e = await rmdir(dir).then(() => undefined, (err: NodeJS.ErrnoException) => err);
      if (!e || e.code === 'ENOENT' || e.code !== 'EBUSY') return;
      await sleep(100);
    }
  };
  for (const h of hierarchies()) await drop(join(h.mount, h.own, ownCgroup(netns)));
}
