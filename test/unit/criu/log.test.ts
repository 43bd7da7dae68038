import { describe, expect, it } from 'vitest';
import { decisiveLines, hintFor } from '../../../src/criu/log.js';

const FAILED_DUMP = [
  '(00.000000) Version: 4.2 (gitid 0)',
  '(00.000312) Running on host Linux 6.8.0 x86_64',
  '(00.001204) Dumping task (pid: 4242)',
  '(00.004567) Error (criu/sk-inet.c:191): inet: Connected TCP socket, consider using --tcp-established option.',
  '(00.004580) Error (criu/cr-dump.c:1640): Dump files (pid: 4242) failed with -1',
  '(00.004700) Unlock network',
  '(00.005102) Error (criu/cr-dump.c:2093): Dumping FAILED.',
  '',
].join('\n');

describe('decisiveLines', () => {
  it('keeps only the error lines, without timestamps or source locations', () => {
    expect(decisiveLines(FAILED_DUMP)).toEqual([
      'inet: Connected TCP socket, consider using --tcp-established option.',
      'Dump files (pid: 4242) failed with -1',
      'Dumping FAILED.',
    ]);
  });

  it('recognises BUG lines as errors', () => {
    const log = '(00.1) fine\n(00.2) BUG at criu/pie/restorer.c:123\n(00.3) fine again\n';
    expect(decisiveLines(log)).toEqual(['BUG at criu/pie/restorer.c:123']);
  });

  it('does not take a word that merely contains "Error" for an error line', () => {
    const log = '(00.1) Errors are counted\n(00.2) MyError (x): no\n(00.3) last line\n';
    // No error lines: it falls back to the last lines.
    expect(decisiveLines(log)).toEqual(['Errors are counted', 'MyError (x): no', 'last line']);
  });

  it('without errors, returns the last `max` non-empty lines', () => {
    const log = Array.from({ length: 20 }, (_, i) => `(00.${String(i).padStart(6, '0')}) line ${i}`).join('\n') + '\n\n';
    const out = decisiveLines(log, 3);
    expect(out).toEqual(['line 17', 'line 18', 'line 19']);
  });

  it('with many errors keeps the first max-1 and the last', () => {
    const log = Array.from({ length: 12 }, (_, i) => `(00.${String(i).padStart(6, '0')}) Error (f.c:${i}): e${i}`).join('\n');
    const out = decisiveLines(log, 4);
    expect(out).toEqual(['e0', 'e1', 'e2', 'e11']);
  });

  it('exactly max errors are all kept', () => {
    const log = Array.from({ length: 8 }, (_, i) => `Error (f.c:${i}): e${i}`).join('\n');
    expect(decisiveLines(log)).toHaveLength(8);
  });

  it('strips a Warn prefix on fallback lines', () => {
    expect(decisiveLines('(00.000100) Warn  (criu/kerndat.c:1): something odd')).toEqual(['something odd']);
  });

  it('an empty log gives no lines', () => {
    expect(decisiveLines('')).toEqual([]);
    expect(decisiveLines('\n \n')).toEqual([]);
  });
});

describe('hintFor', () => {
  it.each([
    ['Error (criu/page-xfer.c:1): write: No space left on device', /destination is full/],
    ["Error (criu/cr-restore.c:1): Can't fork for 4242: File exists", /PID the image needs is in use/],
    ['PID 4242 is busy', /PID the image needs is in use/],
    ['Error (criu/tty.c:1): tty: Unable to find a master for /dev/pts/3', /terminal/],
    ['Run with --shell-job', /terminal/],
    ['Error (criu/netfilter.c:1): iptables-restore failed', /network locking failed/],
    ['nft: command not found', /network locking failed/],
    ['inet: Connected TCP socket, consider using --tcp-established option.', /--tcp-established or --tcp-close/],
    ['Error (criu/sk-unix.c:1): unix: External socket is used. Consider using --ext-unix-sk option.', /unix socket is connected to a process outside/],
  ])('%s', (line, want) => {
    expect(hintFor([line])).toMatch(want);
  });

  it('knows nothing about unrelated failures', () => {
    expect(hintFor(['Dumping FAILED.'])).toBeUndefined();
    expect(hintFor([])).toBeUndefined();
  });

  it('disk full wins over anything else mentioned', () => {
    expect(hintFor(['Connected TCP socket', 'No space left on device'])).toMatch(/destination is full/);
  });

  it('works on the output of decisiveLines', () => {
    expect(hintFor(decisiveLines(FAILED_DUMP))).toMatch(/--tcp-established/);
  });
});
