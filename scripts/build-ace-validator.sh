#!/usr/bin/env bash
# Builds appc's executor conformance suite, the ACE validator (appc/spec
# v0.8.11, through the Go module proxy), and its two images with appc's own
# script (scripts/build-ace-validator-acis) and Debian's actool, unsigned,
# into /usr/local/lib/pod-test/ace-v0.8.11/: ace-validator-main.aci and
# ace-validator-sidekick.aci. Idempotent; never fails: without them
# tests/tests/ace.rs and scripts/ace.sh SKIP. POD_TEST_BIN's parent
# directory elsewhere, as scripts/go-tool.sh.
set -uo pipefail

version=v0.8.11
dest=$(dirname "${POD_TEST_BIN:-/usr/local/lib/pod-test/bin}")/ace-$version
if [ -s "$dest/ace-validator-main.aci" ] && [ -s "$dest/ace-validator-sidekick.aci" ]; then
  exit 0
fi
warn() {
  echo "WARNING: the ACE validator $version was not built: $*" >&2
  echo "WARNING: tests/tests/ace.rs will SKIP" >&2
  exit 0
}
go=$(command -v go || true)
[ -n "$go" ] || go=/usr/local/go/bin/go
[ -x "$go" ] || warn "no Go toolchain (looked on PATH and at /usr/local/go/bin/go)"
command -v actool >/dev/null || warn "no actool (Debian's appc-spec package)"
# The script asks `go env` for the images' os and arch labels.
export PATH="$(dirname "$go"):$PATH"
tmp=$(mktemp -d /var/tmp/pod-ace.XXXXXX) || warn "no temp dir"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-trimpath -mod=mod"
# appc/spec predates Go modules: a throwaway module resolves its imports
# (go-semver, pflag, go4, inf) through the proxy.
mkdir "$tmp/mod" && (
  cd "$tmp/mod" && "$go" mod init pod-test-ace &&
    "$go" get "github.com/appc/spec@$version" &&
    "$go" build -o "$tmp/ace-validator" github.com/appc/spec/ace &&
    "$go" list -m -f '{{.Dir}}' github.com/appc/spec >"$tmp/srcdir"
) >"$tmp/build.log" 2>&1 || { tail -20 "$tmp/build.log" >&2; warn "go build github.com/appc/spec/ace@$version failed"; }
# Its script, run from a writable copy of the module's tree (module zips
# keep no exec bits: run by bash).
cp -r "$(cat "$tmp/srcdir")" "$tmp/spec" && chmod -R u+w "$tmp/spec" || warn "cannot copy the module's tree"
mkdir -p "$tmp/spec/bin" && cp "$tmp/ace-validator" "$tmp/spec/bin/" && ln -s "$(command -v actool)" "$tmp/spec/bin/actool"
(cd "$tmp/spec" && NO_SIGNATURE=1 bash ./scripts/build-ace-validator-acis) >>"$tmp/build.log" 2>&1 ||
  { tail -20 "$tmp/build.log" >&2; warn "scripts/build-ace-validator-acis failed"; }
mkdir -p "$dest" || warn "cannot create $dest"
for typ in main sidekick; do
  cp "$tmp/spec/bin/ace-validator-$typ.aci" "$dest/.ace-validator-$typ.aci" &&
    mv "$dest/.ace-validator-$typ.aci" "$dest/ace-validator-$typ.aci" || warn "cannot install $dest"
done
echo "ACE validator $version built in $(($(date +%s) - start)) s -> $dest"
