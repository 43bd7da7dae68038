/**
 * The capabilities CRIU needs, and what each missing one prevents. CRIU inherits cedana's, which as
 * root are root's own: a container or VM sandbox can drop some even from root.
 *
 * One missing capability fails in a way worth naming: CRIU dumps every process's resource limits with
 * prlimit(2), which the kernel allows on another process only when its real, effective and saved user
 * and group ids all equal the caller's real ones, or with CAP_SYS_RESOURCE (kernel/sys.c,
 * check_prlimit_permission). Root without it cannot dump any process of another user (a database,
 * nginx's workers) and CRIU says only "Can't get rlimit 0: Operation not permitted".
 */
import { CedanaError } from '../errors.js';
import { capNames, hasCap, readCapEff, type CapName } from '../proc/caps.js';
import { readIds, readStat, readUserNs } from '../proc/procfs.js';
import type { ProcIds } from '../proc/stat.js';
import type { TreeProcess } from '../proc/tree.js';
import { idName } from '../util/users.js';

export interface CapNeed {
  name: CapName;
  /** Without it nothing can be dumped or restored (check's ok is false); otherwise only what `prevents` says fails. */
  required: boolean;
  prevents: string;
}

export const CRIU_CAPS: readonly CapNeed[] = [
  { name: 'CAP_SYS_ADMIN', required: true, prevents: 'nothing can be dumped or restored: CRIU needs it for /proc/<pid>/map_files, namespaces, mounts, and to give restored tasks their PIDs and memory layout' },
  { name: 'CAP_SYS_PTRACE', required: true, prevents: 'nothing can be dumped: CRIU seizes the tree with ptrace and reads its memory' },
  { name: 'CAP_SYS_CHROOT', required: true, prevents: "nothing can be restored: CRIU sets each restored task's root directory with chroot" },
  {
    name: 'CAP_SYS_RESOURCE',
    required: false,
    prevents: "processes of other users cannot be dumped (CRIU cannot read their resource limits: prlimit on another user's process needs it); post-copy from this host needs fs.pipe-max-size >= 4 MiB",
  },
  { name: 'CAP_CHECKPOINT_RESTORE', required: false, prevents: 'nothing while CAP_SYS_ADMIN is there, which covers it (kernels >= 5.9 accept either to set PIDs and read map_files)' },
  { name: 'CAP_NET_ADMIN', required: false, prevents: 'established TCP connections cannot be kept (TCP repair and the network lock need it), nor network namespaces (containers) dumped or restored' },
  { name: 'CAP_SETUID', required: false, prevents: 'processes of other users cannot be restored: CRIU gives each restored task its user ids back' },
  { name: 'CAP_SETGID', required: false, prevents: 'processes of other groups, or with other supplementary groups, cannot be restored: CRIU gives each restored task its group ids back' },
  { name: 'CAP_DAC_OVERRIDE', required: false, prevents: "files root may not read or write by their modes (another user's 0600 files, 0700 directories) cannot be dumped or restored" },
  { name: 'CAP_DAC_READ_SEARCH', required: false, prevents: 'inotify and fanotify watches cannot be restored (CRIU reopens their files by handle, open_by_handle_at)' },
  { name: 'CAP_KILL', required: false, prevents: 'a dumped tree of another user cannot be ended (CRIU kills it after the dump)' },
  { name: 'CAP_CHOWN', required: false, prevents: "restored files of other users (shipped files, CRIU's ghost and unix socket files) cannot get their owner back" },
  { name: 'CAP_FOWNER', required: false, prevents: "restored files of other users cannot get their modes and times back once they have their owner (shipped files, CRIU's ghost files)" },
  { name: 'CAP_SYS_NICE', required: false, prevents: 'processes with a real-time scheduling policy or a negative nice value cannot be restored as they were' },
];

export interface CapabilityReport {
  /** The CapEff mask as /proc/self/status gives it. */
  capEff: string;
  effective: string[];
  missing: CapNeed[];
}

/** What an effective-capability mask means for CRIU. Pure. */
export function judgeCapabilities(capEff: string): CapabilityReport {
  return { capEff, effective: capNames(capEff), missing: CRIU_CAPS.filter((n) => !hasCap(capEff, n.name)) };
}

/** Why `cedana check` says no: the required capabilities missing, or undefined. Pure. */
export function capabilityBlocker(report: CapabilityReport): CedanaError | undefined {
  const required = report.missing.filter((m) => m.required);
  if (required.length === 0) return undefined;
  return new CedanaError('CAPABILITY_MISSING', `cedana lacks ${required.map((m) => m.name).join(', ')}: ${required.map((m) => `without ${m.name}, ${m.prevents}`).join('; ')}`, {
    hint: 'run cedana as root where root keeps its capabilities: on the host itself, not in a container or sandbox that drops them',
    details: { missingCapabilities: required.map((m) => m.name) },
  });
}

/** The first of a process's ids that differs from ours, making prlimit(2) on it need CAP_SYS_RESOURCE; undefined when none does. Pure. */
export function foreignId(ids: ProcIds, self: { uid: number; gid: number }): { kind: 'user' | 'group'; id: number } | undefined {
  // Real, effective, saved: the file-system ids do not count.
  const uid = ids.uids.slice(0, 3).find((u) => u !== self.uid);
  if (uid !== undefined) return { kind: 'user', id: uid };
  const gid = ids.gids.slice(0, 3).find((g) => g !== self.gid);
  return gid === undefined ? undefined : { kind: 'group', id: gid };
}

