#!/usr/bin/env bash
# Throughput of the Python worker (no-op handler) beside the Rust worker and a
# hand-written pyzmq + json worker, in the same `tasker bench-workers` run.
# Builds release: the tasker CLI with cargo, the package with
# `pip install ./bindings/python` (maturin, release profile) into its own venv.
# Extra arguments go to `tasker bench-workers` (e.g. --steps 50000 --rounds 5).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.bench-venv"
cd "$root"

echo "== cargo build --release -p tasker-cli" >&2
cargo build --release --quiet -p tasker-cli

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
fi
"$venv/bin/pip" install --quiet pyzmq
echo "== pip install ./bindings/python (release build)" >&2
CARGO_TARGET_DIR="$root/target" "$venv/bin/pip" install --quiet --force-reinstall --no-deps "$root/bindings/python"

py="$venv/bin/python"
# Batch 100 and capacity 100 unless the caller says otherwise.
case " $* " in *" --batch"*) ;; *) set -- --batch 100 "$@" ;; esac
case " $* " in *" --capacity"*) ;; *) set -- --capacity 100 "$@" ;; esac
exec "$root/target/release/tasker" bench-workers "$@" \
    --worker "rust=$root/target/release/tasker worker --handlers noop" \
    --worker "python=$py $here/bench/noop_worker.py" \
    --worker "plain-pyzmq=$py $here/bench/plain_worker.py"
