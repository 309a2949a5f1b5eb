#!/usr/bin/env bash
# The main job: an order-fulfilment workflow whose steps run in four
# languages. Builds what it needs (first run on a fresh machine: several
# minutes), then `tasker run` binds the orchestrator in process, starts one
# worker each in Rust, Python, Ruby and Node as child processes, runs the
# workflow with live progress, stops the workers cleanly and prints the
# summary. Extra arguments go to `tasker run` (e.g. --json).
#
# With --serve (the service variant): starts `tasker serve` on a throwaway
# SQLite store and free ports, the same four workers against it, and
# examples/python-client/submit_order.py submits the order through the
# Python SDK's Client and prints the report; then everything is stopped.
# Extra arguments go to submit_order.py (e.g. --json).
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

python=bindings/python/.venv/bin/python
workers=(
  "rust=target/debug/order-worker"
  "python=$python examples/python-worker/worker.py"
  "ruby=ruby -I bindings/ruby/tmp/native -I bindings/ruby/lib examples/ruby-worker/order_worker.rb"
  "node=node examples/node-worker/worker.js"
)

if [ "${1:-}" != "--serve" ]; then
  say "running examples/workflows/order_fulfillment.yaml"
  spawn=()
  for w in "${workers[@]}"; do spawn+=(--spawn "$w"); done
  exec target/debug/tasker run examples/workflows/order_fulfillment.yaml \
    --context "$(cat examples/workflows/order.json)" \
    --endpoint tcp://127.0.0.1:0 \
    "${spawn[@]}" \
    "$@"
fi
shift

work="$(mktemp -d)"
pids=()
stop_all() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do
      [ -s "$log" ] && { say "last lines of $(basename "$log"):"; tail -n 20 "$log" >&2; }
    done
  fi
  rm -rf "$work"
}
trap stop_all EXIT

say "starting tasker serve (store: a throwaway SQLite file; logs in $work)"
TASKER_ENV=development RUST_LOG=warn target/debug/tasker serve \
  --store "sqlite:$work/tasker.db" --api-listen 127.0.0.1:0 \
  --endpoint tcp://127.0.0.1:0 --workflows-dir examples/workflows \
  >"$work/serve.out" 2>"$work/serve.log" &
pids+=($!)
# It prints one line when it serves:
# `tasker serve: api http://ADDR zeromq ENDPOINT store ... workflows N`.
banner=""
for _ in $(seq 600); do
  banner="$(head -n 1 "$work/serve.out")"
  [ -n "$banner" ] && break
  kill -0 "${pids[0]}" 2>/dev/null || break
  sleep 0.1
done
[ -n "$banner" ] || { say "tasker serve did not start:"; cat "$work/serve.log" >&2; exit 1; }
read -r _ _ _ api _ endpoint _ <<<"$banner"
say "serving: API $api, workers connect to $endpoint"

for w in "${workers[@]}"; do
  name="${w%%=*}"
  # shellcheck disable=SC2086 # each worker command is words on purpose
  TASKER_ENDPOINT="$endpoint" ${w#*=} >"$work/$name.log" 2>&1 &
  pids+=($!)
done

say "submitting the order with examples/python-client/submit_order.py"
TASKER_API_URL="$api" "$python" examples/python-client/submit_order.py "$@"
