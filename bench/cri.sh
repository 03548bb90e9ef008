#!/usr/bin/env bash
# Benchmark (issue 11): a CRI sandbox with one container, as kubelet drives
# it, `pod cri serve` versus Debian's containerd (1.6, its CRI plugin, runc),
# in the same run, through the same crictl (v1.37.0, built by
# scripts/build-cri-tools.sh):
#
#   up:   crictl runp + create + start, then inspect until CONTAINER_RUNNING
#   down: crictl stopp, then rmp (which removes the container too)
#
# The image: the example busybox (manifests/images/busybox.yaml), built
# once. pod fetches the ACI signed with a throwaway key it trusts for
# example.com/ (verified as always); containerd imports an OCI archive of the
# same rootfs (one layer) with `ctr images import`. containerd's sandboxes
# need a pause image: a static C pause (pause and reap, as Kubernetes' own)
# in an OCI archive of its own, set as sandbox_image. Nothing is pulled.
#
# Network: both runtimes put each sandbox on a CNI bridge network of the same
# shape (bridge + host-local + portmap from Debian's
# containernetworking-plugins, without isGateway/ipMasq, so IP forwarding is
# never switched on), each with a bridge and subnet of its own. containerd
# adds the loopback plugin itself; pod's stage1 brings lo up.
#
# containerd runs with a config of its own (root, state, sockets, runc root,
# CNI config under the work dir; netns under its state dir); the host's
# /etc/containerd and any running containerd are left alone. Rounds
# interleave the two sides, alternating which goes first; one untimed warm-up
# cycle each. Prints each round, the medians per phase and the ratio
# pod/containerd (target: <= 1.0x). On exit (trap): sandboxes removed, both
# servers stopped, leftover shims (of this containerd only), mounts under the
# work dir, cgroups of this run's containers and the bridges removed.
#
# Usage (root): [ROUNDS=5] [POD_BIN_DIR=target/release] [CRI_DEBUG=1] bench/cri.sh
#   CRI_DEBUG=1: `pod cri serve --debug` and containerd at debug level, their
#   logs kept in /var/tmp/pod-bench-cri-logs.* (they slow both sides).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
crictl=${CRICTL:-/usr/local/lib/pod-test/bin/crictl}
image=example.com/busybox:1.35
pause_image=example.com/pause:1

[ "$(id -u)" = 0 ] || { echo "bench/cri.sh runs sandboxes: run it as root" >&2; exit 1; }
[ -x "$crictl" ] || { echo "crictl not found at $crictl (scripts/build-cri-tools.sh builds it)" >&2; exit 1; }
if ! command -v containerd >/dev/null || ! command -v runc >/dev/null; then
  echo "installing Debian's containerd and runc"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends containerd runc >/dev/null
  # Where systemd runs, the package starts a containerd of the host's: this
  # benchmark runs its own, so the one it just brought in is stopped.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
fi
for tool in containerd ctr runc umoci zstd cc ip python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (scripts/install-deps.sh)" >&2; exit 1; }
done
for plugin in bridge host-local portmap loopback; do
  [ -x "/usr/lib/cni/$plugin" ] || { echo "/usr/lib/cni/$plugin is missing (containernetworking-plugins)" >&2; exit 1; }
done

if [ -n "${POD_BIN_DIR:-}" ]; then
  bin=$(cd "$POD_BIN_DIR" && pwd)
else
  cargo build --release -q -p stage0 -p cri -p stage1-ns -p stage2-init
  bin=${CARGO_TARGET_DIR:-$PWD/target}/release
fi

work=$(mktemp -d /var/tmp/pod-bench-cri.XXXXXX)
ctrd=$work/containerd
ctrd_sock=$ctrd/containerd.sock
pod_sock=$work/pod/cri.sock
bridges=(pbcri-pod pbcri-ctrd)
# As kubelet gives one: containerd's sandboxes and containers go under it
# (pod's sandboxes have cgroups of their own, removed with them).
cgroup_parent=/$(basename "$work")
ctrd_pid= pod_pid=
# The shims put their sockets in /run/containerd/s whatever the state dir.
[ -d /run/containerd ] && made_run_dir= || made_run_dir=1
export POD_DIR=$work/pod/store POD_CONFIG=$work/pod/config

cri() { # SIDE ARGS...: crictl against one side
  local side=$1
  shift
  "$crictl" --config "$work/crictl-$side.yaml" "$@"
}

