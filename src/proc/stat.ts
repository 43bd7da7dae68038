/** Parsing of /proc/<pid>/stat and /proc/<pid>/status: pure functions, unit-tested. */

export interface ProcStat {
  pid: number;
  comm: string;
  state: string;
  ppid: number;
  pgrp: number;
  session: number;
  ttyNr: number;
  flags: number;
}

/** PF_KTHREAD from the kernel's include/linux/sched.h. */
const PF_KTHREAD = 0x00200000;

export function parseStat(text: string): ProcStat {
  // comm may contain spaces and parentheses: it ends at the last ')'.
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open < 0 || close < open) throw new Error(`malformed stat line: ${text.slice(0, 80)}`);
  const pid = Number(text.slice(0, open).trim());
  const comm = text.slice(open + 1, close);
  const rest = text.slice(close + 2).trim().split(/\s+/);
  const num = (i: number): number => Number(rest[i]);
  // rest[0] is field 3 (state); fields are numbered from 1 in proc(5).
  return {
    pid,
    comm,
    state: rest[0] ?? '?',
    ppid: num(1),
    pgrp: num(2),
    session: num(3),
    ttyNr: num(4),
    flags: num(6),
  };
}

export function isKernelThread(stat: ProcStat): boolean {
  return (stat.flags & PF_KTHREAD) !== 0 || stat.pid === 2 || stat.ppid === 2;
}

/** Splits /proc/<pid>/cmdline (NUL-separated) into argv. */
export function parseCmdline(raw: string): string[] {
  const parts = raw.split('\0');
  if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();
  return parts;
}

/** A process's user and group ids: real, effective, saved and file-system, from /proc/<pid>/status. */
export interface ProcIds {
  uids: number[];
  gids: number[];
}

export function parseIds(status: string): ProcIds {
  const ids = (key: string): number[] => {
    const m = new RegExp(`^${key}:\\s*(\\d+)\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)\\s*$`, 'm').exec(status);
    if (!m) throw new Error(`no ${key} line in the status text`);
    return m.slice(1, 5).map(Number);
  };
  return { uids: ids('Uid'), gids: ids('Gid') };
}
