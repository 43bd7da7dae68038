/** cedana check against this host's real CRIU and kernel. */
import { execa } from 'execa';
import { symlinkSync } from 'node:fs';
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
