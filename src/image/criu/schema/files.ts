/**
 * Protobuf schemas (proto2) of CRIU's file images, after CRIU 4.2's images/*.proto: fdinfo and the
 * files image (file_entry and every kind of file it holds: regular files, pipes, FIFOs, inet, unix,
 * packet and netlink sockets, eventfd, epoll, signalfd, timerfd, inotify, fanotify, tun, ttys,
 * memfd, BPF maps, pidfd, namespaces), with the images that go with them: pipe and FIFO data,
 * socket queues, TCP streams, ghost files, remapped paths, file locks, tty info and data.
 * Field numbers and types are the wire format: they must match CRIU exactly.
 */
export const FILES_SCHEMA = `
enum fd_types {
  UND = 0; REG = 1; PIPE = 2; FIFO = 3; INETSK = 4; UNIXSK = 5; EVENTFD = 6; EVENTPOLL = 7;
  INOTIFY = 8; SIGNALFD = 9; PACKETSK = 10; TTY = 11; FANOTIFY = 12; NETLINKSK = 13; NS = 14;
  TUNF = 15; EXT = 16; TIMERFD = 17; MEMFD = 18; BPFMAP = 19; PIDFD = 20;
  CTL_TTY = 65534; AUTOFS_PIPE = 65535;
}

message fdinfo_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fd_types type = 3;
  required uint32 fd = 4;
  optional string xattr_security_selinux = 5;
}

message fown_entry {
  required uint32 uid = 1;
  required uint32 euid = 2;
  required uint32 signum = 3;
  required uint32 pid_type = 4;
  required uint32 pid = 5;
}

message reg_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required uint64 pos = 3;
  required fown_entry fown = 5;
  required string name = 6;
  optional sint32 mnt_id = 7;
  optional uint64 size = 8;
  optional bool ext = 9;
  optional uint32 mode = 10;
  repeated uint32 build_id = 11;
  optional uint32 checksum = 12;
  optional uint32 checksum_config = 13;
  optional uint32 checksum_parameter = 14;
}

message pipe_entry {
  required uint32 id = 1;
  required uint32 pipe_id = 2;
  required uint32 flags = 3;
  required fown_entry fown = 4;
}
message pipe_data_entry {
  required uint32 pipe_id = 1;
  required uint32 bytes = 2;
  optional uint32 size = 3;
}
message fifo_entry {
  required uint32 id = 1;
  required uint32 pipe_id = 2;
  optional uint32 regf_id = 3;
}

enum sk_shutdown { NONE = 0; READ = 1; WRITE = 2; BOTH = 3; }
message sk_opts_entry {
  required uint32 so_sndbuf = 1;
  required uint32 so_rcvbuf = 2;
  required uint64 so_snd_tmo_sec = 3;
  required uint64 so_snd_tmo_usec = 4;
  required uint64 so_rcv_tmo_sec = 5;
  required uint64 so_rcv_tmo_usec = 6;
  optional bool reuseaddr = 7;
  optional uint32 so_priority = 8;
  optional uint32 so_rcvlowat = 9;
  optional uint32 so_mark = 10;
  optional bool so_passcred = 11;
  optional bool so_passsec = 12;
  optional bool so_dontroute = 13;
  optional bool so_no_check = 14;
  optional string so_bound_dev = 15;
  repeated fixed64 so_filter = 16;
  optional bool so_reuseport = 17;
  optional bool so_broadcast = 18;
  optional bool so_keepalive = 19;
  optional uint32 tcp_keepcnt = 20;
  optional uint32 tcp_keepidle = 21;
  optional uint32 tcp_keepintvl = 22;
  optional uint32 so_oobinline = 23;
  optional uint32 so_linger = 24;
  optional uint32 so_buf_lock = 25;
}

message tcp_opts_entry {
  optional bool cork = 1;
  optional bool nodelay = 2;
  optional uint32 keepcnt = 3;
  optional uint32 keepidle = 4;
  optional uint32 keepintvl = 5;
}
message tcp_stream_entry {
  required uint32 inq_len = 1;
  required uint32 inq_seq = 2;
  required uint32 outq_len = 3;
  required uint32 outq_seq = 4;
  required uint32 opt_mask = 5;
  required uint32 snd_wscale = 6;
  required uint32 mss_clamp = 7;
  optional uint32 rcv_wscale = 8;
  optional uint32 timestamp = 9;
  optional bool cork = 10;
  optional bool nodelay = 11;
  optional uint32 unsq_len = 12;
  optional uint32 snd_wl1 = 13;
  optional uint32 snd_wnd = 14;
  optional uint32 max_window = 15;
  optional uint32 rcv_wnd = 16;
  optional uint32 rcv_wup = 17;
}

message ip_opts_raw_entry {
  optional bool hdrincl = 1;
  optional bool nodefrag = 2;
  optional bool checksum = 3;
  repeated uint32 icmpv_filter = 4;
}
message ip_opts_entry {
  optional bool freebind = 1;
  optional ip_opts_raw_entry raw = 4;
  optional bool pktinfo = 5;
  optional uint32 tos = 6;
  optional uint32 ttl = 7;
}
// src_addr / dst_addr: the address in network byte order, one u32 (IPv4) or four (IPv6).
message inet_sk_entry {
  required uint32 id = 1;
  required uint32 ino = 2;
  required uint32 family = 3;
  required uint32 type = 4;
  required uint32 proto = 5;
  required uint32 state = 6;
  required uint32 src_port = 7;
  required uint32 dst_port = 8;
  required uint32 flags = 9;
  required uint32 backlog = 10;
  repeated uint32 src_addr = 11;
  repeated uint32 dst_addr = 12;
  required fown_entry fown = 13;
  required sk_opts_entry opts = 14;
  optional bool v6only = 15;
  optional ip_opts_entry ip_opts = 16;
  optional string ifname = 17;
  optional uint32 ns_id = 18;
  optional sk_shutdown shutdown = 19;
  optional tcp_opts_entry tcp_opts = 20;
}

message file_perms_entry { required uint32 mode = 1; required uint32 uid = 2; required uint32 gid = 3; }
message unix_sk_entry {
  required uint32 id = 1;
  required uint32 ino = 2;
  required uint32 type = 3;
  required uint32 state = 4;
  required uint32 flags = 5;
  required uint32 uflags = 6;
  required uint32 backlog = 7;
  required uint32 peer = 8;
  required fown_entry fown = 9;
  required sk_opts_entry opts = 10;
  required bytes name = 11;
  optional sk_shutdown shutdown = 12;
  optional file_perms_entry file_perms = 13;
  optional string name_dir = 14;
  optional bool deleted = 15;
  optional uint32 ns_id = 16;
  optional sint32 mnt_id = 17;
}

message scm_entry { required uint32 type = 1; repeated uint32 rights = 2; }
message sk_packet_entry {
  required uint32 id_for = 1;
  required uint32 length = 2;
  repeated scm_entry scm = 4;
}

message packet_mclist { required uint32 index = 1; required uint32 type = 2; required bytes addr = 3; }
message packet_ring {
  required uint32 block_size = 1;
  required uint32 block_nr = 2;
  required uint32 frame_size = 3;
  required uint32 frame_nr = 4;
  required uint32 retire_tmo = 5;
  required uint32 sizeof_priv = 6;
  required uint32 features = 7;
}
message packet_sock_entry {
  required uint32 id = 1;
  required uint32 type = 2;
  required uint32 protocol = 3;
  required uint32 flags = 4;
  required uint32 ifindex = 5;
  required fown_entry fown = 6;
  required sk_opts_entry opts = 7;
  required uint32 version = 8;
  required uint32 reserve = 9;
  required bool aux_data = 10;
  required bool orig_dev = 11;
  required bool vnet_hdr = 12;
  required bool loss = 13;
  required uint32 timestamp = 14;
  required uint32 copy_thresh = 15;
  repeated packet_mclist mclist = 16;
  optional uint32 fanout = 17;
  optional packet_ring rx_ring = 18;
  optional packet_ring tx_ring = 19;
  optional uint32 ns_id = 20;
}

message netlink_sk_entry {
  required uint32 id = 1;
  required uint32 ino = 2;
  required uint32 protocol = 3;
  required uint32 state = 4;
  required uint32 flags = 6;
  required uint32 portid = 7;
  repeated uint32 groups = 8;
  required uint32 dst_portid = 9;
  required uint32 dst_group = 10;
  required fown_entry fown = 11;
  required sk_opts_entry opts = 12;
  optional uint32 ns_id = 13;
}

message eventfd_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fown_entry fown = 3;
  required uint64 counter = 4;
}
message eventpoll_tfd_entry {
  required uint32 id = 1;
  required uint32 tfd = 2;
  required uint32 events = 3;
  required uint64 data = 4;
  optional uint32 dev = 5;
  optional uint64 inode = 6;
  optional uint64 pos = 7;
}
message eventpoll_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fown_entry fown = 3;
  repeated eventpoll_tfd_entry tfd = 4;
}
message signalfd_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fown_entry fown = 3;
  required uint64 sigmask = 4;
}
message timerfd_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fown_entry fown = 3;
  required uint32 clockid = 4;
  required uint64 ticks = 5;
  required uint32 settime_flags = 6;
  required uint64 vsec = 7;
  required uint64 vnsec = 8;
  required uint64 isec = 9;
  required uint64 insec = 10;
}

message fh_entry {
  required uint32 bytes = 1;
  required uint32 type = 2;
  repeated uint64 handle = 3;
  optional string path = 4;
  optional uint32 mnt_id = 5;
}
message irmap_cache_entry { required uint32 dev = 1; required uint64 inode = 2; required string path = 3; }

enum mark_type { INODE = 1; MOUNT = 2; }
message inotify_wd_entry {
  required uint32 id = 1;
  required uint64 i_ino = 2;
  required uint32 mask = 3;
  required uint32 ignored_mask = 4;
  required uint32 s_dev = 5;
  required uint32 wd = 6;
  required fh_entry f_handle = 7;
}
message inotify_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fown_entry fown = 4;
  repeated inotify_wd_entry wd = 5;
}
message fanotify_inode_mark_entry { required uint64 i_ino = 1; required fh_entry f_handle = 2; }
message fanotify_mount_mark_entry { required uint32 mnt_id = 1; optional string path = 2; }
message fanotify_mark_entry {
  required uint32 id = 1;
  required mark_type type = 2;
  required uint32 mflags = 3;
  required uint32 mask = 4;
  required uint32 ignored_mask = 5;
  required uint32 s_dev = 6;
  optional fanotify_inode_mark_entry ie = 7;
  optional fanotify_mount_mark_entry me = 8;
}
message fanotify_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required fown_entry fown = 3;
  required uint32 faflags = 4;
  required uint32 evflags = 5;
  repeated fanotify_mark_entry mark = 6;
}

message tunfile_entry {
  required uint32 id = 1;
  optional string netdev = 2;
  optional bool detached = 3;
  optional uint32 ns_id = 4;
}
message ext_file_entry { required uint32 id = 1; required fown_entry fown = 5; }
message ns_file_entry {
  required uint32 id = 1;
  required uint32 ns_id = 2;
  required uint32 ns_cflag = 3;
  required uint32 flags = 4;
}

enum TtyType { UNKNOWN = 0; PTY = 1; CONSOLE = 2; VT = 3; CTTY = 4; EXT_TTY = 5; SERIAL = 6; }
message winsize_entry {
  required uint32 ws_row = 1;
  required uint32 ws_col = 2;
  required uint32 ws_xpixel = 3;
  required uint32 ws_ypixel = 4;
}
message termios_entry {
  required uint32 c_iflag = 1;
  required uint32 c_oflag = 2;
  required uint32 c_cflag = 3;
  required uint32 c_lflag = 4;
  required uint32 c_line = 5;
  required uint32 c_ispeed = 6;
  required uint32 c_ospeed = 7;
  repeated uint32 c_cc = 8;
}
message tty_pty_entry { required uint32 index = 1; }
message tty_data_entry { required uint32 tty_id = 1; required bytes data = 2; }
message tty_info_entry {
  required uint32 id = 1;
  required TtyType type = 2;
  required bool locked = 3;
  required bool exclusive = 4;
  required bool packet_mode = 5;
  required uint32 sid = 6;
  required uint32 pgrp = 7;
  required uint32 rdev = 8;
  optional termios_entry termios = 9;
  optional termios_entry termios_locked = 10;
  optional winsize_entry winsize = 11;
  optional tty_pty_entry pty = 12;
  optional uint32 dev = 13;
  optional uint32 uid = 14;
  optional uint32 gid = 15;
}
message tty_file_entry {
  required uint32 id = 1;
  required uint32 tty_info_id = 2;
  required uint32 flags = 3;
  required fown_entry fown = 4;
  optional uint32 regf_id = 6;
}

message memfd_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required uint64 pos = 3;
  required fown_entry fown = 4;
  required uint32 inode_id = 5;
}
message memfd_inode_entry {
  required string name = 1;
  required uint32 uid = 2;
  required uint32 gid = 3;
  required uint64 size = 4;
  required uint32 shmid = 5;
  required uint32 seals = 6;
  required uint64 inode_id = 7;
  optional uint32 hugetlb_flag = 8;
  optional uint32 mode = 9;
}

message bpfmap_file_entry {
  required uint32 id = 1;
  required uint32 flags = 2;
  required uint64 pos = 3;
  required fown_entry fown = 4;
  required uint32 map_type = 5;
  required uint32 key_size = 6;
  required uint32 value_size = 7;
  required uint32 map_id = 8;
  required uint32 max_entries = 9;
  required uint32 map_flags = 10;
  required uint64 memlock = 11;
  required bool frozen = 12;
  required string map_name = 13;
  required uint32 ifindex = 14;
  optional sint32 mnt_id = 15;
  optional uint64 map_extra = 16;
}
message bpfmap_data_entry {
  required uint32 map_id = 1;
  required uint32 keys_bytes = 2;
  required uint32 values_bytes = 3;
  required uint32 count = 4;
}

message pidfd_entry {
  required uint32 id = 1;
  required uint32 ino = 2;
  required uint32 flags = 3;
  required int32 nspid = 4;
  required fown_entry fown = 5;
}

message file_entry {
  required fd_types type = 1;
  required uint32 id = 2;
  optional reg_file_entry reg = 3;
  optional inet_sk_entry isk = 4;
  optional ns_file_entry nsf = 5;
  optional packet_sock_entry psk = 6;
  optional netlink_sk_entry nlsk = 7;
  optional eventfd_file_entry efd = 8;
  optional eventpoll_file_entry epfd = 9;
  optional signalfd_entry sgfd = 10;
  optional tunfile_entry tunf = 11;
  optional timerfd_entry tfd = 12;
  optional inotify_file_entry ify = 13;
  optional fanotify_file_entry ffy = 14;
  optional ext_file_entry ext = 15;
  optional unix_sk_entry usk = 16;
  optional fifo_entry fifo = 17;
  optional pipe_entry pipe = 18;
  optional tty_file_entry tty = 19;
  optional memfd_file_entry memfd = 20;
  optional bpfmap_file_entry bpf = 21;
  optional pidfd_entry pidfd = 22;
}

message timeval { required uint64 tv_sec = 1; required uint64 tv_usec = 2; }
message ghost_file_entry {
  required uint32 uid = 1;
  required uint32 gid = 2;
  required uint32 mode = 3;
  optional uint32 dev = 4;
  optional uint64 ino = 5;
  optional uint32 rdev = 6;
  optional timeval atim = 7;
  optional timeval mtim = 8;
  optional bool chunks = 9;
  optional uint64 size = 10;
  optional string symlnk_target = 11;
}
message ghost_chunk_entry { required uint64 len = 1; required uint64 off = 2; }

enum remap_type { LINKED = 0; GHOST = 1; PROCFS = 2; }
message remap_file_path_entry {
  required uint32 orig_id = 1;
  required uint32 remap_id = 2;
  optional remap_type remap_type = 3;
}

message file_lock_entry {
  required uint32 flag = 1;
  required uint32 type = 2;
  required int32 pid = 3;
  required int32 fd = 4;
  required int64 start = 5;
  required int64 len = 6;
}
`;
