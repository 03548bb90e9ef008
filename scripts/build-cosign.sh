#!/usr/bin/env bash
# Builds cosign (the OCI tests' signer: Debian's skopeo and podman are built
# without sigstore signing) from its Go module, once, into
# /usr/local/lib/pod-test/bin/cosign, where tests/tests/common/registry/
# cosign.rs looks first. Idempotent: does nothing when the pinned version is
# there; reuses a binary of that version already in GOPATH/bin.
#
# A failed build is not an error of the caller: it prints a warning and exits
# 0, and the cosign tests then print `SKIP: cosign not found`.
#
# Usage: scripts/build-cosign.sh   (POD_TEST_BIN=DIR installs elsewhere)
set -uo pipefail

# Pinned: the newest release that builds with the Go here (1.26).
version=v2.6.5
module=github.com/sigstore/cosign/v2/cmd/cosign
bindir=${POD_TEST_BIN:-/usr/local/lib/pod-test/bin}
dest=$bindir/cosign

cosign_version() { "$1" version 2>/dev/null | awk '/^GitVersion:/ {print $2}'; }

if [ -x "$dest" ] && [ "$(cosign_version "$dest")" = "$version" ]; then
  exit 0
fi

warn() {
  echo "WARNING: cosign $version not built: $*" >&2
  echo "WARNING: the OCI signature tests will SKIP (cosign not found)" >&2
  exit 0
}

# CI's PATH may lack Go's own directory.
go=$(command -v go || true)
[ -n "$go" ] || go=/usr/local/go/bin/go
[ -x "$go" ] || warn "no Go toolchain (looked on PATH and at /usr/local/go/bin/go)"
mkdir -p "$bindir" || warn "cannot create $bindir"

# A binary of the pinned version from an earlier `go install`.
gobin=$("$go" env GOBIN 2>/dev/null)
[ -n "$gobin" ] || gobin=$("$go" env GOPATH 2>/dev/null | cut -d: -f1)/bin
if [ -x "$gobin/cosign" ] && [ "$(cosign_version "$gobin/cosign")" = "$version" ]; then
  cp "$gobin/cosign" "$dest.tmp" && mv "$dest.tmp" "$dest" && echo "cosign $version: copied from $gobin" && exit 0
fi

echo "building cosign $version with $("$go" version) (a few minutes)"
tmp=$(mktemp -d /var/tmp/pod-cosign.XXXXXX) || warn "no temp dir"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
# GOTOOLCHAIN=local: never download another Go; CGO off: a static binary.
if ! GOBIN=$tmp GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath \
  "$go" install "$module@$version" >"$tmp/build.log" 2>&1; then
  tail -20 "$tmp/build.log" >&2
  warn "go install $module@$version failed"
fi
[ "$(cosign_version "$tmp/cosign")" = "$version" ] || warn "the built binary does not report $version"
mv "$tmp/cosign" "$dest" || warn "cannot install $dest"
echo "cosign $version built in $(($(date +%s) - start)) s -> $dest"
