/**
 * What a checkpoint holds, assembled from its decoded CRIU images and its manifest: the process
 * tree, each process's memory mappings, open files, sockets and working directory, the provenance
 * and the size of each part. Pure: the caller reads and decodes the files.
 *
 * CRIU's layout, as followed here: pstree.img lists the processes; core-<pid>.img has the command
 * name and task state; ids-<pid>.img names the process's files table (files_id), whose descriptors
 * are in fdinfo-<files_id>.img, each pointing by id into files.img; mm-<pid>.img has the mappings
 * (a file mapping's shmid is its file's id in files.img); pagemap-<pid>.img the page runs dumped;
 * fs-<pid>.img the working directory (cwd_id, a file of files.img).
 */
import type { DecodedImage, MessageEntry } from './criu/codec.js';
import { PAGE_SIZE, PE_PRESENT } from './criu/kinds.js';
import type { Message } from './criu/message.js';
import { isPagesImage } from './checksum.js';
import { MANIFEST_NAME, type Manifest } from './manifest.js';
import type { ManifestGpu } from '../gpu/cuda.js';

export interface InspectMapping {
  start: number;
  end: number;
  size: number;
  /** As in /proc/<pid>/maps: r, w, x or -, then p (private) or s (shared). */
  prot: string;
  /** The mapped file's path, [heap], [stack], [vdso]…, or null for anonymous memory. */
  file: string | null;
}

export interface InspectFile {
  fd: number;
  /** CRIU's file type: REG, PIPE, FIFO, INETSK, UNIXSK, EVENTFD, MEMFD… */
  type: string;
  /** The path of a regular file or FIFO; pipe:[id], socket:[inode], anon_inode:[type] otherwise. */
  path: string;
  /** read, write or read/write, with ",append" when opened with O_APPEND; null when CRIU records none. */
  flags: string | null;
  /** The file offset (regular files). */
  offset: number | null;
  /** The file's size when dumped (regular files). */
  size: number | null;
}

export interface InspectSocket {
  fd: number;
  /** tcp, udp, tcp6, udp6, raw, or unix. */
  proto: string;
  /** LISTEN, ESTABLISHED, CLOSE…; for unix sockets the same names (LISTEN, ESTABLISHED, CLOSE: unconnected). */
  state: string;
  /** address:port, or the unix socket's path (@name for an abstract one, "" for an unnamed one). */
  local: string;
  /** address:port of the peer (null when listening or unconnected), or the unix peer's name or socket:[inode]. */
  remote: string | null;
  /** unix sockets: stream, dgram or seqpacket. */
  type?: string;
}

export interface InspectProcess {
  pid: number;
  ppid: number;
  argv: string[];
  comm: string | null;
  /** running, stopped, zombie, dead (CRIU's task state), or null when core-<pid>.img is absent. */
  state: string | null;
  threads: number;
  cwd: string | null;
  memory: { mappings: InspectMapping[]; vmaCount: number; dumpedBytes: number };
  files: InspectFile[];
  sockets: InspectSocket[];
}

export interface InspectSizes {
  /** pages-*.img: the process memory. */
  pages: number;
  /** The other CRIU images. */
  metadata: number;
  /** Copies of the files the image carries (shipped/). */
  shipped: number;
  manifest: number;
  total: number;
  files: number;
}

export type InspectManifest = Omit<Manifest, 'files'>;

export interface Inspection {
  manifest: InspectManifest | null;
  processes: InspectProcess[];
  /** GPU state in the image (its CUDA processes, GPUs, driver, device memory), or null. */
  gpu: ManifestGpu | null;
  sizes: InspectSizes;
}

export interface InspectInput {
  /** Decoded images by file name (pages-*.img need not be there). */
  images: Map<string, DecodedImage>;
  manifest: Manifest | null;
  /** Every file of the image with its size in bytes, the manifest included. */
  fileSizes: Record<string, number>;
}

