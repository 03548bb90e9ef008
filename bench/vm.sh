#!/usr/bin/env bash
# Benchmark: start-to-exit of a one-app VM pod running `true` (busybox image
# already in the store, kernel and initramfs already cached) with pod's own
# guest kernel (scripts/build-guest-kernel.sh) and with Debian's, and bare
# qemu booting each of those kernels with a minimal initramfs whose /init
# powers the machine off at once; the four interleaved in one run. Each
# bare qemu has the machine model, CPU model, memory, kernel command line
# and accelerator `pod run` has with that kernel.
#
#   bench/vm.sh             # needs root, qemu, python3, both guest kernels
#
# The accelerator is KVM where the CPU has vmx/svm, else TCG (printed).
# Targets: pod (own kernel) <= 1.1x bare qemu (same kernel), and <= 0.5x
# bare qemu with Debian's kernel (what a user would otherwise boot).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-7}
for t in qemu-system-x86_64 python3; do
  command -v $t >/dev/null || { echo "$t is needed (scripts/install-deps.sh)" >&2; exit 1; }
done
. bench/lib.sh
bench_store vm podbench9 239
export POD_CACHE_DIR=$work/cache
pod_kernel=/usr/lib/pod/guest/pod-kernel/vmlinux
[ -f "$pod_kernel" ] || { echo "no $pod_kernel: run scripts/build-guest-kernel.sh" >&2; exit 1; }
bench_vm_true_pod
if [ "$accel" = kvm ]; then cpu=host; else cpu=max; fi
# The two kernels, by configuration directory (stage1.yaml's vm.kernel).
mkdir -p "$work/config-debian"
cp -a "$POD_CONFIG" "$work/config-pod" 2>/dev/null || mkdir -p "$work/config-pod"
cp -a "$work/config-pod/." "$work/config-debian/"
echo 'vm: { kernel: pod }' > "$work/config-pod/stage1.yaml"
echo 'vm: { kernel: debian }' > "$work/config-debian/stage1.yaml"
# Warm up: the first runs decompress Debian's kernel and build the initramfs
# images (one per kernel).
POD_CONFIG=$work/config-pod "$bin/pod" run "$work/true-vm.yaml" >/dev/null 2>&1
POD_CONFIG=$work/config-debian "$bin/pod" run "$work/true-vm.yaml" >/dev/null 2>&1
debian_vmlinux=$(ls "$POD_CACHE_DIR"/vm/vmlinux-*)

# The peer's initramfs: busybox, and an /init that reboots (-no-reboot: qemu exits).
# The floor's (what any runtime that shares the app's files over 9p pays):
# the same, but its /init mounts a 9p share (pod-init's mount options)
# holding busybox, runs `true` from it in a chroot, then powers off; qemu
# has the devices a VM pod's has (the 9p share, virtio-serial with three
# ports). Everything pod-init does beyond that (the app's /proc, /sys and
# /dev, its user, capabilities and seccomp filter, the status files, the
# agents) is the difference between the floor and `pod run`.
mkdir -p "$work/floor/bin"
cp /bin/busybox "$work/floor/bin/busybox"
share_options=$(sed -n 's/^pub(crate) const SHARE_OPTIONS: &str = "\(.*\)";/\1/p' stage2-init/src/vm/boot.rs)
[ -n "$share_options" ] || { echo "no SHARE_OPTIONS in stage2-init/src/vm/boot.rs" >&2; exit 1; }
python3 - "$work/min.cpio" "$work/floor.cpio" "$share_options" <<'PY'
import sys
def initramfs(path, init):
    entries = [("dev", 0o40755, b"", (0, 0)), ("bin", 0o40755, b"", (0, 0)),
               ("dev/console", 0o20600, b"", (5, 1)),
               ("bin/busybox", 0o100755, open("/bin/busybox", "rb").read(), (0, 0)),
               ("init", 0o100755, b"#!/bin/busybox sh\n" + init + b"/bin/busybox reboot -f\n", (0, 0)),
               ("TRAILER!!!", 0, b"", (0, 0))]
    with open(path, "wb") as out:
        for ino, (name, mode, data, rdev) in enumerate(entries, 1):
            n = name.encode() + b"\0"
            fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(n), 0]
            out.write(b"070701" + b"".join(b"%08x" % f for f in fields) + n)
            out.write(b"\0" * (-(110 + len(n)) % 4) + data + b"\0" * (-len(data) % 4))
initramfs(sys.argv[1], b"")
initramfs(sys.argv[2], b"/bin/busybox mkdir /mnt\n"
          b"/bin/busybox mount -t 9p -o " + sys.argv[3].encode() + b" pod /mnt\n"
          b"/bin/busybox chroot /mnt /bin/busybox true && echo floor-ok\n")
PY

