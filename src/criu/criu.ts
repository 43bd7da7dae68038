/**
 * The CRIU adapter: finds the binary, reads its version, runs `criu check`, dump and restore.
 * CRIU failures become CRIU_FAILED errors that quote the decisive log lines and keep the log
 * (CAPABILITY_MISSING where the log shows root lacking CAP_SYS_RESOURCE for another user's process).
 */
import type { Socket } from 'node:net';
import { spawn } from 'node:child_process';
import type { Duplex } from 'node:stream';
import { copyFile, chmod, mkdir, open, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { CedanaError } from '../errors.js';
import { PACKAGE_ROOT } from '../version.js';
import { findOnPath, logDir, utcStamp } from '../util/paths.js';
import { explainRlimitFailure } from './capabilities.js';
import { decisiveLines, hintFor } from './log.js';
import { compareVersions, MIN_CRIU, parseCriuVersion, type Version } from './version.js';
import { binaryKey, cachedVersionOutput, storeVersionOutput } from './version-cache.js';
import { execFileResult } from '../util/exec.js';

export interface Criu {
  path: string;
  version: Version;
}

export async function locateCriu(): Promise<Criu> {
  const wanted = process.env.CEDANA_CRIU ?? 'criu';
  const path = await findOnPath(wanted);
  if (!path) {
    // A user's PATH often lacks the sbin directories CRIU installs into: say so, rather than "install it".
    const outside = wanted.includes('/') ? undefined : await findOnPath(wanted, SBIN_DIRS.join(delimiter));
    throw new CedanaError('CRIU_MISSING', `criu not found (looked for '${wanted}' on PATH)`, {
      hint: outside ? `${outside} is not on PATH: add ${dirname(outside)} to PATH or set CEDANA_CRIU=${outside}` : criuInstallHint(),
    });
  }
  const r = await criuVersionOutput(path);
  const version = parseCriuVersion(r.stdout);
  if (r.exitCode !== 0 || !version) {
    throw new CedanaError('CRIU_MISSING', `${path} does not run as criu (exit ${r.exitCode}): ${(r.stderr || r.stdout).slice(0, 200)}`, {
      hint: `replace it: ${criuInstallHint()}`,
    });
  }
  if (compareVersions(version, MIN_CRIU) < 0) {
    throw new CedanaError('CRIU_TOO_OLD', `criu ${version.text} at ${path} is too old: cedana needs ${MIN_CRIU.text} or newer`, {
      hint: `CRIU < 4.2 fails on kernels >= 6.16 (vDSO layout, SO_PASSCRED on inet sockets); ${criuInstallHint()}`,
      details: { criuVersion: version.text, criuPath: path },
    });
  }
  return { path, version };
}

/** `criu --version` of the binary at `path`: from the cache while the binary is the same one, else run (and cached). */
async function criuVersionOutput(path: string): Promise<{ exitCode: number | undefined; stdout: string; stderr: string }> {
  const key = await binaryKey(path);
  const cached = key && (await cachedVersionOutput(path, key));
  if (cached) return { exitCode: 0, stdout: cached, stderr: '' };
  const r = await execFileResult(path, ['--version'], { timeout: 10_000 });
  if (key && r.exitCode === 0 && parseCriuVersion(r.stdout)) await storeVersionOutput(path, key, r.stdout);
  return r;
}

const SBIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/**
 * What to install when CRIU is missing or too old. Names the recipe cedana ships (a checkout and
 * the npm package alike have scripts/install-criu) by its path here, since a package user has no
 * checkout to find it in.
 */
function criuInstallHint(): string {
  const recipe = PACKAGE_ROOT && join(PACKAGE_ROOT, 'scripts', 'install-criu');
  const build = recipe && existsSync(recipe) ? `, or on Debian and its derivatives run ${recipe} as root (builds it from Debian's source into /usr/local)` : '';
  return `install CRIU >= ${MIN_CRIU.text}: your distribution's criu package where it is that new${build}, or build it from https://github.com/checkpoint-restore/criu; or set CEDANA_CRIU=/path/to/criu`;
}

export interface CheckResult {
  ok: boolean;
  output: string;
}

export async function criuCheck(criu: Criu): Promise<CheckResult> {
  const r = await execFileResult(criu.path, ['check'], { timeout: 60_000 });
  return { ok: r.exitCode === 0, output: r.all.trim() };
}

export async function criuFeature(criu: Criu, feature: string): Promise<CheckResult> {
  const r = await execFileResult(criu.path, ['check', '--feature', feature], { timeout: 60_000 });
  return { ok: r.exitCode === 0, output: r.all.trim() };
}

export interface RunOptions {
  /** Absolute path of the log CRIU writes (the -o argument). */
  logFile: string;
  env?: Record<string, string>;
  /** Label used for the kept log's file name, e.g. "dump-1234". */
  label: string;
}

/**
 * Starts CRIU in its own session, so a Ctrl-C at the terminal reaches cedana (which decides how to
 * cancel safely) and never kills CRIU half-way through with the tasks frozen. `done` rejects with
 * CRIU_FAILED, quoting the decisive lines of CRIU's log and keeping the log, or with the
 * CAPABILITY_MISSING those lines show (dump and migrate alike, both running CRIU through here).
 *
 * With `pageServerSocket`, CRIU gets a unix socket as fd 3 (pass `--ps-socket 3`): cedana carries
 * the page stream itself. With `stdinSocket` (socketPair's CRIU end), that socket is CRIU's fd 0
 * (pass `--ps-socket 0`), read on cedana's side with one reused buffer. A unix socket, not TCP: over loopback TCP, CRIU's last small write before
 * it waits for the page server's answer meets Nagle and delayed ACK, a stall of ~200 ms.
 */
export function spawnCriu(criu: Criu, args: string[], opts: RunOptions & { pageServerSocket?: boolean; stdinSocket?: Socket }): { done: Promise<void>; psSocket?: Duplex } {
  const child = spawn(criu.path, args, {
    detached: true,
    stdio: opts.pageServerSocket ? ['ignore', 'pipe', 'pipe', 'pipe'] : [opts.stdinSocket ?? 'ignore', 'pipe', 'pipe'],
    env: opts.env ?? process.env,
  });
  // CRIU has its own copy (as fd 0, which the child is given blocking: CRIU's page-server writes
  // expect a blocking socket, and only descriptors 0–2 are handed over that way).
  opts.stdinSocket?.destroy();
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('error', (e) => {
      output += e.message;
      resolve({ code: 127, signal: null });
    });
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const done = (async () => {
    const r = await exit;
    if (r.code === 0) return;
    let log = '';
    try {
      log = (await readTail(opts.logFile, KEPT_LOG_MAX)).toString('utf8');
    } catch {
      log = output;
    }
    const kept = await keepLog(opts.logFile, opts.label);
    const lines = decisiveLines(log || output);
    const what = args[0] ?? 'criu';
    const denied = await explainRlimitFailure(lines, kept);
    if (denied) throw denied;
    throw new CedanaError('CRIU_FAILED', `criu ${what} failed (exit ${r.code ?? r.signal})${lines.length ? `:\n  ${lines.join('\n  ')}` : ''}`, {
      hint: [hintFor(lines), kept ? `full log: ${kept}` : undefined].filter(Boolean).join('; ') || undefined,
      details: { log: kept, criuLines: lines, criuExit: r.code ?? null },
    });
  })();
  return { done, psSocket: opts.pageServerSocket ? (child.stdio[3] as Duplex) : undefined };
}

/** Copies a CRIU log to the persistent log directory (0600); returns its path, or undefined. */
/** The last `max` bytes of a file. */
async function readTail(path: string, max: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const n = Math.min(size, max);
    const buf = Buffer.alloc(n);
    const { bytesRead } = await fh.read(buf, 0, n, size - n);
    return buf.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** The most of a CRIU log kept, or read, after a failure. */
const KEPT_LOG_MAX = 16 << 20;

export async function keepLog(logFile: string, label: string): Promise<string | undefined> {
  try {
    const dir = logDir();
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const dest = join(dir, `${label}-${utcStamp()}-${process.pid}.log`);
    const { size } = await stat(logFile);
    if (size <= KEPT_LOG_MAX) await copyFile(logFile, dest);
    // A CRIU stuck in a loop can log gigabytes: keep the end, where the failure is.
    else await writeFile(dest, Buffer.concat([Buffer.from(`[cedana: the first ${size - KEPT_LOG_MAX} bytes of this log were dropped]\n`), await readTail(logFile, KEPT_LOG_MAX)]), { mode: 0o600 });
    await chmod(dest, 0o600);
    return dest;
  } catch {
    return undefined;
  }
}

export async function networkLockBackend(): Promise<'iptables' | 'nftables' | undefined> {
  if (await findOnPath('iptables')) return 'iptables';
  if (await findOnPath('nft')) return 'nftables';
  return undefined;
}
