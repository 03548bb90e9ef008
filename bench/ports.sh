#!/usr/bin/env bash
# Benchmark: HTTP throughput through a pod's published port versus the same
# nginx on the host. What a user of `ports: [{ host: N }]` pays for reaching
# the pod through the host port instead of a server on the host itself.
#
#   bench/ports.sh            # needs root and wrk; ROUNDS (3), DURATION (5s)
#
# One nginx (Debian's, the image of manifests/images/nginx.yaml) serves two
# static files, 612 bytes (the size of nginx's welcome page) and 1 MiB, with
# one worker process and the same configuration in both places:
#   - in a pod on the `default` network with host port 18080, reached
#     - at 127.0.0.1:18080: the pod's nf_tables DNAT from loopback
#       (route_localnet on the bridge), the path this benchmark is for;
#     - at 10.216.0.1:18080, an address of the host: the same DNAT;
#     - at the pod's own address, port 80: the bridge, no translation;
#   - on the host at 127.0.0.1:18081 (the peer): the very same binary and
#     libraries, run from the image's tree with the tree's dynamic loader.
# wrk (-t2 -c32, keep-alive) loads each in turn, interleaved rounds, the
# order rotated per round so that none always follows another; the medians
# of requests/s and bytes/s per path are reported with the ratio pod/host
# (target: loopback >= 0.8x). Every request crosses loopback or
# the pod's veth only: the whole run happens in a private network namespace
# standing in for the host (like bench/run.sh's), so the default network's
# bridge, IP forwarding and rules touch nothing on the real host; the pod,
# host nginx, namespace and store are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3} duration=${DURATION:-5s}
for t in wrk python3 unshare; do command -v $t >/dev/null || { echo "$t is needed (apt-get install $t)" >&2; exit 1; }; done
[ "$(id -u)" = 0 ] || { echo "bench/ports.sh needs root" >&2; exit 1; }
. bench/lib.sh
BENCH_PACKAGES=${BENCH_PACKAGES:-"-p stage0 -p stage1-ns -p stage2-init -p metadata"}
bench_store ports podbench3 253
"$bin/pod" image build manifests/images/nginx.yaml -o "$work/nginx.aci" >"$work/build.log" 2>&1 ||
  { tail -20 "$work/build.log" >&2; exit 1; }
id=$("$bin/pod" fetch --insecure-options=image "$work/nginx.aci" 2>/dev/null)
tree=$POD_DIR/images/$id/rootfs  # the fetched image's rootfs, which the pod's tree is made of
[ -x "$tree/usr/sbin/nginx" ] || { echo "no nginx in the image's rootfs $tree" >&2; exit 1; }

# The files served, readable by nginx's www-data workers in both places.
chmod 711 "$work"
mkdir -p "$work/www" "$work/host-tmp"
head -c 612 /dev/zero | tr '\0' x > "$work/www/small.html"
head -c 1048576 /dev/urandom > "$work/www/big.bin"
nginx_conf() { # LISTEN ROOT TMPDIR
  cat <<CONF
user www-data;
worker_processes 1;
pid $3/nginx.pid;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000;
  types { text/html html; application/octet-stream bin; }
  client_body_temp_path $3/body; proxy_temp_path $3/proxy; fastcgi_temp_path $3/fastcgi;
  uwsgi_temp_path $3/uwsgi; scgi_temp_path $3/scgi;
  server { listen $1; root $2; }
}
CONF
}
nginx_conf 80 /www /tmp > "$work/www/nginx-pod.conf"
nginx_conf 127.0.0.1:18081 "$work/www" "$work/host-tmp" > "$work/nginx-host.conf"
chmod -R a+rX "$work/www"
cat > "$work/ports.yaml" <<YAML
name: bench-ports
network: default
apps:
  - name: nginx
    image: example.com/nginx:1.22
    exec: [/usr/sbin/nginx, -e, stderr, -c, /www/nginx-pod.conf, -g, "daemon off;"]
    ports: [{ name: http, host: 18080 }]
    mounts: [{ host: $work/www, path: /www, readOnly: true }]
    readiness: { tcp: 80 }
