#!/usr/bin/env bash
# The Ruby binding's test suite: builds the extension (dev profile, shared
# target directory) and the `tasker` CLI, checks formatting and lints of the
# crate, then runs the minitest suite against the real extension, the real
# orchestrator and real worker processes. Needs Debian's ruby, ruby-dev and
# libclang-dev (minitest and json come with Ruby). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

for cmd in ruby gem cargo; do
  command -v "$cmd" >/dev/null || { echo "bindings/ruby/test.sh: $cmd is missing (apt-get install ruby ruby-dev libclang-dev)" >&2; exit 1; }
done
ruby -e 'require "minitest"; require "json"; require "logger"' \
  || { echo "bindings/ruby/test.sh: Ruby lacks minitest/json (Debian's ruby package has them)" >&2; exit 1; }

echo "== ruby: build (tasker-core-ruby, tasker-cli)" >&2
bash "$here/build.sh"
cargo build --quiet -p tasker-cli

echo "== ruby: cargo fmt --check, clippy (tasker-core-ruby)" >&2
cargo fmt -p tasker-core-ruby -- --check
cargo clippy --quiet -p tasker-core-ruby --all-targets -- -D warnings

echo "== ruby: minitest" >&2
cd "$here"
ruby -w -Itest -e 'ARGV.each { |f| require File.expand_path(f) }' test/test_*.rb
