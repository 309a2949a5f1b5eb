#!/usr/bin/env bash
# Ruby worker throughput beside the Rust worker and a plain Ruby worker
# (ffi-rzmq + JSON, bench/plain_worker.rb), all served by the same
# orchestrator in the same run (`tasker bench-workers`: no-op steps in
# batches of 100 by default). Extra arguments go to bench-workers, e.g.
#   bindings/ruby/bench.sh --steps 50000 --rounds 5
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

cargo build --quiet --release -p tasker-core-ruby -p tasker-cli
native="$here/tmp/native-release"
mkdir -p "$native/tasker_core"
ln -sf "$CARGO_TARGET_DIR/release/libtasker_core.so" "$native/tasker_core/tasker_core.so"

exec "$CARGO_TARGET_DIR/release/tasker" bench-workers \
  --worker "rust=$CARGO_TARGET_DIR/release/tasker worker --handlers noop" \
  --worker "ruby=ruby -I$native -I$here/lib $here/bench/noop_worker.rb" \
  --worker "ruby-ffi-rzmq=ruby $here/bench/plain_worker.rb" \
  "$@"
