/** Picks the lines of a CRIU log that explain a failure. Pure. */

const ERROR_RE = /\b(Error|BUG)\b[ (]/;
/** Errors CRIU always logs on some hosts and that never cause a failure. */
const HARMLESS_RE = /Can't setup RLIMIT_NOFILE for self/;

export function decisiveLines(log: string, max = 8): string[] {
  const lines = log.split('\n').filter((l) => l.trim() !== '' && !HARMLESS_RE.test(l));
  const errors = lines.filter((l) => ERROR_RE.test(l));
  const picked = errors.length > 0 ? errors : lines.slice(-max);
  // The first errors are the cause; later ones ("Dumping FAILED.") are consequences. Keep the first few and the last.
  const out = picked.length <= max ? picked : [...picked.slice(0, max - 1), picked[picked.length - 1]!];
  return out.map((l) => l.replace(/^\(\s*\d+\.\d+\)\s*/, '').replace(/^(Warn|Error)\s+\([^)]*\):\s*/, '').trim());
}

/** Recognises well-known CRIU failures and says what fixes them. */
export function hintFor(lines: string[]): string | undefined {
  const text = lines.join('\n');
  if (/No space left on device/.test(text)) return 'the image destination is full: free space or choose another --output';
  if (/Can't fork for \d+: File exists|PID \d+ is busy/.test(text)) return 'a PID the image needs is in use; end that process first';
  if (/tty|pts|shell.job/i.test(text)) return 'the process uses a terminal: restore it from a terminal, or start it with setsid and redirected stdio';
  if (/iptables|nft/i.test(text)) return 'network locking failed: install iptables (scripts/setup does) or pass --network-lock nftables';
  if (/Connected TCP socket|tcp.*established/i.test(text)) return 'the process has established TCP connections: add --tcp-established or --tcp-close';
  if (/unix.*external|External socket/i.test(text)) return 'a unix socket is connected to a process outside the tree';
  return undefined;
}
