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
  HOST_UNSUPPORTED: { exit: 7, what: '`criu check` fails on this host: the kernel lacks what CRIU needs' },
  CRIU_FAILED: { exit: 8, what: 'CRIU ran and failed; its log is kept and quoted' },
  IMAGE_INVALID: { exit: 9, what: 'the image is missing, malformed, tampered with, truncated or unsafe' },
  IMAGE_INCOMPATIBLE: { exit: 10, what: 'the image was made on an incompatible host (architecture, CPU features)' },
  OUTPUT_EXISTS: { exit: 11, what: 'the output path already exists (use --force to replace it)' },
  PID_IN_USE: { exit: 12, what: 'a PID the image needs is taken on this host' },
  IO_ERROR: { exit: 13, what: 'reading or writing a file or stream failed (disk full, broken pipe, permissions)' },
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
