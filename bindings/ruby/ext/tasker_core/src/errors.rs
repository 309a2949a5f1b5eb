//! The Ruby exception classes the native code raises. They are defined here
//! (so the extension works alone) and reopened with documentation in
//! `lib/tasker_core/errors.rb`.

use magnus::value::Lazy;
use magnus::{Error, ExceptionClass, Module, RModule, Ruby};
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

/// Defines `TaskerCore::Error` and its subclasses (idempotent).
pub fn define(ruby: &Ruby, core: RModule) -> Result<(), Error> {
    let base = core.define_error("Error", ruby.exception_standard_error())?;
    for name in [
        "ConfigError",
        "WorkerError",
        "RetryableError",
        "PermanentError",
    ] {
        core.define_error(name, base)?;
    }
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

/// A `TaskerCore::WorkerError` (or `ConfigError` for invalid options).
pub fn worker(e: WorkerError) -> Error {
    let class = match e {
        WorkerError::InvalidOptions(_) => &CONFIG_ERROR,
        _ => &WORKER_ERROR,
    };
    Error::new(ruby().get_inner(class), e.to_string())
}
