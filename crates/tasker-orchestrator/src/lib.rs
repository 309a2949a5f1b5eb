//! The orchestrator side of tasker-core.
//!
//! [`ZmqPubSubExecutor`] binds a ZeroMQ `ROUTER` socket and hands batches of
//! steps to the workers that connect to it (`DEALER` sockets speaking the
//! protocol of `tasker-protocol`). It keeps the name of the original design
//! note so its readers find it, but not its wire pattern: instead of two
//! PUB/SUB channels it uses hello/credit and heartbeats, which gives these
//! guarantees:
//!
//! 1. each step goes to exactly one worker serving its handler;
//! 2. a batch submitted before any worker connects waits for one, up to each
//!    step's timeout;
//! 3. a worker never holds more unfinished steps than its declared capacity,
//!    and the orchestrator's own queue is bounded;
//! 4. a silent worker is dead after `heartbeat_interval × liveness`, and each
//!    step it held ends exactly once;
//! 5. each step's `timeout_ms` is enforced; later results are discarded;
//! 6. duplicate results are discarded: every step gets exactly one final
//!    result;
//! 7. malformed input never crashes the orchestrator nor disturbs other
//!    workers;
//! 8. [`shutdown`](ZmqPubSubExecutor::shutdown) drains up to a deadline and
//!    reports what it abandoned.
//!
//! # Example
//!
//! ```no_run
//! use tasker_config::TaskerConfig;
//! use tasker_orchestrator::{FrameworkIntegration, ZmqPubSubExecutor};
//! use tasker_protocol::{StepBatchRequest, StepExecutionRequest};
//!
//! # async fn run() -> Result<(), tasker_orchestrator::ExecutorError> {
//! let executor = ZmqPubSubExecutor::start(&TaskerConfig::default())?;
//! let batch = StepBatchRequest::new(
//!     "batch-1",
//!     vec![StepExecutionRequest::new(1, 1, "greet", "echo", 5_000)],
//! );
//! let results = executor.execute_step_batch(batch).await?;
//! println!("{:?}", results[0].status);
//! executor.shutdown(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod admission;
mod dispatcher;
mod error;
mod executor;
mod integration;
mod metrics;
mod report;
mod sink;

pub use admission::{Admission, Admitting, Permit};
pub use error::ExecutorError;
pub use executor::{BatchHandle, ZmqPubSubExecutor};
pub use integration::{BoxFuture, FrameworkIntegration};
pub use metrics::{
    ExecutorMetrics, HandlerLabels, MetricsSnapshot, MAX_HANDLER_LABELS, OTHER, UNSERVED,
};
pub use report::{Load, ShutdownReport, WorkerInfo};
/// The `zmq` crate, whose types this API shows: [`ExecutorError::Bind`]'s
/// source, [`ZmqPubSubExecutor::zmq_context`].
pub use zmq;
