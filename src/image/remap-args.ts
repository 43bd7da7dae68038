/**
 * The command-line side of remapping (--map-path OLD=NEW, --map-port OLD:NEW) and the pure path
 * mapping: kept apart from remap.ts, which reads and rewrites CRIU's images, so that parsing a
 * command line loads no image codec (see "Fixed costs" in the README).
 */
import { posix } from 'node:path';
import { CedanaError } from '../errors.js';

export interface PathMap {
  from: string;
  to: string;
}

export interface PortMap {
  from: number;
  to: number;
}

/** "OLD=NEW", both absolute. Pure. */
export function parsePathMap(text: string): PathMap {
  const i = text.indexOf('=');
  const [from, to] = i < 0 ? ['', ''] : [text.slice(0, i), text.slice(i + 1)];
  if (!from.startsWith('/') || !to.startsWith('/')) {
    throw new CedanaError('USAGE', `--map-path ${JSON.stringify(text)}: expected OLD=NEW with two absolute paths`, { hint: 'e.g. --map-path /srv/old=/srv/new' });
  }
  const norm = (p: string): string => (p === '/' ? p : posix.normalize(p).replace(/\/+$/, ''));
  return { from: norm(from), to: norm(to) };
}

/** "OLD:NEW", two TCP ports. Pure. */
export function parsePortMap(text: string): PortMap {
  const m = /^(\d{1,5}):(\d{1,5})$/.exec(text);
  const [from, to] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  if (!(from >= 1 && from <= 65535 && to >= 1 && to <= 65535)) {
    throw new CedanaError('USAGE', `--map-port ${JSON.stringify(text)}: expected OLD:NEW, two TCP ports`, { hint: 'e.g. --map-port 8000:9000' });
  }
  return { from, to };
}

/** The path under the first map that covers it (the path itself or below), or undefined. Pure. */
export function remapPath(path: string, maps: PathMap[]): string | undefined {
  for (const m of maps) {
    if (path === m.from) return m.to;
    const prefix = m.from === '/' ? '/' : `${m.from}/`;
    if (path.startsWith(prefix)) return posix.join(m.to, path.slice(prefix.length));
  }
  return undefined;
}
