//! The log bridge: the runtime's `tracing` events queued in Rust and
//! drained by a Python thread (`tasker_core._logging`) into `logging`, and
//! at the end of a run and at exit by whichever thread flushes. The
//! runtime's I/O thread never calls into Python.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use tasker_worker::log_bridge::{self, LogBridge, LogLevel};
use tasker_worker::policy;

use crate::errors;

fn parse_level(level: &str) -> PyResult<LogLevel> {
    level
        .parse::<LogLevel>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

fn bridge() -> PyResult<&'static LogBridge> {
    log_bridge::installed()
        .ok_or_else(|| errors::WorkerError::new_err("the log bridge is not installed"))
}

/// Routes the runtime's `tracing` events into a queue drained by
/// `take_log_records`, keeping those at `level` (`error`, `warn`, `info`,
/// `debug`, `trace`) or more severe. False if another `tracing` subscriber
/// owns this process (then no records come).
#[pyfunction]
fn install_log_bridge(level: &str) -> PyResult<bool> {
    let level = parse_level(level)?;
    Ok(log_bridge::install(level).is_ok())
}

/// Changes the most verbose level queued by the log bridge.
#[pyfunction]
fn set_log_level(level: &str) -> PyResult<()> {
    bridge()?.set_level(parse_level(level)?);
    Ok(())
}

fn python_level(level: LogLevel) -> u8 {
    match level {
        LogLevel::Error => 40,
        LogLevel::Warn => 30,
        LogLevel::Info => 20,
        LogLevel::Debug => 10,
        LogLevel::Trace => 5,
    }
}

/// Waits (GIL released) until log records are queued, taking none: True
/// when some are, False on timeout or `wake_logs()`. The records are then
/// taken with `take_log_records` under the Python side's lock, so a flush
/// never passes records that another thread holds but has not logged yet.
#[pyfunction]
#[pyo3(signature = (timeout=None))]
fn wait_for_log_records(py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
    let bridge = bridge()?;
    let timeout = policy::wait_timeout(timeout).map_err(errors::policy_value)?;
    Ok(py.detach(|| bridge.wait_for_records(timeout)))
}

/// Takes up to `max` queued log records without waiting, as `(levelno,
/// target, text, fields)` tuples: a `logging` level number, the Rust module
/// path, the message followed by `key=value` pairs, and the fields as a
/// dict. Empty when none are queued.
#[pyfunction]
#[pyo3(signature = (max=256))]
fn take_log_records<'py>(py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyList>> {
    let records = bridge()?.take_records(max);
    let items = records
        .into_iter()
        .map(|record| {
            let fields = PyDict::new(py);
            for (key, value) in &record.fields {
                fields.set_item(key, value)?;
            }
            let text = record.to_string();
            Ok((python_level(record.level), record.target, text, fields))
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

/// Makes a waiting (or the next) `wait_for_log_records` return at once.
#[pyfunction]
fn wake_logs() -> PyResult<()> {
    bridge()?.wake();
    Ok(())
}

/// Adds the log bridge's functions.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install_log_bridge, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(wait_for_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(take_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(wake_logs, m)?)?;
    Ok(())
}
