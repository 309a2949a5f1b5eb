//! The worker side of tasker-core, written once for every language.
//!
//! [`WorkerRuntime`] is the connect-receive-process-reply loop: it connects a
//! ZeroMQ `DEALER` to the orchestrator, says hello with its handlers and
//! capacity, exchanges heartbeats, reconnects with backoff when the
//! orchestrator goes away, and on stop gives back unstarted steps, waits for
//! the running ones and says goodbye. A host (the Rust [`Worker`] below, or a
//! Ruby, Python or Node binding) pulls steps with the blocking
//! [`WorkerRuntime::next_steps`], runs them on its own threads, and hands
//! results back with [`WorkerRuntime::complete`] from any thread. The only
//! user code the runtime's I/O thread runs is a Rust [`Worker`]'s inline
//! handlers ([`HandlerOptions::inline`]), which only compute.
//!
//! Every step is tagged with the orchestrator whose welcome it came under,
//! and its result goes back to that orchestrator's id, on a welcomed
//! connection only; a result ZeroMQ cannot take yet (high-water mark) is
//! kept, in order, until it can; every hello lists each step received and
//! not yet answered. Outputs the orchestrator would refuse (nested deeper
//! than its `max_json_depth`, a lone surrogate escape in JSON text) are
//! reported as `SerializationError` failures instead, checked on the thread
//! that completes the step ([`check_output`], [`check_output_json`]).
//!
//! A host with an event loop of its own, which parses JSON itself, finds
//! what it needs in [`event_loop`]: the connection run from its loop
//! without an I/O thread, steps kept as JSON text, results whose output is
//! JSON text already. The Node binding does all of this; a Rust worker
//! needs none of it.
//!
//! The rules each host follows that are not language idiom (bounded waits,
//! handler threads per capacity, the error kinds a worker reports) are in
//! [`policy`].
//!
//! # Example: a Rust worker
//!
//! ```no_run
//! use serde_json::json;
//! use tasker_worker::{HandlerError, Worker};
//!
//! let config = tasker_config::TaskerConfig::default();
//! let worker = Worker::new(config)
//!     .handler("validate_order", |step| {
//!         let amount = step.task_context["amount"].as_f64().unwrap_or(0.0);
//!         if amount <= 0.0 {
//!             return Err(HandlerError::permanent("amount must be positive"));
//!         }
//!         Ok(json!({ "valid": true }))
//!     })
//!     .spawn()
//!     .unwrap();
//! // ... later
//! worker.stop();
//! worker.join(std::time::Duration::from_secs(10));
//! ```

mod connection;
mod error;
pub mod event_loop;
mod handler;
mod inline;
pub mod log_bridge;
mod output;
pub mod policy;
mod runtime;
mod shared;

pub use error::WorkerError;
pub use handler::{HandlerError, HandlerOptions, HandlerResult, RunningWorker, Worker};
pub use output::{check_output, check_output_json, serialization_failure};
pub use runtime::{log_failure, WorkerOptions, WorkerRuntime};
pub use shared::RuntimeState;
/// The `zmq` crate, whose context [`Worker::zmq_context`] takes.
pub use zmq;
