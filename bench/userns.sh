#!/usr/bin/env bash
# Benchmark: what `userns: auto` costs at start. Start-to-exit of a one-app
# pod running `true` from a busybox image already in the store, the same pod
# file with `--userns host` and `--userns auto`, interleaved (host, auto,
# host, ...) so a shared machine's drifting load falls on both alike;
# medians. Network none, and a bridge network shaped like the default one
# (without isGateway/ipMasq, so IP forwarding is not switched on).
#
#   bench/userns.sh          # needs root and python3; RUNS=20 by default
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-20}
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
. bench/lib.sh
bench_store userns podbench1 251
bench_true_pods

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$runs" "$bin/pod" "$work" <<'PY'
import statistics, subprocess, sys, time
runs, pod, work, warmup = int(sys.argv[1]), sys.argv[2], sys.argv[3], 3
cases = [(net, userns) for net in ("none", "bench") for userns in ("host", "auto")]
times = {c: [] for c in cases}
for i in range(warmup + runs):
    for net, userns in cases:
        # Untimed: keeps the pods directory (and the userns allocation scan) small.
        subprocess.run([pod, "gc"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t = time.monotonic()
        r = subprocess.run([pod, "run", "--userns", userns, f"{work}/true-{net}.yaml"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        d = time.monotonic() - t
        if r.returncode != 0:
            sys.exit(f"network {net}, userns {userns}: exit {r.returncode}: {r.stderr.decode()}")
        if i >= warmup:
            times[(net, userns)].append(d)
for net in ("none", "bench"):
    host = statistics.median(times[(net, "host")])
    auto = statistics.median(times[(net, "auto")])
    print(f"network {net}: userns host {host*1000:.1f} ms, userns auto {auto*1000:.1f} ms "
          f"({(auto-host)*1000:+.1f} ms, {auto/host:.2f}x; medians of {runs}, interleaved)")
PY
echo "load average (1, 5, 15 min): before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
