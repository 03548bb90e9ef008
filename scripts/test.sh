#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and end-to-end tests.
# End-to-end tests need root; they report SKIP for what this host lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --locked
cargo test --workspace --locked
