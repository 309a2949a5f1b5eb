//! The Ruby exception classes the native code raises. They are defined here
//! (so the extension works alone) and reopened with documentation in
//! `lib/tasker_core/errors.rb`.

use magnus::value::Lazy;
use magnus::{Class, Error, Exception, ExceptionClass, Module, RModule, Ruby};
use tasker_worker::WorkerError;

fn core_class(ruby: &Ruby, name: &str) -> ExceptionClass {
    let core: RModule = ruby
        .class_object()
        .const_get("TaskerCore")
        .expect("TaskerCore is defined at load");
    core.const_get(name).expect("defined at load")
}

static ERROR: Lazy<ExceptionClass> = Lazy::new(|ruby| core_class(ruby, "Error"));
static CONFIG_ERROR: Lazy<ExceptionClass> = Lazy::new(|ruby| core_class(ruby, "ConfigError"));
static WORKER_ERROR: Lazy<ExceptionClass> = Lazy::new(|ruby| core_class(ruby, "WorkerError"));
static WORKER_REFUSED: Lazy<ExceptionClass> = Lazy::new(|ruby| core_class(ruby, "WorkerRefused"));

/// Defines `TaskerCore::Error` and its subclasses (idempotent).
pub fn define(ruby: &Ruby, core: RModule) -> Result<(), Error> {
    let base = core.define_error("Error", ruby.exception_standard_error())?;
    for name in ["ConfigError", "WorkerError", "HandlerError"] {
        core.define_error(name, base)?;
    }
    // The parents must match lib/tasker_core/errors.rb's, which reopens
    // these classes: a different superclass there is a TypeError at load.
    let handler_error: ExceptionClass = core.const_get("HandlerError")?;
    for name in ["RetryableError", "PermanentError"] {
        core.define_error(name, handler_error)?;
    }
    let worker_error: ExceptionClass = core.const_get("WorkerError")?;
    core.define_error("WorkerRefused", worker_error)?;
    Ok(())
}

fn ruby() -> Ruby {
    Ruby::get().expect("called on a Ruby thread")
}

/// A `TaskerCore::Error`.
pub fn error(message: String) -> Error {
    Error::new(ruby().get_inner(&ERROR), message)
}

/// A `TaskerCore::ConfigError` carrying the Rust message unchanged.
pub fn config(e: tasker_config::ConfigError) -> Error {
    invalid(e.to_string())
}

/// A `TaskerCore::ConfigError` for a worker option that is not a config
/// key (`capacity`, `threads`).
pub fn invalid(message: String) -> Error {
    Error::new(ruby().get_inner(&CONFIG_ERROR), message)
}

/// An `ArgumentError` (a bad argument to a native call, e.g. a negative
/// timeout).
pub fn argument(message: String) -> Error {
    Error::new(ruby().exception_arg_error(), message)
}

/// The class of a runtime error: `ConfigError` for invalid options,
/// `WorkerRefused` when the orchestrator refused the connection,
/// `WorkerError` otherwise.
fn worker_class(e: &WorkerError) -> ExceptionClass {
    let class = match e {
        WorkerError::InvalidOptions(_) => &CONFIG_ERROR,
        WorkerError::Refused(_) => &WORKER_REFUSED,
        _ => &WORKER_ERROR,
    };
    ruby().get_inner(class)
}

/// A `TaskerCore::WorkerError` (`ConfigError` for invalid options,
/// `WorkerRefused` for a refusal by the orchestrator), to raise.
pub fn worker(e: WorkerError) -> Error {
    Error::new(worker_class(&e), e.to_string())
}

/// The exception [`worker`] raises, as an object (to return rather than
/// raise).
pub fn worker_exception(e: WorkerError) -> Result<Exception, Error> {
    worker_class(&e).new_instance((e.to_string(),))
}
