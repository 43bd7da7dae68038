import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { takeResult, wrapCommand } from '../../../src/transport/remote-shell.js';

describe('RemoteShell framing (run by a real sh)', () => {
  it('each command\'s output (stderr merged) and exit status, in order; stdin is /dev/null, not the next command', () => {
    const cmds = ['echo one; echo two >&2', 'cat; exit_code_is() { return 3; }; exit_code_is', 'printf "no newline"', 'false'];
    const text = cmds.map((c, i) => wrapCommand(c, `__m${i}__`)).join('');
    const r = spawnSync('sh', ['-s'], { input: text, encoding: 'utf8' });
    expect(r.status).toBe(0);
    let buf = r.stdout;
    const got: { output: string; code: number }[] = [];
    for (let i = 0; i < cmds.length; i++) {
      const t = takeResult(buf, `__m${i}__`);
      expect(t, `command ${i}`).toBeDefined();
      got.push({ output: t!.output, code: t!.code });
      buf = t!.rest;
    }
    expect(got).toEqual([
      { output: 'one\ntwo\n', code: 0 },
      { output: '', code: 3 }, // cat read /dev/null, not the commands after it
      { output: 'no newline', code: 0 },
      { output: '', code: 1 },
    ]);
    expect(buf).toBe('');
  });

  it('takeResult waits for the whole marker line', () => {
    expect(takeResult('out\n__m__ 0', '__m__')).toBeUndefined();
    expect(takeResult('out\n__m__ 12\nnext', '__m__')).toEqual({ output: 'out', code: 12, rest: 'next' });
    expect(takeResult('out\n__other__ 0\n', '__m__')).toBeUndefined();
  });
});
