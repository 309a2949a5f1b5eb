#!/usr/bin/env bash
# The main job: an order-fulfilment workflow whose steps run in four
# languages. Builds what it needs (first run on a fresh machine: several
# minutes), then `tasker run` binds the orchestrator in process, starts one
# worker each in Rust, Python, Ruby and Node as child processes, runs the
# workflow with live progress, stops the workers cleanly and prints the
# summary. Extra arguments go to `tasker run` (e.g. --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

say() { echo "demo: $*" >&2; }
say "building the orchestrator, the Rust worker and the Python, Ruby and Node SDKs"
cargo build --quiet -p tasker-cli -p tasker-example-rust-worker
bash bindings/python/build.sh >&2
bash bindings/ruby/build.sh >&2
bash bindings/node/build.sh >&2
[ -e examples/node-worker/node_modules/tasker-core ] \
  || (cd examples/node-worker && npm install --no-audit --no-fund --loglevel=error >&2)

say "running examples/workflows/order_fulfillment.yaml"
exec target/debug/tasker run examples/workflows/order_fulfillment.yaml \
  --context "$(cat examples/workflows/order.json)" \
  --endpoint tcp://127.0.0.1:0 \
  --spawn "rust=target/debug/order-worker" \
  --spawn "python=bindings/python/.venv/bin/python examples/python-worker/worker.py" \
  --spawn "ruby=ruby -I bindings/ruby/tmp/native -I bindings/ruby/lib examples/ruby-worker/order_worker.rb" \
  --spawn "node=node examples/node-worker/worker.js" \
  "$@"
