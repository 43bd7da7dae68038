/**
 * A dump that fails or is interrupted part-way leaves the process running where it was and keeps
 * no partial image.
 */
import { execa } from 'execa';
import { spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BIN, cedana, parseJsonLine } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

const memhog = (mib: number) => owned.memhog(mib);

/** Alive, beating again, and its memory still what it was. */
async function expectResumedIntact(dir: string, pid: number, sha0: string): Promise<void> {
  expect(alive(pid)).toBe(true);
  const beat = Number(readText(join(dir, 'beat')));
  await waitFor('heartbeat to go on', () => Number(readText(join(dir, 'beat'))) > beat + 5);
  process.kill(pid, 'SIGUSR1');
  expect(await waitFor('checksum', () => readText(join(dir, 'sha-1')))).toBe(sha0);
}

/** A 2 MiB tmpfs in dir (unmounted after the test): a disk that fills up at once. */
async function fullDisk(dir: string): Promise<string> {
  const small = join(dir, 'small');
  await execa('mkdir', [small]);
  await execa('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=700', 'tmpfs', small]);
  owned.onCleanup(async () => void (await execa('umount', [small], { reject: false })));
  return small;
}

describe('failed and interrupted dumps', () => {
  // CRIU writing its pages images itself (CEDANA_PAGE_SINK=0; a full dump to a directory does by default); through the page sink, see page-sink.test.ts.
  it('a dump onto a full disk fails, the process resumes, no partial image is left', async () => {
    const { dir, pid, sha0 } = await memhog(32);
    const small = await fullDisk(dir);
    const r = await cedana(['dump', String(pid), '-o', join(small, 'img'), '--json'], { env: { CEDANA_PAGE_SINK: '0' } });
    expect(r.exitCode).toBe(8);
    expect(r.json!.error).toMatchObject({ code: 'CRIU_FAILED', processRunning: true });
    expect(r.json!.error.message).toMatch(/No space left|ENOSPC|write/i);
    expect(readdirSync(small)).toEqual([]);
    await expectResumedIntact(dir, pid, sha0);
  });

  it('a dump into an archive on a full disk (its pages streaming into it) fails, the process resumes, no partial archive is left', async () => {
    const { dir, pid, sha0 } = await memhog(32);
    const small = await fullDisk(dir);
    for (const name of ['img.tar.zst', 'img.tar']) {
      const r = await cedana(['dump', String(pid), '-o', join(small, name), '--json']);
      expect(r.exitCode, name).toBe(13);
      expect(r.json!.error).toMatchObject({ code: 'IO_ERROR', processRunning: true });
      expect(r.json!.error.message).toMatch(/writing the pages images failed: .*(No space left|ENOSPC)/);
      expect(readdirSync(small)).toEqual([]);
      expect(alive(pid)).toBe(true);
    }
    await expectResumedIntact(dir, pid, sha0);
  });

  it('a reader that goes away mid-stream aborts the dump and resumes the process', async () => {
    const { dir, pid, sha0 } = await memhog(32);
    const sh = `node ${BIN} dump ${pid} -o - --json 2>${join(dir, 'err.json')} | head -c 100000 >/dev/null`;
    await execa('sh', ['-c', sh]);
    const j = parseJsonLine(readText(join(dir, 'err.json'))!)!;
    expect(j.ok).toBe(false);
    expect(j.error).toMatchObject({ code: 'IO_ERROR', processRunning: true });
    await expectResumedIntact(dir, pid, sha0);
  });

  it('SIGINT while the tree is frozen resumes it (exit 130, INTERRUPTED)', async () => {
    const { dir, pid, sha0 } = await memhog(32);
    // Nobody reads the stream: cedana blocks writing it with the tree frozen at the commit point.
    // (node's own spawn: it does not read a pipe nobody consumes, execa would.)
    const child = spawn('node', [BIN, 'dump', String(pid), '-o', '-', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    // Frozen, held by cedana: its heartbeat (every 20 ms) stands still. (Its state is not the witness:
    // while CRIU's parasite streams its pages, the task runs that code, blocked on the full socket.)
    const still = async (): Promise<boolean> => {
      const b = readText(join(dir, 'beat'));
      await new Promise((r) => setTimeout(r, 400));
      return readText(join(dir, 'beat')) === b;
    };
    await waitFor('the tree to be held frozen', still, 30_000);
    expect(await still()).toBe(true);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    const j = parseJsonLine(stderr)!;
    expect(j.error).toMatchObject({ code: 'INTERRUPTED', processRunning: true });
    child.stdout!.destroy();
    await expectResumedIntact(dir, pid, sha0);
  });
});
