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
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathExists } from '../util/paths.js';

export type GateEvent = 'ready' | 'exited';

export type GateAction = 'post-dump' | 'post-restore';

export class ActionGate {
  readonly script: string;
  private decided = false;

  private constructor(readonly dir: string, action: GateAction) {
    this.script = join(dir, `${action}-gate.sh`);
  }

  static async create(dir: string, action: GateAction, ownerPid = process.pid): Promise<ActionGate> {
    if (/['\n]/.test(dir)) throw new Error(`gate directory has an unsafe name: ${dir}`);
    const gate = new ActionGate(dir, action);
    const text = `#!/bin/sh
# cedana ${action} gate (see src/criu/gate.ts)
[ "$CRTOOLS_SCRIPT_ACTION" = ${action} ] || exit 0
g='${dir}'
: > "$g/ready"
while :; do
  [ -e "$g/commit" ] && exit 0
  [ -e "$g/abort" ] && exit 1
  kill -0 ${ownerPid} 2>/dev/null || exit 1
  sleep 0.01
done
`;
    await writeFile(gate.script, text, { mode: 0o700 });
    await chmod(gate.script, 0o700);
    return gate;
  }

  /** Resolves 'ready' when CRIU reached the action, or 'exited' if `exited` settles first. */
  async waitReady(exited: Promise<unknown>): Promise<GateEvent> {
    let over = false;
    const onExit = exited.then(
      () => 'exited' as const,
      () => 'exited' as const,
    );
    const poll = (async (): Promise<GateEvent> => {
      while (!over) {
        if (await pathExists(join(this.dir, 'ready'))) return 'ready';
        await sleep(4);
      }
      return 'exited';
    })();
    const first = await Promise.race([poll, onExit]);
    over = true;
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
