/**
 * Decides which CRIU options a tree needs (pure: facts in, decisions out) and builds CRIU's
 * argument vectors. Kept free of I/O so every rule is unit-tested.
 */
import type { TreeFacts } from '../proc/tree.js';

export type TcpMode = 'auto' | 'established' | 'close';
export type NetworkLock = 'iptables' | 'nftables';

export interface DumpRequest {
  tcp: TcpMode;
  fileLocks: boolean;
  leaveRunning: boolean;
}

/** What cedana decided to tell CRIU, with the reason for each; recorded in the manifest. */
export interface CriuDecisions {
  shellJob: boolean;
  tcpEstablished: boolean;
  tcpClose: boolean;
  fileLocks: boolean;
  externalUnix: number[];
  notes: string[];
}

/** The /dev/pts index of a tty_nr (/proc/PID/stat), or undefined for another kind of terminal. Pure. */
export function ptsIndex(ttyNr: number): number | undefined {
  const major = (ttyNr >> 8) & 0xfff;
  const minor = (ttyNr & 0xff) | ((ttyNr >> 12) & 0xfff00);
  return major >= 136 && major <= 143 ? (major - 136) * 256 + minor : undefined;
}

export function decideDumpOptions(facts: TreeFacts, req: DumpRequest): CriuDecisions {
  const notes: string[] = [];
  const pids = new Set(facts.processes.map((p) => p.pid));

  const withTty = facts.processes.filter((p) => p.ttyNr !== 0);
  const outsideSession = facts.processes.filter((p) => !pids.has(p.session) || !pids.has(p.pgrp));
  const shellJob = withTty.length > 0 || outsideSession.length > 0;
  // A terminal whose master end the tree holds (tmux, screen, script) is dumped and restored with
  // it; only one from outside (a login's) makes the restore need a terminal of its own.
  const outsideTty = withTty.filter((p) => !facts.ptyMasters.includes(ptsIndex(p.ttyNr) ?? -1));
  if (outsideTty.length > 0) {
    notes.push(`--shell-job: PID ${outsideTty[0]!.pid} has a controlling terminal from outside the tree (restore needs a terminal too)`);
  } else if (withTty.length > 0) {
    notes.push(`--shell-job: PID ${withTty[0]!.pid} has a controlling terminal (pts/${ptsIndex(withTty[0]!.ttyNr)}) whose master the tree holds: it is restored with the tree`);
  } else if (outsideSession.length > 0) {
    notes.push(`--shell-job: PID ${outsideSession[0]!.pid}'s session or process group leader is outside the tree`);
  }

  const established = facts.tcp.filter((s) => s.state === 'ESTABLISHED');
  let tcpEstablished = false;
  let tcpClose = false;
  if (req.tcp === 'established') {
    tcpEstablished = true;
    notes.push(`--tcp-established: requested (${established.length} established connection(s))`);
  } else if (req.tcp === 'close') {
    tcpClose = true;
    notes.push(`--tcp-close: requested; ${established.length} established connection(s) will be restored closed`);
  } else if (established.length > 0) {
    tcpEstablished = true;
    notes.push(
      `--tcp-established: ${established.length} established TCP connection(s), e.g. ${established[0]!.local} ↔ ${established[0]!.remote}`,
    );
  }

  const fileLocks = req.fileLocks || facts.fileLocks > 0;
  if (facts.fileLocks > 0) notes.push(`--file-locks: ${facts.fileLocks} file lock(s) held`);
  else if (req.fileLocks) notes.push('--file-locks: requested');
  for (const l of facts.locks.filter((k) => k.mapped)) {
    notes.push(`PID ${l.pid}'s ${l.kind} ${l.type} lock on ${l.path} is on a file it also maps: CRIU 4.2 does not restore such a lock (a restore fails with LOCK_LOST unless --allow-lost-locks)`);
  }

  if (facts.externalUnix.length > 0) {
    notes.push(`--external unix[…]: ${facts.externalUnix.length} unix socket(s) connected to a peer outside the tree`);
  }
  if (!facts.unixChecked) notes.push('unix socket peers not examined (`ss` from iproute2 not found)');

  return { shellJob, tcpEstablished, tcpClose, fileLocks, externalUnix: [...facts.externalUnix], notes };
}

export interface CommonArgs {
  imagesDir: string;
  workDir: string;
  logFile: string;
  actionScript?: string;
  networkLock: NetworkLock;
}

function flagArgs(d: Omit<CriuDecisions, 'notes' | 'externalUnix'>): string[] {
  const a: string[] = [];
  if (d.shellJob) a.push('--shell-job');
  if (d.tcpEstablished) a.push('--tcp-established');
  if (d.tcpClose) a.push('--tcp-close');
  if (d.fileLocks) a.push('--file-locks');
  return a;
}

function commonArgs(c: CommonArgs): string[] {
  const a = ['-D', c.imagesDir, '-W', c.workDir, '-o', c.logFile, '-v4', '--network-lock', c.networkLock];
  if (c.actionScript) a.push('--action-script', c.actionScript);
  return a;
}

export function buildDumpArgs(pid: number, d: CriuDecisions, c: CommonArgs & { leaveRunning: boolean; ghostLimit?: number }): string[] {
  const a = ['dump', '-t', String(pid), ...commonArgs(c), ...flagArgs(d)];
  // Deleted-but-open files travel inside CRIU's image ("ghost" files) up to this size.
  if (c.ghostLimit !== undefined) a.push('--ghost-limit', String(c.ghostLimit));
  for (const ino of d.externalUnix) a.push('--external', `unix[${ino}]`);
  if (c.leaveRunning) a.push('--leave-running');
  return a;
}

export interface RestoreFlags {
  shellJob: boolean;
  tcpEstablished: boolean;
  tcpClose: boolean;
  fileLocks: boolean;
  /** The tree had unix sockets connected outside it: CRIU reconnects them by path (--ext-unix-sk). */
  externalUnix: boolean;
}

/** The CRIU restore flags an image needs, here or on a migration target. */
export function restoreFlagArgs(flags: RestoreFlags): string[] {
  // tcp-close on restore wins over the dump-time tcp-established: the connections come back closed.
  const a = flagArgs({ ...flags, tcpEstablished: flags.tcpEstablished && !flags.tcpClose });
  if (flags.externalUnix) a.push('--ext-unix-sk');
  return a;
}

export function buildRestoreArgs(flags: RestoreFlags, c: CommonArgs & { pidFile: string }): string[] {
  return ['restore', ...commonArgs(c), '--restore-detached', '--pidfile', c.pidFile, ...restoreFlagArgs(flags)];
}