const TASK_STATES: Record<number, string> = { 1: 'running', 2: 'dead', 3: 'stopped', 6: 'zombie' };
const TCP_STATES: Record<number, string> = {
  1: 'ESTABLISHED', 2: 'SYN_SENT', 3: 'SYN_RECV', 4: 'FIN_WAIT1', 5: 'FIN_WAIT2', 6: 'TIME_WAIT', 7: 'CLOSE',
  8: 'CLOSE_WAIT', 9: 'LAST_ACK', 10: 'LISTEN', 11: 'CLOSING',
};
const SOCK_TYPES: Record<number, string> = { 1: 'stream', 2: 'dgram', 3: 'raw', 5: 'seqpacket' };

// vma_entry.status bits (CRIU's criu/include/image.h).
const VMA_AREA_STACK = 1 << 1;
const VMA_AREA_VSYSCALL = 1 << 2;
const VMA_AREA_VDSO = 1 << 3;
const VMA_AREA_HEAP = 1 << 5;
const VMA_FILE_PRIVATE = 1 << 6;
const VMA_FILE_SHARED = 1 << 7;
const VMA_ANON_SHARED = 1 << 8;
const VMA_AREA_SYSVIPC = 1 << 10;
const VMA_AREA_SOCKET = 1 << 11;
const VMA_AREA_VVAR = 1 << 12;
const VMA_AREA_AIORING = 1 << 13;
const VMA_AREA_MEMFD = 1 << 14;
const MAP_SHARED = 0x1;
const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const PROT_EXEC = 0x4;
const O_ACCMODE = 0x3;
const O_APPEND = 0x400;

const num = (v: unknown): number => (typeof v === 'bigint' ? Number(v) : typeof v === 'number' ? v : 0);
const values = (img: DecodedImage | undefined): Message[] =>
  (img?.entries ?? []).filter((e): e is MessageEntry => e.type !== null).map((e) => e.value);
const first = (img: DecodedImage | undefined): Message | undefined => values(img)[0];

/** An address of inet_sk_entry (u32 words in network byte order) as text. */
export function formatInetAddr(words: number[], family: number): string {
  const b = Buffer.alloc(words.length * 4);
  words.forEach((w, i) => b.writeUInt32LE(w >>> 0, i * 4));
  if (family === 2 || b.length === 4) return [...b.subarray(0, 4)].join('.');
  if (b.length !== 16) return '?';
  if (b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff) return `::ffff:${[...b.subarray(12)].join('.')}`;
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16));
  // The longest run of two or more zero groups becomes "::".
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) [best, bestLen] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

const hostPort = (addr: string, port: number, family: number): string => (family === 10 ? `[${addr}]:${port}` : `${addr}:${port}`);

function unixName(name: unknown): string {
  if (!Buffer.isBuffer(name) || name.length === 0) return '';
  if (name[0] === 0) return `@${name.subarray(1).toString('utf8').replace(/\0+$/, '')}`;
  return name.toString('utf8').replace(/\0+$/, '');
}

function openFlags(flags: number): string {
  const acc = flags & O_ACCMODE;
  const mode = acc === 0 ? 'read' : acc === 1 ? 'write' : 'read/write';
  return flags & O_APPEND ? `${mode},append` : mode;
}

function vmaFile(vma: Message, files: Map<number, Message>, memfdNames: Map<number, string>): string | null {
  const status = num(vma.status);
  if (status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED | VMA_AREA_MEMFD)) {
    const f = files.get(num(vma.shmid));
    if (f) return filePath(f, files, memfdNames);
    return `file:[${num(vma.shmid)}]`;
  }
  if (status & VMA_AREA_HEAP) return '[heap]';
  if (status & VMA_AREA_STACK) return '[stack]';
  if (status & VMA_AREA_VDSO) return '[vdso]';
  if (status & VMA_AREA_VVAR) return '[vvar]';
  if (status & VMA_AREA_VSYSCALL) return '[vsyscall]';
  if (status & VMA_AREA_SYSVIPC) return '[sysv shm]';
  if (status & VMA_AREA_AIORING) return '[aio]';
  if (status & VMA_AREA_SOCKET) return '[socket]';
  if (status & VMA_ANON_SHARED) return '[shared anon]';
  return null;
}

