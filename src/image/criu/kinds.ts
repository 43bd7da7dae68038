/**
 * The kinds of CRIU image files and how each is laid out, after CRIU 4.2's criu/include/magic.h and
 * its image readers.
 *
 * An image file starts with a magic: IMG_SERVICE for stats and irmap-cache, IMG_COMMON for every
 * other image except inventory, then the image's own magic (inventory has only its own). Entries
 * follow, each a u32 little-endian length and a protobuf message; some are followed by data the
 * message sizes (pipe contents, socket queues). Raw images (pages-*.img, tarballs, ip tool dumps)
 * have no magic at all: only their file name says what they are.
 */
import type { Message } from './message.js';

export const IMG_COMMON = 0x54564319;
export const IMG_SERVICE = 0x55105940;

/** pagemap_entry.flags: the pages are in the parent image, are left for lazy restore, or are in pages-*.img. */
export const PE_PARENT = 1 << 0;
export const PE_LAZY = 1 << 1;
export const PE_PRESENT = 1 << 2;
export const PAGE_SIZE = 4096;

export const MAGICS = {
  INVENTORY: 0x58313116, PSTREE: 0x50273030, FDINFO: 0x56213732, PAGEMAP: 0x56084025, CORE: 0x55053847,
  IDS: 0x54432030, VMAS: 0x54123737, PIPES: 0x56513555, PIPES_DATA: 0x56453709, FIFO: 0x58364939,
  FIFO_DATA: 0x59333054, SIGACT: 0x55344201, UNIXSK: 0x54373943, INETSK: 0x56443851, PACKETSK: 0x60454618,
  ITIMERS: 0x57464056, POSIX_TIMERS: 0x52603957, SK_QUEUES: 0x56264026, UTSNS: 0x54473203, CREDS: 0x54023547,
  IPC_VAR: 0x53115007, IPCNS_SHM: 0x46283044, IPCNS_MSG: 0x55453737, IPCNS_SEM: 0x59573019,
  REG_FILES: 0x50363636, EXT_FILES: 0x59255641, FS: 0x51403912, MM: 0x57492820, REMAP_FPATH: 0x59133954,
  GHOST_FILE: 0x52583605, TCP_STREAM: 0x51465506, EVENTFD_FILE: 0x44523722, EVENTPOLL_FILE: 0x45023858,
  EVENTPOLL_TFD: 0x44433746, SIGNALFD: 0x57323820, INOTIFY_FILE: 0x48424431, INOTIFY_WD: 0x54562009,
  MNTS: 0x55563928, NETDEV: 0x57373951, NETNS: 0x55933752, TTY_FILES: 0x59433025, TTY_INFO: 0x59453036,
  TTY_DATA: 0x59413026, FILE_LOCKS: 0x54323616, RLIMIT: 0x57113925, FANOTIFY_FILE: 0x55096122,
  FANOTIFY_MARK: 0x56506035, SIGNAL: 0x59255647, NETLINK_SK: 0x58005614, NS_FILES: 0x61394011,
  TUNFILE: 0x57143751, CGROUP: 0x59383330, TIMERFD: 0x50493712, CPUINFO: 0x61404013, USERNS: 0x55474906,
  SECCOMP: 0x64413049, BINFMT_MISC: 0x67343323, AUTOFS: 0x49353943, FILES: 0x56303138,
  MEMFD_INODE: 0x48453499, TIMENS: 0x43114433, PIDNS: 0x61157326, BPFMAP_FILE: 0x57506142,
  BPFMAP_DATA: 0x64324033, APPARMOR: 0x59423047, PIDFD: 0x54435556, STATS: 0x57093306,
  IRMAP_CACHE: 0x57004059, KDAT: 0x57023458,
} as const;

export type KnownKind = keyof typeof MAGICS;
/** UNKNOWN: a magic this table lacks (a newer CRIU); RAW: a raw image, known by its file name. */
export type ImageKind = KnownKind | 'UNKNOWN' | 'RAW';

/** What entry number `index` of an image holds: its message, and how much data follows it. */
export interface EntryRule {
  message: string;
  /** Bytes of data after the message, from the message; 'rest' for all the bytes to the end of the file. */
  extra?: (m: Message) => bigint | number | 'rest';
}

export interface KindSpec {
  kind: KnownKind;
  magic: number;
  /** The rule for entry number `index`; absent: the entries are kept opaque (no schema here). */
  entry?: (index: number) => EntryRule;
  /** Entry 0 must exist (pagemap's head, a ghost file's header). */
  needsFirst?: boolean;
  /** The layout after the magics is not entry framing cedana can follow: kept as one opaque body. */
  body?: boolean;
}

const every = (message: string, extra?: EntryRule['extra']) => (): EntryRule => ({ message, extra });
const num = (v: unknown): number => (typeof v === 'number' ? v : 0);

