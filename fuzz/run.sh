#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Works on the stable toolchain: RUSTC_BOOTSTRAP=1 unlocks the nightly
# flags cargo-fuzz passes (the sanitizer and coverage options). Installs
# cargo-fuzz when it is missing. The checked-in seeds in fuzz/corpus/<target>
# are only read; new inputs go to fuzz/corpus-local/<target>. Exits non-zero
# if any target crashed; the reproducer is in fuzz/artifacts/<target>/, to be
# replayed with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>` from fuzz/.
set -euo pipefail

seconds=${1:-60}
shift || true
cd "$(dirname "$0")"

all_targets=(manifest pod_file unit aci_extract control spdy)
targets=("${@:-${all_targets[@]}}")

# Inputs larger than a real one gains nothing but slower runs: manifests and
# unit files are small JSON/text, a pod file a few KiB of YAML; an ACI seed
# must hold a few tar blocks.
max_len() {
    case $1 in
        manifest | pod_file | unit | control | spdy) echo 16384 ;;
        aci_extract) echo 65536 ;;
        *) echo 4096 ;;
    esac
}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# aci_extract writes a tree per input under $TMPDIR: tmpfs when there is one
# (a disk-backed /tmp costs most of each run), removed at the end.
scratch=$(mktemp -d -p "$([[ -d /dev/shm ]] && echo /dev/shm || echo "${TMPDIR:-/tmp}")" pod-fuzz.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus-local/$t" "corpus/$t"
    echo "== $t: ${seconds}s" >&2
    if ! cargo fuzz run "$t" "corpus-local/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1; then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "crashes in: ${failed[*]}; reproducers in $(pwd)/artifacts/<target>/" >&2
    exit 1
fi
echo "no crashes in: ${targets[*]}" >&2
