/**
 * Protobuf schemas (proto2) of CRIU's per-process images, after CRIU 4.2's images/*.proto: inventory,
 * pstree, core (x86-64 registers; other architectures' thread_info fields stay unknown fields and are
 * kept byte for byte), ids, creds, fs, mm and vma, pagemap, seccomp, namespaces, timers, signals,
 * cgroup, cpuinfo and stats.
 * Field numbers and types are the wire format: they must match CRIU exactly. CRIU's custom field
 * options ((criu).hex, .flags, …) only change how crit prints values and are left out.
 */
export const TASK_SCHEMA = `
message task_kobj_ids_entry {
  required uint32 vm_id = 1;
  required uint32 files_id = 2;
  required uint32 fs_id = 3;
  required uint32 sighand_id = 4;
  optional uint32 pid_ns_id = 5;
  optional uint32 net_ns_id = 6;
  optional uint32 ipc_ns_id = 7;
  optional uint32 uts_ns_id = 8;
  optional uint32 mnt_ns_id = 9;
  optional uint32 user_ns_id = 10;
  optional uint32 cgroup_ns_id = 11;
  optional uint32 time_ns_id = 12;
}

enum lsmtype { NO_LSM = 0; SELINUX = 1; APPARMOR = 2; }
message plugins_entry { repeated string plugins = 12; }
message inventory_entry {
  required uint32 img_version = 1;
  optional bool fdinfo_per_id = 2;
  optional task_kobj_ids_entry root_ids = 3;
  optional bool ns_per_id = 4;
  optional uint32 root_cg_set = 5;
  optional lsmtype lsmtype = 6;
  optional uint64 dump_uptime = 8;
  optional uint32 pre_dump_mode = 9;
  optional bool tcp_close = 10;
  optional uint32 network_lock_method = 11;
  optional plugins_entry plugins_entry = 12;
  optional string dump_criu_run_id = 13;
  optional bool allow_uprobes = 14;
}

message pstree_entry {
  required uint32 pid = 1;
  required uint32 ppid = 2;
  required uint32 pgid = 3;
  required uint32 sid = 4;
  repeated uint32 threads = 5;
}

message rlimit_entry { required uint64 cur = 1; required uint64 max = 2; }
message task_rlimits_entry { repeated rlimit_entry rlimits = 1; }

message itimer_entry {
  required uint64 isec = 1;
  required uint64 iusec = 2;
  required uint64 vsec = 3;
  required uint64 vusec = 4;
}
message posix_timer_entry {
  required uint32 it_id = 1;
  required uint32 clock_id = 2;
  required uint32 si_signo = 3;
  required uint32 it_sigev_notify = 4;
  required uint64 sival_ptr = 5;
  required uint32 overrun = 6;
  required uint64 isec = 7;
  required uint64 insec = 8;
  required uint64 vsec = 9;
  required uint64 vnsec = 10;
  optional int32 notify_thread_id = 11;
}
message task_timers_entry {
  required itimer_entry real = 1;
  required itimer_entry virt = 2;
  required itimer_entry prof = 3;
  repeated posix_timer_entry posix = 4;
}

message siginfo_entry { required bytes siginfo = 1; }
message signal_queue_entry { repeated siginfo_entry signals = 1; }

message sa_entry {
  required uint64 sigaction = 1;
  required uint64 flags = 2;
  required uint64 restorer = 3;
  required uint64 mask = 4;
  optional bool compat_sigaction = 5;
  optional uint64 mask_extended = 6;
}

message creds_entry {
  required uint32 uid = 1;
  required uint32 gid = 2;
  required uint32 euid = 3;
  required uint32 egid = 4;
  required uint32 suid = 5;
  required uint32 sgid = 6;
  required uint32 fsuid = 7;
  required uint32 fsgid = 8;
  repeated uint32 cap_inh = 9;
  repeated uint32 cap_prm = 10;
  repeated uint32 cap_eff = 11;
  repeated uint32 cap_bnd = 12;
  required uint32 secbits = 13;
  repeated uint32 groups = 14;
  optional string lsm_profile = 15;
  optional string lsm_sockcreate = 16;
  optional bytes apparmor_data = 17;
  optional uint32 no_new_privs = 18;
  repeated uint32 cap_amb = 19;
}

message rseq_entry {
  required uint64 rseq_abi_pointer = 1;
  required uint32 rseq_abi_size = 2;
  required uint32 signature = 3;
  optional uint64 rseq_cs_pointer = 4;
}

enum seccomp_mode { disabled = 0; strict = 1; filter = 2; }

message task_core_entry {
  required uint32 task_state = 1;
  required uint32 exit_code = 2;
  required uint32 personality = 3;
  required uint32 flags = 4;
  required uint64 blk_sigset = 5;
  required string comm = 6;
  optional task_timers_entry timers = 7;
  optional task_rlimits_entry rlimits = 8;
  optional uint32 cg_set = 9;
  optional signal_queue_entry signals_s = 10;
  optional seccomp_mode old_seccomp_mode = 11;
  optional uint32 old_seccomp_filter = 12;
  optional uint32 loginuid = 13;
  optional int32 oom_score_adj = 14;
  repeated sa_entry sigactions = 15;
  optional bool child_subreaper = 18;
  optional uint64 blk_sigset_extended = 20;
  optional uint32 stop_signo = 21;
  optional uint32 membarrier_registration_mask = 22;
}

message thread_sas_entry {
  required uint64 ss_sp = 1;
  required uint64 ss_size = 2;
  required uint32 ss_flags = 3;
}

message thread_core_entry {
  required uint64 futex_rla = 1;
  required uint32 futex_rla_len = 2;
  optional sint32 sched_nice = 3;
  optional uint32 sched_policy = 4;
  optional uint32 sched_prio = 5;
  optional uint64 blk_sigset = 6;
  optional thread_sas_entry sas = 7;
  optional uint32 pdeath_sig = 8;
  optional signal_queue_entry signals_p = 9;
  optional creds_entry creds = 10;
  optional seccomp_mode seccomp_mode = 11;
  optional uint32 seccomp_filter = 12;
  optional string comm = 13;
  optional uint64 blk_sigset_extended = 14;
  optional rseq_entry rseq_entry = 15;
  optional uint32 cg_set = 16;
}

enum user_x86_regs_mode { NATIVE = 1; COMPAT = 2; }
message user_x86_regs_entry {
  required uint64 r15 = 1;
  required uint64 r14 = 2;
  required uint64 r13 = 3;
  required uint64 r12 = 4;
  required uint64 bp = 5;
  required uint64 bx = 6;
  required uint64 r11 = 7;
  required uint64 r10 = 8;
  required uint64 r9 = 9;
  required uint64 r8 = 10;
  required uint64 ax = 11;
  required uint64 cx = 12;
  required uint64 dx = 13;
  required uint64 si = 14;
  required uint64 di = 15;
  required uint64 orig_ax = 16;
  required uint64 ip = 17;
  required uint64 cs = 18;
  required uint64 flags = 19;
  required uint64 sp = 20;
  required uint64 ss = 21;
  required uint64 fs_base = 22;
  required uint64 gs_base = 23;
  required uint64 ds = 24;
  required uint64 es = 25;
  required uint64 fs = 26;
  required uint64 gs = 27;
  optional user_x86_regs_mode mode = 28;
}
message user_x86_cet_entry { required uint64 cet = 1; required uint64 ssp = 2; }
message user_x86_xsave_entry {
  required uint64 xstate_bv = 1;
  repeated uint32 ymmh_space = 2;
  repeated uint64 bndreg_state = 3;
  repeated uint64 bndcsr_state = 4;
  repeated uint64 opmask_reg = 5;
  repeated uint64 zmm_upper = 6;
  repeated uint64 hi16_zmm = 7;
  repeated uint32 pkru = 8;
  optional user_x86_cet_entry cet = 9;
}
message user_x86_fpregs_entry {
  required uint32 cwd = 1;
  required uint32 swd = 2;
  required uint32 twd = 3;
  required uint32 fop = 4;
  required uint64 rip = 5;
  required uint64 rdp = 6;
  required uint32 mxcsr = 7;
  required uint32 mxcsr_mask = 8;
  repeated uint32 st_space = 9;
  repeated uint32 xmm_space = 10;
  repeated uint32 padding = 11;
  optional user_x86_xsave_entry xsave = 13;
}
message user_desc_t {
  required uint32 entry_number = 1;
  required uint32 base_addr = 2;
  required uint32 limit = 3;
  required bool seg_32bit = 4;
  required bool contents_h = 5;
  required bool contents_l = 6;
  required bool read_exec_only = 7;
  required bool limit_in_pages = 8;
  required bool seg_not_present = 9;
  required bool usable = 10;
}
message thread_info_x86 {
  required uint64 clear_tid_addr = 1;
  required user_x86_regs_entry gpregs = 2;
  required user_x86_fpregs_entry fpregs = 3;
  repeated user_desc_t tls = 4;
}

message core_entry {
  enum march {
    UNKNOWN = 0; X86_64 = 1; ARM = 2; AARCH64 = 3; PPC64 = 4; S390 = 5; MIPS = 6; LOONGARCH64 = 7; RISCV64 = 8;
  }
  required march mtype = 1;
  optional thread_info_x86 thread_info = 2;
  // 6, 8-13: thread_info of arm, aarch64, ppc64, s390, mips, loongarch64, riscv64 (kept as unknown fields)
  optional task_core_entry tc = 3;
  optional task_kobj_ids_entry ids = 4;
  optional thread_core_entry thread_core = 5;
}

message fs_entry {
  required uint32 cwd_id = 1;
  required uint32 root_id = 2;
  optional uint32 umask = 3;
}

message vma_entry {
  required uint64 start = 1;
  required uint64 end = 2;
  required uint64 pgoff = 3;
  required uint64 shmid = 4;
  required uint32 prot = 5;
  required uint32 flags = 6;
  required uint32 status = 7;
  required sint64 fd = 8;
  optional uint64 madv = 9;
  optional uint32 fdflags = 10;
}
message aio_ring_entry {
  required uint64 id = 1;
  required uint32 nr_req = 2;
  required uint32 ring_len = 3;
}
message mm_entry {
  required uint64 mm_start_code = 1;
  required uint64 mm_end_code = 2;
  required uint64 mm_start_data = 3;
  required uint64 mm_end_data = 4;
  required uint64 mm_start_stack = 5;
  required uint64 mm_start_brk = 6;
  required uint64 mm_brk = 7;
  required uint64 mm_arg_start = 8;
  required uint64 mm_arg_end = 9;
  required uint64 mm_env_start = 10;
  required uint64 mm_env_end = 11;
  required uint32 exe_file_id = 12;
  repeated uint64 mm_saved_auxv = 13;
  repeated vma_entry vmas = 14;
  optional int32 dumpable = 15;
  repeated aio_ring_entry aios = 16;
  optional bool thp_disabled = 17;
}

message pagemap_head { required uint32 pages_id = 1; }
message pagemap_entry {
  required uint64 vaddr = 1;
  required uint32 compat_nr_pages = 2;
  optional bool in_parent = 3;
  optional uint32 flags = 4;
  optional uint64 nr_pages = 5;
}

message seccomp_filter {
  required bytes filter = 1;
  optional uint32 prev = 2;
  optional uint32 flags = 3;
}
message seccomp_entry { repeated seccomp_filter seccomp_filters = 1; }

message timespec { required uint64 tv_sec = 1; required uint64 tv_nsec = 2; }
message timens_entry { required timespec monotonic = 1; required timespec boottime = 2; }
message utsns_entry { required string nodename = 1; required string domainname = 2; }
message pidns_entry { optional string ext_key = 1; }
message uid_gid_extent {
  required uint32 first = 1;
  required uint32 lower_first = 2;
  required uint32 count = 3;
}
message userns_entry { repeated uid_gid_extent uid_map = 1; repeated uid_gid_extent gid_map = 2; }

message cgroup_perms { required uint32 mode = 1; required uint32 uid = 2; required uint32 gid = 3; }
message cgroup_prop_entry {
  required string name = 1;
  required string value = 2;
  optional cgroup_perms perms = 3;
}
message cgroup_dir_entry {
  required string dir_name = 1;
  repeated cgroup_dir_entry children = 2;
  repeated cgroup_prop_entry properties = 3;
  optional cgroup_perms dir_perms = 4;
}
message cg_controller_entry {
  repeated string cnames = 1;
  repeated cgroup_dir_entry dirs = 2;
  optional bool is_threaded = 3;
}
message cg_member_entry {
  required string name = 1;
  required string path = 2;
  optional uint32 cgns_prefix = 3;
}
message cg_set_entry { required uint32 id = 1; repeated cg_member_entry ctls = 2; }
message cgroup_entry { repeated cg_set_entry sets = 1; repeated cg_controller_entry controllers = 2; }

message cpuinfo_x86_entry {
  enum vendor { UNKNOWN = 0; INTEL = 1; AMD = 2; }
  required vendor vendor_id = 1;
  required uint32 cpu_family = 2;
  required uint32 model = 3;
  required uint32 stepping = 4;
  required uint32 capability_ver = 5;
  repeated uint32 capability = 6;
  optional string model_id = 7;
  optional uint64 xfeatures_mask = 8;
  optional uint32 xsave_size = 9;
  optional uint32 xsave_size_max = 10;
}
message cpuinfo_entry {
  repeated cpuinfo_x86_entry x86_entry = 1;
  // 2, 3: ppc64 and s390 entries (kept as unknown fields)
}

message dump_stats_entry {
  required uint32 freezing_time = 1;
  required uint32 frozen_time = 2;
  required uint32 memdump_time = 3;
  required uint32 memwrite_time = 4;
  required uint64 pages_scanned = 5;
  required uint64 pages_skipped_parent = 6;
  required uint64 pages_written = 7;
  optional uint32 irmap_resolve = 8;
  required uint64 pages_lazy = 9;
  optional uint64 page_pipes = 10;
  optional uint64 page_pipe_bufs = 11;
  optional uint64 shpages_scanned = 12;
  optional uint64 shpages_skipped_parent = 13;
  optional uint64 shpages_written = 14;
}
message restore_stats_entry {
  required uint64 pages_compared = 1;
  required uint64 pages_skipped_cow = 2;
  required uint32 forking_time = 3;
  required uint32 restore_time = 4;
  optional uint64 pages_restored = 5;
}
message stats_entry {
  optional dump_stats_entry dump = 1;
  optional restore_stats_entry restore = 2;
}
`;
