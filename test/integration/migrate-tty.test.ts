/**
 * Terminals: a tmux server (its panes' terminals inside the tree) moves to another host, which has
 * terminals of its own (a devpts instance), and goes on there; a target where the terminal's index
 * is taken (on real hosts, often by someone's SSH login) is refused before anything is frozen.
 */
import { execa } from 'execa';
import { existsSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana, cedanaOk } from '../helpers/cedana.js';
import { Owned, alive, readText, waitFor } from '../helpers/processes.js';
import { useBed } from '../helpers/testbed.js';

const owned = new Owned();
const t = useBed(24);
afterEach(async () => {
  await t.bed.onHost(t.host, 'pkill -9 -f cedana-pty-holder; for s in /var/lib/cedana-test-*/tmux-*/sock; do [ -S "$s" ] && tmux -S "$s" kill-server; done; true');
  await owned.cleanup();
});

const num = (f: string): number => Number(readText(f)?.trim() ?? 0);

/** A tmux server (socket and a pane's counter in a shared directory); returns its PID and files. */
async function tmux(): Promise<{ pid: number; sock: string; counter: string; ptyIndex: number }> {
  const dir = await mkdtemp(join(t.shared, 'tmux-'));
  const sock = join(dir, 'sock');
  const counter = join(dir, 'count');
  await execa('tmux', ['-S', sock, 'new-session', '-d', '-s', 'job', `i=0; while :; do i=$((i+1)); echo $i > ${counter}; sleep 0.05; done`], { env: { ...process.env, TERM: 'xterm' }, cwd: '/' }); // a cwd every host has (a checkout may sit in a private /tmp)
  const pid = owned.own(Number((await execa('tmux', ['-S', sock, 'display', '-p', '#{pid}'])).stdout.trim()));
  await waitFor('the pane counting', () => num(counter) > 3);
  const fd = readdirSync(`/proc/${pid}/fd`).find((f) => readlinkSync(`/proc/${pid}/fd/${f}`) === '/dev/ptmx')!;
  const ptyIndex = Number(/tty-index:\s*(\d+)/.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))![1]);
  return { pid, sock, counter, ptyIndex };
}

describe('terminals', () => {
  it('a tmux server moves and carries on there; the decisions do not ask for a terminal', async () => {
    const { pid, sock, counter } = await tmux();
    const r = await cedanaOk(['migrate', String(pid), '--to', t.host.name], { env: t.bed.env });
    expect(r.targetPid).toBe(pid);
    const notes = r.decisions.join('\n');
    expect(notes).toMatch(/controlling terminal \(pts\/\d+\) whose master the tree holds/);
    expect(notes).not.toContain('restore needs a terminal too');
    expect(alive(pid)).toBe(false);
    const n = num(counter);
    await waitFor('the pane counting on the target', () => num(counter) > n + 5);
    const there = await t.bed.onHost(t.host, `tmux -S ${sock} list-sessions -F '#{session_name} #{pid}'`);
    expect(there.stdout.trim()).toBe(`job ${pid}`);
  });

  it('a target where the terminal index is taken is refused before freezing; tmux goes on here, its socket intact', async () => {
    const { pid, sock, counter, ptyIndex } = await tmux();
    // Take indexes 0..ptyIndex there (its terminals start at 0), as logins would.
    const take = `exec -a cedana-pty-holder python3 -c 'import os, time; [os.openpty() for _ in range(${ptyIndex + 1})]; time.sleep(600)' </dev/null >/dev/null 2>&1 &`;
    expect((await t.bed.onHost(t.host, `(${take}); sleep 0.5; [ -e /dev/pts/${ptyIndex} ] && echo taken`)).stdout.trim()).toBe('taken');
    const r = await cedana(['migrate', String(pid), '--to', t.host.name, '--json'], { env: t.bed.env });
    expect(r.exitCode).toBe(49);
    expect(r.json!.error).toMatchObject({ code: 'TARGET_PTY_IN_USE', ptys: [ptyIndex], sourceResumed: true });
    expect(r.json!.error.message).toContain(`/dev/pts/${ptyIndex}`);
    expect(existsSync(sock)).toBe(true);
    expect((await execa('tmux', ['-S', sock, 'list-sessions', '-F', '#{session_name} #{pid}'])).stdout.trim()).toBe(`job ${pid}`);
    const n = num(counter);
    await waitFor('the pane counting here', () => num(counter) > n + 5);
    expect((await t.bed.onHost(t.host, 'ls -A /var/tmp')).stdout.trim()).toBe('');
  });
});
