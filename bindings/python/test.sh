#!/usr/bin/env bash
# The Python binding's tests: builds (build.sh), checks that a wheel built by
# `maturin build` installs into a throwaway virtualenv and serves a step,
# then runs the pytest suite against the real extension and the real
# orchestrator. Extra arguments go to pytest (e.g. -k ctrl_c).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
export CARGO_TARGET_DIR="$root/target"

bash "$here/build.sh"

echo "== clippy and fmt (tasker-core-python)" >&2
(cd "$root" && cargo fmt -p tasker-core-python -- --check)
(cd "$root" && cargo clippy --quiet -p tasker-core-python --all-targets -- -D warnings)

echo "== wheel: maturin build, install into a throwaway venv, serve a step" >&2
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$here" && "$venv/bin/maturin" build --quiet --out "$tmp/wheels" >/dev/null 2>&1) \
    || (cd "$here" && "$venv/bin/maturin" build --out "$tmp/wheels")
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --no-index --no-deps "$tmp"/wheels/tasker_core-*.whl
(cd "$tmp" && TASKER_BIN="$root/target/debug/tasker" "$tmp/venv/bin/python" "$here/tests/smoke_installed.py")

echo "== pytest" >&2
cd "$here"
"$venv/bin/python" -m pytest -q tests "$@"
