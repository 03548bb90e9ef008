#!/usr/bin/env bash
# Resident memory of pod-init (the pod's PID 1) against tini-static
# (Debian's `tini` package), measured in the same run, each as PID 1 of a
# fresh pid namespace supervising the same static busybox `sleep`.
#
#   bench/initrss.sh            # needs root, busybox-static, tini (scripts/install-deps.sh)
#   SAMPLES=10 bench/initrss.sh
#   POD_INIT=path/to/pod-init bench/initrss.sh   # skip the build, measure that binary
#
# pod-init runs against a pod root of its own (units/s.unit, apps/s/rootfs
# with busybox), as stage1 would lay it out for a one-app pod with network
# none: it reads the unit and its seccomp filter, forks the app into its own
# mount namespace (cgroup dir, capabilities, seccomp, pivot_root), serves
# control.sock and waits in its poll loop. (bench/run.sh's last line gives
# the same figure for a real `pod run` pod.) tini-static runs
# `unshare --pid --fork --mount-proc tini-static -- busybox sleep`. Each
# sample starts both afresh (alternating, so load drifts hit both), waits
# 1 s, then reads VmRSS, RssAnon and RssFile from /proc/PID/status.
# Prints each sample, the medians and pod-init/tini-static.
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${SAMPLES:-7}
[ "$(id -u)" = 0 ] || { echo "needs root (namespaces, pivot_root)" >&2; exit 1; }
tini=$(command -v tini-static || true)
[ -n "$tini" ] || { echo "tini-static is needed (apt-get install tini)" >&2; exit 1; }
[ -x /bin/busybox ] || { echo "/bin/busybox is needed (apt-get install busybox-static)" >&2; exit 1; }
if [ -z "${POD_INIT:-}" ]; then
  cargo build --release -q --locked -p stage2-init --bin pod-init
  POD_INIT=${CARGO_TARGET_DIR:-$PWD/target}/release/pod-init
fi

work=$(mktemp -d /var/tmp/pod-initrss.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# A one-app pod root (bench/initpod.sh): busybox sleep, with a unit shaped
# like the one stage1 writes for a `pod run` pod.
. bench/initpod.sh
root=$work/pod
init_pod_root "$root"

# The pid, in the caller's namespace, of unshare's child (the new PID 1).
pid1_of() {
  local u=$1 c
  for _ in $(seq 100); do
    c=$(cat "/proc/$u/task/$u/children" 2>/dev/null | awk '{print $1}')
    [ -n "$c" ] && grep -q . "/proc/$c/task/$c/children" 2>/dev/null && { echo "$c"; return; }
    sleep 0.05
  done
  echo "no PID 1 under $u" >&2
  return 1
}

# VmRSS RssAnon RssFile, in kB.
rss() { awk '/^(VmRSS|RssAnon|RssFile):/{printf "%s ", $2}' "/proc/$1/status"; }

measure() { # NAME COMMAND...
  local name=$1 u p r
  shift
  unshare --pid --fork --kill-child --mount-proc "$@" >/dev/null 2>"$work/$name.err" &
  u=$!
  pids+=("$u")
  p=$(pid1_of "$u")
  sleep 1
  r=$(rss "$p")
  kill -TERM "$p"
  wait "$u" 2>/dev/null || true
  echo "$name $r" >>"$work/samples"
  printf '%-12s VmRSS %s kB  (RssAnon %s, RssFile %s)\n' "$name" $r
}

for i in $(seq "$samples"); do
  measure pod-init "$POD_INIT" --root "$root"
  measure tini-static "$tini" -s -- /bin/busybox sleep 3600
done

python3 - "$work/samples" "$POD_INIT" "$tini" <<'PY'
import statistics, sys
s = {}
for line in open(sys.argv[1]):
    name, *v = line.split()
    s.setdefault(name, []).append([int(x) for x in v])
med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in s.items()}
for k, (rss, anon, file) in med.items():
    lo, hi = min(x[0] for x in s[k]), max(x[0] for x in s[k])
    print(f"median {k}: VmRSS {rss:g} kB (range {lo}-{hi}), RssAnon {anon:g}, RssFile {file:g}, n={len(s[k])}")
p, t = med["pod-init"][0], med["tini-static"][0]
print(f"pod-init / tini-static VmRSS: {p/t:.2f} ({sys.argv[2]} vs {sys.argv[3]})")
PY

# hot.ld lists the functions pod-init runs while idle; code changed since it
# was generated runs from .text.cold and costs a 64 kB window each (a stale
# list once cost 188 kB). Regenerate into a temp file and compare.
if command -v valgrind >/dev/null; then
  HOT_LD="$work/hot.ld" bash stage2-init/hot.sh "$POD_INIT" >/dev/null 2>&1 || true
  if [ -s "$work/hot.ld" ] && ! diff -q "$work/hot.ld" stage2-init/hot.ld >/dev/null; then
    echo "hot.ld is stale ($(diff "$work/hot.ld" stage2-init/hot.ld | grep -c '^[<>]') lines differ): run stage2-init/hot.sh and rebuild"
  else
    echo "hot.ld is current"
  fi
else
  echo "SKIP: hot.ld staleness check (valgrind missing)"
fi
