#!/usr/bin/env bash
# Every test of selfheal, as CI runs it (`.ci/run` calls exactly this script).
#
#   ./tests/run.sh
#
# Formatting, lints (warnings are errors), then unit, property, integration and
# end-to-end tests of the binary, and every criterion bench once in test mode.
# One build profile (dev) serves every stage, so nothing compiles twice.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n==> %s\n' "$*"; }

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

stage "cargo test (unit, property, integration, end-to-end; benches once)"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet

stage "all tests passed"
