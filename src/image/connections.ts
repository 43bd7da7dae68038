/**
 * Established TCP connections on restore and migrate, decided one by one: a connection can be kept
 * (CRIU's TCP repair) only where its local address exists — the socket is re-bound to it — and, when
 * the tree moves to another host, only if its peer moves too or is reached over the network (a
 * loopback peer left behind is gone). A connection that cannot be kept is restored closed: its
 * socket comes back unconnected, and the program sees the connection fail, as after a reset.
 */
import { networkInterfaces } from 'node:os';
import { CedanaError } from '../errors.js';
import type { TcpMode } from '../criu/options.js';

export interface Connection {
  /** Socket inode (files.img's inet entry ino, /proc/net/tcp's inode). */
  ino: number;
  /** address:port, [v6]:port for IPv6. */
  local: string;
  remote: string;
}

export interface ConnectionPlan {
  keep: Connection[];
  close: Connection[];
  notes: string[];
}

/** The address of "a:port" / "[a]:port", canonical: IPv6 compressed, IPv4-mapped as IPv4. Pure. */
export function addressOf(hostPort: string): string {
  const m = /^\[(.*)\]:\d+$/.exec(hostPort) ?? /^(.*):\d+$/.exec(hostPort);
  return canonicalAddress(m ? m[1]! : hostPort);
}

export function canonicalAddress(a: string): string {
  const bare = a.replace(/\/\d+$/, '').replace(/%.*$/, '');
  if (!bare.includes(':')) return bare;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(bare);
  if (mapped) return mapped[1]!;
  try {
    return new URL(`http://[${bare}]/`).hostname.slice(1, -1);
  } catch {
    return bare.toLowerCase();
  }
}

export const isLoopback = (addr: string): boolean => /^127\./.test(addr) || addr === '::1';

/** The addresses of this host's network namespace, canonical. */
export function localAddresses(): Set<string> {
  const out = new Set<string>();
  for (const list of Object.values(networkInterfaces())) for (const i of list ?? []) out.add(canonicalAddress(i.address));
  return out;
}

/** Addresses from `ip -o addr show` lines ("2: eth0    inet 10.0.0.2/24 brd …"), canonical. Pure. */
export function parseIpAddr(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const m = /\sinet6?\s+(\S+)/.exec(line);
    if (m) out.push(canonicalAddress(m[1]!));
  }
  return out;
}

export interface DecideOptions {
  mode: TcpMode;
  /** The addresses where the tree will run; undefined when they could not be listed. */
  addresses?: Set<string>;
  /** The tree leaves this host: a loopback peer outside the tree stays behind. */
  moving: boolean;
  /** Where, for the messages ("on cedana-h11", "here"). */
  where: string;
  /** A --hook may bring addresses (a floating IP) before the restore: trust an explicit --tcp-established. */
  hook?: boolean;
}

/** Keep or close each established connection, with the reason in words. Pure. */
export function decideConnections(conns: Connection[], o: DecideOptions): ConnectionPlan {
  const notes: string[] = [];
  if (conns.length === 0) return { keep: [], close: [], notes };
  if (o.mode === 'close') {
    return { keep: [], close: conns, notes: [`--tcp-close: ${conns.length} established connection(s) restored closed`] };
  }
  const inTree = new Set(conns.map((c) => `${c.local}>${c.remote}`));
  const keep: Connection[] = [];
  const close: { c: Connection; why: string }[] = [];
  for (const c of conns) {
    const addr = addressOf(c.local);
    if (isLoopback(addr)) {
      if (!o.moving || inTree.has(`${c.remote}>${c.local}`)) keep.push(c);
      else close.push({ c, why: 'its loopback peer stays behind' });
    } else if (!o.addresses || o.addresses.has(addr)) keep.push(c);
    else close.push({ c, why: `${addr} does not exist ${o.where}` });
  }
  if (o.mode === 'established' && close.length > 0) {
    const addrMissing = close.filter((x) => !isLoopback(addressOf(x.c.local)));
    if (addrMissing.length > 0 && !o.hook) {
      throw new CedanaError('TCP_KEEP_IMPOSSIBLE', `--tcp-established: ${addrMissing.map((x) => `${x.c.local} ↔ ${x.c.remote} cannot be kept: ${x.why}`).join('; ')}`, {
        hint: 'bring the address there first (e.g. with --hook), or leave out --tcp-established to close such connections',
        details: { connections: addrMissing.map((x) => ({ local: x.c.local, remote: x.c.remote })) },
      });
    }
    notes.push(`--tcp-established: keeping all ${conns.length} connection(s) as asked${addrMissing.length ? ` (${addrMissing.length} rely on --hook bringing their address)` : ''}`);
    return { keep: conns, close: [], notes };
  }
  if (keep.length > 0) notes.push(`keeping ${keep.length} established connection(s), e.g. ${keep[0]!.local} ↔ ${keep[0]!.remote}`);
  for (const x of close) notes.push(`closing ${x.c.local} ↔ ${x.c.remote}: ${x.why}`);
  return { keep, close: close.map((x) => x.c), notes };
}
