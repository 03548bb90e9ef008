# Shared set-up of the pod benchmarks (sourced, not run): a release build, a
# private store and config under /var/tmp with the busybox image fetched,
# removed (with its pods and test bridge) on exit.
#
#   bench_store NAME BRIDGE SUBNET_OCTET   # sets bin, work, POD_DIR, POD_CONFIG
#   bench_true_pods                        # $work/true-none.yaml, $work/true-bench.yaml
#   bench_sleep_pod NAME NET SECS          # a one-app busybox sleep pod file, on stdout
#   bench_vm_true_pod                      # $work/true-vm.yaml; sets accel (kvm or tcg)

bench_store() {
  local name=$1
  bench_bridge=$2 bench_octet=$3
  # BENCH_PACKAGES: what to build (default: the workspace); the binaries are
  # taken from CARGO_TARGET_DIR when it is set.
  # shellcheck disable=SC2086
  cargo build --release -q ${BENCH_PACKAGES:---workspace}
  # The build's dirty pages are written back now, untimed, rather than
  # during the first timed commands (whose ext4 metadata work would wait
  # on them); and the first timed command waits for the machine to settle
  # after a build (1-minute load average under 0.5, at most 120 s): in two
  # sets of five runs the first, right after its build (load 1.9-2.0),
  # was the only one over crun.
  sync
  local waited=0
  while [ "$waited" -lt 120 ] && ! awk '{ exit !($1 < 0.5) }' /proc/loadavg; do
    sleep 1; waited=$((waited + 1))
  done
  bin=${CARGO_TARGET_DIR:-$PWD/target}/release
  work=$(mktemp -d "/var/tmp/pod-bench-$name.XXXXXX")
  export POD_DIR=$work/store POD_CONFIG=$work/config
  trap bench_cleanup EXIT
  "$bin/pod" image build manifests/images/busybox.yaml -o "$work/busybox.aci" >/dev/null 2>&1
  "$bin/pod" fetch --insecure-options=image "$work/busybox.aci" >/dev/null 2>&1
  # A bridge network shaped like the default one, but without
  # isGateway/ipMasq: the benchmark does not switch on IP forwarding.
  mkdir -p "$POD_CONFIG/net.d"
  cat > "$POD_CONFIG/net.d/10-bench.conflist" <<JSON
{"cniVersion":"1.0.0","name":"bench","plugins":[
 {"type":"bridge","bridge":"$bench_bridge","isGateway":false,"ipMasq":false,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.213.$bench_octet.0/24"}]],"dataDir":"$work/ipam"}},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":false}]}
JSON
}

bench_cleanup() {
  "$bin/pod" gc >/dev/null 2>&1 || true
  # The metadata service `pod run` started for the bench's data directory.
  local meta
  meta=$(cat "$POD_DIR/metadata/service.pid" 2>/dev/null || true)
  [ -n "$meta" ] && kill "$meta" 2>/dev/null || true
  ip link del "$bench_bridge" 2>/dev/null || true
  rm -rf "$work"
}

# One-app pods running `true`, with network none and on the bench network.
bench_true_pods() {
  local net
  for net in none bench; do
    cat > "$work/true-$net.yaml" <<YAML
name: bench-$net
network: $net
apps:
  - name: t
    image: example.com/busybox:1.35
    exec: [/bin/busybox, "true"]
YAML
  done
}

# A one-app pod sleeping SECONDS, printed: bench_sleep_pod NAME NETWORK SECONDS > FILE
bench_sleep_pod() {
  cat <<YAML
name: $1
network: $2
apps:
  - name: s
    image: example.com/busybox:1.35
    exec: [/bin/busybox, sleep, "$3"]
YAML
}

# A one-app VM pod running `true` ($work/true-vm.yaml) on the accelerator
# `accel: auto` would pick: KVM where the CPU has vmx/svm, else TCG (set in
# $accel for the caller to print).
bench_vm_true_pod() {
  if grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; else accel=tcg; fi
  cat > "$work/true-vm.yaml" <<YAML
name: bench-vm
isolation: vm
accel: $accel
network: none
apps:
  - name: t
    image: example.com/busybox:1.35
    exec: [/bin/busybox, "true"]
    resources: { memory: 128Mi, cpu: 1000m }
YAML
}
