//! The `soak` handler of `tasker worker`: records each run in the soak's
//! shared file, tracks how many steps this process runs at once, sleeps the
//! step's `handler_config.sleep_us`, and fails the first attempt of steps
//! marked `fail_first` with a retryable error.
//!
//! Records (one `write` each, on a file opened `O_APPEND`, so lines of
//! concurrent writers never interleave):
//!
//! - `STEP_ID ATTEMPT PID` when a run starts;
//! - `max PID N CAPACITY` whenever this process reaches a new most steps
//!   running at once.
//!
//! The Python soak worker (`crates/tasker-cli/soak/python_worker.py`) writes
//! the same records.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tasker_protocol::StepExecutionRequest;
use tasker_worker::{HandlerError, HandlerResult};

/// The state of the `soak` handler in one worker process.
pub struct SoakHandler {
    file: File,
    pid: u32,
    capacity: u32,
    running: AtomicU32,
    most: AtomicU32,
}

impl SoakHandler {
    /// Opens the file named by `TASKER_SOAK_LOG` for appending; `capacity`
    /// is what the worker declares.
    pub fn from_env(capacity: u32) -> Result<Self> {
        let path = std::env::var_os(super::ENV_LOG).with_context(|| {
            format!(
                "the soak handler records its runs in the file named by {} (set by `tasker soak`)",
                super::ENV_LOG
            )
        })?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.to_string_lossy()))?;
        Ok(Self {
            file,
            pid: std::process::id(),
            capacity,
            running: AtomicU32::new(0),
            most: AtomicU32::new(0),
        })
    }

    /// One line, one `write(2)`: with `O_APPEND` it lands whole at the end.
    fn record(&self, line: &str) {
        let _ = (&self.file).write(line.as_bytes());
    }

    /// Runs the step.
    pub fn call(&self, step: &StepExecutionRequest) -> HandlerResult {
        let attempt = step.metadata.attempt;
        self.record(&format!("{} {} {}\n", step.step_id, attempt, self.pid));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        let _running = Running(&self.running);
        if now > self.most.fetch_max(now, Ordering::SeqCst) {
            self.record(&format!("max {} {now} {}\n", self.pid, self.capacity));
        }
        let config = &step.handler_config;
        if attempt == 1 && config.get("fail_first").and_then(Value::as_bool) == Some(true) {
            return Err(HandlerError::retryable(format!(
                "step {} fails its first attempt on purpose",
                step.step_id
            )));
        }
        let sleep_us = config.get("sleep_us").and_then(Value::as_u64).unwrap_or(0);
        if sleep_us > 0 {
            std::thread::sleep(Duration::from_micros(sleep_us));
        }
        Ok(json!({ "step_id": step.step_id, "attempt": attempt, "pid": self.pid }))
    }
}

/// Counts a run as finished when dropped, however the handler ends.
struct Running<'a>(&'a AtomicU32);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
