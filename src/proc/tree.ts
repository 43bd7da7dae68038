/**
 * Collects the facts about a process tree that decide how CRIU must be called:
 * its members, terminals and sessions, TCP connections, unix sockets with outside peers, file locks.
 */
import { execFileResult } from '../util/exec.js';
import { CedanaError } from '../errors.js';
import { treeLocks, type HeldLock } from './locks.js';
import { readChildren, readCmdline, readFdinfo, readFds, readIds, readNetFile, readStat, readUserNs, selfAndAncestors, PROC } from './procfs.js';
import { isKernelThread, type ProcIds } from './stat.js';
import { parseProcNetTcp, parseSsUnix, socketInode, type TcpSocket } from './sockets.js';

export interface TreeProcess {
  pid: number;
  ppid: number;
  comm: string;
  argv: string[];
  session: number;
  pgrp: number;
  ttyNr: number;
  /** Its user and group ids, and its user namespace: whose process CRIU must read (absent if it ended meanwhile). */
  ids?: ProcIds;
  userNs?: string;
}

export interface TreeFacts {
  root: number;
  processes: TreeProcess[];
  tcp: TcpSocket[];
  /** Unix sockets owned by the tree whose peer is outside it (inodes). */
  externalUnix: number[];
  fileLocks: number;
  /** The file locks the tree holds, with their files. */
  locks: HeldLock[];
  /** Pseudo-terminal indexes the tree holds (/dev/pts/N, or a /dev/ptmx master's tty-index): CRIU recreates each with the same index. */
  ptys: number[];
  /** The indexes among them whose master end (/dev/ptmx) the tree holds: terminals inside the tree. */
  ptyMasters: number[];
  /** Paths of the unix sockets the tree has bound (a restore unlinks whatever socket file is there). */
  boundUnix: string[];
  /** Whether unix-socket peers could be examined (ss from iproute2 was found). */
  unixChecked: boolean;
}

export async function validateTarget(pid: number): Promise<void> {
  if (!Number.isSafeInteger(pid) || pid <= 0) {
    throw new CedanaError('USAGE', `not a valid PID: ${pid}`, { hint: 'give a positive integer process ID' });
  }
  if (pid === 1) {
    throw new CedanaError('PID_REFUSED', 'refusing to checkpoint PID 1 (init)', {
      hint: 'checkpoint a process tree below init',
    });
  }
  const st = await readStat(pid);
  if (!st) {
    throw new CedanaError('PID_NOT_FOUND', `no process with PID ${pid}`, { hint: 'check the PID with `ps -p <pid>`' });
  }
  if (isKernelThread(st)) {
    throw new CedanaError('PID_REFUSED', `PID ${pid} (${st.comm}) is a kernel thread`, { hint: 'only user-space processes can be checkpointed' });
  }
  const mine = await selfAndAncestors();
  if (mine.has(pid)) {
    throw new CedanaError('PID_REFUSED', `PID ${pid} (${st.comm}) is cedana itself or one of its ancestors`, {
      hint: 'a process cannot checkpoint a tree that contains itself; run cedana from outside the tree',
    });
  }
}

export async function collectTree(root: number): Promise<TreeProcess[]> {
  const out: TreeProcess[] = [];
  const queue = [root];
  const seen = new Set<number>();
  while (queue.length > 0) {
    const pid = queue.shift()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    const st = await readStat(pid);
    if (!st) continue;
    out.push({
      pid, ppid: st.ppid, comm: st.comm, argv: await readCmdline(pid), session: st.session, pgrp: st.pgrp, ttyNr: st.ttyNr, ids: await readIds(pid), userNs: await readUserNs(pid),
    });
    queue.push(...(await readChildren(pid)));
  }
  return out;
}

export async function examineTree(root: number): Promise<TreeFacts> {
  const processes = await collectTree(root);
  const mine = await selfAndAncestors();
  const inside = processes.find((p) => p.pid !== root && mine.has(p.pid));
  if (inside) {
    throw new CedanaError('PID_REFUSED', `the tree of PID ${root} contains cedana's own ancestor ${inside.pid} (${inside.comm})`, {
      hint: 'run cedana from outside the tree you checkpoint',
    });
  }
  const inodes = new Set<number>();
  const ptys = new Set<number>();
  const ptyMasters = new Set<number>();
  for (const p of processes) {
    for (const fd of await readFds(p.pid)) {
      const ino = socketInode(fd.target);
      if (ino !== undefined) inodes.add(ino);
      const pts = /^\/dev\/pts\/(\d+)$/.exec(fd.target);
      if (pts) ptys.add(Number(pts[1]));
      if (fd.target === '/dev/ptmx') {
        const idx = /^tty-index:\s*(\d+)/m.exec(await readFdinfo(p.pid, fd.fd));
        if (idx) {
          ptys.add(Number(idx[1]));
          ptyMasters.add(Number(idx[1]));
        }
      }
    }
  }
  const locks = await treeLocks(processes.map((p) => p.pid));
  const fileLocks = locks.length;
  const netText = (await readNetFile(root, 'tcp')) + (await readNetFile(root, 'tcp6')).split('\n').slice(1).map((l) => `\n${l}`).join('');
  const tcp = parseProcNetTcp(netText).filter((s) => inodes.has(s.inode));

  let externalUnix: number[] = [];
  let boundUnix: string[] = [];
  let unixChecked = false;
  try {
    // ss lists the unix sockets of one network namespace: the tree's.
    const r = await execFileResult('nsenter', [`--net=${PROC}/${root}/ns/net`, 'ss', '-x', '-a', '-n', '-H'], { timeout: 10_000 });
    if (r.exitCode !== 0) throw new Error(`nsenter ss failed (exit ${r.exitCode})`);
    unixChecked = true;
    const unix = parseSsUnix(r.stdout);
    boundUnix = [...new Set(unix.filter((s) => inodes.has(s.inode) && s.path.startsWith('/')).map((s) => s.path))];
    externalUnix = unix
      .filter((s) => inodes.has(s.inode) && s.peerInode !== 0 && !inodes.has(s.peerInode))
      .map((s) => s.inode);
  } catch {
    unixChecked = false;
  }
  return { root, processes, tcp, externalUnix, fileLocks, locks, ptys: [...ptys].sort((a, b) => a - b), ptyMasters: [...ptyMasters].sort((a, b) => a - b), boundUnix, unixChecked };
}
