//! What the module throws, and the `error_type` values a result may carry.
//!
//! Every error leaves as a JavaScript `Error` whose message is the Rust
//! error's, unchanged. Its `code` tells the package which class to throw:
//! [`CONFIG_ERROR_CODE`] for a configuration that does not resolve or
//! options the runtime refuses (`ConfigError` in `lib/errors.js`),
//! [`WORKER_REFUSED_CODE`] when the orchestrator refused the connection
//! (`WorkerRefused`), [`WORKER_ERROR_CODE`] for any other failure of the
//! runtime (`WorkerError`), a Node-API status (`InvalidArg`) for everything
//! else (`TaskerError`).
//!
//! The `error_type` values are exported as the namespace `errorTypes`
//! (`errorTypes.UNKNOWN_HANDLER`, ...): those of the protocol
//! ([`tasker_worker::policy::error_types`]) and the two only this SDK
//! reports. The package's code uses them instead of spelling the strings.

use napi::bindgen_prelude::Status;
use napi_derive::napi;
use tasker_worker::log_bridge;
use tasker_worker::WorkerError;

use crate::uv;

/// `code` of the error thrown for a configuration that does not resolve:
/// a bad file, `TASKER_*` variable, option or value.
#[napi]
pub const CONFIG_ERROR_CODE: &str = "TaskerConfigError";

/// `code` of the error thrown when the worker runtime could not start or
/// failed.
#[napi]
pub const WORKER_ERROR_CODE: &str = "TaskerWorkerError";

/// `code` of the error the worker stops with when the orchestrator refused
/// its connection in the handshake (CURVE key not admitted, CURVE on one
/// side only, a wrong server key).
#[napi]
pub const WORKER_REFUSED_CODE: &str = "TaskerWorkerRefused";

/// The `code` of a thrown error (see the module docs).
#[derive(Debug, Clone, Copy)]
pub enum ErrorCode {
    /// [`CONFIG_ERROR_CODE`].
    Config,
    /// [`WORKER_ERROR_CODE`].
    Worker,
    /// [`WORKER_REFUSED_CODE`].
    Refused,
    /// Any other failure, with the Node-API status it is thrown as.
    Status(Status),
}

impl AsRef<str> for ErrorCode {
    fn as_ref(&self) -> &str {
        match self {
            Self::Config => CONFIG_ERROR_CODE,
            Self::Worker => WORKER_ERROR_CODE,
            Self::Refused => WORKER_REFUSED_CODE,
            Self::Status(status) => status.as_ref(),
        }
    }
}

/// What the module's functions return.
pub type Result<T> = std::result::Result<T, napi::Error<ErrorCode>>;

/// Errors of the binding, turned into JavaScript `Error`s whose message
/// names the problem.
#[derive(Debug, thiserror::Error)]
pub enum BindingError {
    #[error("{0}")]
    Config(#[from] tasker_config::ConfigError),
    #[error("{0}")]
    Worker(#[from] WorkerError),
    #[error("{0}")]
    Log(#[from] log_bridge::UnknownLogLevel),
    #[error("malformed step outcomes: {0}")]
    Outcomes(serde_json::Error),
    #[error("cannot watch the worker socket on the event loop: {0}")]
    EventLoop(#[from] uv::UvError),
    #[error("{}", .0.reason)]
    Napi(#[from] napi::Error),
}

impl From<BindingError> for napi::Error<ErrorCode> {
    fn from(e: BindingError) -> Self {
        let code = match &e {
            BindingError::Config(_) | BindingError::Worker(WorkerError::InvalidOptions(_)) => {
                ErrorCode::Config
            }
            BindingError::Worker(WorkerError::Refused(_)) => ErrorCode::Refused,
            BindingError::Worker(_) | BindingError::EventLoop(_) => ErrorCode::Worker,
            BindingError::Napi(e) => ErrorCode::Status(e.status),
            _ => ErrorCode::Status(Status::InvalidArg),
        };
        napi::Error::new(code, e.to_string())
    }
}

/// The `error_type` values tasker-core reports: compare a result's
/// `error_type` with these rather than spelling the strings.
#[napi(js_name = "errorTypes")]
pub mod error_types {
    use tasker_worker::policy::error_types as protocol;

    /// The step did not finish within its timeout; retryable.
    #[napi]
    pub const TIMED_OUT: &str = protocol::TIMED_OUT;
    /// The worker holding the step died or left before answering; retryable.
    #[napi]
    pub const WORKER_LOST: &str = protocol::WORKER_LOST;
    /// No connected worker serves the step's handler; retryable.
    #[napi]
    pub const NO_WORKER_FOR_HANDLER: &str = protocol::NO_WORKER_FOR_HANDLER;
    /// Workers serve the handler but none had room in time; retryable.
    #[napi]
    pub const SCHEDULE_TIMEOUT: &str = protocol::SCHEDULE_TIMEOUT;
    /// The orchestrator shut down before the step finished; retryable.
    #[napi]
    pub const ABANDONED: &str = protocol::ABANDONED;
    /// The worker has no handler of the step's name; permanent.
    #[napi]
    pub const UNKNOWN_HANDLER: &str = protocol::UNKNOWN_HANDLER;
    /// The handler's output is not JSON the orchestrator accepts; permanent.
    #[napi]
    pub const SERIALIZATION_ERROR: &str = protocol::SERIALIZATION_ERROR;
    /// A Rust handler panicked; permanent.
    #[napi]
    pub const PANIC: &str = protocol::PANIC;
    /// The result is larger than the orchestrator's `max_message_bytes`; permanent.
    #[napi]
    pub const OUTPUT_TOO_LARGE: &str = protocol::OUTPUT_TOO_LARGE;
    /// The step is larger than `max_message_bytes`; permanent.
    #[napi]
    pub const STEP_TOO_LARGE: &str = protocol::STEP_TOO_LARGE;
    /// The worker could not decode the step; permanent.
    #[napi]
    pub const INVALID_STEP: &str = protocol::INVALID_STEP;
    /// The orchestrator refused the worker's result; permanent.
    #[napi]
    pub const INVALID_RESULT: &str = protocol::INVALID_RESULT;
    /// The executor stopped before the step finished; retryable.
    #[napi]
    pub const EXECUTOR_STOPPED: &str = protocol::EXECUTOR_STOPPED;
    /// The task was cancelled or stopped before a worker took the step; status cancelled.
    #[napi]
    pub const WITHDRAWN: &str = protocol::WITHDRAWN;
    /// Node only: a handler threw a value that is not an `Error`
    /// (`throw "x"`); retryable as `defaultRetryable` says.
    #[napi]
    pub const THROWN_VALUE: &str = "ThrownValue";
    /// Node only: the step's id is beyond `Number.MAX_SAFE_INTEGER`, so no
    /// handler sees it; permanent.
    #[napi]
    pub const UNSUPPORTED_STEP_ID: &str = "UnsupportedStepId";
}
