#!/usr/bin/env bash
# Benchmark: start-to-exit of a one-app pod running `true` from a busybox
# image already in the store, `pod run` versus crun on an OCI bundle of the
# same rootfs, measured in the same run (interleaved; medians and p90); plus
# the resident memory of stage2-init (pod-init) and of the stage1 monitor.
#
#   bench/run.sh            # needs root, crun, python3, busybox-static
#
# crun 1.8 refuses this kind of host's hybrid cgroups (v1 controllers plus a
# cgroup2 mount at /sys/fs/cgroup/unified), so the whole comparison runs in a
# private mount namespace with that mount detached: both engines see the
# same cgroup v1 host. It also runs in a private network namespace standing
# in for the host, so that the default network (which turns on IP forwarding
# and masquerades, as podman's does) changes nothing on the real host.
# Networks compared: none; `default` (set up natively: rtnetlink and the
# pod's rules in the nf_tables table `ip pod` the pods share, which the
# pod's exit leaves, with its hooks, and `pod gc` deletes once unused); `cni-default`, the same bridge/host-local/portmap
# chain pod used to write as its default conflist, through the CNI plugins;
# and `bench`, a CNI bridge without isGateway/ipMasq.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
for t in crun python3; do command -v $t >/dev/null || { echo "$t is needed (apt-get install $t)" >&2; exit 1; }; done
. bench/lib.sh
# pod, pod-stage1-ns, pod-init and the metadata service (pod-metadata,
# which `pod run` starts on demand) are all this benchmark runs.
BENCH_PACKAGES=${BENCH_PACKAGES:-"-p stage0 -p stage1-ns -p stage2-init -p metadata"}
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

# The default conflist pod used to write (cni/conf.rs default_conflist), on
# its own bridge and subnet, run through the CNI plugins.
cat > "$POD_CONFIG/net.d/20-cni-default.conflist" <<JSON
{"cniVersion":"1.0.0","name":"cni-default","plugins":[
 {"type":"bridge","bridge":"podcni0","isGateway":true,"ipMasq":true,"hairpinMode":true,
  "ipam":{"type":"host-local","ranges":[[{"subnet":"10.214.$bench_octet.0/24","gateway":"10.214.$bench_octet.1"}]],
          "routes":[{"dst":"0.0.0.0/0"}],"dataDir":"$work/ipam"}},
 {"type":"portmap","capabilities":{"portMappings":true},"snat":false,
  "conditionsV4":["!","-d","127.0.0.0/8"],"conditionsV6":["!","-d","::1/128"]}]}
JSON
for net in default cni-default; do
  sed "s/network: none/network: $net/; s/bench-none/bench-$net/" "$work/true-none.yaml" > "$work/true-$net.yaml"
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
# Interleaved (crun, pod none, pod default, ...) rather than hyperfine's one
# block per command: on a shared machine the load drifts during a run, and
# alternating gives every command the same share of it. `pod gc` (untimed)
# runs once per round, after all its commands, so that no command pays for
# the previous pod's teardown (it used to run before each command).
cat > "$work/measure.py" <<'PY'
import json, os, statistics, subprocess, sys, time
runs, warmup, out, pod, bundle = int(sys.argv[1]), 3, sys.argv[2], sys.argv[3], sys.argv[4]
settle = float(os.environ.get("SETTLE", "0"))
cmds = {"crun": None}
for arg in sys.argv[5:]:
    name, podfile = arg.split("=", 1)
    cmds[f"pod network {name}"] = podfile
times = {k: [] for k in cmds}
# A foreground `pod run` exits with the pod's status and leaves the
# teardown (cgroups, network) to a child of its monitor. That child's work
# must not land in the next command's time: each round waits (untimed) for
# it to end, and reports how long after the exit it ended ("released").
released = {k: [] for k in cmds if cmds[k] is not None}
def monitors():
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            # A zombie (the teardown child, reparented to init) is done.
            comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
            n += comm == "pod-stage1-ns" and state != "Z"
    return n
for i in range(warmup + runs):
    for name, podfile in cmds.items():
        cmd = ["crun", "run", "-b", bundle, f"bench-{i}"] if podfile is None else [pod, "run", podfile]
        t = time.monotonic()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        d = time.monotonic() - t
        if r.returncode != 0:
            sys.exit(f"{name} exited with {r.returncode}: {r.stderr.decode()[-2000:]}")
        if podfile is not None:
            while monitors():
                time.sleep(0.0005)
            if i >= warmup:
                released[name].append(time.monotonic() - t)
        if i >= warmup:
            times[name].append(d)
        # The kernel's own deferred work (RCU callbacks, cgroup offlining,
        # the network namespace's cleanup) after any command, a pod's or
        # crun's, settles before the next one starts.
        time.sleep(settle)
    subprocess.run([pod, "gc"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def p90(v):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
json.dump({k: {"median": statistics.median(v), "p90": p90(v),
               "released": statistics.median(released[k]) if k in released else None}
           for k, v in times.items()}, open(out, "w"))
PY
unshare -m -n bash -euo pipefail -c "
  umount /sys/fs/cgroup/unified 2>/dev/null || true
  ip link set lo up
  python3 $work/measure.py $runs $work/result.json $bin/pod $work/bundle none=$work/true-none.yaml \
    default=$work/true-default.yaml cni-default=$work/true-cni-default.yaml bridge=$work/true-bench.yaml
  $bin/pod gc >/dev/null 2>&1 || true
"

python3 - "$work/result.json" "$runs" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
crun = r["crun"]["median"]
print(f"crun: {crun*1000:.1f} ms median, {r['crun']['p90']*1000:.1f} ms p90 ({sys.argv[2]} runs, interleaved)")
none = r["pod network none"]["median"]
for name, v in r.items():
    if name == "crun":
        continue
    m, p = v["median"], v["p90"]
    print(f"{name}: {m*1000:.1f} ms median = {m/crun:.2f}x crun, {m/none:.2f}x network none; p90 {p*1000:.1f} ms;"
          f" torn down {v['released']*1000:.1f} ms after the start (median)")
PY
# The host is often shared: a busy one inflates and scatters every figure.
echo "load average (1, 5, 15 min): before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"

# Resident memory of the pod's PID 1 and of the stage1 monitor while a pod runs.
bench_sleep_pod bench-rss none 30 > "$work/sleep.yaml"
uuid=$("$bin/pod" run -d "$work/sleep.yaml")
sleep 1
init=$(cat "$POD_DIR/pods/run/$uuid/pid")
monitor=$(pgrep -f "pod-stage1-ns $POD_DIR/pods/run/$uuid" | head -1)
echo "RSS: pod-init $(awk '/VmRSS/{print $2, $3}' /proc/$init/status), stage1 monitor $(awk '/VmRSS/{print $2, $3}' /proc/$monitor/status)"
"$bin/pod" stop "$uuid" >/dev/null
