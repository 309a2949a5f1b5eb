#!/usr/bin/env bash
# Builds the Node binding (debug) and the `tasker` orchestrator, then runs
# the node:test suite against both. Idempotent; quick when already built.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

# npm packages (napi-rs CLI, typescript, zeromq) into ./node_modules.
if [ ! -x node_modules/.bin/napi ] || [ ! -x node_modules/.bin/tsc ] || [ ! -d node_modules/zeromq ] \
  || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

(cd "$repo" && cargo build -p tasker-cli)
# The addon, its loader (native.js) and the generated native.d.ts.
npx napi build --platform --js native.js --dts native.d.ts

export TASKER_BIN="$repo/target/debug/tasker"
node --test test/*.test.js
