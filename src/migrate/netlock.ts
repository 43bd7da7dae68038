/**
 * After a migration with --tcp-established, CRIU leaves its network-lock rules on the source (it
 * expects a restore on the same host to lift them): DROP rules for each connection's 4-tuple,
 * marked `! --mark 0xc114`. The connections live on the target now, so cedana removes exactly those.
 */
import { connect as netConnect } from 'node:net';
import { execFileResult } from '../util/exec.js';
import type { ManifestSocket } from '../image/manifest.js';

const CRIU_MARK = '0xc114';

function split(endpoint: string): { addr: string; port: string } | undefined {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(endpoint);
  return m ? { addr: m[1]!, port: m[2]! } : undefined;
}

/** The `iptables -S` lines that are CRIU's lock of one of `conns`. Pure. */
export function criuLockRules(listing: string, conns: Pick<ManifestSocket, 'local' | 'remote'>[]): string[] {
  const out: string[] = [];
  for (const line of listing.split('\n')) {
    if (!line.startsWith('-A ') || !line.includes(CRIU_MARK) || !line.includes('-j DROP')) continue;
    for (const c of conns) {
      const l = split(c.local);
      const r = split(c.remote);
      if (!l || !r) continue;
      const has = (flag: string, v: string): boolean => new RegExp(`${flag} ${v.replace(/[.:]/g, '\\$&')}(/\\d+)?( |$)`).test(line);
      const inbound = has('-s', r.addr) && has('-d', l.addr) && has('--sport', r.port) && has('--dport', l.port);
      const outbound = has('-s', l.addr) && has('-d', r.addr) && has('--sport', l.port) && has('--dport', r.port);
      if (inbound || outbound) {
        out.push(line);
        break;
      }
    }
  }
  return out;
}

/** Deletes CRIU's lock rules for `conns` from iptables and ip6tables; returns how many. */
export async function releaseSourceLocks(conns: Pick<ManifestSocket, 'local' | 'remote'>[]): Promise<number> {
  if (conns.length === 0) return 0;
  let removed = 0;
  for (const tool of ['iptables', 'ip6tables']) {
    const listing = await execFileResult(tool, ['-w', '-S']);
    if (listing.exitCode !== 0) continue;
    for (const rule of criuLockRules(String(listing.stdout), conns)) {
      const r = await execFileResult(tool, ['-w', '-D', ...rule.slice(3).split(' ')]);
      if (r.exitCode === 0) removed++;
    }
  }
  return removed;
}

/**
 * Ends, at the peer's side, connections this host closed: the tree's socket went with it, in
 * CRIU's repair mode, without a FIN or a reset. A peer with nothing left to send would wait in
 * recv() forever (no retransmission ever reaches this host to be answered). So this host sends a
 * SYN from the connection's own address and port: the peer's TCP, which has the connection, answers
 * with an ACK (RFC 5961's challenge ACK); this host, which has no such connection, answers that with
 * a reset carrying the sequence number the peer expects, and the peer's connection ends at once.
 * The attempt is dropped before the SYN would be sent again. Returns how many were tried.
 */
export async function resetPeers(conns: Pick<ManifestSocket, 'local' | 'remote'>[], waitMs = 300): Promise<number> {
  let tried = 0;
  await Promise.all(
    conns.map(async (c) => {
      const l = split(c.local);
      const r = split(c.remote);
      if (!l || !r) return;
      tried++;
      await new Promise<void>((resolve) => {
        const s = netConnect({ host: r.addr, port: Number(r.port), localAddress: l.addr, localPort: Number(l.port) });
        const done = (): void => {
          clearTimeout(timer);
          s.destroy();
          resolve();
        };
        const timer = setTimeout(done, waitMs);
        s.once('error', done);
        s.once('connect', done);
      });
    }),
  );
  return tried;
}
