#!/usr/bin/env bash
# Sets everything up on a fresh Debian machine (as root) and runs the main
# job end to end: builds pod, makes and trusts a demo signing key for
# example.com/ only, builds the demo images from Debian packages, signs them,
# and fetches them into the store (verified).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --release --workspace
pod=$PWD/target/release/pod
install -m 0755 "$pod" /usr/local/bin/pod

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