# 128 MiB for the app plus stage1-vm's 128 MiB overhead: the pod's VM size;
# the machine model and kernel command line are the ones stage1-vm uses for
# that kernel (stage1-vm/src/qemu.rs): microvm for pod's own, pc for
# Debian's; a one-vCPU TCG guest ticks on the PIT (noapictimer),
# and under TCG, on a host with a constant TSC, the TSC rate stage1-vm
# measured (cached by the warm-up runs).
tick=""
[ "$accel" = tcg ] && tick=" noapictimer"
tsc_khz=$(awk '{print $2}' "$POD_CACHE_DIR/vm/tsc-khz" 2>/dev/null || true)
[ "$accel" = tcg ] && [ -n "$tsc_khz" ] && tick="$tick tsc_early_khz=$tsc_khz tsc=reliable"
peer() { # KERNEL MACHINE [INITRD CONSOLE-LOG]
  echo qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot -machine "$2,accel=$accel" -cpu "$cpu" \
    -m 256M -smp 1 -kernel "$1" -initrd "${3:-$work/min.cpio}" \
    -append "'console=ttyS0 reboot=t panic=-1 pci=noacpi rdinit=/init$tick modprobe.blacklist=virtio_net,net_failover,failover quiet loglevel=3'" \
    -serial "file:${4:-$work/peer-console.log}"
}
# The floor's devices, as stage1-vm gives a VM pod on microvm.
floor_devices="-fsdev local,id=pod,path=$work/floor,security_model=passthrough,multidevs=remap \
  -device virtio-9p-device,fsdev=pod,mount_tag=pod -device virtio-serial-device,id=vser0,max_ports=4"
for i in 0 1 2; do
  floor_devices="$floor_devices -chardev null,id=port$i -device virtserialport,bus=vser0.0,chardev=port$i,name=port$i"
done
echo "accelerator: $accel; kernels: pod's own $(cat "$(dirname "$pod_kernel")/version" 2>/dev/null) ($(du -k "$pod_kernel" | cut -f1) kB), Debian's $(cat /usr/lib/pod/guest/version 2>/dev/null); $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Interleaved, the order rotated per round, rather than hyperfine's one
# block per command: on a shared machine the load drifts over a run, and
# rotating gives every command the same share of it.
python3 - "$runs" "$accel" <<PY
import shlex, statistics, subprocess, sys, time, os
runs, accel = int(sys.argv[1]), sys.argv[2]
pod = ["$bin/pod", "run", "$work/true-vm.yaml"]
cmds = {
    "qemu, pod's kernel": (shlex.split("""$(peer "$pod_kernel" microvm,acpi=off,x-option-roms=off)"""), {}),
    "pod run, pod's kernel": (pod, {"POD_CONFIG": "$work/config-pod"}),
    "pod run, Debian's kernel": (pod, {"POD_CONFIG": "$work/config-debian"}),
    "qemu, Debian's kernel": (shlex.split("""$(peer "$debian_vmlinux" pc)"""), {}),
    "floor, pod's kernel": (shlex.split("""$(peer "$pod_kernel" microvm,acpi=off,x-option-roms=off "$work/floor.cpio" "$work/floor-console.log") $floor_devices"""), {}),
}
def timed(cmd, env):
    e = dict(os.environ, **env)
    t = time.monotonic()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=e)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} exited with {r.returncode}")
    return time.monotonic() - t
names = list(cmds)
times = {n: [] for n in names}
for r in range(runs):
    for k in range(len(names)):
        n = names[(k + r) % len(names)]
        times[n].append(timed(*cmds[n]))
med = {n: statistics.median(times[n]) for n in names}
for n in names:
    print(f"{n:25} {med[n]:6.2f} s median of {runs} ({accel}); runs: {' '.join(f'{x:.2f}' for x in times[n])}")
own, peer_own = med["pod run, pod's kernel"], med["qemu, pod's kernel"]
pod_deb, peer_deb = med["pod run, Debian's kernel"], med["qemu, Debian's kernel"]
print(f"pod run (own kernel) = {own/peer_own:.2f}x bare qemu with the same kernel (target <= 1.10x)")
print(f"pod run (own kernel) = {own/pod_deb:.2f}x pod run with Debian's kernel")
print(f"pod run (own kernel) = {own/peer_deb:.2f}x bare qemu with Debian's kernel (target <= 0.50x)")
floor = med["floor, pod's kernel"]
print(f"floor (9p mount, chroot, true) = {floor/peer_own:.2f}x bare qemu with the same kernel; pod run = {own/floor:.2f}x the floor")
if "floor-ok" not in open("$work/floor-console.log", errors="replace").read():
    sys.exit("the floor's /init did not run true from the share; its console:\n" + open("$work/floor-console.log", errors="replace").read()[-2000:])
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
