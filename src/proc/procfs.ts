/** Reads what cedana needs to know about live processes from /proc. */
import { readFile, readdir, readlink } from 'node:fs/promises';
import { parseCmdline, parseIds, parseStat, type ProcIds, type ProcStat } from './stat.js';

export const PROC = process.env.CEDANA_PROC_ROOT ?? '/proc';

export async function readStat(pid: number): Promise<ProcStat | undefined> {
  try {
    return parseStat(await readFile(`${PROC}/${pid}/stat`, 'utf8'));
  } catch {
    return undefined;
  }
}

export async function readCmdline(pid: number): Promise<string[]> {
  try {
    return parseCmdline(await readFile(`${PROC}/${pid}/cmdline`, 'utf8'));
  } catch {
    return [];
  }
}

export async function readIds(pid: number): Promise<ProcIds | undefined> {
  try {
    return parseIds(await readFile(`${PROC}/${pid}/status`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** The user namespace a process is in, as its ns link names it (e.g. "user:[4026531837]"). */
export async function readUserNs(pid: number | 'self'): Promise<string | undefined> {
  try {
    return await readlink(`${PROC}/${pid}/ns/user`);
  } catch {
    return undefined;
  }
}

export async function processExists(pid: number): Promise<boolean> {
  return (await readStat(pid)) !== undefined;
}

/** Direct children of every thread of pid (needs CONFIG_PROC_CHILDREN, as CRIU does). */
export async function readChildren(pid: number): Promise<number[]> {
  const out = new Set<number>();
  let tids: string[] = [];
  try {
    tids = await readdir(`${PROC}/${pid}/task`);
  } catch {
    return [];
  }
  for (const tid of tids) {
    try {
      const text = await readFile(`${PROC}/${pid}/task/${tid}/children`, 'utf8');
      for (const c of text.trim().split(/\s+/)) if (c) out.add(Number(c));
    } catch {
      // the thread exited meanwhile
    }
  }
  return [...out].sort((a, b) => a - b);
}

export interface OpenFd {
  fd: number;
  target: string;
}

export async function readFds(pid: number): Promise<OpenFd[]> {
  let names: string[];
  try {
    names = await readdir(`${PROC}/${pid}/fd`);
  } catch {
    return [];
  }
  const fds: OpenFd[] = [];
  for (const name of names) {
    try {
      fds.push({ fd: Number(name), target: await readlink(`${PROC}/${pid}/fd/${name}`) });
    } catch {
      // closed meanwhile
    }
  }
  return fds.sort((a, b) => a.fd - b.fd);
}

export async function readFdinfo(pid: number, fd: number): Promise<string> {
  try {
    return await readFile(`${PROC}/${pid}/fdinfo/${fd}`, 'utf8');
  } catch {
    return '';
  }
}

/** The PIDs of this process and all its ancestors up to PID 1. */
export async function selfAndAncestors(): Promise<Set<number>> {
  const chain = new Set<number>();
  let pid = process.pid;
  while (pid > 0 && !chain.has(pid)) {
    chain.add(pid);
    const st = await readStat(pid);
    if (!st) break;
    pid = st.ppid;
  }
  return chain;
}

export async function readNetFile(pid: number, name: string): Promise<string> {
  try {
    return await readFile(`${PROC}/${pid}/net/${name}`, 'utf8');
  } catch {
    return '';
  }
}
