#!/usr/bin/env bash
# Benchmark: density. N idle one-app pods (busybox `sleep`) started
# concurrently with `pod run -d`, then stopped concurrently and collected
# with `pod gc`; crun (`crun run -d` of N containers of one read-only OCI
# bundle of the same rootfs) as the peer, in the same run.
#
#   bench/density.sh                 # needs root, crun, python3, busybox-static
#   PODS=300 bench/density.sh        # N (default 1000)
#   PAR=8 bench/density.sh           # parallelism of the starts and stops (default 16)
#   NET=default bench/density.sh     # pods on the native default network (10.89.0.0/16)
#   PEER=none bench/density.sh       # pod only
#   POD_BIN=DIR bench/density.sh     # the binaries in DIR (an earlier build) instead of this tree's
#
# Prints: the time until every `pod run -d` returned and until `pod list`
# shows all N running, pods/s; MemAvailable before, with all N running and
# after gc; the summed PSS (smaps_rollup) of each pod's host processes (the
# stage1 monitor, pod-init, the app), per pod, with RSS; the stop and gc
# times. Then checks that nothing is left: no process of a pod, no mount
# under the store (/proc/self/mountinfo), no cgroup dir of a pod (v1
# controllers and the v2 hierarchy), no netns file, veth or nf_tables table.
# Exits 1 if a pod failed to start or something is left.
#
# The whole benchmark runs in a private network namespace standing in for
# the host (the default network turns on IP forwarding there); pods run in
# the host's mount namespace with its hybrid cgroups. crun 1.8 refuses that
# hybrid layout, so crun's containers get a private mount namespace without
# the cgroup2 mount at /sys/fs/cgroup/unified (see bench/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
if [ -z "${DENSITY_IN_NETNS:-}" ]; then
  export DENSITY_IN_NETNS=1
  exec unshare -n "$0" "$@"
fi
ip link set lo up
N=${PODS:-1000} PAR=${PAR:-16} NET=${NET:-none} PEER=${PEER:-crun}
case $NET in none | default) ;; *) echo "NET must be none or default" >&2; exit 2 ;; esac
for t in python3 $([ "$PEER" = crun ] && echo crun); do
  command -v "$t" >/dev/null || { echo "$t is needed (apt-get install $t)" >&2; exit 1; }
done
. bench/lib.sh
BENCH_PACKAGES=${BENCH_PACKAGES:-"-p stage0 -p stage1-ns -p stage2-init -p metadata"}
bench_store density poddens0 251
# POD_BIN=DIR: measure the pod, pod-stage1-ns and pod-init in DIR instead
# (e.g. a copy of an earlier build, for a before/after comparison).
bin=${POD_BIN:-$bin}
pod=$bin/pod
crun_root=$work/crun
crun_cleanup() {
  [ -d "$crun_root" ] || return 0
  unshare -m sh -c "umount /sys/fs/cgroup/unified 2>/dev/null; \
    for c in \$(crun --root $crun_root list -q 2>/dev/null); do crun --root $crun_root delete -f \$c >/dev/null 2>&1; done"
}
trap 'crun_cleanup; bench_cleanup' EXIT

