#!/usr/bin/env bash
# Benchmark: `pod fetch` of an OCI image from a registry versus the stock
# tools doing the same work, measured in the same run:
#
#   peer:  skopeo copy docker://HOST/bench:v1 oci:DIR:v1
#          && umoci raw unpack --image DIR:v1 ROOTFS
#   pod:   pod fetch --ca-cert CA docker://HOST/bench:v1 --insecure-options=image
#          (into a fresh store each time)
#
# The image: a busybox base layer and one layer per Debian package
# (apt-get download + dpkg-deb -x: real binaries and libraries, a realistic
# compression ratio), > 250 MiB unpacked in 8 layers, pushed with skopeo to
# Debian's docker-registry on 127.0.0.1 over TLS from a throwaway CA.
# Rounds interleave the two sides, alternating which goes first (on ext4
# the second of two big extractions pays for the first's freed inodes: see
# bench/fetch.sh). Prints each side's median and the ratio peer/pod (> 1:
# pod is faster). pod's side is skipped, with the reason, while
# `pod fetch docker://` fails.
# Usage: [ROUNDS=5] [POD_BIN=path/to/pod] bench/oci.sh   (default: a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-5}
packages=(libllvm15 gcc-12 libicu72 cpp-12 libperl5.36 perl-modules-5.36 coreutils)

for tool in docker-registry skopeo umoci openssl curl apt-get dpkg-deb python3; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (scripts/install-deps.sh)" >&2; exit 1; }
done

