/**
 * The process the migration benchmark moves: python3 holding N MiB of random memory that keeps
 * changing, as a live service's would: every second it overwrites a random 1% of its pages with
 * random bytes, then bumps a heartbeat file. The heartbeat lives in a directory both hosts see (the
 * test bed's hosts share the file system except /tmp, /var/tmp and /run), so the bench can tell that
 * the process runs on the target after a migration. Only a process carrying our marker is killed here.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { pathExists } from '../src/util/paths.js';
import { FILL_MEMORY, killMarked } from './fixture.js';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const DIRTY_MARK = 'cedana-bench-dirty-fixture';
const MARK = DIRTY_MARK;
const READY_COMM = 'bench-dirty';

const SCRIPT = `${FILL_MEMORY}
import random
beat = os.path.join(sys.argv[4], '%d.beat' % os.getpid())
percent = float(sys.argv[3])
with open('/proc/self/comm', 'w') as f:
    f.write('${READY_COMM}')
pages = size >> 12
per_second = max(1, int(pages * percent / 100))
n = 0
while True:
    for _ in range(per_second):
        off = random.randrange(pages) << 12
        buf[off:off + 4096] = os.urandom(4096)
    n += 1
    with open(beat + '.new', 'w') as f:
        f.write('%d\\n' % n)
    os.replace(beat + '.new', beat)
    time.sleep(1)
`;

/** Fixtures started and not yet exited here, for the cleanup after a failure or Ctrl-C. */
const live = new Set<DirtyFixture>();

/** SIGKILLs every fixture still running on this host (ours, by PID and marker). */
export async function killMovingFixtures(): Promise<void> {
  for (const f of [...live]) if (await f.kill()) await f.gone(5000).catch(() => undefined);
}

export class DirtyFixture {
  private childExited = false;

  private constructor(
    readonly pid: number,
    readonly mib: number,
    private readonly stateDir: string,
  ) {}

  /** Starts the fixture in its own session, stdio on /dev/null; call ready() before moving it. */
  static spawn(mib: number, dirtyPercent: number, stateDir: string): DirtyFixture {
    const child = spawn('python3', ['-c', SCRIPT, MARK, String(mib), String(dirtyPercent), stateDir], { detached: true, stdio: 'ignore', cwd: '/' });
    child.on('error', () => undefined);
    if (child.pid === undefined) throw new Error('cannot start the fixture: python3 not found');
    const fixture = new DirtyFixture(child.pid, mib, stateDir);
    live.add(fixture);
    child.once('exit', () => {
      fixture.childExited = true;
      live.delete(fixture);
    });
    child.unref();
    return fixture;
  }

  /** The heartbeat count (one per second of dirtying), 0 before the first. */
  async beats(): Promise<number> {
    const text = await readFile(join(this.stateDir, `${this.pid}.beat`), 'utf8').catch(() => '');
    return Number.parseInt(text, 10) || 0;
  }

  /** Waits until the memory is filled and the first second of dirtying is done. */
  async ready(timeoutMs = 300_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while ((await this.beats()) < 1) {
      if (this.childExited) throw new Error(`the fixture (PID ${this.pid}) exited while filling its memory`);
      if (performance.now() > deadline) throw new Error(`the fixture did not fill ${this.mib} MiB in ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  /** Waits until the heartbeat moves past `after`: the process runs (wherever it is now). */
  async beating(after: number, timeoutMs = 10_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while ((await this.beats()) <= after) {
      if (performance.now() > deadline) throw new Error(`the fixture (PID ${this.pid}) did not beat within ${timeoutMs} ms after the migration`);
      await sleep(50);
    }
  }

  /** Waits until the original, our child, has exited and been reaped (CRIU ends it after a dump). */
  async gone(timeoutMs = 60_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!this.childExited || (await pathExists(`/proc/${this.pid}`))) {
      if (performance.now() > deadline) throw new Error(`PID ${this.pid} still exists here ${timeoutMs} ms after the migration`);
      await sleep(10);
    }
  }

  /** SIGKILLs the fixture if it still runs here; a PID taken by another process is left alone. */
  kill(): Promise<boolean> {
    return killMarked(this.pid, MARK);
  }
}
