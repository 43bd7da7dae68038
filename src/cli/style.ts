/** Colour for human output (see colour.ts for when). */
import { Chalk, type ChalkInstance } from 'chalk';
import { colourWanted } from './colour.js';

export { colourWanted } from './colour.js';

export function styleFor(stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv = process.env): ChalkInstance {
  return new Chalk({ level: colourWanted(stream, env) ? 1 : 0 });
}