work=$(mktemp -d /var/tmp/pod-bench-oci.XXXXXX)
registry_pid=
cleanup() {
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
export POD_CONFIG=$work/config
# Keep every tool on loopback: no proxy for 127.0.0.1, a dead one otherwise.
export NO_PROXY=127.0.0.1,localhost HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
export CONTAINERS_REGISTRIES_CONF=/dev/null

pod=${POD_BIN:-}
if [ -n "$pod" ]; then
  echo "pod: $pod (POD_BIN)"
elif cargo build --release -q -p stage0 2>"$work/build.log"; then
  pod=$PWD/target/release/pod
else
  echo "pod not built (cargo build --release -p stage0 failed): timing the peer only"
  tail -5 "$work/build.log"
fi

# -- The registry: TLS from a throwaway CA, on a free loopback port.
mkdir -p "$work/ca" "$work/certs"
(
  cd "$work/ca"
  ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
  openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=pod-bench-CA \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -new $ec -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 \
    -extfile server.ext 2>/dev/null
)
cp "$work/ca/ca.pem" "$work/certs/ca.crt"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat > "$work/registry.yml" <<YAML
version: 0.1
log: { level: warn }
storage:
  filesystem: { rootdirectory: $work/registry }
  maintenance: { uploadpurging: { enabled: false } }
http:
  addr: $host
  secret: pod-bench-not-secret
  tls: { certificate: $work/ca/server.pem, key: $work/ca/server.key }
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  curl -sf --cacert "$work/ca/ca.pem" "https://$host/v2/" >/dev/null && break
  sleep 0.1
done
curl -sf --cacert "$work/ca/ca.pem" "https://$host/v2/" >/dev/null || { cat "$work/registry.log"; exit 1; }

# -- The image: busybox, then one layer per package.
mkdir -p "$work/debs" "$work/layers"
(cd "$work/debs" && apt-get download -qq "${packages[@]}" 2>/dev/null) ||
  { echo "apt-get download ${packages[*]} failed (run apt-get update?)" >&2; exit 1; }
umoci init --layout "$work/layout"
umoci new --image "$work/layout:v1"
mkdir -p "$work/layers/busybox/bin" "$work/layers/busybox/etc"
cp /bin/busybox "$work/layers/busybox/bin/"
for a in sh ls cat echo true; do ln -s busybox "$work/layers/busybox/bin/$a"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/layers/busybox/etc/passwd"
add_layer() { # DIR: the tree's entries as Docker writes them (no ./ prefix)
  (cd "$1" && tar --numeric-owner -cf "$1.tar" -- *)
  umoci raw add-layer --image "$work/layout:v1" "$1.tar"
  rm -rf "$1" "$1.tar"
}
add_layer "$work/layers/busybox"
for deb in "$work"/debs/*.deb; do
  d=$work/layers/$(basename "$deb" .deb)
  dpkg-deb -x "$deb" "$d"
  add_layer "$d"
done
rm -rf "$work/debs"
umoci config --image "$work/layout:v1" --config.entrypoint /bin/sh
skopeo --insecure-policy copy -q --dest-cert-dir "$work/certs" "oci:$work/layout:v1" "docker://$host/bench:v1"
rm -rf "$work/layout"

layers=$(skopeo inspect --cert-dir "$work/certs" "docker://$host/bench:v1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["Layers"]))')
gz_mb=$(($(du -sk "$work/registry" | cut -f1) / 1024))
skopeo --insecure-policy copy -q --src-cert-dir "$work/certs" "docker://$host/bench:v1" "oci:$work/probe:v1"
umoci --log error raw unpack --image "$work/probe:v1" "$work/probe-rootfs"
raw_mb=$(($(du -sk "$work/probe-rootfs" | cut -f1) / 1024))
rm -rf "$work/probe" "$work/probe-rootfs"
echo "image: $layers layers, ${gz_mb} MiB gzip in the registry, ${raw_mb} MiB unpacked; $(nproc) cores"

peer_run() {
  skopeo --insecure-policy copy -q --src-cert-dir "$work/certs" "docker://$host/bench:v1" "oci:$work/peer:v1" >/dev/null &&
    umoci --log error raw unpack --image "$work/peer:v1" "$work/peer-rootfs" >/dev/null
}
pod_run() {
  POD_DIR=$work/store "$pod" fetch --ca-cert "$work/ca/ca.pem" "docker://$host/bench:v1" --insecure-options=image >/dev/null
}
fresh() { rm -rf "$work/peer" "$work/peer-rootfs" "$work/store"; sync; }
# Seconds that `$1` takes, on a fresh target.
timed() {
  fresh
  local t0 t1
  t0=$(date +%s%N)
  "$1" || return 1
  t1=$(date +%s%N)
  echo "$(((t1 - t0) / 1000000))"
}

if [ -n "$pod" ]; then
  fresh
  if ! POD_DIR=$work/store "$pod" fetch --ca-cert "$work/ca/ca.pem" "docker://$host/bench:v1" \
    --insecure-options=image >"$work/pod-probe.out" 2>&1; then
    echo "pod's side skipped: pod fetch docker://$host/bench:v1 failed:"
    tail -3 "$work/pod-probe.out" | sed 's/^/  /'
    pod=
  fi
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
peer_ms=() pod_ms=()
for i in $(seq "$rounds"); do
  if [ -z "$pod" ]; then
    peer_ms+=("$(timed peer_run)")
    echo "round $i: peer ${peer_ms[-1]} ms"
  elif [ $((i % 2)) = 1 ]; then
    peer_ms+=("$(timed peer_run)") pod_ms+=("$(timed pod_run)")
    echo "round $i (peer first): peer ${peer_ms[-1]} ms, pod ${pod_ms[-1]} ms"
  else
    pod_ms+=("$(timed pod_run)") peer_ms+=("$(timed peer_run)")
    echo "round $i (pod first): pod ${pod_ms[-1]} ms, peer ${peer_ms[-1]} ms"
  fi
done
fresh
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$raw_mb" "${peer_ms[*]}" "${pod_ms[*]:-}" <<'PY'
import statistics, sys
mb = int(sys.argv[1])
peer = statistics.median(int(x) for x in sys.argv[2].split()) / 1000
print(f"peer (skopeo copy + umoci raw unpack): {peer:.3f} s ({mb/peer:.0f} MiB/s), median")
if sys.argv[3].strip():
    pod = statistics.median(int(x) for x in sys.argv[3].split()) / 1000
    print(f"pod fetch docker://:                   {pod:.3f} s ({mb/pod:.0f} MiB/s), median")
    print(f"ratio peer/pod = {peer/pod:.2f}x (> 1: pod is faster)")
else:
    print("pod: not measured")
PY
