use thiserror::Error;

/// Why the executor refused or failed an operation.
///
/// Step failures are not errors of this kind: they arrive as
/// [`StepExecutionResult`](tasker_protocol::StepExecutionResult)s.
#[derive(Debug, Error)]
pub enum ExecutorError {
    /// The socket could not be created or bound. An endpoint another
    /// process listens on is `EADDRINUSE`, for `ipc://` too.
    #[error("cannot bind {endpoint}: {source}{}", bind_hint(.endpoint, .source))]
    Bind {
        /// The endpoint.
        endpoint: String,
        /// What ZeroMQ said.
        source: zmq::Error,
    },
    /// CURVE is configured and cannot be set up (a key file is missing or
    /// malformed, a key needed with another is not set).
    #[error(transparent)]
    Curve(#[from] tasker_transport::curve::CurveError),
    /// The configuration is not valid (`TaskerConfig::validate`).
    #[error(transparent)]
    Config(#[from] tasker_config::ConfigError),
    /// Some other I/O set-up failed.
    #[error("executor set-up failed: {0}")]
    Setup(String),
    /// The batch is malformed (empty, duplicate step ids, bad version...).
    #[error("invalid batch {batch_id}: {reason}")]
    InvalidBatch {
        /// The batch.
        batch_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A step with this id is already in flight; step ids are idempotency
    /// keys.
    #[error("step {step_id} is already in flight")]
    DuplicateStep {
        /// The step.
        step_id: i64,
    },
    /// This executor ended this attempt of the step itself (timed out,
    /// worker lost, no worker in time, withdrawn): its handler may still run
    /// at a worker, whose late result would answer the resubmission. A
    /// retry is a new attempt.
    #[error(
        "step {step_id} attempt {attempt} has already ended here (its handler may still be \
         running at a worker): resubmit it as attempt {}",
        .attempt + 1
    )]
    AttemptEnded {
        /// The step.
        step_id: i64,
        /// The attempt resubmitted.
        attempt: u32,
    },
    /// The queue is full and the submit policy is `reject`.
    #[error("queue full: {queued} of {bound} steps waiting, batch of {requested} refused")]
    QueueFull {
        /// Steps held now.
        queued: usize,
        /// The configured bound.
        bound: usize,
        /// Steps in the refused batch.
        requested: usize,
    },
    /// The batch is larger than the whole queue can ever hold.
    #[error("batch of {requested} steps exceeds queue_bound {bound}")]
    BatchTooLarge {
        /// Steps in the batch.
        requested: usize,
        /// The configured bound.
        bound: usize,
    },
    /// The executor is shutting down or stopped.
    #[error("executor is shut down")]
    ShutDown,
}

/// What ZeroMQ's word for a failed bind leaves unsaid.
fn bind_hint(endpoint: &str, error: &zmq::Error) -> &'static str {
    match error {
        // libzmq reads a host that is not an address as a network
        // interface's name, and finds none called `localhost`.
        zmq::Error::ENODEV if endpoint.starts_with("tcp://") => {
            " (an orchestrator binds to an IP address, `*` or a network interface's name, \
             not a host name: use 127.0.0.1 for localhost, 0.0.0.0 or `*` for every interface)"
        }
        _ => "",
    }
}
