/**
 * Preflight on the target, before anything is frozen: root, CRIU and `criu check`, CPU, disk,
 * memory, free PIDs and the paths the tree has open. One shell script over SSH gathers the facts
 * (nothing to install there); parsing and judging them are pure.
 */
import { CedanaError } from '../errors.js';
import { compareVersions, MIN_CRIU, parseVersionText, type Version } from '../criu/version.js';
import { shq, type SshSession } from '../transport/ssh.js';
import type { Footprint as FullFootprint } from './footprint.js';

/** What preflight needs of the tree's footprint. */
type Footprint = Pick<FullFootprint, 'pids' | 'rssBytes' | 'paths'>;
import { addressOf, canonicalAddress } from '../image/connections.js';
import { decodeProcAddress } from '../proc/sockets.js';

export const REMOTE_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH';

export interface TargetFacts {
  uid: number;
  arch: string;
  /** Its memory page size (getconf PAGESIZE); undefined when it did not say. */
  pageSize?: number;
  criuVersion?: string;
  criuCheck?: number;
  criuCheckOutput: string[];
  networkLock?: 'iptables' | 'nftables';
  diskAvailBytes: number;
  memAvailBytes: number;
  pidsTaken: number[];
  missingPaths: string[];
  /** Exit status of `criu cpuinfo check` there against this host's CPU (absent: not checked). */
  cpuCheck?: number;
  cpuCheckOutput?: string[];
  /** Exit status of `criu check --feature uffd-noncoop` there (post-copy only). */
  uffd?: number;
  /** The target's addresses (canonical); undefined when `ip` is not there to list them. */
  addresses?: string[];
  /** TCP sockets listening there. */
  listening: { addr: string; port: number }[];
  /** Files that exist there with another size than the source's (for --map-path targets). */
  badSizes: { path: string; size: number }[];
  /** Probe files found there with their token: the directory is storage both hosts see. */
  sharedProbes: string[];
  /** Pseudo-terminal indexes already in use there (/dev/pts/N exists). */
  ptysTaken: number[];
}

export interface PreflightChecks {
  /** Paths that must exist there (after --map-path). */
  paths: string[];
  /** Regular files that must also have this size there (--map-path targets). */
  sized?: { path: string; size: number }[];
  /** Post-copy: whether CRIU there can restore with lazy pages (userfaultfd). */
  lazy?: boolean;
  /** Probe files written here (path there, token): found there with the token, the storage is shared. */
  probes?: { path: string; token: string }[];
  /** Pseudo-terminal indexes the tree needs free there. */
  ptys?: number[];
}

/**
 * With `cpuinfo` (this host's `criu cpuinfo dump` image), the same round trip also runs
 * `criu cpuinfo check` there: each SSH command costs the target shell's start-up.
 */
