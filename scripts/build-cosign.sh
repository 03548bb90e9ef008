#!/usr/bin/env bash
# Builds cosign, the OCI tests' signer and second verifier (Debian's skopeo
# and podman are built without sigstore signing), into
# /usr/local/lib/pod-test/bin/cosign: see scripts/go-tool.sh.
# Pinned: the newest release that builds with the Go here (1.26).
exec bash "$(dirname "$0")/go-tool.sh" cosign github.com/sigstore/cosign/v2/cmd/cosign v2.6.5 \
  "the OCI signature tests"
