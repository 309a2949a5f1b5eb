//! Start and follow tasker-core tasks from Rust: a client of
//! `tasker serve`'s HTTP API that behaves as `protocol/CLIENT.md` says
//! (the same contract as the Python, Ruby and Node clients).
//!
//! * [`Client`]: submit, get, wait, cancel, list; configured from the
//!   same config as workers ([`Client::from_config`]) or a URL.
//! * [`TaskHandle`]: what [`Client::submit`] returns.
//! * [`Error`]: one variant per kind of failure, with the server's message.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tasker_client::Error> {
//! use std::time::Duration;
//! use tasker_client::Client;
//!
//! let client = Client::new("http://127.0.0.1:8080")?;
//! let handle = client
//!     .submit("order_fulfillment", serde_json::json!({ "order_id": 7 }), Some("order-7"))
//!     .await?;
//! let task = handle.wait(Some(Duration::from_secs(60))).await?;
//! println!("task {} ended {}", task.task_id, task.status);
//! # Ok(()) }
//! ```

mod client;
mod error;
mod retry;

/// The `chrono` crate, whose `DateTime<Utc>` [`ListTasks::created_since`]
/// and the tasks' timestamps are.
pub use chrono;
pub use client::{Client, ListTasks, TaskHandle, MAX_BODY_BYTES};
pub use error::{Error, ProblemDetails};
pub use retry::RetryPolicy;
pub use tasker_protocol::api::{
    StepDetail, StepOutcome, StepState, TaskDetail, TaskPage, TaskState, TaskSummary, WorkflowInfo,
    WorkflowStepInfo,
};
pub use tasker_protocol::StepExecutionError;