export interface ForeignProcess {
  pid: number;
  comm: string;
  /** Whose it is: the id that differs from cedana's, and its name on this host. Absent where it could not be read. */
  owner?: { kind: 'user' | 'group'; id: number; name?: string };
}

/**
 * The tree's processes whose resource limits CRIU cannot read without CAP_SYS_RESOURCE. Only those in
 * cedana's own user namespace: in a child namespace root may hold every capability, so CRIU decides. Pure.
 */
export function foreignProcesses(processes: TreeProcess[], self: { uid: number; gid: number; userNs: string | undefined }): ForeignProcess[] {
  const out: ForeignProcess[] = [];
  for (const p of processes) {
    if (!p.ids || p.userNs === undefined || p.userNs !== self.userNs) continue;
    const owner = foreignId(p.ids, self);
    if (owner) out.push({ pid: p.pid, comm: p.comm, owner });
  }
  return out;
}

const ownerText = (o: NonNullable<ForeignProcess['owner']>): string => `${o.kind === 'user' ? 'runs as user' : 'runs with group'} ${o.id}${o.name ? ` (${o.name})` : ''}`;

/**
 * The error for a tree CRIU cannot dump for lack of CAP_SYS_RESOURCE: refused before the freeze, or
 * CRIU's failure explained (`log`: the kept log, `criuLines`: what it said). Pure.
 */
export function otherUsersError(procs: ForeignProcess[], opts: { log?: string; criuLines?: string[] } = {}): CedanaError {
  const first = procs[0];
  const who = first ? `PID ${first.pid} (${first.comm})` : 'a process of the tree';
  const more = procs.length > 1 ? ` (and ${procs.length - 1} more process${procs.length > 2 ? 'es' : ''} of the tree as other users)` : '';
  const owns = first?.owner ? `it ${ownerText(first.owner)}${more}` : `it belongs to another user${more}`;
  return new CedanaError(
    'CAPABILITY_MISSING',
    `cannot dump ${who}: ${owns}, and root here lacks CAP_SYS_RESOURCE, without which CRIU cannot read another user's process's resource limits (prlimit)`,
    {
      hint: [
        'run cedana where root has CAP_SYS_RESOURCE: on the host itself, not in a container or VM sandbox that drops it (`cedana check` lists the capabilities root has here)',
        opts.log ? `CRIU's log: ${opts.log}` : undefined,
      ].filter(Boolean).join('; '),
      details: {
        missingCapabilities: ['CAP_SYS_RESOURCE'],
        processes: procs.map((p) => ({ pid: p.pid, comm: p.comm, ...(p.owner ? { [p.owner.kind === 'user' ? 'uid' : 'gid']: p.owner.id, name: p.owner.name ?? null } : {}) })),
        ...(opts.log !== undefined ? { log: opts.log } : {}),
        ...(opts.criuLines ? { criuLines: opts.criuLines } : {}),
      },
    },
  );
}

/** CRIU's decisive log lines say prlimit(2) was refused: the PID it was dumping (when the log names it). Pure. */
export function rlimitDenied(lines: string[]): { pid?: number } | undefined {
  const text = lines.join('\n');
  if (!/Can't get rlimit \d+: Operation not permitted/.test(text)) return undefined;
  const pid = /Dump core \(pid: (\d+)\)/.exec(text)?.[1];
  return pid === undefined ? {} : { pid: Number(pid) };
}

const self = async (): Promise<{ uid: number; gid: number; userNs: string | undefined }> => ({
  uid: process.getuid?.() ?? 0,
  gid: process.getgid?.() ?? 0,
  userNs: await readUserNs('self'),
});

async function named(procs: ForeignProcess[]): Promise<ForeignProcess[]> {
  return Promise.all(procs.map(async (p) => (p.owner ? { ...p, owner: { ...p.owner, name: await idName(p.owner.kind, p.owner.id) } } : p)));
}

/**
 * Refuses, before anything is frozen, a tree that holds a process of another user when root lacks
 * CAP_SYS_RESOURCE: CRIU would freeze it only to fail.
 */
export async function refuseOtherUsers(processes: TreeProcess[]): Promise<void> {
  if (hasCap(await readCapEff(), 'CAP_SYS_RESOURCE')) return;
  const foreign = foreignProcesses(processes, await self());
  if (foreign.length > 0) throw otherUsersError(await named(foreign));
}

/**
 * A failed CRIU run whose log shows prlimit(2) refused for lack of CAP_SYS_RESOURCE (a process the
 * refusal before the freeze could not judge: one that changed its user, or in another user namespace),
 * as the same error; undefined for any other failure. With the capability, something else refused it
 * (a security module): that stays CRIU_FAILED, quoting CRIU.
 */
export async function explainRlimitFailure(lines: string[], log: string | undefined): Promise<CedanaError | undefined> {
  const denied = rlimitDenied(lines);
  if (!denied || hasCap(await readCapEff(), 'CAP_SYS_RESOURCE')) return undefined;
  let procs: ForeignProcess[] = [];
  if (denied.pid !== undefined) {
    const st = await readStat(denied.pid);
    const ids = await readIds(denied.pid);
    const owner = ids && foreignId(ids, await self());
    procs = [{ pid: denied.pid, comm: st?.comm ?? '?', ...(owner ? { owner } : {}) }];
  }
  return otherUsersError(await named(procs), { log, criuLines: lines });
}