/** What to call a file of files.img. */
function filePath(f: Message, files: Map<number, Message>, memfdNames: Map<number, string> = new Map()): string {
  const type = String(f.type);
  const reg = f.reg as Message | undefined;
  switch (type) {
    case 'REG':
      return reg ? String(reg.name) : '?';
    case 'FIFO': {
      const regf = files.get(num((f.fifo as Message | undefined)?.regf_id));
      const name = (regf?.reg as Message | undefined)?.name;
      return name !== undefined ? String(name) : `pipe:[${num((f.fifo as Message | undefined)?.pipe_id)}]`;
    }
    case 'PIPE':
      return `pipe:[${num((f.pipe as Message | undefined)?.pipe_id)}]`;
    case 'INETSK':
      return `socket:[${num((f.isk as Message | undefined)?.ino)}]`;
    case 'UNIXSK':
      return `socket:[${num((f.usk as Message | undefined)?.ino)}]`;
    case 'MEMFD': {
      const inode = num((f.memfd as Message | undefined)?.inode_id);
      return `/memfd:${memfdNames.get(inode) ?? ''}`;
    }
    default:
      return `anon_inode:[${type.toLowerCase()}]`;
  }
}

function describeFile(fd: number, f: Message | undefined, files: Map<number, Message>, memfdNames: Map<number, string>): InspectFile {
  if (!f) return { fd, type: '?', path: '?', flags: null, offset: null, size: null };
  const type = String(f.type);
  const reg = (f.reg ?? (f.fifo ? files.get(num((f.fifo as Message).regf_id))?.reg : undefined)) as Message | undefined;
  const sub = (f.pipe ?? f.fifo ?? f.isk ?? f.usk ?? f.efd ?? f.epfd ?? f.tfd ?? f.ify ?? f.memfd) as Message | undefined;
  const flags = reg?.flags ?? sub?.flags;
  return {
    fd,
    type,
    path: filePath(f, files, memfdNames),
    flags: typeof flags === 'number' && type !== 'INETSK' && type !== 'UNIXSK' ? openFlags(flags) : null,
    offset: reg && type === 'REG' ? num(reg.pos) : f.memfd ? num((f.memfd as Message).pos) : null,
    size: reg && type === 'REG' && reg.size !== undefined ? num(reg.size) : null,
  };
}

function describeSocket(fd: number, f: Message, byIno: Map<number, Message>): InspectSocket | undefined {
  if (f.type === 'INETSK' && f.isk) {
    const s = f.isk as Message;
    const family = num(s.family);
    const proto = num(s.proto);
    const v6 = family === 10 ? '6' : '';
    const name = proto === 6 ? `tcp${v6}` : proto === 17 ? `udp${v6}` : `raw${v6}`;
    const state = TCP_STATES[num(s.state)] ?? String(s.state);
    const local = hostPort(formatInetAddr((s.src_addr as number[]) ?? [], family), num(s.src_port), family);
    const connected = num(s.dst_port) !== 0 && state !== 'LISTEN';
    const remote = connected ? hostPort(formatInetAddr((s.dst_addr as number[]) ?? [], family), num(s.dst_port), family) : null;
    return { fd, proto: name, state, local, remote };
  }
  if (f.type === 'UNIXSK' && f.usk) {
    const s = f.usk as Message;
    const peerIno = num(s.peer);
    const peer = peerIno === 0 ? null : byIno.get(peerIno);
    const peerName = peer ? unixName(peer.name) : '';
    return {
      fd,
      proto: 'unix',
      state: TCP_STATES[num(s.state)] ?? String(s.state),
      local: unixName(s.name),
      remote: peerIno === 0 ? null : peerName || `socket:[${peerIno}]`,
      type: SOCK_TYPES[num(s.type)] ?? String(s.type),
    };
  }
  return undefined;
}

/** Sizes of the parts of an image, from its file listing. */
export function imageSizes(fileSizes: Record<string, number>): InspectSizes {
  const sizes: InspectSizes = { pages: 0, metadata: 0, shipped: 0, manifest: 0, total: 0, files: 0 };
  for (const [name, size] of Object.entries(fileSizes)) {
    if (name === MANIFEST_NAME) sizes.manifest += size;
    else if (isPagesImage(name)) sizes.pages += size;
    else if (name.startsWith('shipped/')) sizes.shipped += size;
    else sizes.metadata += size;
    sizes.total += size;
    sizes.files++;
  }
  return sizes;
}

