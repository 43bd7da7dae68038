/**
 * Pre-copy, for real, where the kernel tracks dirty pages: this machine's kernel does not
 * (CONFIG_MEM_SOFT_DIRTY is off), so the scenario runs in a qemu guest (software emulation) booting
 * Debian's cloud kernel 6.1 with this machine's file system as its root (scripts/guest). Inside it,
 * `cedana migrate` with no mode given moves a process holding random memory to a test-bed host:
 * it must choose pre-copy, send the memory in rounds while the process runs, stop by the rule, send
 * only what changed while frozen, and the process must find its memory intact on the target.
 * Then a second process moves with `--precopy-by content` (cedana's rounds by page contents) on the
 * same kernel. About 5–8 minutes (everything in the guest is emulated).
 */
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cedana.js';

describe('migrate with pre-copy (in a guest whose kernel has soft-dirty)', () => {
  it('picks pre-copy by itself, converges in rounds, and the memory arrives intact', async () => {
    const r = await execa(`${ROOT}scripts/guest/run`, [`${ROOT}scripts/guest/precopy-run.sh`], { reject: false, all: true, timeout: 1_440_000, env: { ...process.env, CEDANA_GUEST_TIMEOUT: '1380' } });
    const line = String(r.all).split('\n').find((l) => l.includes('GUEST-RESULT '));
    expect(line, String(r.all).slice(-3000)).toBeDefined();
    const g = JSON.parse(line!.slice(line!.indexOf('GUEST-RESULT ') + 13)) as Record<string, any>;
    expect(g.kernel).toMatch(/^6\.1\./);
    expect(g.exitCode, JSON.stringify(g.cedana)).toBe(0);
    const c = g.cedana;
    expect(c).toMatchObject({ ok: true, command: 'migrate', mode: 'precopy', targetPid: g.pid });
    const rounds = c.precopy.rounds as { round: number; pagesWritten: number; pagesSkippedParent: number }[];
    expect(rounds.length).toBeGreaterThanOrEqual(1);
    // Round 1 sends the whole memory while the process runs; the frozen dump only what changed since.
    expect(rounds[0]!.pagesWritten * 4096).toBeGreaterThan(g.mib * 1024 * 1024);
    expect(c.precopy.finalPagesInParent).toBeGreaterThan(g.mib * 256 * 0.9);
    expect(c.precopy.finalPagesWritten).toBeLessThan(rounds[0]!.pagesWritten / 10);
    expect(c.decisions.join('\n')).toMatch(/pre-copy: \d+ round\(s\) while the tree ran; stopped: /);
    expect(g.events.length).toBeGreaterThanOrEqual(2 * rounds.length); // each round announced and reported
    expect(g.sourceAlive).toBe(false);
    expect(g.shaOnTarget).toBe(g.sha0);
    // The memory crossed through the OpenSSH link (the guest has OpenSSH's client).
    expect(c.decisions.join('\n')).toMatch(/page streams: OpenSSH/);

    // --precopy-by content on the same kernel: cedana's rounds by page contents, not CRIU's.
    const b = g.byContent as Record<string, any>;
    expect(b.exitCode, JSON.stringify(b.cedana ?? b.error)).toBe(0);
    expect(b.cedana).toMatchObject({ ok: true, mode: 'precopy', targetPid: b.pid });
    expect(b.cedana.decisions.join('\n')).toMatch(/pre-copy by content: \d+ round\(s\)/);
    const br = b.cedana.precopy.rounds as { pagesWritten: number }[];
    expect(br[0]!.pagesWritten * 4096).toBeGreaterThan(b.mib * 1024 * 1024);
    expect(b.cedana.precopy.finalPagesInParent).toBeGreaterThan(b.mib * 256 * 0.9);
    expect(b.sourceAlive).toBe(false);
    expect(b.shaOnTarget).toBe(b.sha0);
  }, 1_500_000);
});