YAML
# wrk's own summary, as numbers: requests/s and bytes/s.
cat > "$work/report.lua" <<'LUA'
done = function(summary, latency, requests)
  local s = summary.duration / 1e6
  io.write(string.format("RESULT %f %f %d\n", summary.requests / s, summary.bytes / s,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
LUA

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cat > "$work/inner.sh" <<'SH'
set -euo pipefail
bin=$1 work=$2 tree=$3 rounds=$4 duration=$5
ip link set lo up
# An address of the "host" that is not loopback, for the DNAT path.
ip addr add 10.216.0.1/32 dev lo
host_nginx= uuid=
cleanup() {
  [ -n "$host_nginx" ] && kill "$host_nginx" 2>/dev/null && wait "$host_nginx" 2>/dev/null
  # gc collects exited pods only: the nginx pod is stopped first.
  [ -n "$uuid" ] && "$bin/pod" stop "$uuid" >/dev/null 2>&1
  "$bin/pod" gc >/dev/null 2>&1 || true
}
trap cleanup EXIT
libs=$tree/lib/x86_64-linux-gnu:$tree/usr/lib/x86_64-linux-gnu
"$tree/lib64/ld-linux-x86-64.so.2" --library-path "$libs" "$tree/usr/sbin/nginx" \
  -e stderr -c "$work/nginx-host.conf" -g "daemon off;" 2>"$work/host-nginx.log" &
host_nginx=$!
uuid=$("$bin/pod" run -d "$work/ports.yaml")
ip=$("$bin/pod" list --format json | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    if p["uuid"].startswith(sys.argv[1]) or sys.argv[1].startswith(p["uuid"]):
        print(p["ips"][0].split("/")[0] if isinstance(p["ips"][0], str) else p["ips"][0]["address"].split("/")[0])
' "$uuid")
for i in $(seq 50); do
  curl -sf -o /dev/null http://127.0.0.1:18080/small.html && curl -sf -o /dev/null http://127.0.0.1:18081/small.html && break
  sleep 0.1
done
declare -A url=([loopback]=127.0.0.1:18080 [dnat]=10.216.0.1:18080 [direct]=$ip:80 [host]=127.0.0.1:18081)
paths=(host loopback dnat direct)
for f in small.html big.bin; do
  cmp -s <(curl -sf "http://127.0.0.1:18080/$f") "$work/www/$f" || { echo "127.0.0.1:18080 served a wrong $f" >&2; exit 1; }
  for p in "${paths[@]}"; do  # warm-up, not counted
    wrk -t2 -c32 -d1s "http://${url[$p]}/$f" >/dev/null
  done
done
for r in $(seq "$rounds"); do
  for f in small.html big.bin; do
    for k in "${!paths[@]}"; do
      p=${paths[$(( (k + r) % ${#paths[@]} ))]}
      out=$(wrk -t2 -c32 -d"$duration" -s "$work/report.lua" "http://${url[$p]}/$f")
      echo "$f $p $(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)"
    done
  done
done > "$work/results.txt"
SH
unshare -n bash "$work/inner.sh" "$bin" "$work" "$tree" "$rounds" "$duration"

python3 - "$work/results.txt" "$rounds" "$duration" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(list)
errors = 0
for line in open(sys.argv[1]):
    f, p, rps, bps, err = line.split()
    rows[(f, p)].append((float(rps), float(bps)))
    errors += int(err)
print(f"wrk -t2 -c32 -d{sys.argv[3]}, {sys.argv[2]} interleaved rounds; medians, ratio to host, then each round (and its ratio to that round's host):")
for f in ("small.html", "big.bin"):
    host_r = statistics.median(r for r, _ in rows[(f, "host")])
    for p in ("host", "loopback", "dnat", "direct"):
        r = statistics.median(x for x, _ in rows[(f, p)])
        b = statistics.median(x for _, x in rows[(f, p)])
        per_round = [x / h for (x, _), (h, _) in zip(rows[(f, p)], rows[(f, "host")])]
        print(f"  {f:10} {p:9} {r:10.0f} req/s {b/2**20:8.1f} MiB/s  {r/host_r:.2f}x"
              + f"  rounds: {' '.join(f'{x:.0f}' for x, _ in rows[(f, p)])} req/s"
              + ("" if p == "host" else f" = {' '.join(f'{x:.2f}' for x in per_round)}x"))
if errors:
    print(f"wrk counted {errors} socket or status errors")
PY
echo "load average (1, 5, 15 min): before $load_before, after $(cut -d' ' -f1-3 /proc/loadavg)"
