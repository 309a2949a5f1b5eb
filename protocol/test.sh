#!/usr/bin/env bash
# SPEC.md §11's minimal worker, as the SPEC writes it, against the reference
# orchestrator: the listing readers copy must keep working. Installs pyzmq
# into protocol/.venv; TASKER_BIN names the tasker binary (default: the
# debug build, built by `cargo build -p tasker-cli` when missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
venv="$here/.venv"
bin="${TASKER_BIN:-$root/target/debug/tasker}"
[ -x "$bin" ] || (cd "$root" && cargo build --quiet -p tasker-cli)
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -c "import zmq" 2>/dev/null \
  || "$venv/bin/python" -m pip install --quiet --disable-pip-version-check pyzmq
TASKER_BIN="$bin" "$venv/bin/python" "$here/spec_worker_test.py"
