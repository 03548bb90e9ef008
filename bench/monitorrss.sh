#!/usr/bin/env bash
# Resident memory of what a running, idle pod costs the host: how many
# processes it keeps outside its apps (the stage1 monitor, pod-init), and
# the VmRSS and PSS (smaps_rollup: anonymous, file) of each, for a one-app
# pod sleeping with `network: none` and with the default network. SAMPLES
# pods of each (default 3) run at once, detached (`pod run -d`); each is
# measured WAIT seconds after its start (default 3: past the monitor's
# re-exec into the lean supervisor, stage1-ns/src/supervise.rs LEAN_AFTER).
# Prints each pod's figures and the medians; VERBOSE=1 adds the monitor's
# largest mappings (smaps Rss).
#
#   bench/monitorrss.sh            # needs root
#
# As bench/run.sh, it runs in private mount and network namespaces, so the
# default network (IP forwarding, masquerading) changes nothing on the host.
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${SAMPLES:-3} wait_s=${WAIT:-3}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
. bench/lib.sh
BENCH_PACKAGES=${BENCH_PACKAGES:-"-p stage0 -p stage1-ns -p stage2-init -p metadata"}
bench_store monitorrss podbench2 252
for net in none default; do
  bench_sleep_pod "rss-$net" "$net" 600 > "$work/sleep-$net.yaml"
done

cat > "$work/measure.sh" <<'SH'
set -euo pipefail
bin=$1 work=$2 samples=$3 wait_s=$4
# kB: VmRSS Pss Pss_Anon Pss_File
mem() {
  local rss; rss=$(awk '/^VmRSS:/{print $2}' "/proc/$1/status")
  awk -v rss="$rss" '/^Pss:/{p=$2} /^Pss_Anon:/{a=$2} /^Pss_File:/{f=$2} END{print rss, p, a, f}' "/proc/$1/smaps_rollup"
}
for net in none default; do
  uuids=()
  for i in $(seq "$samples"); do uuids+=("$("$bin/pod" run -d --name "rss-$net-$i" "$work/sleep-$net.yaml")"); done
  sleep "$wait_s"
  for uuid in "${uuids[@]}"; do
    dir=$POD_DIR/pods/run/$uuid
    init=$(cat "$dir/pid")
    # Every host process running stage1 for this pod, and pod-init.
    stage1=$(for p in /proc/[0-9]*; do
      tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q "pod-stage1-ns.* $dir" && basename "$p"
    done || true)
    n=$(( $(echo "$stage1" | grep -c .) + 1 ))
    # The monitor: the outermost of them (a launcher, if any, is its child).
    monitor=$(awk '/^PPid:/{print $2}' "/proc/$init/status")
    while p=$(awk '/^PPid:/{print $2}' "/proc/$monitor/status") && echo "$stage1" | grep -qx "$p"; do monitor=$p; done
    # Whether the monitor runs as the lean supervisor (re-exec'd with its state).
    lean=no; grep -qa POD_STAGE1_SUPERVISE "/proc/$monitor/environ" && lean=yes
    echo "network $net pod $uuid: host processes $n; monitor $(mem "$monitor"); pod-init $(mem "$init"); lean $lean"
    if [ "${VERBOSE:-}" = 1 ]; then
      awk '/^[0-9a-f]+-[0-9a-f]+ /{name=$6; if (name=="") name="[anon]"} /^Rss:/{r[name]+=$2} END{for (n in r) print r[n], n}' \
        "/proc/$monitor/smaps" | sort -rn | head -8 | sed 's/^/    /'
    fi
  done
  for uuid in "${uuids[@]}"; do "$bin/pod" stop "$uuid" >/dev/null; done
done
SH
unshare -m -n bash -euo pipefail -c "
  umount /sys/fs/cgroup/unified 2>/dev/null || true
  ip link set lo up
  bash $work/measure.sh $bin $work $samples $wait_s > $work/out
  $bin/pod gc >/dev/null 2>&1 || true
"
cat "$work/out"
python3 - "$work/out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"network (\S+) pod \S+: host processes (\d+); monitor (\d+) (\d+) (\d+) (\d+); pod-init (\d+) (\d+) (\d+) (\d+)", line)
    if m:
        rows.setdefault(m.group(1), []).append([int(x) for x in m.groups()[1:]])
for net, rs in rows.items():
    med = [statistics.median(c) for c in zip(*rs)]
    print(f"network {net} (median of {len(rs)}): {med[0]:.0f} host processes; monitor VmRSS {med[1]:.0f} kB, "
          f"PSS {med[2]:.0f} kB (anon {med[3]:.0f}, file {med[4]:.0f}); pod-init VmRSS {med[5]:.0f} kB, PSS {med[6]:.0f} kB")
PY
