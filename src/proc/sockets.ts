/** Parsing of socket tables: /proc/<pid>/net/tcp{,6} and `ss -xan` output. Pure functions. */

export type TcpState =
  | 'ESTABLISHED' | 'SYN_SENT' | 'SYN_RECV' | 'FIN_WAIT1' | 'FIN_WAIT2' | 'TIME_WAIT'
  | 'CLOSE' | 'CLOSE_WAIT' | 'LAST_ACK' | 'LISTEN' | 'CLOSING' | 'NEW_SYN_RECV' | 'UNKNOWN';

const TCP_STATES: Record<number, TcpState> = {
  1: 'ESTABLISHED', 2: 'SYN_SENT', 3: 'SYN_RECV', 4: 'FIN_WAIT1', 5: 'FIN_WAIT2', 6: 'TIME_WAIT',
  7: 'CLOSE', 8: 'CLOSE_WAIT', 9: 'LAST_ACK', 10: 'LISTEN', 11: 'CLOSING', 12: 'NEW_SYN_RECV',
};

export interface TcpSocket {
  inode: number;
  state: TcpState;
  local: string;
  remote: string;
}

/** "0100007F:1F90" (little-endian IPv4) or the 32-hex-digit IPv6 form, to "127.0.0.1:8080" / "[::1]:8080". */
export function decodeProcAddress(hex: string): string {
  const [addr = '', portHex = '0'] = hex.split(':');
  const port = parseInt(portHex, 16);
  if (addr.length === 8) {
    const b = Buffer.from(addr, 'hex');
    return `${b[3]}.${b[2]}.${b[1]}.${b[0]}:${port}`;
  }
  // IPv6: four 32-bit words, each little-endian.
  const words: string[] = [];
  for (let i = 0; i < 4; i++) {
    const w = Buffer.from(addr.slice(i * 8, i * 8 + 8), 'hex').reverse().toString('hex');
    words.push(w.slice(0, 4), w.slice(4, 8));
  }
  const v4mapped = words.slice(0, 5).every((w) => w === '0000') && words[5] === 'ffff';
  if (v4mapped) {
    const a = words[6] ?? '0000', c = words[7] ?? '0000';
    return `[::ffff:${parseInt(a.slice(0, 2), 16)}.${parseInt(a.slice(2), 16)}.${parseInt(c.slice(0, 2), 16)}.${parseInt(c.slice(2), 16)}]:${port}`;
  }
  const compact = words.map((w) => w.replace(/^0+(?=.)/, '')).join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
  return `[${compact}]:${port}`;
}

export function parseProcNetTcp(text: string): TcpSocket[] {
  const out: TcpSocket[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    out.push({
      local: decodeProcAddress(f[1] ?? ''),
      remote: decodeProcAddress(f[2] ?? ''),
      state: TCP_STATES[parseInt(f[3] ?? '0', 16)] ?? 'UNKNOWN',
      inode: Number(f[9]),
    });
  }
  return out;
}

export interface UnixSocket {
  type: string;
  state: string;
  inode: number;
  peerInode: number;
  path: string;
}

/** Parses `ss -x -a -n -H` lines: Netid State Recv-Q Send-Q Local Port Peer Port. */
export function parseSsUnix(text: string): UnixSocket[] {
  const out: UnixSocket[] = [];
  for (const line of text.split('\n')) {
    const t = line.trim().split(/\s+/);
    if (t.length < 8) continue;
    const n = t.length;
    const inode = Number(t[n - 3]);
    const peerInode = Number(t[n - 1]);
    if (!Number.isInteger(inode) || !Number.isInteger(peerInode)) continue;
    out.push({ type: t[0] ?? '', state: t[1] ?? '', inode, peerInode, path: t.slice(4, n - 3).join(' ') });
  }
  return out;
}

/** "socket:[12345]" → 12345. */
export function socketInode(fdTarget: string): number | undefined {
  const m = /^socket:\[(\d+)\]$/.exec(fdTarget);
  return m ? Number(m[1]) : undefined;
}
