#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, the schema check and every
# test (unit, property, and integration tests over real sockets and real
# worker processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --no-fail-fast
