//! Message types of the wire protocol.
//!
//! Every message body is a JSON object whose `type` field names the message.
//! [`WorkerMessage`] lists what a worker may send, [`OrchestratorMessage`] what
//! an orchestrator may send. Unknown fields are ignored so that minor protocol
//! versions can add optional fields.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::PROTOCOL_VERSION;

/// Identifier of a workflow step; unique among the steps in flight in one
/// orchestrator, and the idempotency key of a step attempt together with
/// `attempt`.
pub type StepId = i64;

/// Identifier of the task (workflow instance) a step belongs to.
pub type TaskId = i64;

/// A batch of steps the orchestrator hands to one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepBatchRequest {
    /// Correlation id of this delivery; echoed in the worker's responses.
    pub batch_id: String,
    /// `MAJOR.MINOR` protocol version of the sender.
    pub protocol_version: String,
    /// The steps to execute; never empty.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepExecutionRequest>,
}

impl StepBatchRequest {
    /// A batch with the current protocol version.
    pub fn new(batch_id: impl Into<String>, steps: Vec<StepExecutionRequest>) -> Self {
        Self {
            batch_id: batch_id.into(),
            protocol_version: PROTOCOL_VERSION.to_string(),
            steps,
        }
    }
}

/// One step to execute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepExecutionRequest {
    /// The step's id.
    pub step_id: StepId,
    /// The task the step belongs to.
    pub task_id: TaskId,
    /// Name of the step within its workflow.
    pub step_name: String,
    /// Name of the handler that executes the step; a worker only receives
    /// steps whose handler it announced in its hello.
    pub handler_class: String,
    /// Handler-specific configuration from the workflow definition.
    #[serde(default)]
    pub handler_config: Value,
    /// The task's input.
    #[serde(default)]
    pub task_context: Value,
    /// Outputs of the steps this one depends on, keyed by their step names.
    #[serde(default)]
    pub previous_results: BTreeMap<String, Value>,
    /// Attempt, limits and timing.
    pub metadata: StepRequestMetadata,
}

impl StepExecutionRequest {
    /// A request with empty config, context and previous results, attempt 1,
    /// and the given timeout.
    ///
    /// ```
    /// use tasker_protocol::StepExecutionRequest;
    /// let step = StepExecutionRequest::new(1, 10, "validate", "validate_order", 5_000);
    /// assert_eq!(step.metadata.attempt, 1);
    /// ```
    pub fn new(
        step_id: StepId,
        task_id: TaskId,
        step_name: impl Into<String>,
        handler_class: impl Into<String>,
        timeout_ms: u64,
    ) -> Self {
        Self {
            step_id,
            task_id,
            step_name: step_name.into(),
            handler_class: handler_class.into(),
            handler_config: Value::Object(Default::default()),
            task_context: Value::Object(Default::default()),
            previous_results: BTreeMap::new(),
            metadata: StepRequestMetadata {
                attempt: 1,
                retry_limit: 0,
                timeout_ms,
                created_at: Utc::now(),
            },
        }
    }

    /// The `(step_id, attempt)` pair that identifies this attempt.
    pub fn step_ref(&self) -> StepRef {
        StepRef {
            step_id: self.step_id,
            attempt: self.metadata.attempt,
        }
    }
}

/// Attempt, limits and timing of a step request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepRequestMetadata {
    /// 1 for the first attempt, incremented by each retry.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// How many retries the workflow allows after the first attempt.
    #[serde(default)]
    pub retry_limit: u32,
    /// Time the worker has, from delivery, before the orchestrator ends the
    /// step as timed out and discards any later result; at least 1.
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// When the step attempt was created.
    #[serde(with = "crate::timestamp")]
    #[schemars(with = "DateTime<Utc>")]
    pub created_at: DateTime<Utc>,
}

