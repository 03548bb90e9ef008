#!/usr/bin/env bash
# Benchmark: start-to-exit of a one-app pod running `true` from a busybox
# image already in the store, `pod run` versus crun on an OCI bundle of the
# same rootfs, measured in the same run (interleaved, medians); plus the
# resident memory of stage2-init (pod-init) and of the stage1 monitor.
#
#   bench/run.sh            # needs root, crun, python3, busybox-static
#
# crun 1.8 refuses this kind of host's hybrid cgroups (v1 controllers plus a
# cgroup2 mount at /sys/fs/cgroup/unified), so the whole comparison runs in a
# private mount namespace with that mount detached: both engines see the
# same cgroup v1 host. With the network: `pod run` joins a bridge network
# shaped like the default one (bridge + host-local + portmap) but without
# isGateway/ipMasq, so the benchmark does not switch on IP forwarding.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
for t in crun python3; do command -v $t >/dev/null || { echo "$t is needed (apt-get install $t)" >&2; exit 1; }; done
. bench/lib.sh
bench_store run podbench0 250
bench_true_pods
tree=$(dirname "$(ls -d "$POD_DIR"/trees/*/rootfs)")/rootfs

# The same rootfs as an OCI bundle for crun (its default spec: new pid,
# mount, uts, ipc and network namespaces, like a pod with network: none).
mkdir -p "$work/bundle"
cp -a "$tree" "$work/bundle/rootfs"
(cd "$work/bundle" && crun spec && python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["args"] = ["/bin/busybox", "true"]
c["process"]["terminal"] = False
json.dump(c, open("config.json", "w"))
PY
)

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Interleaved (crun, pod none, pod bridge, crun, ...) rather than
# hyperfine's one block per command: on a shared machine the load drifts
# during a run, and alternating gives every command the same share of it.
# `pod gc` (untimed) before each run keeps the pods directory small.
cat > "$work/measure.py" <<'PY'
import json, statistics, subprocess, sys, time
runs, warmup, out, gc = int(sys.argv[1]), 3, sys.argv[2], sys.argv[3]
cmds = {"crun": None, "pod network none": sys.argv[4], "pod network bridge": sys.argv[5]}
bundle = sys.argv[6]
times = {k: [] for k in cmds}
for i in range(warmup + runs):
    for name, podfile in cmds.items():
        subprocess.run([gc, "gc"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cmd = ["crun", "run", "-b", bundle, f"bench-{i}"] if podfile is None else [gc, "run", podfile]
        t = time.monotonic()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        d = time.monotonic() - t
        if r.returncode != 0:
            sys.exit(f"{name} exited with {r.returncode}")
        if i >= warmup:
            times[name].append(d)
json.dump({k: statistics.median(v) for k, v in times.items()}, open(out, "w"))
PY
unshare -m bash -euo pipefail -c "
  umount /sys/fs/cgroup/unified 2>/dev/null || true
  python3 $work/measure.py $runs $work/result.json $bin/pod $work/true-none.yaml $work/true-bench.yaml $work/bundle
"

python3 - "$work/result.json" "$runs" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
crun = r["crun"]
print(f"crun: {crun*1000:.1f} ms (median of {sys.argv[2]}, interleaved)")
for name in ("pod network none", "pod network bridge"):
    print(f"{name}: {r[name]*1000:.1f} ms = {r[name]/crun:.2f}x crun, ratio of medians")
PY
# The host is often shared: a busy one inflates and scatters every figure.
echo "load average (1, 5, 15 min): before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"

# Resident memory of the pod's PID 1 and of the stage1 monitor while a pod runs.
cat > "$work/sleep.yaml" <<'YAML'
name: bench-rss
network: none
apps:
  - name: s
    image: example.com/busybox:1.35
    exec: [/bin/busybox, sleep, "30"]
YAML
uuid=$("$bin/pod" run -d "$work/sleep.yaml")
sleep 1
init=$(cat "$POD_DIR/pods/run/$uuid/pid")
monitor=$(pgrep -f "pod-stage1-ns $POD_DIR/pods/run/$uuid" | head -1)
echo "RSS: pod-init $(awk '/VmRSS/{print $2, $3}' /proc/$init/status), stage1 monitor $(awk '/VmRSS/{print $2, $3}' /proc/$monitor/status)"
"$bin/pod" stop "$uuid" >/dev/null
