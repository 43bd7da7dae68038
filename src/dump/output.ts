/** Where a dump goes: a directory, an archive chosen by its ending, or a tar stream on stdout. Pure. */
import { resolve } from 'node:path';
import { compressionForPath, type Compression } from '../image/archive.js';
import { utcStamp } from '../util/paths.js';

export type OutputTarget =
  | { kind: 'dir'; path: string }
  | { kind: 'archive'; path: string; compression: Compression }
  | { kind: 'stream' };

export function defaultOutputName(pid: number, now = new Date()): string {
  return `cedana-${pid}-${utcStamp(now)}`;
}

export function parseOutput(output: string | undefined, pid: number, cwd = process.cwd(), now = new Date()): OutputTarget {
  if (output === '-') return { kind: 'stream' };
  const path = resolve(cwd, output ?? defaultOutputName(pid, now));
  const compression = compressionForPath(path);
  return compression ? { kind: 'archive', path, compression } : { kind: 'dir', path };
}