/// The results a worker sends back; one message may carry results of several
/// steps, of one or more deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepBatchResponse {
    /// The `batch_id` of the delivery the results belong to (of the first
    /// result's delivery when they span several).
    pub batch_id: String,
    /// The `orchestrator_id` of the welcome under which every step these
    /// results answer was delivered. Results of steps delivered by
    /// different orchestrators travel in different messages.
    #[schemars(length(min = 1))]
    pub orchestrator_id: String,
    /// `MAJOR.MINOR` protocol version of the sender.
    pub protocol_version: String,
    /// The results; never empty.
    #[schemars(length(min = 1))]
    pub results: Vec<StepExecutionResult>,
}

impl StepBatchResponse {
    /// A response with the current protocol version, answering steps
    /// delivered by the orchestrator `orchestrator_id`.
    pub fn new(
        batch_id: impl Into<String>,
        orchestrator_id: impl Into<String>,
        results: Vec<StepExecutionResult>,
    ) -> Self {
        Self {
            batch_id: batch_id.into(),
            orchestrator_id: orchestrator_id.into(),
            protocol_version: PROTOCOL_VERSION.to_string(),
            results,
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The handler returned an output.
    Completed,
    /// The handler, or the system on its behalf, reported an error.
    Failed,
    /// The step did not finish within its `timeout_ms`; only the
    /// orchestrator sets this.
    TimedOut,
    /// The step was abandoned (shutdown, cancellation); only the
    /// orchestrator sets this.
    Cancelled,
}

impl StepStatus {
    /// Whether a worker may report this status (the others are the
    /// orchestrator's own verdicts).
    pub fn is_reportable_by_worker(self) -> bool {
        matches!(self, StepStatus::Completed | StepStatus::Failed)
    }
}

/// The final result of one step attempt.
///
/// Its JSON Schema is that of a worker's result on the wire: `status` is
/// `completed` or `failed`, `error` is present exactly when `failed`. The
/// orchestrator's own verdicts (`timed_out`, `cancelled`) use the same type
/// but never travel to the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::schema::error_iff_failed)]
pub struct StepExecutionResult {
    /// The step's id.
    pub step_id: StepId,
    /// How it ended: `completed` or `failed` from a worker.
    #[schemars(schema_with = "crate::schema::worker_status")]
    pub status: StepStatus,
    /// The handler's output when `status` is `completed` (JSON `null` is a
    /// valid output, distinct from no output).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_value"
    )]
    pub output: Option<Value>,
    /// What went wrong, for every other status; absent (not `null`) when
    /// `completed`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present_error"
    )]
    #[schemars(with = "StepExecutionError")]
    pub error: Option<StepExecutionError>,
    /// Attempt, timing and origin.
    pub metadata: StepResultMetadata,
}

impl StepExecutionResult {
    /// A completed result, completed now.
    pub fn completed(
        step: StepRef,
        output: Value,
        worker_id: &str,
        execution_time_ms: u64,
    ) -> Self {
        Self::completed_at(step, output, worker_id, execution_time_ms, Utc::now())
    }

    /// A completed result that completed at `completed_at`: for a caller
    /// that knows the time without reading the clock again.
    ///
    /// ```
    /// use tasker_protocol::{StepExecutionResult, StepRef};
    ///
    /// let at = chrono::Utc::now();
    /// let step = StepRef { step_id: 7, attempt: 1 };
    /// let result = StepExecutionResult::completed_at(step, serde_json::json!(1), "w-1", 3, at);
    /// assert_eq!(result.metadata.completed_at, at);
    /// ```
    pub fn completed_at(
        step: StepRef,
        output: Value,
        worker_id: &str,
        execution_time_ms: u64,
        completed_at: DateTime<Utc>,
    ) -> Self {
        Self {
            step_id: step.step_id,
            status: StepStatus::Completed,
            output: Some(output),
            error: None,
            metadata: StepResultMetadata {
                attempt: step.attempt,
                execution_time_ms,
                worker_id: worker_id.to_string(),
                retryable: false,
                completed_at,
            },
        }
    }

