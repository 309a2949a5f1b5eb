# tasker-core tasks. `cargo install just` provides `just`; every recipe is a
# thin wrapper, so the scripts work without it.

# List the recipes.
default:
    @just --list

# Run the demo (orchestrator + Rust worker, a small batch end to end).
demo:
    ./scripts/demo.sh

# Run the whole test suite, lints included.
test:
    ./scripts/test.sh

# fmt and clippy only.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Regenerate protocol/schema from the message types.
schema:
    cargo run --quiet -p tasker-cli -- schema --out protocol/schema

# Throughput and latency beside a raw ZeroMQ echo ceiling.
bench *ARGS:
    cargo run --release --quiet -p tasker-cli -- bench {{ARGS}}

# A Rust worker with the built-in handlers.
worker *ARGS:
    cargo run --release --quiet -p tasker-cli -- worker {{ARGS}}
