/**
 * The process the benchmark dumps and restores: python3 holding N MiB of random (incompressible)
 * memory, in its own session with stdio on /dev/null, so cedana needs no --shell-job for it.
 * Each restore brings it back under the same PID; only a process carrying our marker is ever killed.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { pathExists } from '../src/util/paths.js';
import { setTimeout as sleep } from 'node:timers/promises';

const MARK = 'cedana-bench-fixture';
/** The fixture renames itself (comm) once its memory is filled. */
const READY_COMM = 'bench-ready';

/** Python: fills `buf` with argv[2] MiB of random (incompressible) bytes. Both fixtures start with it. */
export const FILL_MEMORY = `
import os, sys, time
size = int(sys.argv[2]) << 20
buf = bytearray(size)
step = 1 << 20
for off in range(0, size, step):
    buf[off:off + step] = os.urandom(min(step, size - off))
`;

const SCRIPT = `${FILL_MEMORY}
with open('/proc/self/comm', 'w') as f:
    f.write('${READY_COMM}')
while True:
    time.sleep(1)
`;

export class Fixture {
  /** Set when the original process, our child, has exited and Node has reaped it. */
  private childExited = false;

  private constructor(
    readonly pid: number,
    readonly mib: number,
  ) {}

  /** Starts the fixture; call ready() before dumping it. */
  static spawn(mib: number): Fixture {
    const child = spawn('python3', ['-c', SCRIPT, MARK, String(mib)], { detached: true, stdio: 'ignore', cwd: '/' });
    child.on('error', () => undefined); // a failed spawn leaves pid undefined, handled below
    if (child.pid === undefined) throw new Error('cannot start the fixture: python3 not found');
    const fixture = new Fixture(child.pid, mib);
    child.once('exit', () => (fixture.childExited = true));
    child.unref();
    return fixture;
  }

  /** Waits until the memory is filled: VmRSS has reached N MiB and the fixture says it is ready. */
  async ready(timeoutMs = 300_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const status = await readStatus(this.pid);
      if (!status) throw new Error(`the fixture (PID ${this.pid}) exited while filling its memory`);
      if (status.Name === READY_COMM && kib(status.VmRSS) >= this.mib * 1024) return;
      if (performance.now() > deadline) throw new Error(`the fixture did not reach ${this.mib} MiB RSS in ${timeoutMs} ms`);
      await sleep(50);
    }
  }

  /**
   * Waits until the PID is free again: killed by CRIU after a dump, then reaped, by us while it is
   * the original child ('exit' event), by PID 1 once it is a restored process.
   */
  async gone(timeoutMs = 60_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    while (!this.childExited || (await pathExists(`/proc/${this.pid}`))) {
      if (performance.now() > deadline) throw new Error(`PID ${this.pid} still exists ${timeoutMs} ms after the dump`);
      await sleep(10);
    }
  }

  /** Throws unless the fixture runs under its PID (after a restore). */
  async expectRunning(): Promise<void> {
    if (!(await this.isOurs())) throw new Error(`PID ${this.pid} is not the running fixture after the restore`);
  }

  /** SIGKILLs the fixture if it still runs; a PID taken by another process is left alone. */
  kill(): Promise<boolean> {
    return killMarked(this.pid, MARK);
  }

  private isOurs(): Promise<boolean> {
    return carriesMark(this.pid, MARK);
  }
}

/** Whether PID runs a process whose command line carries `mark` (a fixture of ours). */
export async function carriesMark(pid: number, mark: string): Promise<boolean> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return cmdline.split('\0').includes(mark);
}

/** SIGKILLs PID only if it carries `mark`: a PID reused by another process is left alone. */
export async function killMarked(pid: number, mark: string): Promise<boolean> {
  if (!(await carriesMark(pid, mark))) return false;
  try {
    process.kill(pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

/** /proc/<pid>/status as key → value, or undefined when the process is gone. */
async function readStatus(pid: number): Promise<Record<string, string> | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

/** "1048576 kB" → 1048576; absent → 0. */
const kib = (v: string | undefined): number => (v ? Number.parseInt(v, 10) || 0 : 0);
