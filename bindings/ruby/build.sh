#!/usr/bin/env bash
# Builds the Ruby binding for development: the extension in the dev profile
# into the workspace's shared target directory, linked where
# `ruby -I bindings/ruby/tmp/native -I bindings/ruby/lib` finds it. Needs
# Debian's ruby, ruby-dev and libclang-dev (scripts/setup.sh installs them).
# Idempotent and quick when built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"

for cmd in ruby gem cargo; do
  command -v "$cmd" >/dev/null || { echo "bindings/ruby/build.sh: $cmd is missing (apt-get install ruby ruby-dev libclang-dev)" >&2; exit 1; }
done
(cd "$repo" && cargo build --quiet -p tasker-core-ruby)
mkdir -p "$here/tmp/native/tasker_core"
ln -sf "$CARGO_TARGET_DIR/debug/libtasker_core.so" "$here/tmp/native/tasker_core/tasker_core.so"