    /// A result with the given non-completed status and error.
    pub fn failed(
        step: StepRef,
        status: StepStatus,
        error: StepExecutionError,
        worker_id: &str,
        execution_time_ms: u64,
    ) -> Self {
        Self {
            step_id: step.step_id,
            status,
            output: None,
            metadata: StepResultMetadata {
                attempt: step.attempt,
                execution_time_ms,
                worker_id: worker_id.to_string(),
                retryable: error.retryable,
                completed_at: Utc::now(),
            },
            error: Some(error),
        }
    }

    /// The `(step_id, attempt)` pair this result answers.
    pub fn step_ref(&self) -> StepRef {
        StepRef {
            step_id: self.step_id,
            attempt: self.metadata.attempt,
        }
    }

    /// Whether the step may be tried again: false for completed steps;
    /// otherwise `error.retryable`, which wins when `metadata.retryable`
    /// says otherwise (SPEC §4.2), or `metadata.retryable` without an error.
    pub fn is_retryable(&self) -> bool {
        self.status != StepStatus::Completed
            && self
                .error
                .as_ref()
                .map_or(self.metadata.retryable, |e| e.retryable)
    }
}

/// A field that is present is `Some`, even when it is `null`.
fn present_value<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Value>, D::Error> {
    Value::deserialize(deserializer).map(Some)
}

/// A field that is present holds an error object: `"error": null` is
/// refused, as the schema refuses it.
fn present_error<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<StepExecutionError>, D::Error> {
    StepExecutionError::deserialize(deserializer).map(Some)
}

/// Attempt, timing and origin of a step result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepResultMetadata {
    /// The attempt this result answers; must equal the request's.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// Wall time the handler ran, in milliseconds.
    pub execution_time_ms: u64,
    /// Id of the worker that produced the result (`orchestrator` for
    /// verdicts the orchestrator reached itself).
    pub worker_id: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// When the result was produced.
    #[serde(with = "crate::timestamp")]
    #[schemars(with = "DateTime<Utc>")]
    pub completed_at: DateTime<Utc>,
}

/// What went wrong with a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepExecutionError {
    /// Human-readable description.
    pub message: String,
    /// The error's kind: the handler's exception class, or one of
    /// [`error_types`] for errors the system reports.
    pub error_type: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// Backtrace lines, innermost first, where the host language has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backtrace: Vec<String>,
}

impl StepExecutionError {
    /// An error without backtrace.
    pub fn new(error_type: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            message: message.into(),
            error_type: error_type.into(),
            retryable,
            backtrace: Vec::new(),
        }
    }
}

/// `error_type` values the system itself reports.
pub mod error_types {
    /// The step did not finish within its timeout; retryable.
    pub const TIMED_OUT: &str = "TimedOut";
    /// The worker holding the step died or left before answering; retryable.
    pub const WORKER_LOST: &str = "WorkerLost";
    /// No connected worker serves the step's handler, up to the step's timeout;
    /// retryable.
    pub const NO_WORKER_FOR_HANDLER: &str = "NoWorkerForHandler";
    /// Workers serve the handler but none had room before the step's timeout;
    /// retryable.
    pub const SCHEDULE_TIMEOUT: &str = "ScheduleTimeout";
    /// The orchestrator shut down before the step finished; retryable.
    pub const ABANDONED: &str = "Abandoned";
    /// The worker has no handler of the step's name; permanent.
    pub const UNKNOWN_HANDLER: &str = "UnknownHandler";
    /// The handler's output could not be serialised to JSON; permanent.
    pub const SERIALIZATION_ERROR: &str = "SerializationError";
    /// The handler panicked (Rust workers); permanent.
    pub const PANIC: &str = "Panic";
    /// The result alone is larger than the orchestrator's
    /// `max_message_bytes`, so the worker reports this instead; permanent.
    pub const OUTPUT_TOO_LARGE: &str = "OutputTooLarge";
    /// The step alone is larger than `max_message_bytes`, so the
    /// orchestrator cannot send it to any worker; permanent.
    pub const STEP_TOO_LARGE: &str = "StepTooLarge";
    /// The worker could not decode a step the orchestrator sent (a JSON
    /// value nested deeper than its parser builds); permanent.
    pub const INVALID_STEP: &str = "InvalidStep";
    /// The worker's result for the step broke the protocol's rules (output
    /// nested deeper than `max_json_depth`, a lone surrogate escape, a
    /// status a worker may not report, ...); the orchestrator refused it
    /// and ended the step with this instead; permanent.
    pub const INVALID_RESULT: &str = "InvalidResult";
    /// The executor stopped (its I/O thread failed) before the step
    /// finished; retryable. The workflow engine reports it too, not
    /// retryable, for an attempt an executor already shut down refused
    /// (the retry of an `Abandoned` step, for one): that attempt never ran.
    pub const EXECUTOR_STOPPED: &str = "ExecutorStopped";
    /// The step's task was cancelled, or suspended for a stop, while the
    /// step waited in the orchestrator's queue, so it was withdrawn before
    /// any worker took it; reported with status `cancelled`. Retryable,
    /// since nothing ran.
    pub const WITHDRAWN: &str = "Withdrawn";