bench_sleep_pod dens "$NET" 100000 > "$work/sleep.yaml"
mem_avail() { awk '/^MemAvailable:/{print $2}' /proc/meminfo; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
echo "density: $N pods, network $NET, parallelism $PAR (xargs -P), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "limits: nofile $(ulimit -n)/$(ulimit -Hn), pid_max $(cat /proc/sys/kernel/pid_max), threads-max $(cat /proc/sys/kernel/threads-max), inotify max_user_instances $(cat /proc/sys/fs/inotify/max_user_instances)"

# Process tree sums: for each root pid (a pod's stage1 monitor, or a crun
# container's process), PSS and RSS (smaps_rollup) of it and its descendants.
cat > "$work/mem.py" <<'PY'
import os, sys, collections
mode, arg = sys.argv[1], sys.argv[2]
procs = {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        with open(f"/proc/{p}/stat") as f:
            s = f.read()
        comm = s[s.index("(") + 1 : s.rindex(")")]
        ppid = int(s[s.rindex(")") + 2 :].split()[1])
        with open(f"/proc/{p}/cmdline", "rb") as f:
            cmd = f.read().split(b"\0")
        procs[int(p)] = (ppid, comm, [c.decode(errors="replace") for c in cmd])
    except (OSError, ValueError):
        pass
kids = collections.defaultdict(list)
for p, (pp, _, _) in procs.items():
    kids[pp].append(p)
def tree(root):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        if p in procs and p not in out:
            out.append(p)
            todo += kids[p]
    return out
def rollup(p):
    r = {}
    try:
        with open(f"/proc/{p}/smaps_rollup") as f:
            for line in f:
                k, v = line.split(":", 1)
                if k in ("Rss", "Pss"):
                    r[k] = int(v.split()[0])
    except (OSError, ValueError):
        pass
    return r.get("Pss", 0), r.get("Rss", 0)
roots = {}
if mode == "pod":  # arg: the store's pods/run directory
    for p, (_, comm, cmd) in procs.items():
        if comm.startswith("pod-stage1") and any(c.startswith(arg + "/") for c in cmd):
            uuid = next(c for c in cmd if c.startswith(arg + "/"))[len(arg) + 1 :].split("/")[0]
            parent = procs[p][0]
            # The monitor tree's topmost process of this pod.
            if not (parent in procs and procs[parent][1].startswith("pod-stage1")):
                roots.setdefault(uuid, []).append(p)
else:  # arg: a file of container pids
    for i, line in enumerate(open(arg)):
        if line.strip():
            roots[str(i)] = [int(line)]
by_comm = collections.defaultdict(lambda: [0, 0, 0])
pods, pss_tot, rss_tot = 0, 0, 0
for uuid, rs in roots.items():
    pods += 1
    for r in rs:
        for p in tree(r):
            pss, rss = rollup(p)
            c = procs[p][1]
            c = c if c.startswith("pod-") else "app (" + c + ")"
            by_comm[c][0] += pss; by_comm[c][1] += rss; by_comm[c][2] += 1
            pss_tot += pss; rss_tot += rss
print(f"{pods} {pss_tot} {rss_tot}")
for c, (pss, rss, n) in sorted(by_comm.items()):
    print(f"  {c}: {n} processes, PSS {pss/1024:.1f} MiB ({pss/max(pods,1):.0f} kB/pod), RSS {rss/1024:.1f} MiB ({rss/max(pods,1):.0f} kB/pod)")
PY
# Prints "N PSS_kB RSS_kB" then per process kind; figures per pod.
mem_report() { # LABEL MODE ARG
  local label=$1 out first
  out=$(python3 "$work/mem.py" "$2" "$3")
  first=$(head -1 <<<"$out")
  read -r n pss rss <<<"$first"
  echo "$label memory: $n trees, PSS $((pss / 1024)) MiB total = $((pss / (n > 0 ? n : 1))) kB/pod, RSS $((rss / (n > 0 ? n : 1))) kB/pod"
  tail -n +2 <<<"$out"
}

failed=0
# --- pod --------------------------------------------------------------------
sync
avail0=$(mem_avail)
mkdir -p "$work/u"
t0=$(now)
# shellcheck disable=SC2016
# A pod's name is unique among running pods: each gets its own (an earlier
# build, POD_BIN, may not have --name, nor need it).
if "$pod" run --help | grep -q -- '--name'; then named=1; else named=; fi
seq "$N" | xargs -P "$PAR" -I{} sh -c '"$1" run -d ${5:+--name "density-$4"} "$2" >"$3/u/$4" 2>"$3/u/$4.err" || echo "$4" >>"$3/failed"' \
  _ "$pod" "$work/sleep.yaml" "$work" {} "$named" || true
t1=$(now)
started=$(cat "$work"/u/[0-9]* 2>/dev/null | grep -c . || true)
cat "$work"/u/[0-9]* 2>/dev/null | grep . >"$work/uuids" || true
if [ -s "$work/failed" ]; then
  echo "pod run -d failed for $(wc -l <"$work/failed") pods; first error:"
  cat "$work/u/$(head -1 "$work/failed").err" | tail -3
  failed=1
fi
# Until every started pod's app is running (pod list), at most 300 s.
running=0
for _ in $(seq 3000); do
  running=$("$pod" list --format json | python3 -c '
import json, sys
print(sum(1 for p in json.load(sys.stdin) if p.get("state") == "running"))')
  [ "$running" -ge "$started" ] && break
  sleep 0.1
done
t2=$(now)
echo "pod: $started of $N started; pod run -d all returned after $(secs "$t0" "$t1") s; $running running after $(secs "$t0" "$t2") s = $(python3 -c "print(f'{$running/($t2-$t0):.1f}')") pods/s"
[ "$running" = "$N" ] || failed=1
sleep 2
avail1=$(mem_avail)
echo "pod: MemAvailable $((avail0 / 1024)) MiB before, $((avail1 / 1024)) MiB with $running running: $(((avail0 - avail1) / 1024)) MiB = $(((avail0 - avail1) / (running > 0 ? running : 1))) kB/pod"
mem_report pod pod "$POD_DIR/pods/run"
# What to look for once they are gone.
python3 - "$POD_DIR/pods/run" >"$work/pod-pids" <<'PY'
import os, sys
run = sys.argv[1]
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            if run in cmd or os.readlink(f"/proc/{p}/root").startswith(os.path.dirname(os.path.dirname(run))):
                print(p, open(f"/proc/{p}/stat").read().split()[21])
        except OSError:
            pass
PY
for u in $(cat "$work/uuids"); do
  cat "$POD_DIR/pods/run/$u/pid" 2>/dev/null | awk -v u="$u" '{print $1}'
done >"$work/init-pids"

t3=$(now)
xargs -P "$PAR" -I{} "$pod" stop {} <"$work/uuids" >/dev/null 2>"$work/stop.err" || { echo "pod stop failed: $(tail -3 "$work/stop.err")"; failed=1; }
t4=$(now)
"$pod" gc >/dev/null 2>"$work/gc.err" || { echo "pod gc failed: $(tail -3 "$work/gc.err")"; failed=1; }
t5=$(now)
echo "pod: stop of all (parallelism $PAR) $(secs "$t3" "$t4") s, gc $(secs "$t4" "$t5") s"
sleep 1
avail2=$(mem_avail)
echo "pod: MemAvailable after gc $((avail2 / 1024)) MiB ($(((avail2 - avail0) / 1024)) MiB against before)"

# --- leftovers ------------------------------------------------------------
left=0
leftover() { echo "LEFT: $*"; left=1; }
# Processes: the same pid with the same start time still there.
while read -r p st; do
  [ -r "/proc/$p/stat" ] && [ "$(awk '{print $22}' "/proc/$p/stat" 2>/dev/null)" = "$st" ] && leftover "process $p ($(cat "/proc/$p/comm" 2>/dev/null))"
done <"$work/pod-pids"
n=$(pgrep -c -f "$POD_DIR" || true)
[ "$n" = 0 ] || leftover "$n processes naming $POD_DIR"
n=$(grep -c " $POD_DIR" /proc/self/mountinfo || true)
[ "$n" = 0 ] || leftover "$n mounts under $POD_DIR"
n=$(grep -c " $POD_DIR" /proc/1/mountinfo || true)
[ "$n" = 0 ] || leftover "$n mounts under $POD_DIR in PID 1's mount namespace"
if [ -s "$work/uuids" ]; then
  n=$(find /sys/fs/cgroup -maxdepth 5 -type d 2>/dev/null | grep -c -F -f "$work/uuids" || true)
  [ "$n" = 0 ] || leftover "$n cgroup dirs of the pods under /sys/fs/cgroup, e.g. $(find /sys/fs/cgroup -maxdepth 5 -type d | grep -F -f "$work/uuids" | head -1)"
  n=$(ls /run/pod/netns 2>/dev/null | grep -c -F -f "$work/uuids" || true)
  [ "$n" = 0 ] || leftover "$n netns files in /run/pod/netns"
fi
n=$(ip -o link show type veth | wc -l)
[ "$n" = 0 ] || leftover "$n veths"
if command -v nft >/dev/null; then
  n=$(nft list tables 2>/dev/null | wc -l)
  [ "$n" = 0 ] || leftover "$n nf_tables tables: $(nft list tables | head -3 | tr '\n' ' ')"
fi
n=$(find "$POD_DIR/pods" -mindepth 2 -maxdepth 2 2>/dev/null | grep -c -F -f "$work/uuids" || true)
[ "$n" = 0 ] || leftover "$n pod dirs still in the store"
[ "$left" = 1 ] || echo "pod: nothing left (processes, mounts, cgroups v1+v2, netns files, veths, nft tables, pod dirs)"

# --- crun -----------------------------------------------------------------
if [ "$PEER" = crun ]; then
  tree=$(dirname "$(ls -d "$POD_DIR"/trees/*/rootfs | head -1)")/rootfs
  mkdir -p "$work/bundle" "$crun_root"
  cp -a "$tree" "$work/bundle/rootfs"
  (cd "$work/bundle" && crun spec && python3 - <<'PY'
import json
c = json.load(open("config.json"))
c["process"]["args"] = ["/bin/busybox", "sleep", "100000"]
c["process"]["terminal"] = False
c["root"]["readonly"] = True
json.dump(c, open("config.json", "w"))
PY
  )
  sync
  avail0=$(mem_avail)
  t0=$(now)
  # shellcheck disable=SC2016
  unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; seq "$1" | xargs -P "$2" -I{} crun --root "$3" run -d --pid-file "$4/c{}.pid" -b "$4" c{} >/dev/null 2>"$4/../crun.err"' \
    _ "$N" "$PAR" "$crun_root" "$work/bundle" || { echo "crun run failed: $(tail -3 "$work/crun.err")"; failed=1; }
  t1=$(now)
  awk 1 "$work"/bundle/c*.pid >"$work/crun-pids" 2>/dev/null || true
  running=$(crun --root "$crun_root" list 2>/dev/null | grep -c ' running ' || true)
  echo "crun: $running of $N running after $(secs "$t0" "$t1") s = $(python3 -c "print(f'{$running/($t1-$t0):.1f}')") containers/s"
  sleep 2
  avail1=$(mem_avail)
  echo "crun: MemAvailable $((avail0 / 1024)) MiB before, $((avail1 / 1024)) MiB with $running running: $(((avail0 - avail1) / 1024)) MiB = $(((avail0 - avail1) / (running > 0 ? running : 1))) kB/container"
  mem_report crun pids "$work/crun-pids"
  t3=$(now)
  # shellcheck disable=SC2016
  unshare -m sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; seq "$1" | xargs -P "$2" -I{} crun --root "$3" delete -f c{}' \
    _ "$N" "$PAR" "$crun_root" >/dev/null 2>&1 || true
  t4=$(now)
  echo "crun: delete -f of all $(secs "$t3" "$t4") s"
fi
echo "load average (1, 5, 15 min) at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ "$left" = 0 ] && [ "$failed" = 0 ]
