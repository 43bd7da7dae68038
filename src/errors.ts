/**
 * Every failure cedana reports has a stable code (for scripts) and an exit status (for shells).
 * The table is the contract documented in the README; tests check that the two agree.
 */
export const ERROR_CODES = {
  INTERNAL: { exit: 1, what: 'unexpected internal error (a bug: please report it)' },
  USAGE: { exit: 2, what: 'bad command line: unknown option, missing or malformed argument' },
  NOT_ROOT: { exit: 3, what: 'cedana must run as root (CRIU needs CAP_SYS_ADMIN and ptrace)' },
  PID_NOT_FOUND: { exit: 4, what: 'no process with that PID' },
  PID_REFUSED: { exit: 5, what: 'that process cannot be checkpointed (PID 1, a kernel thread, cedana itself or its ancestor)' },
  CRIU_MISSING: { exit: 6, what: 'criu is not installed or not executable' },
  CRIU_TOO_OLD: { exit: 6, what: 'criu is older than 4.2, or older than the CRIU that made the image' },
  HOST_UNSUPPORTED: { exit: 7, what: 'this host lacks what the operation needs: `criu check` fails (the kernel lacks what CRIU needs), or a tool or setting is missing (the hint names it)' },
  CRIU_FAILED: { exit: 8, what: 'CRIU ran and failed; its log is kept and quoted' },
  IMAGE_INVALID: { exit: 9, what: 'the image is missing, malformed, tampered with, truncated or unsafe' },
  IMAGE_INCOMPATIBLE: { exit: 10, what: 'the image was made on an incompatible host (architecture, CPU features)' },
  OUTPUT_EXISTS: { exit: 11, what: 'the output path already exists (use --force to replace it)' },
  PID_IN_USE: { exit: 12, what: 'a PID the image needs is taken on this host' },
  REMAP_INVALID: { exit: 14, what: 'a --map-path target is missing or differs from the file at dump time, or a --map-port port is not listened on' },
  FILE_TOO_LARGE: { exit: 15, what: 'a deleted-but-open file is over the shipping limit (--ship-files carries it)' },
  FILE_CONFLICT: { exit: 16, what: 'a file the image carries exists here with another size, or its directory is missing' },
  TCP_KEEP_IMPOSSIBLE: { exit: 17, what: '--tcp-established was given, but a connection\'s local address does not exist where it would be restored' },
  SHARED_FILE_LOCKED: { exit: 18, what: 'the tree holds a write lock on a file the target sees too (shared storage): it cannot be taken there while the frozen source holds it' },
  TARGET_LOCK_BLOCKED: { exit: 19, what: "the target's restore waited on a file lock held there (by another process, or by the frozen source on shared storage) and was ended" },
  IO_ERROR: { exit: 13, what: 'reading or writing a file or stream failed (disk full, broken pipe, permissions)' },
  SSH_UNREACHABLE: { exit: 20, what: 'the target cannot be reached over SSH (name, address, port, network)' },
  SSH_AUTH_FAILED: { exit: 21, what: 'the target refused every key offered (agent, IdentityFile, default identities)' },
  HOST_KEY_UNKNOWN: { exit: 22, what: 'the target is not in known_hosts (check it, then --accept-new-host-key records it)' },
  HOST_KEY_MISMATCH: { exit: 23, what: "the target's host key differs from the one in known_hosts; always refused" },
  SSH_FAILED: { exit: 24, what: 'the target sshd refused a session or a forwarded channel' },
  CONNECTION_LOST: { exit: 25, what: 'the SSH connection dropped mid-way; the source was resumed' },
  TARGET_NOT_ROOT: { exit: 26, what: 'the SSH user on the target is not root' },
  TARGET_CRIU_MISSING: { exit: 27, what: 'the target has no CRIU, or one older than 4.2 or than this host' },
  TARGET_UNSUPPORTED: { exit: 28, what: '`criu check` fails on the target' },
  CPU_INCOMPATIBLE: { exit: 29, what: "the target's CPU lacks features of this one (`criu cpuinfo check`)" },
  TARGET_NO_SPACE: { exit: 30, what: 'not enough free disk on the target for the image' },
  TARGET_NO_MEMORY: { exit: 31, what: 'not enough available memory on the target for the process' },
  TARGET_PID_IN_USE: { exit: 32, what: 'a PID the tree needs is taken on the target' },
  FILES_MISSING_ON_TARGET: { exit: 33, what: 'files the process has open do not exist on the target' },
  TARGET_RESTORE_FAILED: { exit: 34, what: "the target's CRIU failed to restore; the source was resumed" },
  HOOK_FAILED: { exit: 35, what: 'the --hook command failed (pre-restore or post-restore); the source was resumed' },
  TARGET_PORT_IN_USE: { exit: 36, what: 'a TCP port the tree listens on is taken on the target (--map-port moves it)' },
  LINK_TOO_SLOW: { exit: 37, what: 'post-copy refused: the link to the target is slower than --min-throughput' },
  PROCESS_LOST: { exit: 38, what: 'post-copy: the page stream broke after the target started; the process is lost' },
  FREEZE_TIMEOUT: { exit: 39, what: 'the migration did not finish within --freeze-timeout of the freeze; the source was resumed and the target cleaned up' },
  GPU_UNSUPPORTED: { exit: 40, what: 'the tree uses the GPU (or the image holds GPU state) and cuda-checkpoint or a driver that can step it is missing' },
  GPU_FAILED: { exit: 41, what: 'a cuda-checkpoint step failed; the processes were brought back onto their GPUs unless the error names gpuNotResumed (or says the tree was ended)' },
  GPU_MISMATCH: { exit: 42, what: "this host's (or the target's) GPUs, free GPU memory or driver do not fit the image's GPU state" },
  TARGET_PTY_IN_USE: { exit: 49, what: 'a pseudo-terminal index the tree holds is in use on the target (CRIU recreates each terminal with its index)' },
  LOCK_LOST: { exit: 50, what: 'the restored tree does not hold a file lock it held at the dump (CRIU dropped it); the restored tree was ended (--allow-lost-locks accepts it)' },
  TARGET_UNRESPONSIVE: { exit: 51, what: 'a command on the target did not end in time before anything was frozen (a login script there that blocks, a hung host)' },
  CONTAINER_NOT_FOUND: { exit: 43, what: 'no container with that id in runc or crun (or the --runtime given)' },
  CONTAINER_NOT_RUNNING: { exit: 44, what: 'the container exists but is not running (created or stopped): nothing to checkpoint' },
  CONTAINER_EXISTS: { exit: 45, what: 'a container with the id to restore exists already (here or on the target)' },
  RUNTIME_FAILED: { exit: 46, what: "the OCI runtime's checkpoint or restore failed; its message and CRIU's log are quoted" },
  ROOTFS_MISSING: { exit: 47, what: "the container's root file system is not where it was and the image does not carry it (dump with --rootfs)" },
  CAPABILITY_MISSING: { exit: 48, what: "root lacks a capability CRIU needs here, e.g. CAP_SYS_RESOURCE to dump another user's process (`cedana check` lists them); a dump refused for it leaves the process running" },
  INTERRUPTED: { exit: 130, what: 'interrupted by SIGINT or SIGTERM; the process was left running' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface ErrorOptions {
  hint?: string;
  /** Extra machine-readable fields merged into the JSON error object. */
  details?: Record<string, unknown>;
  cause?: unknown;
}

export class CedanaError extends Error {
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: ErrorOptions = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CedanaError';
    this.code = code;
    this.hint = opts.hint;
    this.details = opts.details ?? {};
  }

  get exitCode(): number {
    return ERROR_CODES[this.code].exit;
  }
}

export function exitCodeFor(code: ErrorCode): number {
  return ERROR_CODES[code].exit;
}

/** Turns anything thrown into a CedanaError; Node system errors keep their errno code in details. */
export function toCedanaError(err: unknown): CedanaError {
  if (err instanceof CedanaError) return err;
  const e = err as NodeJS.ErrnoException | undefined;
  if (e && typeof e.code === 'string' && ['ENOSPC', 'EDQUOT', 'EPIPE', 'EACCES', 'EROFS', 'EIO', 'EEXIST', 'ENOENT', 'EPERM', 'EMFILE'].includes(e.code)) {
    return new CedanaError('IO_ERROR', e.message, {
      hint: e.code === 'ENOSPC' ? 'free some space or choose another --output' : undefined,
      details: { errno: e.code },
      cause: err,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new CedanaError('INTERNAL', message, { cause: err });
}
