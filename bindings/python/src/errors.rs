//! The exception classes of `tasker_core`, how Rust errors become them, and
//! the `error_type` values the system reports, exported as constants so the
//! package never spells them itself.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use tasker_worker::policy::{error_types, PolicyError};

create_exception!(
    tasker_core,
    TaskerError,
    PyException,
    "Base class of every error raised by tasker_core."
);
create_exception!(
    tasker_core,
    ConfigError,
    TaskerError,
    "The configuration (file, environment variable or keyword) is invalid."
);
create_exception!(
    tasker_core,
    WorkerError,
    TaskerError,
    "The worker runtime could not start, failed, or was used wrongly."
);
create_exception!(
    tasker_core,
    WorkerRefused,
    WorkerError,
    "The orchestrator refused this worker's connection in the handshake (its CURVE key \
     not admitted, CURVE on one side only, a wrong server key); the message says which \
     and what to change. The worker has stopped."
);

/// A configuration error, with the Rust message unchanged.
pub fn config(e: tasker_config::ConfigError) -> PyErr {
    ConfigError::new_err(e.to_string())
}

/// A runtime error: bad options are a `ConfigError`, a refusal by the
/// orchestrator `WorkerRefused`, the rest `WorkerError`.
pub fn worker(e: tasker_worker::WorkerError) -> PyErr {
    match e {
        tasker_worker::WorkerError::InvalidOptions(_) => ConfigError::new_err(e.to_string()),
        tasker_worker::WorkerError::Refused(_) => WorkerRefused::new_err(e.to_string()),
        _ => WorkerError::new_err(e.to_string()),
    }
}

/// A value the policy refuses that came from the configuration (`threads`).
pub fn policy_config(e: PolicyError) -> PyErr {
    ConfigError::new_err(e.to_string())
}

/// A value the policy refuses that was a call's argument (a timeout).
pub fn policy_value(e: PolicyError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// Adds the exception classes and the error kinds to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TaskerError", py.get_type::<TaskerError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("WorkerError", py.get_type::<WorkerError>())?;
    m.add("WorkerRefused", py.get_type::<WorkerRefused>())?;
    let all = PyDict::new(py);
    // Every constant of `tasker_protocol::error_types`, by its Rust name:
    // the module attributes `UNKNOWN_HANDLER`, ... and the mapping.
    for (name, value) in error_types::ALL {
        m.add(*name, *value)?;
        all.set_item(*name, *value)?;
    }
    // Read-only: the values are the protocol's.
    let all = py
        .import("types")?
        .getattr("MappingProxyType")?
        .call1((all,))?;
    m.add("ERROR_TYPES", all)?;
    Ok(())
}
