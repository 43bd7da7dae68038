/**
 * A gate: a CRIU action script that holds CRIU at one of its action points until cedana decides.
 *
 * `post-dump`: every page is written and the tasks are still frozen. If the script exits non-zero
 * there, CRIU resumes the tasks instead of killing them. cedana uses that point as the commit point
 * of a transaction: it finishes the image (manifest, checksums, archive or stream, or the restore on
 * a target) while the tree is frozen, then writes `commit` (CRIU ends the tree, or resumes it with
 * --leave-running) or `abort` (CRIU resumes it). If cedana itself dies, the script sees its PID gone
 * and aborts: the process is never lost.
 *
 * `post-restore`: the tree is restored but has not run a single instruction yet; a non-zero exit
 * makes CRIU kill it. cedana verifies the large pages images while CRIU restores and lets the tree
 * run only if they check out.
 */
import { watch, type FSWatcher } from 'node:fs';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathExists } from '../util/paths.js';

/** How often `ready` is looked for: often without inotify, seldom (a safety net) with it. */
const POLL_MS = 4;
const POLL_WATCHED_MS = 100;

export type GateEvent = 'ready' | 'exited';

export type GateAction = 'post-dump' | 'post-restore';

export class ActionGate {
  readonly script: string;
  private decided = false;

  /** The gate's own directory (the script and its flags), below the caller's: CRIU's log is not in it. */
  readonly dir: string;

  private constructor(parent: string, action: GateAction) {
    this.dir = join(parent, `${action}-gate`);
    this.script = join(this.dir, 'gate.sh');
  }

  static async create(parent: string, action: GateAction, ownerPid = process.pid): Promise<ActionGate> {
    if (/['\n]/.test(parent)) throw new Error(`gate directory has an unsafe name: ${parent}`);
    const gate = new ActionGate(parent, action);
    const dir = gate.dir;
    await mkdir(dir, { mode: 0o700 });
    const text = `#!/bin/sh
# cedana ${action} gate (see src/criu/gate.ts)
[ "$CRTOOLS_SCRIPT_ACTION" = ${action} ] || exit 0
g='${dir}'
: > "$g/ready"
n=0
while :; do
  [ -e "$g/commit" ] && exit 0
  [ -e "$g/abort" ] && exit 1
  kill -0 ${ownerPid} 2>/dev/null || exit 1
  # cedana often decides within milliseconds (a restore whose pages are verified): look often at first.
  if [ $n -lt 100 ]; then n=$((n + 1)); sleep 0.002; else sleep 0.01; fi
done
`;
    await writeFile(gate.script, text, { mode: 0o700 });
    await chmod(gate.script, 0o700);
    return gate;
  }

  /**
   * Resolves 'ready' when CRIU reached the action, or 'exited' if `exited` settles first. inotify on
   * the gate's directory says when `ready` appears (polling every 4 ms cost ~30 ms of CPU in a 1 GiB
   * restore, against CRIU on a 2-CPU machine); a slow poll stays as a safety net.
   */
  async waitReady(exited: Promise<unknown>): Promise<GateEvent> {
    let over = false;
    let changed = false; // an event since the last look: look again at once
    let wake: (() => void) | undefined;
    let timer: NodeJS.Timeout | undefined;
    let watcher: FSWatcher | undefined;
    try {
      watcher = watch(this.dir, () => {
        changed = true;
        wake?.();
      });
      watcher.on('error', () => {
        watcher?.close();
        watcher = undefined;
        changed = true;
        wake?.();
      });
    } catch {
      watcher = undefined; // no inotify (e.g. out of watches): poll
    }
    const onExit = exited.then(
      () => 'exited' as const,
      () => 'exited' as const,
    );
    const poll = (async (): Promise<GateEvent> => {
      while (!over) {
        changed = false;
        if (await pathExists(join(this.dir, 'ready'))) return 'ready';
        if (changed) continue;
        await new Promise<void>((resolve) => {
          wake = resolve;
          timer = setTimeout(resolve, watcher ? POLL_WATCHED_MS : POLL_MS);
        });
        clearTimeout(timer);
      }
      return 'exited';
    })();
    const first = await Promise.race([poll, onExit]);
    over = true;
    wake?.();
    clearTimeout(timer);
    watcher?.close();
    // CRIU may have exited right after creating `ready` (it cannot: it waits for us), but be exact.
    if (first === 'exited' && (await pathExists(join(this.dir, 'ready')))) return 'ready';
    return first;
  }

  async commit(): Promise<void> {
    await this.decide('commit');
  }

  async abort(): Promise<void> {
    await this.decide('abort');
  }

  /** Aborts, then waits for CRIU (`criuDone`) to act on it: resume the dumped tree, or kill the restored one. */
  async abortAndWait(criuDone: Promise<unknown>): Promise<void> {
    await this.abort();
    await criuDone.catch(() => undefined);
  }

  private async decide(verdict: 'commit' | 'abort'): Promise<void> {
    if (this.decided) return;
    this.decided = true;
    await writeFile(join(this.dir, verdict), '', { mode: 0o600 });
  }
}
