# A one-app pod root for pod-init (sourced by bench/initrss.sh and
# stage2-init/hot.sh): the app is busybox sleep, with a unit shaped like
# the one stage1 writes for a pod of `pod run` (user, six cgroup dirs,
# capabilities, two seccomp filters; plus an environment).
#
#   init_pod_root DIR
init_pod_root() {
  local root=$1 rootfs=$1/apps/s/rootfs
  mkdir -p "$root/units" "$rootfs/bin" "$rootfs/etc" "$rootfs/dev" "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
  echo 'root:x:0:' >"$rootfs/etc/group"
  local i
  for i in 0 1 2 3 4 5; do # one dir per cgroup v1 hierarchy, as stage1 makes
    mkdir -p "$root/cgroup/s/$i"
    : >"$root/cgroup/s/$i/cgroup.procs"
  done
  # Classic BPF programs of one instruction: RET SECCOMP_RET_ALLOW.
  printf '\x06\x00\x00\x00\x00\x00\xff\x7f' >"$root/units/s.seccomp.bpf"
  printf '\x06\x00\x00\x00\x00\x00\xff\x7f' >"$root/units/s.clone3.seccomp.bpf"
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
RestartSec=1
TimeoutStopSec=10
[X-Pod]
Cgroup=/cgroup/s/0 /cgroup/s/1 /cgroup/s/2 /cgroup/s/3 /cgroup/s/4 /cgroup/s/5
Capabilities=CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID CAP_SETPCAP CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SYS_CHROOT CAP_MKNOD CAP_AUDIT_WRITE CAP_SETFCAP
SeccompFilter=/units/s.seccomp.bpf /units/s.clone3.seccomp.bpf
UNIT
}
