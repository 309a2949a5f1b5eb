#!/usr/bin/env bash
# Builds the Node binding (debug) and the `tasker` orchestrator, then runs
# the node:test suite against both. Idempotent; quick when already built.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

bash "$here/build.sh"
(cd "$repo" && cargo build --quiet -p tasker-cli)

export TASKER_BIN="$repo/target/debug/tasker"
cd "$here"
node --test test/*.test.js
