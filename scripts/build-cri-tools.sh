#!/usr/bin/env bash
# Builds cri-tools, the Kubernetes node team's CRI client and conformance
# suite, into /usr/local/lib/pod-test/bin/ (see scripts/go-tool.sh):
# - crictl: the CRI tests drive `pod cri serve` with it;
# - critest: the CRI validation suite (tests/tests/critest.rs), a Go test
#   binary, built with `go test -c` as cri-tools' Makefile does.
# The version is stamped the way cri-tools' Makefile does (else `crictl
# --version` says v0.0.0 and the pinned check never holds).
# Pinned: the cri-tools release the CRI work targets (issue 11).
version=v1.37.0
here=$(dirname "$0")
stamp="-X sigs.k8s.io/cri-tools/pkg/version.Version=$version"
bash "$here/go-tool.sh" crictl sigs.k8s.io/cri-tools/cmd/crictl "$version" "the CRI tests" "$stamp"
GO_TOOL_TEST_BINARY=1 \
  bash "$here/go-tool.sh" critest sigs.k8s.io/cri-tools/cmd/critest "$version" "the critest suite" "$stamp"
