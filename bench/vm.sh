#!/usr/bin/env bash
# Benchmark: start-to-exit of a one-app VM pod running `true` (busybox image
# already in the store, kernel and initramfs already cached), `pod run`
# versus bare qemu booting the same vmlinux with a minimal initramfs whose
# /init powers the machine off at once, measured in the same run,
# interleaved. Same machine model, CPU model, memory, kernel command line
# and accelerator for both.
#
#   bench/vm.sh             # needs root, hyperfine, qemu, the guest kernel
#
# The accelerator is KVM where the CPU has vmx/svm, else TCG (printed).
# Target: pod <= 1.1x bare qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-7}
for t in qemu-system-x86_64 python3; do
  command -v $t >/dev/null || { echo "$t is needed (scripts/install-deps.sh)" >&2; exit 1; }
done
cargo build --release -q --workspace
bin=$PWD/target/release

work=$(mktemp -d /var/tmp/pod-bench-vm.XXXXXX)
export POD_DIR=$work/store POD_CONFIG=$work/config POD_CACHE_DIR=$work/cache
cleanup() {
  "$bin/pod" gc >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/pod" image build manifests/images/busybox.yaml -o "$work/busybox.aci" >/dev/null 2>&1
"$bin/pod" fetch --insecure-options=image "$work/busybox.aci" >/dev/null 2>&1
if grep -qwE 'vmx|svm' /proc/cpuinfo; then accel=kvm; cpu=host; else accel=tcg; cpu=max; fi
cat > "$work/true.yaml" <<YAML
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
# Warm up: the first run decompresses the kernel and builds the initramfs.
"$bin/pod" run "$work/true.yaml" >/dev/null 2>&1
vmlinux=$(ls "$POD_CACHE_DIR"/vm/vmlinux-*)

# The peer's initramfs: busybox, and an /init that reboots (-no-reboot: qemu exits).
python3 - "$work/min.cpio" <<'PY'
import sys
out = open(sys.argv[1], "wb")
ino = 0
def entry(name, mode, data=b"", rdev=(0, 0)):
    global ino
    ino += 1
    n = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(n), 0]
    out.write(b"070701" + b"".join(b"%08x" % f for f in fields) + n)
    out.write(b"\0" * (-(110 + len(n)) % 4) + data + b"\0" * (-len(data) % 4))
entry("dev", 0o40755); entry("bin", 0o40755)
entry("dev/console", 0o20600, rdev=(5, 1))
entry("bin/busybox", 0o100755, open("/bin/busybox", "rb").read())
entry("init", 0o100755, b"#!/bin/busybox sh\n/bin/busybox reboot -f\n")
entry("TRAILER!!!", 0)
PY

# 128 MiB for the app plus stage1-vm's 128 MiB overhead: the pod's VM size;
# the kernel command line is the one stage1-vm uses (stage1-vm/src/qemu.rs).
peer=(qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot -machine "pc,accel=$accel" -cpu "$cpu"
  -m 256M -smp 1 -kernel "$vmlinux" -initrd "$work/min.cpio"
  -append "console=ttyS0 reboot=t panic=-1 pci=noacpi rdinit=/init modprobe.blacklist=virtio_net,net_failover,failover quiet loglevel=3" -serial "file:$work/peer-console.log")
echo "accelerator: $accel; kernel: $(cat /usr/lib/pod/guest/version 2>/dev/null || echo "$vmlinux"); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Interleaved (peer, pod, peer, pod, ...) rather than hyperfine's one block
# per command: on a shared machine the load drifts over a run, and
# alternating gives both the same share of it.
python3 - "$runs" "$accel" "$bin/pod" "$work/true.yaml" "${peer[@]}" <<'PY'
import statistics, subprocess, sys, time
runs, accel, pod, podfile, peer = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
def timed(cmd):
    t = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} exited with {r.returncode}")
    return time.monotonic() - t
times = {"peer": [], "pod": []}
for _ in range(runs):
    times["peer"].append(timed(peer))
    times["pod"].append(timed([pod, "run", podfile]))
p, q = statistics.median(times["peer"]), statistics.median(times["pod"])
fmt = lambda xs: " ".join(f"{x:.2f}" for x in xs)
print(f"bare qemu    runs: {fmt(times['peer'])}")
print(f"pod run (vm) runs: {fmt(times['pod'])}")
print(f"bare qemu: {p:.2f} s   pod run (vm): {q:.2f} s   (medians of {runs}, {accel})")
print(f"pod run (vm) = {q/p:.2f}x bare qemu (target <= 1.10x)")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