export function assembleInspection(input: InspectInput): Inspection {
  const { images, manifest } = input;
  const files = new Map<number, Message>();
  for (const f of values(images.get('files.img'))) files.set(num(f.id), f);
  const memfdNames = new Map<number, string>();
  for (const m of values(images.get('memfd.img'))) memfdNames.set(num(m.inode_id), String(m.name));
  const unixByIno = new Map<number, Message>();
  for (const f of files.values()) if (f.type === 'UNIXSK' && f.usk) unixByIno.set(num((f.usk as Message).ino), f.usk as Message);

  const fromManifest = new Map((manifest?.processes ?? []).map((p) => [p.pid, p]));
  const tree = values(images.get('pstree.img'));
  const list: { pid: number; ppid: number; threads: number }[] = tree.length > 0
    ? tree.map((t) => ({
        pid: num(t.pid),
        // CRIU records the root's parent as 0; the manifest has the real one.
        ppid: num(t.ppid) === 0 ? (fromManifest.get(num(t.pid))?.ppid ?? 0) : num(t.ppid),
        threads: Array.isArray(t.threads) ? t.threads.length : 1,
      }))
    : (manifest?.processes ?? []).map((p) => ({ pid: p.pid, ppid: p.ppid, threads: 1 }));

  const processes = list.map(({ pid, ppid, threads }): InspectProcess => {
    const core = first(images.get(`core-${pid}.img`));
    const tc = core?.tc as Message | undefined;
    const comm = tc?.comm !== undefined ? String(tc.comm) : (fromManifest.get(pid)?.comm ?? null);
    const argv = fromManifest.get(pid)?.argv ?? [];
    const ids = first(images.get(`ids-${pid}.img`));

    const mm = first(images.get(`mm-${pid}.img`));
    const vmas = (mm?.vmas as Message[] | undefined) ?? [];
    const mappings = vmas.map((v): InspectMapping => {
      const start = num(v.start);
      const end = num(v.end);
      const prot = num(v.prot);
      return {
        start,
        end,
        size: end - start,
        prot: `${prot & PROT_READ ? 'r' : '-'}${prot & PROT_WRITE ? 'w' : '-'}${prot & PROT_EXEC ? 'x' : '-'}${num(v.flags) & MAP_SHARED ? 's' : 'p'}`,
        file: vmaFile(v, files, memfdNames),
      };
    });
    let dumpedBytes = 0;
    for (const e of values(images.get(`pagemap-${pid}.img`)).slice(1)) {
      if (num(e.flags) & PE_PRESENT) dumpedBytes += num(e.nr_pages) * PAGE_SIZE;
    }

    const fdinfo = ids ? values(images.get(`fdinfo-${num(ids.files_id)}.img`)) : [];
    const fds = fdinfo.map((d) => ({ fd: num(d.fd), file: files.get(num(d.id)) })).sort((a, b) => a.fd - b.fd);
    const sockets: InspectSocket[] = [];
    for (const { fd, file } of fds) {
      const s = file && describeSocket(fd, file, unixByIno);
      if (s) sockets.push(s);
    }

    const fs = first(images.get(`fs-${pid}.img`));
    const cwdFile = fs ? files.get(num(fs.cwd_id)) : undefined;
    return {
      pid,
      ppid,
      argv: argv.length > 0 ? argv : comm ? [comm] : [],
      comm,
      state: tc ? (TASK_STATES[num(tc.task_state)] ?? `state ${num(tc.task_state)}`) : null,
      threads,
      cwd: cwdFile ? filePath(cwdFile, files) : null,
      memory: { mappings, vmaCount: mappings.length, dumpedBytes },
      files: fds.map(({ fd, file }) => describeFile(fd, file, files, memfdNames)),
      sockets,
    };
  });

  let m: InspectManifest | null = null;
  if (manifest) {
    const rest: Partial<Manifest> = { ...manifest };
    delete rest.files;
    m = rest as InspectManifest;
  }
  return { manifest: m, processes, gpu: manifest?.gpu ?? null, sizes: imageSizes(input.fileSizes) };
}
