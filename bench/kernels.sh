#!/usr/bin/env bash
# Benchmark: two builds of pod's guest kernel against each other, for a
# change of stage1-vm/kernel/ (its configuration fragment, its patches):
# start-to-exit of a one-app VM pod running `true` on qemu's microvm, as
# `pod run` boots pod's own kernel, with kernel A and with kernel B,
# interleaved in one run. Prints each kernel's median and B/A.
#
#   bench/kernels.sh A/vmlinux B/vmlinux     # needs root, qemu
#
# A kernel to compare is built aside, leaving the installed one alone:
#   POD_GUEST_DIR=/var/tmp/guest-b scripts/build-guest-kernel.sh
# (then /var/tmp/guest-b/pod-kernel/vmlinux). The accelerator is KVM where
# the CPU has vmx/svm, else TCG (printed).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { echo "usage: bench/kernels.sh A/vmlinux B/vmlinux" >&2; exit 2; }
runs=${RUNS:-7}
kernels=("$(realpath "$1")" "$(realpath "$2")")
for k in "${kernels[@]}"; do
  [ -f "$k" ] || { echo "no kernel at $k" >&2; exit 1; }
done
command -v qemu-system-x86_64 >/dev/null || { echo "qemu-system-x86_64 is needed (scripts/install-deps.sh)" >&2; exit 1; }
. bench/lib.sh
bench_store kernels podbench8 238
export POD_CACHE_DIR=$work/cache
bench_vm_true_pod
# One configuration directory per kernel (stage1.yaml's vm.kernel), on
# the machine pod's own kernel boots on; a first run of each builds its
# initramfs.
for i in 0 1; do
  mkdir -p "$work/config-$i"
  printf 'vm: { kernel: %s, machine: microvm }\n' "${kernels[$i]}" > "$work/config-$i/stage1.yaml"
  POD_CONFIG=$work/config-$i "$bin/pod" run "$work/true-vm.yaml" >/dev/null 2>&1 \
    || { echo "a VM pod does not run with ${kernels[$i]}:" >&2; POD_CONFIG=$work/config-$i "$bin/pod" run "$work/true-vm.yaml" >&2; exit 1; }
done

echo "accelerator: $accel; $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Interleaved, the order alternating per round (as bench/vm.sh does): on a
# shared machine the load drifts over a run.
python3 - "$runs" "$work" "$bin/pod" "${kernels[@]}" <<'PY'
import os, statistics, subprocess, sys, time
runs, work, pod, kernels = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:6]
def timed(i):
    env = dict(os.environ, POD_CONFIG=f"{work}/config-{i}")
    t = time.monotonic()
    r = subprocess.run([pod, "run", f"{work}/true-vm.yaml"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    if r.returncode != 0:
        sys.exit(f"pod run with {kernels[i]} exited with {r.returncode}")
    return time.monotonic() - t
times = [[], []]
for r in range(runs):
    for i in ((0, 1) if r % 2 == 0 else (1, 0)):
        times[i].append(timed(i))
med = [statistics.median(t) for t in times]
for i, name in enumerate("AB"):
    print(f"{name} {kernels[i]}: {med[i]:.2f} s median of {runs}; runs: {' '.join(f'{x:.2f}' for x in times[i])}")
print(f"B/A = {med[1] / med[0]:.2f}x")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