    /// Every kind above, by its constant's name, so a binding can export
    /// them all to its host language without a list of its own.
    pub const ALL: &[(&str, &str)] = &[
        ("TIMED_OUT", TIMED_OUT),
        ("WORKER_LOST", WORKER_LOST),
        ("NO_WORKER_FOR_HANDLER", NO_WORKER_FOR_HANDLER),
        ("SCHEDULE_TIMEOUT", SCHEDULE_TIMEOUT),
        ("ABANDONED", ABANDONED),
        ("UNKNOWN_HANDLER", UNKNOWN_HANDLER),
        ("SERIALIZATION_ERROR", SERIALIZATION_ERROR),
        ("PANIC", PANIC),
        ("OUTPUT_TOO_LARGE", OUTPUT_TOO_LARGE),
        ("STEP_TOO_LARGE", STEP_TOO_LARGE),
        ("INVALID_STEP", INVALID_STEP),
        ("INVALID_RESULT", INVALID_RESULT),
        ("EXECUTOR_STOPPED", EXECUTOR_STOPPED),
        ("WITHDRAWN", WITHDRAWN),
    ];
}

/// The identity of one step attempt.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct StepRef {
    /// The step's id.
    pub step_id: StepId,
    /// The attempt number, at least 1.
    #[schemars(range(min = 1))]
    pub attempt: u32,
}

/// A step attempt a worker holds, with the orchestrator that delivered it:
/// an entry of a hello's `in_progress` or of a drain's `returned`.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct HeldStep {
    /// The step's id.
    pub step_id: StepId,
    /// The attempt number.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// The `orchestrator_id` of the welcome under which the step was
    /// delivered.
    #[schemars(length(min = 1))]
    pub orchestrator_id: String,
}

impl HeldStep {
    /// The `(step_id, attempt)` pair.
    pub fn step_ref(&self) -> StepRef {
        StepRef {
            step_id: self.step_id,
            attempt: self.attempt,
        }
    }
}

