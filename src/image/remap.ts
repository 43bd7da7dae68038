/**
 * Path remapping on restore (--map-path OLD=NEW): the open files, working directories, executables
 * and mapped files that lived under OLD are restored from NEW. CRIU reopens them all by the names in
 * files.img, so rewriting those names is enough; the rest of the image is untouched.
 */
import { mkdir, readdir, readFile, rename, stat, symlink, writeFile } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { CedanaError } from '../errors.js';
import { decodeImage, encodeImage, type DecodedImage, type ImageEntry } from './criu/codec.js';
import type { Connection } from './connections.js';
import { formatInetAddr } from './inspect.js';
import { remapPath, type PathMap, type PortMap } from './remap-args.js';

export { parsePathMap, parsePortMap, remapPath, type PathMap, type PortMap } from './remap-args.js';

export interface Remapped {
  id: number;
  from: string;
  to: string;
  /** The size CRIU recorded at dump time, when it did. */
  size?: number;
}

const TCP_LISTEN = 10;
const TCP_CLOSE = 7;

type InetValue = { id?: number; ino?: number; family?: number; proto?: number; state?: number; src_port?: number; dst_port?: number; src_addr?: number[]; dst_addr?: number[] };

/** The established TCP connections in files.img (a TCP socket with a peer port). Pure. */
export function imageConnections(files: DecodedImage): Connection[] {
  const out: Connection[] = [];
  for (const e of files.entries) {
    if (e.type === null) continue;
    const isk = (e.value as { isk?: InetValue }).isk;
    if (!isk || isk.proto !== 6 || !isk.dst_port || isk.state === TCP_LISTEN) continue;
    const family = Number(isk.family ?? 2);
    const hp = (words: number[] | undefined, port: number | undefined): string => {
      const a = formatInetAddr(words ?? [], family);
      return family === 10 ? `[${a}]:${port ?? 0}` : `${a}:${port ?? 0}`;
    };
    out.push({ ino: Number(isk.ino ?? 0), local: hp(isk.src_addr, isk.src_port), remote: hp(isk.dst_addr, isk.dst_port) });
  }
  return out;
}

export interface RemappedPort {
  id: number;
  from: number;
  to: number;
}

/**
 * files.img with every regular file's name remapped, and the local port of every listening TCP
 * socket in `ports` (established connections keep theirs: their peer knows them). Pure.
 */
export function remapFilesImage(
  files: DecodedImage,
  maps: PathMap[],
  ports: PortMap[] = [],
  close: Set<number> = new Set(),
): { image: DecodedImage; changed: Remapped[]; changedPorts: RemappedPort[]; closed: number[] } {
  const changed: Remapped[] = [];
  const changedPorts: RemappedPort[] = [];
  const closed: number[] = [];
  const entries = files.entries.map((e): ImageEntry => {
    if (e.type === null) return e;
    const value = e.value as { id?: number; reg?: { name?: unknown; size?: bigint | number }; isk?: InetValue };
    const isk = value.isk;
    if (isk && isk.proto === 6 && isk.dst_port && close.has(Number(isk.ino ?? 0))) {
      // An unbound, unconnected socket: CRIU neither binds (the address may not exist) nor repairs it.
      closed.push(Number(isk.ino));
      const zero = (a: number[] | undefined): number[] => (a ?? []).map(() => 0);
      return { ...e, value: { ...e.value, isk: { ...isk, state: TCP_CLOSE, src_port: 0, dst_port: 0, src_addr: zero(isk.src_addr), dst_addr: zero(isk.dst_addr) } } as typeof e.value };
    }
    if (isk && isk.proto === 6 && isk.state === TCP_LISTEN) {
      const map = ports.find((p) => p.from === isk.src_port);
      if (!map) return e;
      changedPorts.push({ id: Number(value.id ?? 0), from: map.from, to: map.to });
      // A new entry object: the codec re-encodes it instead of writing back the original bytes.
      return { ...e, value: { ...e.value, isk: { ...isk, src_port: map.to } } as typeof e.value };
    }
    const name = value.reg?.name;
    if (typeof name !== 'string') return e;
    const to = remapPath(name, maps);
    if (to === undefined) return e;
    const size = value.reg!.size === undefined ? undefined : Number(value.reg!.size);
    changed.push({ id: Number(value.id ?? 0), from: name, to, size });
    return { ...e, value: { ...e.value, reg: { ...value.reg, name: to } } as typeof e.value };
  });
  return { image: { ...files, entries }, changed, changedPorts, closed };
}

/**
 * A copy of the image for CRIU with files.img remapped: links to every other file of `dir` and a
 * rewritten files.img, in `into`. Each remapped path must exist, and a file must have the size CRIU
 * recorded at dump time (CRIU would refuse it, less clearly).
 */
export async function writeRemappedImage(
  dir: string,
  into: string | undefined,
  maps: PathMap[],
  ports: PortMap[] = [],
  close: Set<number> = new Set(),
  /** Files put in place from the image: their size is right by construction. */
  skipCheck: (path: string) => boolean = () => false,
): Promise<{ dir: string; changed: Remapped[]; changedPorts: RemappedPort[] }> {
  const files = decodeImage(await readFile(join(dir, 'files.img')), 'files.img');
  const { image, changed, changedPorts } = remapFilesImage(files, maps, ports, close);
  const unused = ports.filter((p) => !changedPorts.some((c) => c.from === p.from));
  if (unused.length > 0) {
    throw new CedanaError('REMAP_INVALID', `--map-port: the image has no listening TCP socket on port ${unused.map((p) => p.from).join(', ')}`, {
      hint: '`cedana inspect` lists the image\'s sockets',
    });
  }
  const problems: string[] = [];
  for (const c of changed) {
    if (skipCheck(c.to)) continue;
    const st = await stat(c.to).catch(() => undefined);
    if (!st) problems.push(`${c.to} (for ${c.from}) does not exist`);
    else if (st.isFile() && c.size !== undefined && st.size !== c.size) problems.push(`${c.to} has ${st.size} bytes, ${c.from} had ${c.size} at the dump`);
  }
  if (problems.length > 0) {
    throw new CedanaError('REMAP_INVALID', `--map-path: ${[...new Set(problems)].slice(0, 5).join('; ')}`, {
      hint: 'copy the files to the new place as they were at the dump, or fix the mapping',
      details: { problems: [...new Set(problems)] },
    });
  }
  if (into === undefined) {
    // In place (a migration's transient copy): the file is replaced whole.
    await writeFile(join(dir, 'files.img.new'), encodeImage(image), { mode: 0o600 });
    await rename(join(dir, 'files.img.new'), join(dir, 'files.img'));
    return { dir, changed, changedPorts };
  }
  await mkdir(into, { mode: 0o700 });
  for (const name of await readdir(dir)) {
    if (name !== 'files.img') await symlink(join(dir, name), join(into, name));
  }
  await writeFile(join(into, 'files.img'), encodeImage(image), { mode: 0o600 });
  return { dir: into, changed, changedPorts };
}
