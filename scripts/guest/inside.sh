#!/bin/sh
# Run inside the test guest first: the mounts and kernel modules a Debian system would have set up.
# A login shell would have these on PATH (CRIU built by scripts/install-criu is in /usr/local/sbin).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
for m in veth nf_tables nft_ct nft_compat nft_chain_nat nf_conntrack xt_mark x_tables inet_diag tcp_diag udp_diag unix_diag netlink_diag packet_diag af_packet_diag; do
  busybox modprobe "$m" 2>/dev/null
done
ip link set lo up
# kernel.pid_max as scripts/setup persists it (a boot of this machine would apply it): this kernel has
# one pid_max for all PID namespaces, and the test bed's hosts need room above this guest's PIDs to
# number their processes apart (scripts/testbed/host.ts).
[ -f /etc/sysctl.d/40-cedana-pid-max.conf ] && sysctl -q -p /etc/sysctl.d/40-cedana-pid-max.conf >/dev/null 2>&1
hostname cedana-guest
# cedana.thp=madvise|always|never sets transparent huge pages (this kernel's default is always).
thp=$(sed -n 's/.*cedana\.thp=\([a-z]*\).*/\1/p' /proc/cmdline)
[ -n "$thp" ] && echo "$thp" > /sys/kernel/mm/transparent_hugepage/enabled
