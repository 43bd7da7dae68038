/** cedana check against this host's real CRIU and kernel. */
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';
import { cedana } from '../helpers/cedana.js';

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
});
