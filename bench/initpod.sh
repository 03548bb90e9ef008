# A one-app pod root for pod-init (sourced by bench/initrss.sh and
# stage2-init/hot.sh): the app is busybox sleep, with a unit shaped like
# the one stage1 writes for a pod of `pod run` (environment, user, cgroup
# dir, capabilities, seccomp filters, no_new_privs).
#
#   init_pod_root DIR
init_pod_root() {
  local root=$1 rootfs=$1/apps/s/rootfs
  mkdir -p "$root/units" "$rootfs/bin" "$rootfs/etc" "$rootfs/dev" "$rootfs/tmp" "$root/cgroup/s"
  cp /bin/busybox "$rootfs/bin/busybox"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
  echo 'root:x:0:' >"$rootfs/etc/group"
  : >"$root/cgroup/s/cgroup.procs"
  # A classic BPF program of one instruction: RET SECCOMP_RET_ALLOW.
  printf '\x06\x00\x00\x00\x00\x00\xff\x7f' >"$root/units/s.seccomp.bpf"
  cat >"$root/units/s.unit" <<'UNIT'
[Unit]
Description=s
[Service]
ExecStart=/bin/busybox sleep 3600
Environment="HOSTNAME=bench" "TERM=xterm"
WorkingDirectory=/tmp
User=0
Group=0
Restart=no
TimeoutStopSec=10
NoNewPrivileges=yes
[X-Pod]
Cgroup=/cgroup/s
Capabilities=CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_CHROOT CAP_MKNOD CAP_AUDIT_WRITE CAP_SETFCAP
SeccompFilter=/units/s.seccomp.bpf
UNIT
}