export function preflightScript(fp: Footprint, targetDir: string, cpuinfo?: Buffer, checks: PreflightChecks = { paths: fp.paths }): string {
  // Absolute paths only: no line of the heredoc can then equal its terminator (and end it early).
  const paths = checks.paths.filter((p) => p.startsWith('/') && !p.includes('\n'));
  const sized = (checks.sized ?? []).filter((s) => s.path.startsWith('/') && !s.path.includes('\n'));
  return [
    REMOTE_PATH,
    'echo "uid=$(id -u)"',
    'echo "arch=$(uname -m)"',
    'echo "pagesize=$(getconf PAGESIZE 2>/dev/null)"',
    'if command -v criu >/dev/null 2>&1; then',
    '  echo "criu=$(criu --version 2>/dev/null | sed -n \'s/^Version: *//p\' | head -1)"',
    '  out=$(criu check 2>&1); echo "criucheck=$?"',
    '  printf \'%s\\n\' "$out" | grep -v RLIMIT_NOFILE | tail -n 5 | sed \'s/^/criucheckout=/\'',
    ...(cpuinfo
      ? [
          `  c=$(mktemp -d) && printf '%s' '${cpuinfo.toString('base64')}' | base64 -d > "$c/cpuinfo.img"`,
          '  criu cpuinfo check -D "$c" -o "$c/log" >/dev/null 2>&1; echo "cpu=$?"',
          '  grep -E \'Error|mismatch\' "$c/log" 2>/dev/null | tail -n 3 | sed \'s/^/cpuout=/\'; rm -rf "$c"',
        ]
      : []),
    ...(checks.lazy ? ['  criu check --feature uffd-noncoop >/dev/null 2>&1; echo "uffd=$?"'] : []),
    'fi',
    'if command -v iptables >/dev/null 2>&1; then echo lock=iptables; elif command -v nft >/dev/null 2>&1; then echo lock=nftables; fi',
    `echo "disk=$(df -P -B1 ${shq(targetDir)} 2>/dev/null | awk 'NR==2 {print $4}')"`,
    'echo "mem=$(awk \'/^MemAvailable:/ {printf "%.0f", $2 * 1024}\' /proc/meminfo)"', // print would give mawk's %.6g
    `for p in ${fp.pids.join(' ')}; do [ -e /proc/$p ] && echo "pidtaken=$p"; done`,
    "while IFS= read -r f; do [ -e \"$f\" ] || printf 'missing=%s\\n' \"$f\"; done <<'CEDANA_PATHS'",
    ...paths,
    'CEDANA_PATHS',
    'if command -v ip >/dev/null 2>&1; then echo ipaddr=1; ip -o addr show 2>/dev/null | awk \'{print "addr=" $4}\'; fi',
    'for f in /proc/net/tcp /proc/net/tcp6; do [ -r $f ] && awk \'NR > 1 && $4 == "0A" {print "listen=" $2}\' $f; done',
    ...(sized.length > 0
      ? [
          'while IFS= read -r l; do s=${l%% *}; f=${l#* }; if [ -f "$f" ]; then n=$(stat -c %s "$f"); [ "$n" = "$s" ] || printf \'badsize=%s %s\\n\' "$n" "$f"; fi; done <<\'CEDANA_SIZED\'',
          ...sized.map((x) => `${x.size} ${x.path}`),
          'CEDANA_SIZED',
        ]
      : []),
    ...probeLines(checks.probes ?? []),
    ...(checks.ptys?.length ? [`for n in ${checks.ptys.join(' ')}; do [ -e /dev/pts/$n ] && echo "ptytaken=$n"; done`] : []),
    'exit 0',
  ].join('\n');
}

/** Shell lines that print `shared=PATH` for each probe found there holding its token. */
function probeLines(probes: { path: string; token: string }[]): string[] {
  const ok = probes.filter((p) => p.path.startsWith('/') && !p.path.includes('\n') && /^[0-9a-f]+$/.test(p.token));
  if (ok.length === 0) return [];
  return [
    "while IFS=' ' read -r t f; do [ \"$(cat \"$f\" 2>/dev/null)\" = \"$t\" ] && printf 'shared=%s\\n' \"$f\"; done <<'CEDANA_PROBES'",
    ...ok.map((p) => `${p.token} ${p.path}`),
    'CEDANA_PROBES',
  ];
}

export function parsePreflight(out: string): TargetFacts {
  const f: TargetFacts = { uid: -1, arch: '', criuCheckOutput: [], diskAvailBytes: 0, memAvailBytes: 0, pidsTaken: [], missingPaths: [], listening: [], badSizes: [], sharedProbes: [], ptysTaken: [] };
  for (const line of out.split('\n')) {
    const i = line.indexOf('=');
    if (i < 0) continue;
    const k = line.slice(0, i);
    const v = line.slice(i + 1);
    if (k === 'uid') f.uid = Number(v);
    else if (k === 'arch') f.arch = v;
    else if (k === 'pagesize') f.pageSize = Number(v) || undefined;
    else if (k === 'criu') f.criuVersion = v || undefined;
    else if (k === 'criucheck') f.criuCheck = Number(v);
    else if (k === 'criucheckout') f.criuCheckOutput.push(v);
    else if (k === 'lock' && (v === 'iptables' || v === 'nftables')) f.networkLock = v;
    else if (k === 'disk') f.diskAvailBytes = Number(v) || 0;
    else if (k === 'mem') f.memAvailBytes = Number(v) || 0;
    else if (k === 'pidtaken') f.pidsTaken.push(Number(v));
    else if (k === 'missing') f.missingPaths.push(v);
    else if (k === 'cpu') f.cpuCheck = Number(v);
    else if (k === 'cpuout') (f.cpuCheckOutput ??= []).push(v);
    else if (k === 'uffd') f.uffd = Number(v);
    else if (k === 'shared') f.sharedProbes.push(v);
    else if (k === 'ptytaken') f.ptysTaken.push(Number(v));
    else if (k === 'ipaddr') f.addresses ??= [];
    else if (k === 'addr') (f.addresses ??= []).push(canonicalAddress(v));
    else if (k === 'listen') {
      const hp = decodeProcAddress(v);
      f.listening.push({ addr: addressOf(hp), port: Number(/:(\d+)$/.exec(hp)?.[1] ?? 0) });
    } else if (k === 'badsize') {
      const m = /^(\d+) (.*)$/.exec(v);
      if (m) f.badSizes.push({ size: Number(m[1]), path: m[2]! });
    }
  }
  return f;
}