const RULES: Partial<Record<KnownKind, Omit<KindSpec, 'kind' | 'magic'>>> = {
  INVENTORY: { entry: every('inventory_entry') },
  PSTREE: { entry: every('pstree_entry') },
  CORE: { entry: every('core_entry') },
  IDS: { entry: every('task_kobj_ids_entry') },
  CREDS: { entry: every('creds_entry') },
  FS: { entry: every('fs_entry') },
  MM: { entry: every('mm_entry') },
  VMAS: { entry: every('vma_entry') },
  PAGEMAP: { entry: (i) => ({ message: i === 0 ? 'pagemap_head' : 'pagemap_entry' }), needsFirst: true },
  SECCOMP: { entry: every('seccomp_entry') },
  TIMENS: { entry: every('timens_entry') },
  UTSNS: { entry: every('utsns_entry') },
  PIDNS: { entry: every('pidns_entry') },
  USERNS: { entry: every('userns_entry') },
  CGROUP: { entry: every('cgroup_entry') },
  CPUINFO: { entry: every('cpuinfo_entry') },
  STATS: { entry: every('stats_entry') },
  RLIMIT: { entry: every('rlimit_entry') },
  SIGACT: { entry: every('sa_entry') },
  ITIMERS: { entry: every('itimer_entry') },
  POSIX_TIMERS: { entry: every('posix_timer_entry') },
  SIGNAL: { entry: every('signal_queue_entry') },
  FDINFO: { entry: every('fdinfo_entry') },
  FILES: { entry: every('file_entry') },
  REG_FILES: { entry: every('reg_file_entry') },
  PIPES: { entry: every('pipe_entry') },
  PIPES_DATA: { entry: every('pipe_data_entry', (m) => num(m.bytes)) },
  FIFO: { entry: every('fifo_entry') },
  FIFO_DATA: { entry: every('pipe_data_entry', (m) => num(m.bytes)) },
  INETSK: { entry: every('inet_sk_entry') },
  UNIXSK: { entry: every('unix_sk_entry') },
  PACKETSK: { entry: every('packet_sock_entry') },
  NETLINK_SK: { entry: every('netlink_sk_entry') },
  SK_QUEUES: { entry: every('sk_packet_entry', (m) => num(m.length)) },
  // The socket's receive queue, then its send queue.
  TCP_STREAM: { entry: every('tcp_stream_entry', (m) => num(m.inq_len) + num(m.outq_len)) },
  EVENTFD_FILE: { entry: every('eventfd_file_entry') },
  EVENTPOLL_FILE: { entry: every('eventpoll_file_entry') },
  EVENTPOLL_TFD: { entry: every('eventpoll_tfd_entry') },
  SIGNALFD: { entry: every('signalfd_entry') },
  TIMERFD: { entry: every('timerfd_entry') },
  INOTIFY_FILE: { entry: every('inotify_file_entry') },
  INOTIFY_WD: { entry: every('inotify_wd_entry') },
  FANOTIFY_FILE: { entry: every('fanotify_file_entry') },
  FANOTIFY_MARK: { entry: every('fanotify_mark_entry') },
  EXT_FILES: { entry: every('ext_file_entry') },
  NS_FILES: { entry: every('ns_file_entry') },
  TUNFILE: { entry: every('tunfile_entry') },
  TTY_FILES: { entry: every('tty_file_entry') },
  TTY_INFO: { entry: every('tty_info_entry') },
  TTY_DATA: { entry: every('tty_data_entry') },
  FILE_LOCKS: { entry: every('file_lock_entry') },
  REMAP_FPATH: { entry: every('remap_file_path_entry') },
  MEMFD_INODE: { entry: every('memfd_inode_entry') },
  BPFMAP_FILE: { entry: every('bpfmap_file_entry') },
  BPFMAP_DATA: { entry: every('bpfmap_data_entry', (m) => num(m.keys_bytes) + num(m.values_bytes)) },
  IRMAP_CACHE: { entry: every('irmap_cache_entry') },
  // A deleted file's contents: in chunks (each a ghost_chunk_entry and its bytes) or all of the rest.
  GHOST_FILE: {
    entry: (i) =>
      i === 0
        ? { message: 'ghost_file_entry', extra: (m) => (m.chunks === true ? 0 : 'rest') }
        : { message: 'ghost_chunk_entry', extra: (m) => (typeof m.len === 'bigint' ? m.len : 0n) },
    needsFirst: true,
  },
  // Entries followed by data sized by rules cedana does not model (IPC queues, semaphores, shm
  // padding); KDAT is a raw C structure.
  IPCNS_SHM: { body: true },
  IPCNS_MSG: { body: true },
  IPCNS_SEM: { body: true },
  KDAT: { body: true },
};

export const KINDS: ReadonlyMap<number, KindSpec> = new Map(
  (Object.entries(MAGICS) as [KnownKind, number][]).map(([kind, magic]) => [magic, { kind, magic, ...RULES[kind] }]),
);

export const kindByName = (kind: KnownKind): KindSpec => KINDS.get(MAGICS[kind])!;

/** Raw images by file name: memory pages, tmpfs tarballs, ip/iptables/nft dumps, conntrack. */
const RAW_NAMES = /^(pages(-shmem)?-\d+|tmpfs-dev-\d+\.tar\.gz|tmpfs-\d+\.tar\.gz|ifaddr-\d+|route6?-\d+|rule-\d+|ip6?tables-\d+|nftables-\d+|netns-ct-\d+|netns-exp-\d+)\.img$/;

export function isRawImageName(name: string): boolean {
  return RAW_NAMES.test(name.slice(name.lastIndexOf('/') + 1));
}
