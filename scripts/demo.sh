#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine (as root) and runs the main
# job end to end: builds pod, makes and trusts a demo signing key for
# example.com/ only, builds the demo images from Debian packages, signs them,
# fetches them into the store (verified), and runs manifests/web-db.yaml in
# the background: a web app counting visits in redis, on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace
# pod runs the stage1s, pod-init, the metadata service and the CRI server
# from the directory it is installed in.
for bin in pod pod-stage1-ns pod-stage1-vm pod-init pod-metadata pod-cri; do
  install -m 0755 "target/release/$bin" "/usr/local/bin/$bin"
done

keys=/etc/pod/demo-keys
if [ ! -f "$keys/demo.key" ]; then
  pod key gen --out "$keys" --name demo --comment "pod demo key"
fi
pod trust add --prefix example.com/ "$keys/demo.pub"

out=/var/lib/pod-demo
mkdir -p "$out"
for recipe in manifests/images/*.yaml; do
  name=$(basename "$recipe" .yaml)
  echo "== building $name from $recipe"
  pod image build "$recipe" -o "$out/$name.aci"
  pod image sign --key "$keys/demo.key" "$out/$name.aci"
  pod fetch "$out/$name.aci"
done
pod image list

# Replace an earlier demo pod, if any, then start web-db.
if pod status web-db >/dev/null 2>&1; then
  pod stop web-db >/dev/null 2>&1 || true
  pod rm web-db >/dev/null 2>&1 || true
fi
# POD_DEMO_NET=NAME runs the pod on another CNI network than the default
# (whose bridge turns on IP forwarding, as podman's does).
uuid=$(pod run -d ${POD_DEMO_NET:+--net "$POD_DEMO_NET"} manifests/web-db.yaml)
# web starts once redis is ready: wait for it to answer, then count visits.
for _ in $(seq 60); do curl -sf -o /dev/null http://127.0.0.1:8080/ && break; sleep 1; done
pod status "$uuid"
for _ in 1 2 3; do curl -sf http://127.0.0.1:8080/; done
cat <<EOF

web-db is running as pod $uuid. Try:
  curl http://127.0.0.1:8080/      # the visit counter, kept in redis
  pod list; pod status web-db; pod logs web-db
  pod stop web-db; pod rm web-db
EOF
