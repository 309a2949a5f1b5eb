#!/usr/bin/env bash
# The Ruby binding's test suite: builds the extension (dev profile, shared
# target directory) and the `tasker` CLI, checks formatting and lints of the
# crate, then runs the minitest suite against the real extension, the real
# orchestrator and real worker processes (test_signatures.rb validates the
# RBS signatures in sig/), then runs the worker, middleware, client, config,
# native and conformance tests again under rbs's runtime type checker, so that every
# call they make into the gem is checked against sig/. Needs Debian's ruby,
# ruby-dev and libclang-dev (minitest, json and rbs come with Ruby).
# Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

for cmd in ruby gem cargo; do
  command -v "$cmd" >/dev/null || { echo "bindings/ruby/test.sh: $cmd is missing (apt-get install ruby ruby-dev libclang-dev)" >&2; exit 1; }
done
ruby -e 'require "minitest"; require "json"; require "logger"; require "rbs"' \
  || { echo "bindings/ruby/test.sh: Ruby lacks minitest/json/rbs (Debian's ruby package has them)" >&2; exit 1; }

echo "== ruby: build (tasker-core-ruby, tasker-cli)" >&2
bash "$here/build.sh"
cargo build --quiet -p tasker-cli

echo "== ruby: cargo fmt --check, clippy (tasker-core-ruby)" >&2
cargo fmt -p tasker-core-ruby -- --check
cargo clippy --quiet -p tasker-core-ruby --all-targets -- -D warnings

echo "== ruby: minitest" >&2
cd "$here"
ruby -w -Itest -e 'ARGV.each { |f| require File.expand_path(f) }' test/test_*.rb

echo "== ruby: minitest under rbs's runtime type check against sig/ (test/rbs_check.rb)" >&2
# Worker processes the tests start inherit RUBYOPT: they are checked too.
# test_native.rb runs in a process where no worker test has started
# the "tasker-log" thread: with that thread waiting on the log bridge too,
# it can take the wake-up (one shared `woken` flag in
# tasker_worker::log_bridge) meant for the interrupted wait of the test's
# `Timeout.timeout { Native.next_log_records(10, nil) }`, which then hangs.
checked() {
  RUBYOPT="-I$here/test -rrbs_check${RUBYOPT:+ $RUBYOPT}" \
    ruby -w -Itest -e 'abort "rbs_check is not loaded" unless defined?(TaskerRbsCheck)
                       ARGV.each { |f| require File.expand_path(f) }' "$@"
}
checked test/test_worker.rb test/test_middleware.rb test/test_concurrency.rb test/test_client.rb test/test_conformance.rb
checked test/test_config.rb test/test_native.rb
