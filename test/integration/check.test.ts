/** cedana check against this host's real CRIU and kernel. */
import { execa } from 'execa';
import { readFileSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cedana } from '../helpers/cedana.js';
import { Owned } from '../helpers/processes.js';

const owned = new Owned();
afterEach(() => owned.cleanup());

describe('cedana check', () => {
  it('reports CRIU, criu check and the optional features as JSON, exit 0', async () => {
    const r = await cedana(['check', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const version = /Version:\s*(\S+)/.exec((await execa('criu', ['--version'])).stdout)![1];
    expect(r.json).toMatchObject({ ok: true, command: 'check', root: true, criu: { found: true, version, check: 'ok' } });
    const features = Object.fromEntries((r.json!.features as { name: string; available: boolean }[]).map((f) => [f.name, f.available]));
    // What `criu check --feature` says on this very host, asked directly.
    for (const name of ['mem_dirty_track', 'uffd-noncoop']) {
      const direct = await execa('criu', ['check', '--feature', name], { reject: false });
      expect(features[name], name).toBe(direct.exitCode === 0);
    }
    expect(features['network-lock']).toBe(true);
    expect(features).toHaveProperty('cuda-checkpoint');
  });

  it("reports the capabilities CRIU inherits: this very process's CapEff, and CAP_SYS_RESOURCE missing exactly where it is", async () => {
    const r = await cedana(['check', '--json']);
    // Read here, independently of cedana: the test runs as the same root, whose capabilities cedana inherits.
    const capEff = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))![1]!;
    const mask = BigInt(`0x${capEff}`);
    const caps = r.json!.capabilities as { capEff: string; effective: string[]; missing: { name: string; required: boolean; prevents: string }[] };
    expect(caps.capEff).toBe(capEff);
    expect(caps.effective).toHaveLength([...mask.toString(2)].filter((b) => b === '1').length);
    const has = (bit: number, name: string): boolean => {
      const set = ((mask >> BigInt(bit)) & 1n) === 1n;
      expect(caps.effective.includes(name), name).toBe(set);
      expect(caps.missing.some((m) => m.name === name), name).toBe(!set);
      return set;
    };
    expect(has(21, 'CAP_SYS_ADMIN')).toBe(true); // cedana check passes here (exit 0 above): root has what nothing works without
    has(19, 'CAP_SYS_PTRACE');
    const human = await cedana(['check']);
    if (has(24, 'CAP_SYS_RESOURCE')) {
      expect(human.stdout).not.toMatch(/CAP_SYS_RESOURCE/);
    } else {
      // Only other users' processes and post-copy's pipes: a warning, the host still fits.
      expect(caps.missing.find((m) => m.name === 'CAP_SYS_RESOURCE')).toEqual({
        name: 'CAP_SYS_RESOURCE', required: false, prevents: expect.stringMatching(/processes of other users cannot be dumped.*prlimit/),
      });
      expect(human.stdout).toMatch(/– capabilities: missing .*CAP_SYS_RESOURCE/);
      expect(human.stdout).toMatch(/^ {4}CAP_SYS_RESOURCE: processes of other users cannot be dumped/m);
    }
    expect(r.json!.ok).toBe(true);
  });

  it('prints a readable report for people', async () => {
    const r = await cedana(['check']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/criu 4\.\d+/);
    expect(r.stdout).toMatch(/this host can dump and restore/);
    expect(r.stdout).not.toMatch(/\x1b\[/); // NO_COLOR is honoured
  });

  it('is not ok without iptables or nft (dump needs one for CRIU’s network lock) and says what to install; names a criu outside PATH', async () => {
    // A PATH with node alone; CRIU named outright.
    const bin = await owned.tempDir();
    symlinkSync(process.execPath, join(bin, 'node'));
    const criu = (await execa('sh', ['-c', 'command -v criu'])).stdout.trim();
    const r = await cedana(['check', '--json'], { env: { PATH: bin, CEDANA_CRIU: criu } });
    expect(r.json).toMatchObject({ ok: false, criu: { found: true, check: 'ok' }, error: { code: 'HOST_UNSUPPORTED', hint: expect.stringMatching(/iptables or nftables/) } });
    expect(r.json!.features).toContainEqual(expect.objectContaining({ name: 'network-lock', available: false }));
    expect(r.exitCode).toBe(7);
    // The same PATH without CEDANA_CRIU: the CRIU that is there (scripts/install-criu puts it in
    // /usr/local/sbin) is named as outside PATH, not reported as to be installed.
    const unnamed = await cedana(['check', '--json'], { env: { PATH: bin } });
    expect(unnamed.json!.error).toMatchObject({ code: 'CRIU_MISSING', hint: `${criu} is not on PATH: add ${dirname(criu)} to PATH or set CEDANA_CRIU=${criu}` });
  });
});
