//! The rules of `tasker_worker::policy` the Python package follows: how many
//! threads run handlers and how many steps each pulls. The package asks
//! these functions instead of deciding itself.

use pyo3::prelude::*;
use tasker_worker::policy;

use crate::errors;

/// Threads running a worker's handlers: `requested` (at least 1), or one
/// per slot up to `DEFAULT_MAX_THREADS`; never more than `capacity`.
/// Raises `ConfigError` for a request that is not a positive integer.
#[pyfunction]
#[pyo3(signature = (capacity, requested=None))]
fn handler_threads(capacity: u32, requested: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
    let requested = match requested {
        None => None,
        Some(value) if value.is_none() => None,
        Some(value) => match value.extract::<usize>() {
            Ok(n) => Some(n),
            Err(_) => return Err(not_a_count(value)),
        },
    };
    policy::handler_threads(capacity, requested).map_err(errors::policy_config)
}

fn not_a_count(value: &Bound<'_, PyAny>) -> PyErr {
    let shown = value
        .repr()
        .map(|r| r.to_string())
        .unwrap_or_else(|_| "?".into());
    errors::ConfigError::new_err(format!("threads must be a positive integer, got {shown}"))
}

/// Most steps one handler thread pulls at a time, so that `threads` threads
/// together hold exactly `capacity`: ceil(capacity / threads); a single
/// thread pulls half of it at a time.
#[pyfunction]
fn chunk_size(capacity: u32, threads: usize) -> usize {
    policy::chunk_size(capacity, threads)
}

/// Adds the policy functions and constants to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DEFAULT_MAX_THREADS", policy::DEFAULT_MAX_THREADS)?;
    m.add("MAX_JSON_DEPTH", policy::MAX_JSON_DEPTH)?;
    m.add_function(wrap_pyfunction!(handler_threads, m)?)?;
    m.add_function(wrap_pyfunction!(chunk_size, m)?)?;
    Ok(())
}
