//! What the CLI's test binaries share. Each binary uses some of it.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// A `tcp://` endpoint of 127.0.0.1 on a free port below the ephemeral
/// range, so an orchestrator restarted on it finds it free
/// ([`tasker_pgtest::free_port`]).
pub fn free_endpoint() -> String {
    format!("tcp://127.0.0.1:{}", tasker_pgtest::free_port().unwrap())
}

/// `tasker worker` as `worker_id` serving `handlers` (comma-separated) at
/// `endpoint`, with the test section's timings: 200 ms heartbeats, silence
/// judged after 600 ms, reconnecting within 200 ms; its output discarded
/// and its log at warn. The caller adds `--capacity` and the like.
pub fn worker_command(endpoint: &str, worker_id: &str, handlers: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tasker"));
    command
        .arg("worker")
        .args(["--endpoint", endpoint])
        .args(["--handlers", handlers])
        .args(["--worker-id", worker_id])
        .env("TASKER_ENV", "test")
        .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
        .env("TASKER_LIVENESS", "3")
        .env("TASKER_RECONNECT_MAX_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}
