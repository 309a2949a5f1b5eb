#!/usr/bin/env bash
# Steps/s of the Node worker (no-op handler, batch 100) beside the Rust
# worker and a plain worker written with the npm `zeromq` package, in the
# same run (the command's defaults: 20000 steps, batch 100, capacity 200,
# best of 3 rounds). Extra arguments go to `tasker bench-workers`, e.g.
# `./bench.sh --rounds 5 --capacity 100`.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

if [ ! -x node_modules/.bin/napi ] || [ ! -d node_modules/zeromq ]; then
  npm ci --no-audit --no-fund
fi
(cd "$repo" && cargo build --release -p tasker-cli)
npx napi build --platform --release --js native.js --dts native.d.ts

"$repo/target/release/tasker" bench-workers \
  --worker "rust=$repo/target/release/tasker worker --handlers noop" \
  --worker "node=node $here/bench/noop-worker.js" \
  --worker "zeromq-js=node $here/bench/zeromq-worker.js" \
  "$@"
