/**
 * The frozen window of a migration: from the freeze to the commit, every step watches one signal,
 * which fires on Ctrl-C/SIGTERM or when the deadline passes, so that nothing after the freeze can
 * hang: past it the migration is abandoned, the target's restore ended and the source resumed.
 */
import { CedanaError } from '../errors.js';

/**
 * How long the source may stay frozen by default: a minute for the fixed steps plus 20 s per GiB
 * of memory (a link down to ~50 MB/s). Pure.
 */
export function freezeTimeoutFor(memoryBytes: number): number {
  return 60_000 + Math.ceil((memoryBytes / 2 ** 30) * 20_000);
}

export interface FrozenWindow {
  signal: AbortSignal;
  /** The error to report once `signal` fired: FREEZE_TIMEOUT, or the interrupt's. */
  reason: () => CedanaError;
  clear: () => void;
}

export function frozenWindow(o: { signal?: AbortSignal; timeoutMs: number; interrupted: () => CedanaError }): FrozenWindow {
  const ctl = new AbortController();
  let timedOut = false;
  const onUser = (): void => ctl.abort();
  o.signal?.addEventListener('abort', onUser, { once: true });
  if (o.signal?.aborted) ctl.abort();
  const timer = setTimeout(() => {
    timedOut = true;
    ctl.abort();
  }, o.timeoutMs);
  // A deadline must never be what keeps the process alive once the migration is over.
  timer.unref();
  return {
    signal: ctl.signal,
    reason: () =>
      timedOut
        ? new CedanaError('FREEZE_TIMEOUT', `the migration did not finish within ${o.timeoutMs < 1000 ? `${o.timeoutMs} ms` : `${(o.timeoutMs / 1000).toFixed(1).replace(/\.0$/, '')} s`} of the freeze; it was abandoned, the source resumed and the target cleaned up`, {
            hint: 'see what the target was doing (a slow link, a restore waiting on something); --freeze-timeout gives it longer',
            details: { freezeTimeoutMs: o.timeoutMs },
          })
        : o.interrupted(),
    clear: () => {
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onUser);
    },
  };
}
