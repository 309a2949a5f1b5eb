#!/usr/bin/env bash
# Builds the Node binding (debug) and the `tasker` orchestrator, checks the
# crate's formatting, lints and unit tests, then runs the node:test suite
# against both (it type-checks the declarations with tsc too). Idempotent;
# quick when already built.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

echo "== node: build (tasker-core-node, tasker-cli)" >&2
bash "$here/build.sh"
(cd "$repo" && cargo build --quiet -p tasker-cli)

echo "== node: cargo fmt --check, clippy, unit tests (tasker-core-node)" >&2
(cd "$repo" && cargo fmt -p tasker-core-node -- --check)
(cd "$repo" && cargo clippy --quiet -p tasker-core-node --all-targets -- -D warnings)
(cd "$repo" && cargo test --quiet -p tasker-core-node)

echo "== node: node --test" >&2
export TASKER_BIN="$repo/target/debug/tasker"
cd "$here"
node --test test/*.test.js
