import { describe, expect, it } from 'vitest';
import { colourWanted, styleFor } from '../../../src/cli/style.js';

const tty = { isTTY: true } as NodeJS.WriteStream;
const pipe = { isTTY: false } as unknown as NodeJS.WriteStream;
const noFlag = {} as NodeJS.WriteStream;

describe('colourWanted', () => {
  it('colour on a TTY with a plain environment', () => {
    expect(colourWanted(tty, { TERM: 'xterm-256color' })).toBe(true);
    expect(colourWanted(tty, {})).toBe(true);
  });

  it('no colour when the stream is not a TTY', () => {
    expect(colourWanted(pipe, { TERM: 'xterm' })).toBe(false);
    expect(colourWanted(noFlag, {})).toBe(false);
  });

  it('NO_COLOR (non-empty) turns colour off, even on a TTY and even with FORCE_COLOR', () => {
    expect(colourWanted(tty, { NO_COLOR: '1' })).toBe(false);
    expect(colourWanted(tty, { NO_COLOR: 'yes', FORCE_COLOR: '1' })).toBe(false);
  });

  it('an empty NO_COLOR is ignored', () => {
    expect(colourWanted(tty, { NO_COLOR: '' })).toBe(true);
  });

  it('FORCE_COLOR turns colour on for a pipe and for TERM=dumb', () => {
    expect(colourWanted(pipe, { FORCE_COLOR: '1' })).toBe(true);
    expect(colourWanted(pipe, { FORCE_COLOR: '3' })).toBe(true);
    expect(colourWanted(pipe, { FORCE_COLOR: '', TERM: 'dumb' })).toBe(true);
  });

  it('FORCE_COLOR=0 and FORCE_COLOR=false turn colour off (as in chalk and Node), even on a TTY', () => {
    expect(colourWanted(pipe, { FORCE_COLOR: '0' })).toBe(false);
    expect(colourWanted(tty, { FORCE_COLOR: '0' })).toBe(false);
    expect(colourWanted(pipe, { FORCE_COLOR: 'false' })).toBe(false);
    expect(colourWanted(tty, { FORCE_COLOR: 'false' })).toBe(false);
  });

  it('FORCE_COLOR=true forces colour', () => {
    expect(colourWanted(pipe, { FORCE_COLOR: 'true' })).toBe(true);
  });

  it('TERM=dumb turns colour off on a TTY', () => {
    expect(colourWanted(tty, { TERM: 'dumb' })).toBe(false);
  });

  it('reads process.env by default', () => {
    const saved = process.env.NO_COLOR;
    process.env.NO_COLOR = '1';
    try {
      expect(colourWanted(tty)).toBe(false);
    } finally {
      if (saved === undefined) delete process.env.NO_COLOR;
      else process.env.NO_COLOR = saved;
    }
  });
});

describe('styleFor', () => {
  it('gives a chalk that colours only when colour is wanted', () => {
    expect(styleFor(tty, {}).red('x')).toBe('\x1b[31mx\x1b[39m');
    expect(styleFor(tty, { NO_COLOR: '1' }).red('x')).toBe('x');
    expect(styleFor(pipe, {}).red('x')).toBe('x');
  });
});
