//! The log bridge: the runtime's `tracing` events queued in Rust and
//! drained by a Python thread (`tasker_core._logging`) into `logging`. The
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
/// `next_log_records`, keeping those at `level` (`error`, `warn`, `info`,
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

/// Waits (GIL released) for log records and returns up to `max` of them as
/// `(levelno, target, text, fields)` tuples: a `logging` level number, the
/// Rust module path, the message followed by `key=value` pairs, and the
/// fields as a dict. Empty on timeout or `wake_logs()`.
#[pyfunction]
#[pyo3(signature = (max=256, timeout=None))]
fn next_log_records<'py>(
    py: Python<'py>,
    max: usize,
    timeout: Option<f64>,
) -> PyResult<Bound<'py, PyList>> {
    let bridge = bridge()?;
    let timeout = policy::wait_timeout(timeout).map_err(errors::policy_value)?;
    let records = py.detach(|| bridge.next_records(max, timeout));
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

/// Makes a waiting (or the next) `next_log_records` return at once.
#[pyfunction]
fn wake_logs() -> PyResult<()> {
    bridge()?.wake();
    Ok(())
}

/// Adds the log bridge's functions.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(install_log_bridge, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(next_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(wake_logs, m)?)?;
    Ok(())
}
