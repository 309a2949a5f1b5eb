#!/usr/bin/env bash
# The main job: builds what it needs, then runs the orchestrator and a Rust
# worker in one program and a small order batch end to end over ZeroMQ.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release --quiet -p tasker-example-embedded
