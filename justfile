# tasker-core tasks. `cargo install just` provides `just`; every recipe is a
# thin wrapper, so the scripts work without it.

# List the recipes.
default:
    @just --list

# Run the demo: an order workflow over Rust, Python, Ruby and Node workers.
demo *ARGS:
    ./scripts/demo.sh {{ARGS}}

# The demo as a service: tasker serve, the four workers, and the order
# submitted through the Python SDK's Client.
demo-serve *ARGS:
    ./scripts/demo.sh --serve {{ARGS}}

# Run the whole test suite, lints and all bindings included.
test:
    ./scripts/test.sh

# Packages that install without Rust, into dist/: wheel, gem, npm tarball, tasker binary.
package *ARGS:
    bash scripts/package.sh {{ARGS}}

# Install each package into a clean environment (no cargo) and serve a step with it.
test-packages *ARGS:
    bash scripts/test-packages.sh {{ARGS}}

# fmt and clippy only.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Regenerate protocol/schema and the workflow schema from the Rust types.
schema:
    cargo run --quiet -p tasker-cli -- schema

# Throughput and latency beside a raw ZeroMQ echo ceiling.
bench *ARGS:
    cargo run --release --quiet -p tasker-cli -- bench {{ARGS}}

# Chaos soak: steps through Rust and Python workers while workers and the orchestrator are killed and stopped.
soak *ARGS:
    cargo run --release --quiet -p tasker-cli -- soak {{ARGS}}

# Each binding's worker beside the Rust worker and a plain hand-written one.
bench-python *ARGS:
    bindings/python/bench.sh {{ARGS}}
bench-ruby *ARGS:
    bindings/ruby/bench.sh {{ARGS}}
bench-node *ARGS:
    bindings/node/bench.sh {{ARGS}}

# One binding's test suite (python, ruby or node).
test-binding LANG:
    bindings/{{LANG}}/test.sh

# A Rust worker with the built-in handlers.
worker *ARGS:
    cargo run --release --quiet -p tasker-cli -- worker {{ARGS}}

# Run one workflow: just run examples/workflows/permanent_failure.yaml --spawn "rust=target/debug/tasker worker"
run *ARGS:
    cargo run --quiet -p tasker-cli -- run {{ARGS}}

# The orchestrator as a service (durable tasks, HTTP API): just serve --api-listen 127.0.0.1:8080
serve *ARGS:
    cargo run --release --quiet -p tasker-cli -- serve {{ARGS}}

# Start, show, list and cancel tasks of a running serve: just task submit order_fulfillment --wait
task *ARGS:
    cargo run --release --quiet -p tasker-cli -- task {{ARGS}}

# Tasks through serve's store (SQLite and a throwaway PostgreSQL) beside the in-memory engine.
bench-durable *ARGS:
    cargo run --release --quiet -p tasker-cli -- bench --durable-only {{ARGS}}