export interface Needs {
  target: string;
  arch: string;
  /** This host's page size: CRIU's images (and its page-server stream) count in pages of it. */
  pageSize?: number;
  localCriu: Version;
  footprint: Footprint;
  /** Some established connection will be kept (TCP repair there needs iptables or nft). */
  tcpEstablished: boolean;
  /** Missing paths that travel with the image (they are not refused). */
  shipping?: string[];
  /** What the tree will listen on there (after --map-port). */
  listening?: { addr: string; port: number }[];
  /** Post-copy: the target must restore with lazy pages. */
  lazy?: boolean;
}

const isWildcard = (a: string): boolean => a === '0.0.0.0' || a === '::';

/** Listening sockets of the tree that one already there would collide with. Pure. */
export function portConflicts(ours: { addr: string; port: number }[], theirs: { addr: string; port: number }[]): { addr: string; port: number }[] {
  return ours.filter((o) => theirs.some((t) => t.port === o.port && (isWildcard(t.addr) || isWildcard(o.addr) || t.addr === o.addr)));
}

/** Space for the pages plus the small images and some slack. */
export const diskNeeded = (rss: number): number => Math.ceil(rss * 1.05) + 64 * 1024 * 1024;

/** Throws the first reason the target cannot take the tree. Pure. */
export function judgePreflight(t: TargetFacts, n: Needs): void {
  const at = `on ${n.target}`;
  if (t.uid !== 0) {
    throw new CedanaError('TARGET_NOT_ROOT', `the SSH user ${at} is not root (uid ${t.uid})`, { hint: 'connect as root (root@host, or User root in ~/.ssh/config)' });
  }
  if (t.arch !== n.arch) throw new CedanaError('CPU_INCOMPATIBLE', `${n.target} is ${t.arch}, this host is ${n.arch}`, { hint: 'migrate to a host of the same architecture' });
  if (n.pageSize && t.pageSize && t.pageSize !== n.pageSize) {
    throw new CedanaError('CPU_INCOMPATIBLE', `${n.target} uses ${t.pageSize}-byte memory pages, this host ${n.pageSize}-byte ones: CRIU's images cannot move between them`, { hint: 'migrate to a host whose kernel has the same page size (arm64 kernels come with 4K, 16K or 64K pages)' });
  }
  const v = t.criuVersion ? parseVersionText(t.criuVersion) : undefined;
  if (!v) throw new CedanaError('TARGET_CRIU_MISSING', `criu is not installed ${at}`, { hint: 'install CRIU >= 4.2 there (cedana needs nothing else on the target)' });
  if (compareVersions(v, MIN_CRIU) < 0 || compareVersions(v, n.localCriu) < 0) {
    throw new CedanaError('TARGET_CRIU_MISSING', `criu ${v.text} ${at} is too old: it needs ${MIN_CRIU.text} or newer, and at least this host's ${n.localCriu.text}`, {
      hint: 'upgrade CRIU on the target',
      details: { targetCriu: v.text },
    });
  }
  if (t.criuCheck !== 0) {
    throw new CedanaError('TARGET_UNSUPPORTED', `\`criu check\` fails ${at}: ${t.criuCheckOutput.join(' | ')}`, { hint: "the target's kernel lacks what CRIU needs" });
  }
  if (t.cpuCheck !== undefined && t.cpuCheck !== 0) {
    throw new CedanaError('CPU_INCOMPATIBLE', `the CPU of ${n.target} lacks features of this host's (criu cpuinfo check): ${(t.cpuCheckOutput ?? []).join(' | ') || `exit ${t.cpuCheck}`}`, {
      hint: 'a process using them would crash there: choose a target with a compatible CPU',
    });
  }
  if (n.lazy && t.uffd !== 0) {
    throw new CedanaError('TARGET_UNSUPPORTED', `post-copy: CRIU ${at} cannot restore with lazy pages (\`criu check --feature uffd-noncoop\` fails)`, {
      hint: "the target's kernel lacks userfaultfd for CRIU: migrate without --postcopy",
    });
  }
  if (n.tcpEstablished && !t.networkLock) {
    throw new CedanaError('TARGET_UNSUPPORTED', `${n.target} has neither iptables nor nft, needed to restore established TCP connections`, { hint: 'install iptables there, or migrate with --tcp-close' });
  }
  const disk = diskNeeded(n.footprint.rssBytes);
  if (t.diskAvailBytes < disk) {
    throw new CedanaError('TARGET_NO_SPACE', `${n.target} has ${mib(t.diskAvailBytes)} free for the image, ${mib(disk)} are needed`, {
      hint: 'free space there or choose another --target-dir',
      details: { availableBytes: t.diskAvailBytes, neededBytes: disk },
    });
  }
  if (t.memAvailBytes < n.footprint.rssBytes) {
    throw new CedanaError('TARGET_NO_MEMORY', `${n.target} has ${mib(t.memAvailBytes)} of memory available, the tree uses ${mib(n.footprint.rssBytes)}`, {
      hint: 'migrate to a host with more free memory',
      details: { availableBytes: t.memAvailBytes, neededBytes: n.footprint.rssBytes },
    });
  }
  if (t.pidsTaken.length > 0) {
    throw new CedanaError('TARGET_PID_IN_USE', `PID ${t.pidsTaken.join(', ')} needed by the tree ${t.pidsTaken.length === 1 ? 'is' : 'are'} taken ${at}`, {
      hint: 'CRIU restores the original PIDs: end those processes there, or migrate into a fresh PID namespace (a container)',
      details: { pids: t.pidsTaken },
    });
  }
  const shipping = new Set(n.shipping ?? []);
  const missing = t.missingPaths.filter((p) => !shipping.has(p));
  if (missing.length > 0) {
    const list = missing.slice(0, 10).join(', ');
    throw new CedanaError('FILES_MISSING_ON_TARGET', `files the process uses do not exist ${at}: ${list}${missing.length > 10 ? ` and ${missing.length - 10} more` : ''}`, {
      hint: 'add --ship-files to carry them whatever their size, --map-path OLD=NEW to use copies there, or create them there (same path and size)',
      details: { missing },
    });
  }
  if (t.badSizes.length > 0) {
    throw new CedanaError('REMAP_INVALID', `files ${at} differ in size from the source's: ${t.badSizes.slice(0, 5).map((b) => `${b.path} (${b.size} bytes)`).join(', ')}`, {
      hint: 'copy them there as they are on the source, or fix the --map-path mapping',
      details: { files: t.badSizes },
    });
  }
  if (t.ptysTaken.length > 0) {
    throw new CedanaError('TARGET_PTY_IN_USE', `pseudo-terminal ${t.ptysTaken.map((x) => `/dev/pts/${x}`).join(', ')} that the tree holds ${t.ptysTaken.length === 1 ? 'is' : 'are'} in use ${at}: CRIU recreates each terminal with its index`, {
      hint: 'end the sessions holding them there (often an SSH login: `who` or `ls -l /proc/*/fd | grep pts` there shows them), or migrate to a host where they are free',
      details: { ptys: t.ptysTaken },
    });
  }
  const clash = portConflicts(n.listening ?? [], t.listening);
  if (clash.length > 0) {
    throw new CedanaError('TARGET_PORT_IN_USE', `TCP port ${[...new Set(clash.map((c) => c.port))].join(', ')} that the tree listens on ${clash.length === 1 ? 'is' : 'are'} taken ${at}`, {
      hint: `move it with --map-port ${clash[0]!.port}:NEW, or free it there`,
      details: { ports: clash },
    });
  }
}

const mib = (n: number): string => `${(n / 1024 / 1024).toFixed(0)} MiB`;

/** How long the preflight may take there (`criu check` included) before the target counts as unresponsive. */
export const PREFLIGHT_TIMEOUT_MS = 60_000;
/** The same for a short remote step before the freeze (a directory made, a page server started). */
export const REMOTE_STEP_TIMEOUT_MS = 30_000;

export async function runPreflight(session: SshSession, fp: Footprint, targetDir: string, cpuinfo?: Buffer, checks?: PreflightChecks): Promise<TargetFacts> {
  const r = await session.exec('sh -s', preflightScript(fp, targetDir, cpuinfo, checks), { timeoutMs: PREFLIGHT_TIMEOUT_MS, what: 'the preflight' });
  return parsePreflight(r.stdout);
}