cleanup() {
  set +e
  local side id pid m b logs
  for side in pod containerd; do
    [ -S "$work/$side.sock" ] || continue
    for id in $(cri "$side" pods -q 2>/dev/null); do cri "$side" rmp -f "$id" >/dev/null 2>&1; done
  done
  for pid in $pod_pid $ctrd_pid; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  # Shims of this containerd (their command line names its socket), by pid.
  for pid in $(pgrep -f -- "-address $ctrd_sock" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
  "$bin/pod" gc >/dev/null 2>&1
  # Mounts under the work dir (overlay rootfs, shm, netns), deepest first.
  awk -v w="$work" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  # The cgroup parent of this run's sandboxes (containerd's; pod keeps
  # its own cgroups and removes them with the pod).
  find /sys/fs/cgroup/*/"$cgroup_parent" -depth -type d -exec rmdir {} \; 2>/dev/null
  for b in "${bridges[@]}"; do ip link del "$b" 2>/dev/null; done
  [ -n "$made_run_dir" ] && rmdir /run/containerd/s /run/containerd 2>/dev/null
  if [ -n "${CRI_DEBUG:-}" ]; then
    logs=$(mktemp -d /var/tmp/pod-bench-cri-logs.XXXXXX)
    cp "$work"/*.log "$logs/" 2>/dev/null
    echo "logs kept in $logs"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# -- CNI: the same network shape for both, a bridge and subnet each.
cni_conf() { # DIR NAME BRIDGE OCTET
  mkdir -p "$1"
  cat > "$1/10-$2.conflist" <<JSON
{"cniVersion":"1.0.0","name":"$2","plugins":[
 {"type":"bridge","bridge":"$3","isGateway":false,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.213.$4.0/24"}]],"dataDir":"$work/ipam-$2"}},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":false}]}
JSON
}
cni_conf "$POD_CONFIG/net.d" benchpod "${bridges[0]}" 252
cni_conf "$ctrd/net.d" benchctrd "${bridges[1]}" 253

# -- The image: pod's example busybox, signed and fetched (verified) by pod;
# the same rootfs as a one-layer OCI archive for containerd.
quiet() { # CMD...: its output only if it fails
  local out
  out=$("$@" 2>&1) || { echo "$out" >&2; echo "failed: $*" >&2; return 1; }
}
quiet "$bin/pod" image build manifests/images/busybox.yaml -o "$work/busybox.aci"
quiet "$bin/pod" key gen --out "$work/key" --name bench --comment "pod CRI benchmark key"
quiet "$bin/pod" image sign --key "$work/key/bench.key" "$work/busybox.aci"
quiet "$bin/pod" trust add --prefix example.com/ "$work/key/bench.pub"
quiet "$bin/pod" fetch "$work/busybox.aci"

oci_archive() { # ROOTFS NAME TAG ENTRYPOINT... -> $work/NAME.tar
  local rootfs=$1 name=$2 tag=$3 layout=$work/layout-$2
  shift 3
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  (cd "$rootfs" && tar --numeric-owner -cf "$rootfs.tar" -- *)
  umoci raw add-layer --image "$layout:$tag" "$rootfs.tar"
  local args=() a
  for a in "$@"; do args+=(--config.entrypoint "$a"); done
  umoci config --image "$layout:$tag" "${args[@]}"
  tar -C "$layout" -cf "$work/$name.tar" .
  rm -rf "$layout" "$rootfs.tar"
}
mkdir -p "$work/busybox-rootfs"
zstd -dc "$work/busybox.aci" | tar -C "$work/busybox-rootfs" --numeric-owner --strip-components=1 -xf - rootfs
oci_archive "$work/busybox-rootfs" busybox 1.35 /bin/sh -c "echo hello from busybox"
mkdir -p "$work/pause-rootfs"
cat > "$work/pause.c" <<'C'
/* The sandbox's PID 1: waits for signals, reaps children, ends on INT/TERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction q = {.sa_handler = quit}, r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &q, 0);
  sigaction(SIGTERM, &q, 0);
  sigaction(SIGCHLD, &r, 0);
  for (;;) pause();
}
C
cc -static -Os -s -o "$work/pause-rootfs/pause" "$work/pause.c"
oci_archive "$work/pause-rootfs" pause 1 /pause
rm -rf "$work/busybox-rootfs" "$work/pause-rootfs"

# -- containerd, with a config of its own.
mkdir -p "$ctrd"
cat > "$ctrd/config.toml" <<TOML
version = 2
root = "$ctrd/root"
state = "$ctrd/state"
[grpc]
  address = "$ctrd_sock"
[ttrpc]
  address = "$ctrd_sock.ttrpc"
[debug]
  level = "${CRI_DEBUG:+debug}"
[plugins."io.containerd.internal.v1.opt"]
  path = "$ctrd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  netns_mounts_under_state_dir = true
  # Sandboxes ask for oom_score_adj -998, which needs CAP_SYS_RESOURCE
  # (not granted on every machine, e.g. not in this project's sandboxes):
  # kept at containerd's own or above instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$ctrd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$ctrd/net.d"
TOML
containerd --config "$ctrd/config.toml" >"$work/containerd.log" 2>&1 &
ctrd_pid=$!
debug=()
[ -n "${CRI_DEBUG:-}" ] && debug=(--debug)
"$bin/pod" cri serve "${debug[@]}" --listen "unix://$pod_sock" --cni-conf-dir "$POD_CONFIG/net.d" \
  >"$work/pod-cri.log" 2>&1 &
pod_pid=$!
ln -s "$ctrd_sock" "$work/containerd.sock"
ln -s "$pod_sock" "$work/pod.sock"
for side in pod containerd; do
  printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\npull-image-on-create: false\n' \
    "$work/$side.sock" "$work/$side.sock" > "$work/crictl-$side.yaml"
done
for _ in $(seq 200); do
  [ -S "$pod_sock" ] && [ -S "$ctrd_sock" ] && break
  sleep 0.1
done
[ -S "$pod_sock" ] || { echo "pod cri serve did not start:"; tail "$work/pod-cri.log"; exit 1; }
[ -S "$ctrd_sock" ] || { echo "containerd did not start:"; tail "$work/containerd.log"; exit 1; }
for name in busybox pause; do
  quiet ctr --address "$ctrd_sock" -n k8s.io images import --base-name "example.com/$name" "$work/$name.tar"
done
# The images' layers: the snapshots containerd keeps between cycles.
snapshot_dir=$ctrd/root/io.containerd.snapshotter.v1.overlayfs/snapshots
snapshot_count() { find "$snapshot_dir" -mindepth 1 -maxdepth 1 | wc -l; }
base_snapshots=$(snapshot_count)
for side in pod containerd; do
  cri "$side" inspecti "$image" >/dev/null || { echo "$side does not have $image" >&2; exit 1; }
done
echo "pod: $("$bin/pod" --version) ($bin); containerd: $(containerd --version | cut -d' ' -f3); $(runc --version | head -1)"
echo "crictl: $("$crictl" --version); $(nproc) cores"

# -- The configs, written before any timing, alike for both sides.
mkdir -p "$work/json"
for side in pod containerd; do
  for i in check $(seq 0 "$rounds"); do
    mkdir -p "$work/logs/$side-$i"
    cat > "$work/json/sandbox-$side-$i.json" <<JSON
{"metadata":{"name":"bench-$i","namespace":"default","uid":"$side-$i","attempt":0},
 "log_directory":"$work/logs/$side-$i","linux":{"cgroup_parent":"$cgroup_parent"}}
JSON
  done
done
cat > "$work/json/container.json" <<JSON
{"metadata":{"name":"busybox"},"image":{"image":"$image"},
 "command":["/bin/sh","-c","exec sleep 3600"],"log_path":"busybox.log","linux":{}}
JSON

now_us() { echo "${EPOCHREALTIME/./}"; }
# One cycle of SIDE with configs I: prints the ms of runp, create, start
# (until running), stopp, rmp.
cycle() {
  local side=$1 i=$2 sb=$work/json/sandbox-$1-$2.json t0 t1 t2 t3 t4 t5 sandbox container state
  t0=$(now_us)
  sandbox=$(cri "$side" runp "$sb")
  t1=$(now_us)
  container=$(cri "$side" create --no-pull "$sandbox" "$work/json/container.json" "$sb")
  t2=$(now_us)
  cri "$side" start "$container" >/dev/null
  for _ in $(seq 600); do
    state=$(cri "$side" inspect -o go-template --template '{{.status.state}}' "$container")
    [ "$state" = CONTAINER_RUNNING ] && break
  done
  t3=$(now_us)
  [ "$state" = CONTAINER_RUNNING ] || { echo "$side: container $container is $state" >&2; return 1; }
  cri "$side" stopp "$sandbox" >/dev/null
  t4=$(now_us)
  cri "$side" rmp "$sandbox" >/dev/null
  t5=$(now_us)
  local t=("$t0" "$t1" "$t2" "$t3" "$t4" "$t5") k out=()
  for k in 1 2 3 4 5; do out+=($(((t[k] - t[k - 1]) / 1000))); done
  echo "${out[*]}"
}

# Both sides' sandboxes are on their bridge network (untimed).
for side in pod:252 containerd:253; do
  sandbox=$(cri "${side%:*}" runp "$work/json/sandbox-${side%:*}-check.json")
  ip=$(cri "${side%:*}" inspectp -o go-template --template '{{.status.network.ip}}' "$sandbox")
  cri "${side%:*}" rmp -f "$sandbox" >/dev/null
  case $ip in
    10.213.${side#*:}.*) echo "${side%:*}'s sandboxes get their address on the bridge: $ip" ;;
    *) echo "${side%:*}'s sandbox has address '$ip', not one of 10.213.${side#*:}.0/24" >&2; exit 1 ;;
  esac
done
# containerd's garbage collector removes a cycle's snapshots after rmp has
# answered: the next timed cycle (maybe pod's) starts once it is done, so
# that work falls on neither side's time. pod leaves nothing running after
# rmp (its stage1 has exited and cleaned up before stopp answers).
settle() { # SIDE
  [ "$1" = containerd ] || return 0
  local _ t0=$(now_us)
  for _ in $(seq 200); do
    if [ "$(snapshot_count)" -le "$base_snapshots" ]; then
      echo $((($(now_us) - t0) / 1000)) >> "$work/gc-ms"
      return 0
    fi
    sleep 0.05
  done
  echo ">10000" >> "$work/gc-ms"
}

# Warm-up, untimed: each side's first sandbox pays for caches.
cycle pod 0 >/dev/null
cycle containerd 0 >/dev/null
settle containerd

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
results=$work/results
fmt() { read -r a b c d e <<<"$2"; echo "$1 $((a + b + c + d + e)) ms (runp $a, create $b, start $c, stopp $d, rmp $e)"; }
for i in $(seq "$rounds"); do
  if [ $((i % 2)) = 1 ]; then order=(pod containerd); else order=(containerd pod); fi
  line="round $i:"
  for side in "${order[@]}"; do
    r=$(cycle "$side" "$i")
    settle "$side"
    echo "$side $r" >> "$results"
    line+=" $(fmt "$side" "$r");"
  done
  echo "$line"
done
echo "load average (1, 5, 15 min): before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "containerd's GC removed a cycle's snapshots $(sort -n "$work/gc-ms" | tr '\n' ' ')ms after its rmp (waited for, untimed)"

# Nothing left behind by either side: veths on the bridges, mounts, cgroups.
for b in "${bridges[@]}"; do
  left=$(ip -o link show master "$b" 2>/dev/null | wc -l)
  [ "$left" = 0 ] || echo "WARNING: $left interfaces left on $b"
done
left=$(awk -v w="$work" '$5 ~ "^"w' /proc/self/mountinfo | wc -l)
[ "$left" = 0 ] || echo "WARNING: $left mounts left under $work"
left=$(find /sys/fs/cgroup/*/"$cgroup_parent" -mindepth 1 -type d 2>/dev/null | wc -l)
[ "$left" = 0 ] || echo "WARNING: $left cgroups left under $cgroup_parent"

python3 - "$results" "$rounds" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
phases = ["runp", "create", "start", "stopp", "rmp"]
med = {}
for side in ("pod", "containerd"):
    r = [[int(x) for x in row[1:]] for row in rows if row[0] == side]
    med[side] = [statistics.median(c) for c in zip(*r)] + [statistics.median(sum(x) for x in r)]
print(f"medians of {sys.argv[2]} rounds (ms):  " + "  ".join(f"{p:>7}" for p in phases + ["total"]))
for side in med:
    print(f"  {side:<28}" + "  ".join(f"{v:>7.0f}" for v in med[side]))
ratio = [p / c if c else float("nan") for p, c in zip(med["pod"], med["containerd"])]
print(f"  {'ratio pod/containerd':<28}" + "  ".join(f"{v:>6.2f}x" for v in ratio))
total = ratio[-1]
print(f"pod/containerd = {total:.2f}x (target <= 1.0x: {'met' if total <= 1.0 else 'NOT met'})")
PY