/// First message of a worker on every (re)connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerHello {
    /// Stable id of the worker process, kept across reconnections; 1 to 255
    /// characters (`MAX_NAME_CHARS`).
    #[schemars(length(min = 1, max = 255))]
    pub worker_id: String,
    /// Handler names the worker serves: 1 to 1024 names (`MAX_HANDLERS`),
    /// each 1 to 255 characters (`MAX_NAME_CHARS`).
    #[schemars(length(min = 1, max = 1024), inner(length(min = 1, max = 255)))]
    pub handlers: Vec<String>,
    /// Most steps the worker will hold unfinished at once; at least 1.
    #[schemars(range(min = 1))]
    pub capacity: u32,
    /// Steps the worker holds (received, not yet answered nor returned),
    /// each with the orchestrator that delivered it; they count against its
    /// capacity, and those of this orchestrator held by the worker's
    /// earlier connection move to this one. At most `capacity` entries
    /// (a rule JSON Schema cannot state).
    #[serde(default)]
    pub in_progress: Vec<HeldStep>,
    /// Per-handler concurrency limits: handler name → most steps of that
    /// handler the orchestrator has out at this connection at once (its
    /// slots among `capacity`). Each name MUST be one of `handlers`, each
    /// limit at least 1 (rules JSON Schema cannot state in full); a limit
    /// at least `capacity` limits nothing. Handlers not named have no limit
    /// but `capacity`. Empty (the default): no handler is limited.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "crate::schema::handler_limits")]
    pub handler_limits: BTreeMap<String, u32>,
    /// Implementation language, for observability (`rust`, `python`, ...);
    /// at most 255 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub language: Option<String>,
    /// Operating-system process id, for observability.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// A random id the worker draws once when it starts (1 to 64
    /// characters, [`MAX_INCARNATION_CHARS`](crate::MAX_INCARNATION_CHARS))
    /// and repeats in every hello of its life. It tells a worker that
    /// reconnected, which lists every step it received, from a new process
    /// under the same `worker_id`, which cannot: the steps the old process
    /// held may have started, so they end `WorkerLost` instead of being
    /// delivered again as the same attempt. Without it a reconnection
    /// counts as a new process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub incarnation: Option<String>,
}

impl WorkerHello {
    /// A hello with nothing in progress.
    pub fn new(worker_id: impl Into<String>, handlers: Vec<String>, capacity: u32) -> Self {
        Self {
            worker_id: worker_id.into(),
            handlers,
            capacity,
            in_progress: Vec::new(),
            handler_limits: BTreeMap::new(),
            language: None,
            pid: None,
            incarnation: None,
        }
    }
}

/// The orchestrator's answer to a hello: the worker is registered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Welcome {
    /// Interval at which each side sends heartbeats, in milliseconds; at
    /// least 1.
    #[schemars(range(min = 1))]
    pub heartbeat_interval_ms: u64,
    /// Missed intervals after which a peer is considered dead; at least 1.
    #[schemars(range(min = 1))]
    pub liveness: u32,
    /// Largest message body the orchestrator accepts, in bytes.
    pub max_message_bytes: u64,
    /// This orchestrator's id, new each time an orchestrator starts; the
    /// worker tags the steps it receives with it and echoes it in results,
    /// so a result is never taken for another orchestrator's step.
    #[schemars(length(min = 1))]
    pub orchestrator_id: String,
    /// Deepest nesting of arrays and objects a result's `output` may have
    /// ([`crate::MAX_JSON_DEPTH`]); at least 1.
    #[schemars(range(min = 1))]
    pub max_json_depth: u32,
}

/// Liveness signal; each side sends one every heartbeat interval. Any
/// message counts as a sign of life.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Heartbeat {}

/// A worker stops taking work and gives back steps it has not started.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct WorkerDrain {
    /// Steps delivered to the worker that it has not handed to a handler
    /// and never will; the orchestrator delivers them elsewhere.
    #[serde(default)]
    pub returned: Vec<HeldStep>,
}

/// The sender is leaving; the receiver forgets the connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct Goodbye {
    /// Why, for the logs.
    #[serde(default)]
    pub reason: String,
    /// From a worker: the steps it received and leaves unanswered (still
    /// running at its drain deadline). Every other step its connection
    /// holds, it never received: the orchestrator delivers those again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<HeldStep>,
}

