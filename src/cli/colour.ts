/**
 * Whether to colour human output. chalk ignores NO_COLOR, so it is honoured here: colour only when
 * the stream is a TTY, NO_COLOR is unset or empty, and TERM is not "dumb". Apart from style.ts, so
 * that deciding loads no chalk (the reporter asks; JSON output never needs chalk).
 */
export function colourWanted(stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  // As in chalk and Node: FORCE_COLOR=0 or false turns colour off, any other value forces it on.
  if (env.FORCE_COLOR === '0' || env.FORCE_COLOR === 'false') return false;
  if (env.FORCE_COLOR !== undefined) return true;
  if (env.TERM === 'dumb') return false;
  return stream.isTTY === true;
}
