#!/usr/bin/env bash
# Benchmark: `pod fetch` of a large local signed image versus the pipeline
# that does the same work with stock tools, measured in the same run:
#
#   peer:  zstd -dc IMG | tar -x   plus   sha512sum IMG
#   pod:   pod fetch IMG           (verify signature, decompress, hash, extract, commit)
#
# Prints both times (hyperfine, run in both orders: see below) and pod's
# throughput as a ratio of the peer's. Target: >= 0.8x.
# Usage: [RUNS=5] bench/fetch.sh [SIZE_MB] (default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-256}
runs=${RUNS:-5}

command -v hyperfine >/dev/null || { echo "hyperfine is needed (apt-get install hyperfine)" >&2; exit 1; }
cargo build --release -q -p stage0
pod=$PWD/target/release/pod

work=$(mktemp -d /var/tmp/pod-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
export POD_CONFIG=$work/config POD_DIR=$work/store

# A rootfs of real files (shared libraries: a realistic compression ratio),
# copied until it holds SIZE_MB.
mkdir -p "$work/src/rootfs/usr/lib"
total=0
while IFS= read -r -d '' f; do
  sz=$(stat -c %s "$f")
  rel=${f#/usr/lib/}
  mkdir -p "$work/src/rootfs/usr/lib/$(dirname "$rel")"
  cp -p "$f" "$work/src/rootfs/usr/lib/$rel"
  total=$((total + sz))
  [ "$total" -ge $((size_mb * 1024 * 1024)) ] && break
done < <(find /usr/lib/x86_64-linux-gnu /usr/lib -xdev -type f -size +4k -print0 2>/dev/null)

cat > "$work/src/recipe.yaml" <<YAML
name: example.com/bench
labels: { version: "1" }
app: { exec: [/bin/true] }
rootfs: { dir: rootfs }
YAML
"$pod" image build "$work/src/recipe.yaml" -o "$work/bench.aci" >/dev/null
"$pod" key gen --out "$work/keys" >/dev/null
"$pod" image sign --key "$work/keys/pod.key" "$work/bench.aci" 2>/dev/null
"$pod" trust add --prefix example.com/ "$work/keys/pod.pub" 2>/dev/null
img_mb=$(( $(stat -c %s "$work/bench.aci") / 1024 / 1024 ))
raw_mb=$(( $(zstd -dc "$work/bench.aci" | wc -c) / 1024 / 1024 ))
echo "image: ${img_mb} MiB zstd, ${raw_mb} MiB uncompressed tar, $(nproc) cores"

# Both orders, pooled. Whichever command runs second is handicapped: on
# ext4 without a journal (this benchmark's VMs), creating an inode skips
# every inode of its group freed in the last minute or so
# (ext4 `recently_deleted`), and each `--prepare` frees a whole tree, so
# later runs pay for the earlier runs' trees. Measured: the second command
# spends ~0.6 s more system time, whichever it is.
peer_cmd="zstd -dc $work/bench.aci | tar -x -C $work/peer && sha512sum $work/bench.aci >/dev/null"
pod_cmd="$pod fetch $work/bench.aci >/dev/null"
prepare="rm -rf $work/peer $POD_DIR; mkdir -p $work/peer; sync"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine --runs "$runs" --warmup 1 --export-json "$work/peer-first.json" --prepare "$prepare" \
  -n peer "$peer_cmd" -n pod "$pod_cmd"
hyperfine --runs "$runs" --warmup 1 --export-json "$work/pod-first.json" --prepare "$prepare" \
  -n pod "$pod_cmd" -n peer "$peer_cmd"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$raw_mb" "$work/peer-first.json" "$work/pod-first.json" <<'PY'
import json, statistics, sys
mb = int(sys.argv[1])
times = {"peer": [], "pod": []}
for order, path in zip(("peer first", "pod first"), sys.argv[2:]):
    r = {x["command"]: x for x in json.load(open(path))["results"]}
    for k in times:
        times[k] += r[k]["times"]
    print(f"{order}: peer {r['peer']['median']:.3f} s, pod {r['pod']['median']:.3f} s"
          f" = {r['peer']['median'] / r['pod']['median']:.2f}x")
peer, pod = statistics.median(times["peer"]), statistics.median(times["pod"])
print(f"peer: {peer:.3f} s ({mb/peer:.0f} MiB/s)   pod fetch: {pod:.3f} s ({mb/pod:.0f} MiB/s)   (medians, both orders)")
print(f"pod fetch throughput = {peer/pod:.2f}x the zstd|tar + sha512sum pipeline (target >= 0.80x)")
PY
