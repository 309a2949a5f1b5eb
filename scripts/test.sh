#!/usr/bin/env bash
# The whole test suite: set-up, formatting, lints, every Rust test (unit,
# property, and integration tests over real sockets and real worker
# processes), each language binding's suite against its real built extension
# and the real orchestrator, the packages (scripts/package.sh) installed
# without Rust, and the four-language demo checked end to end.
# First run on a fresh machine: about 15 minutes (it builds libzmq and three
# extensions); later runs reuse the shared target directory.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

step() { echo "== $*" >&2; }
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (workspace, bindings included)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The soak test (tasker-cli) runs Python workers: build that extension first.
step "bindings/python build (for the soak test)"
bash bindings/python/build.sh
step "cargo test"
cargo test --no-fail-fast

failed=()
step "protocol/SPEC.md §11: its minimal pyzmq worker against the orchestrator"
bash protocol/test.sh || failed+=("protocol")
for lang in python ruby node; do
  step "bindings/$lang"
  bash "bindings/$lang/test.sh" || failed+=("bindings/$lang")
done
# From the debug builds the bindings' suites just made: no release build.
step "packages: install each without cargo and serve a step (scripts/test-packages.sh --profile dev)"
bash scripts/test-packages.sh --profile dev || failed+=("packages")
step "demo (rust, python, ruby and node workers)"
./scripts/test-demo.sh || failed+=("demo")

if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "all tests passed" >&2
