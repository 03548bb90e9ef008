#!/usr/bin/env bash
# Builds crictl (cri-tools, the Kubernetes node team's CRI client: the CRI
# tests drive `pod cri serve` with it) from its Go module, once, into
# /usr/local/lib/pod-test/bin/crictl, where tests/tests/cri.rs looks first.
# Idempotent: does nothing when the pinned version is there; reuses a binary of
# that version already in GOPATH/bin.
#
# A failed build is not an error of the caller: it prints a warning and exits
# 0, and the CRI tests then print `SKIP: crictl not found`.
#
# Usage: scripts/build-cri-tools.sh   (POD_TEST_BIN=DIR installs elsewhere)
set -uo pipefail

# Pinned: the cri-tools release the CRI work targets (issue 11).
version=v1.37.0
module=sigs.k8s.io/cri-tools/cmd/crictl
bindir=${POD_TEST_BIN:-/usr/local/lib/pod-test/bin}
dest=$bindir/crictl

# `crictl --version` prints `crictl version v1.37.0`.
crictl_version() { "$1" --version 2>/dev/null | awk '{print $NF}'; }

if [ -x "$dest" ] && [ "$(crictl_version "$dest")" = "$version" ]; then
  exit 0
fi

warn() {
  echo "WARNING: crictl $version not built: $*" >&2
  echo "WARNING: the CRI tests will SKIP (crictl not found)" >&2
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
if [ -x "$gobin/crictl" ] && [ "$(crictl_version "$gobin/crictl")" = "$version" ]; then
  cp "$gobin/crictl" "$dest.tmp" && mv "$dest.tmp" "$dest" && echo "crictl $version: copied from $gobin" && exit 0
fi

echo "building crictl $version with $("$go" version) (a minute or two)"
tmp=$(mktemp -d /var/tmp/pod-crictl.XXXXXX) || warn "no temp dir"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
# GOTOOLCHAIN=local: never download another Go; CGO off: a static binary.
# The version is stamped the way cri-tools' Makefile does (else `crictl
# --version` says v0.0.0 and the check above never matches).
if ! GOBIN=$tmp GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath \
  "$go" install -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$version" \
  "$module@$version" >"$tmp/build.log" 2>&1; then
  tail -20 "$tmp/build.log" >&2
  warn "go install $module@$version failed"
fi
[ "$(crictl_version "$tmp/crictl")" = "$version" ] || warn "the built binary does not report $version (it says: $("$tmp/crictl" --version 2>&1 | head -1))"
mv "$tmp/crictl" "$dest" || warn "cannot install $dest"
echo "crictl $version built in $(($(date +%s) - start)) s -> $dest"