impl Goodbye {
    /// A goodbye with nothing left unanswered.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            unanswered: Vec::new(),
        }
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolErrorCode {
    /// Wrong number of frames.
    MalformedFrames,
    /// The header frame names another protocol or major version.
    UnsupportedVersion,
    /// The body is larger than `max_message_bytes`.
    MessageTooLarge,
    /// The body is not valid JSON.
    MalformedJson,
    /// The body's `type` is not a message this side accepts.
    UnknownMessageType,
    /// The body is JSON of a known type but breaks its schema or rules.
    InvalidMessage,
    /// The sender has not said hello on this connection (or was declared
    /// dead); it must send a hello before anything else.
    UnknownWorker,
    /// A hello named a `worker_id` that a live connection holds; the
    /// hello was refused. The worker tries again after its reconnect
    /// backoff.
    WorkerIdInUse,
    /// A hello was refused because the orchestrator holds as many workers
    /// as it allows (`max_workers`). The worker tries again after its
    /// reconnect backoff.
    RegistryFull,
}

impl ProtocolErrorCode {
    /// Every code, in declaration order (metrics label them all).
    pub const ALL: [ProtocolErrorCode; 9] = [
        ProtocolErrorCode::MalformedFrames,
        ProtocolErrorCode::UnsupportedVersion,
        ProtocolErrorCode::MessageTooLarge,
        ProtocolErrorCode::MalformedJson,
        ProtocolErrorCode::UnknownMessageType,
        ProtocolErrorCode::InvalidMessage,
        ProtocolErrorCode::UnknownWorker,
        ProtocolErrorCode::WorkerIdInUse,
        ProtocolErrorCode::RegistryFull,
    ];

    /// The code as it is on the wire (`malformed_frames`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolErrorCode::MalformedFrames => "malformed_frames",
            ProtocolErrorCode::UnsupportedVersion => "unsupported_version",
            ProtocolErrorCode::MessageTooLarge => "message_too_large",
            ProtocolErrorCode::MalformedJson => "malformed_json",
            ProtocolErrorCode::UnknownMessageType => "unknown_message_type",
            ProtocolErrorCode::InvalidMessage => "invalid_message",
            ProtocolErrorCode::UnknownWorker => "unknown_worker",
            ProtocolErrorCode::WorkerIdInUse => "worker_id_in_use",
            ProtocolErrorCode::RegistryFull => "registry_full",
        }
    }
}

/// Sent in reply to a message that was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProtocolError {
    /// What kind of problem.
    pub code: ProtocolErrorCode,
    /// Details for humans.
    pub message: String,
}

/// Every message a worker sends to the orchestrator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// Register (again) with handlers and capacity.
    Hello(WorkerHello),
    /// Liveness.
    Heartbeat(Heartbeat),
    /// Results of finished steps.
    StepBatchResponse(StepBatchResponse),
    /// Stop sending work; here are steps given back.
    Drain(WorkerDrain),
    /// Leaving.
    Goodbye(Goodbye),
    /// A message from the orchestrator was refused.
    ProtocolError(ProtocolError),
}

/// Every message the orchestrator sends to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrchestratorMessage {
    /// The hello was accepted.
    Welcome(Welcome),
    /// Steps to execute.
    StepBatchRequest(StepBatchRequest),
    /// Liveness.
    Heartbeat(Heartbeat),
    /// The orchestrator is shutting down.
    Goodbye(Goodbye),
    /// A message from the worker was refused.
    ProtocolError(ProtocolError),
}

impl WorkerMessage {
    /// The `type` tag of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            WorkerMessage::Hello(_) => "hello",
            WorkerMessage::Heartbeat(_) => "heartbeat",
            WorkerMessage::StepBatchResponse(_) => "step_batch_response",
            WorkerMessage::Drain(_) => "drain",
            WorkerMessage::Goodbye(_) => "goodbye",
            WorkerMessage::ProtocolError(_) => "protocol_error",
        }
    }
}

impl OrchestratorMessage {
    /// The `type` tag of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            OrchestratorMessage::Welcome(_) => "welcome",
            OrchestratorMessage::StepBatchRequest(_) => "step_batch_request",
            OrchestratorMessage::Heartbeat(_) => "heartbeat",
            OrchestratorMessage::Goodbye(_) => "goodbye",
            OrchestratorMessage::ProtocolError(_) => "protocol_error",
        }
    }
}
