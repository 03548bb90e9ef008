#!/usr/bin/env bash
# Builds crictl (cri-tools, the Kubernetes node team's CRI client: the CRI
# tests drive `pod cri serve` with it) into /usr/local/lib/pod-test/bin/crictl:
# see scripts/go-tool.sh. The version is stamped the way cri-tools' Makefile
# does (else `crictl --version` says v0.0.0 and the pinned check never holds).
# Pinned: the cri-tools release the CRI work targets (issue 11).
version=v1.37.0
exec bash "$(dirname "$0")/go-tool.sh" crictl sigs.k8s.io/cri-tools/cmd/crictl "$version" "the CRI tests" \
  "-X sigs.k8s.io/cri-tools/pkg/version.Version=$version"
