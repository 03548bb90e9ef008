#!/usr/bin/env bash
# Builds a test tool from its Go module, once, into
# /usr/local/lib/pod-test/bin/NAME, where the tests look first. Idempotent:
# does nothing when the pinned version is there; reuses a binary of that
# version already in GOPATH/bin. A failed build is not an error of the
# caller: it prints a warning and exits 0, and the tests that need the tool
# then print `SKIP: NAME not found`.
#
# Usage: scripts/go-tool.sh NAME MODULE VERSION WHAT [LDFLAGS]
#   MODULE: the package path of the main package (`go install PKG@VERSION`);
#   WHAT: the tests that skip without it (for the warning);
#   LDFLAGS: stamps the version where the tool's Makefile would.
# GO_TOOL_TEST_BINARY=1: the tool is a Go test binary (critest is `go test
#   -c` of its package, as cri-tools' Makefile builds it): built in a
#   throwaway module that requires MODULE@VERSION, so the dependency versions
#   are the tool's own, as `go install` would pick them.
#   The installed binary's version is read with `NAME --version` (its last
#   word) or `NAME version` (its `GitVersion:` line).
# POD_TEST_BIN=DIR installs elsewhere.
set -uo pipefail

name=$1 module=$2 version=$3 what=$4 ldflags=${5:-}
bindir=${POD_TEST_BIN:-/usr/local/lib/pod-test/bin}
dest=$bindir/$name

version_of() {
  local v
  # `--version` first: `crictl version` would dial a runtime.
  v=$("$1" --version 2>/dev/null | awk '$NF ~ /^v[0-9]/ {print $NF; exit}')
  [ -n "$v" ] || v=$("$1" version 2>/dev/null | awk '/^GitVersion:/ {print $2}')
  echo "$v"
}

if [ -x "$dest" ] && [ "$(version_of "$dest")" = "$version" ]; then
  exit 0
fi

warn() {
  echo "WARNING: $name $version not built: $*" >&2
  echo "WARNING: $what will SKIP ($name not found)" >&2
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
if [ -x "$gobin/$name" ] && [ "$(version_of "$gobin/$name")" = "$version" ]; then
  cp "$gobin/$name" "$dest.tmp" && mv "$dest.tmp" "$dest" && echo "$name $version: copied from $gobin" && exit 0
fi

echo "building $name $version with $("$go" version) (a few minutes)"
tmp=$(mktemp -d "/var/tmp/pod-$name.XXXXXX") || warn "no temp dir"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
# GOTOOLCHAIN=local: never download another Go; CGO off: a static binary.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
if [ -z "${GO_TOOL_TEST_BINARY:-}" ]; then
  GOBIN=$tmp "$go" install ${ldflags:+-ldflags "$ldflags"} "$module@$version" >"$tmp/build.log" 2>&1 ||
    { tail -20 "$tmp/build.log" >&2; warn "go install $module@$version failed"; }
else
  mkdir "$tmp/mod" && (
    cd "$tmp/mod" && "$go" mod init pod-test-tool &&
      "$go" get -t "$module@$version" &&
      "$go" test -c -o "$tmp/$name" ${ldflags:+-ldflags "$ldflags"} "$module"
  ) >"$tmp/build.log" 2>&1 ||
    { tail -20 "$tmp/build.log" >&2; warn "go test -c $module@$version failed"; }
fi
got=$(version_of "$tmp/$name")
[ "$got" = "$version" ] || warn "the built binary reports ${got:-no version}, not $version"
mv "$tmp/$name" "$dest" || warn "cannot install $dest"
echo "$name $version built in $(($(date +%s) - start)) s -> $dest"
