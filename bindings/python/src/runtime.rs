//! The worker runtime: `tasker_worker::WorkerRuntime` as a Python object.
//! Steps come out as [`Step`]s, results go back from any thread; every
//! blocking call releases the GIL, and its waits are bounded by
//! `tasker_worker::policy::wait_timeout`.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use tasker_protocol::{StepExecutionError, StepExecutionResult, StepStatus};
use tasker_worker::policy::{self, error_types};
use tasker_worker::WorkerOptions;

use crate::step::Step;
use crate::{config, convert, errors};

fn elapsed_ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0).round() as u64
    } else {
        0
    }
}

/// The worker runtime: one connection to the orchestrator, run by a Rust
/// I/O thread that never calls into Python.
///
/// Pull steps with `next_steps` (blocking, GIL released), run them on your
/// own threads, and hand results back with `complete_many` / `fail` from any
/// thread.
#[pyclass(frozen, name = "WorkerRuntime", module = "tasker_core._native")]
pub struct PyWorkerRuntime {
    inner: ManuallyDrop<Arc<tasker_worker::WorkerRuntime>>,
    /// The process that started it (see `Drop`).
    pid: u32,
}

impl Drop for PyWorkerRuntime {
    fn drop(&mut self) {
        // In a child forked from the process that started the runtime, its
        // threads do not exist, and a lock one of them held at the fork
        // stays held: stopping it there could wait for good. Its memory is
        // left as it is; the child's exit returns it.
        if std::process::id() == self.pid {
            // SAFETY: `inner` is dropped once, here, and not used after:
            // this is the last use of `self`.
            unsafe { ManuallyDrop::drop(&mut self.inner) }
        }
    }
}

impl PyWorkerRuntime {
    fn failed_result(
        &self,
        step: &Step,
        error_type: String,
        message: String,
        retryable: bool,
        backtrace: Vec<String>,
        elapsed: f64,
    ) -> StepExecutionResult {
        StepExecutionResult::failed(
            step.step_ref,
            StepStatus::Failed,
            StepExecutionError {
                message,
                error_type,
                retryable,
                backtrace,
            },
            self.inner.worker_id(),
            elapsed_ms(elapsed),
        )
    }
}

/// `text` as UTF-8, each lone surrogate (as in a path decoded with
/// `surrogateescape`) replaced by one U+FFFD.
fn well_formed(text: &Bound<'_, PyString>) -> String {
    if let Ok(text) = text.to_cow() {
        return text.into_owned();
    }
    // UTF-16 keeps a lone surrogate as the one unit it is.
    let units = text
        .call_method1("encode", ("utf-16-le", "surrogatepass"))
        .and_then(|bytes| bytes.extract::<Vec<u8>>());
    match units {
        Ok(bytes) => char::decode_utf16(
            bytes
                .chunks_exact(2)
                .map(|pair| u16::from_le_bytes([pair[0], pair[1]])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        Err(_) => text.to_string_lossy().into_owned(),
    }
}

#[pymethods]
impl PyWorkerRuntime {
    /// Validates the options, then starts connecting in the background.
    ///
    /// `config` is a dict as returned by `load_config` (its
    /// `worker_capacity` is the capacity announced); `handlers` the names
    /// announced; `handler_limits` the per-handler concurrency limits
    /// (name → at least 1) announced with them.
    #[new]
    #[pyo3(signature = (config, handlers, worker_id=None, handler_limits=None))]
    fn new(
        config: &Bound<'_, PyDict>,
        handlers: Vec<String>,
        worker_id: Option<String>,
        handler_limits: Option<BTreeMap<String, u32>>,
    ) -> PyResult<Self> {
        let config = config::from_dict(config)?;
        let mut options = WorkerOptions::new(config, handlers);
        options.worker_id = worker_id;
        options.handler_limits = handler_limits.unwrap_or_default();
        options.language = "python".into();
        let inner = tasker_worker::WorkerRuntime::start(options).map_err(errors::worker)?;
        Ok(Self {
            inner: ManuallyDrop::new(Arc::new(inner)),
            pid: std::process::id(),
        })
    }

    /// The id announced to the orchestrator.
    #[getter]
    fn worker_id(&self) -> &str {
        self.inner.worker_id()
    }

    /// The capacity announced to the orchestrator.
    #[getter]
    fn capacity(&self) -> u32 {
        self.inner.capacity()
    }

    /// `"connecting"`, `"connected"`, `"draining"` or `"stopped"`.
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state().as_str()
    }

    /// Steps pulled and not completed yet.
    #[getter]
    fn in_hand(&self) -> usize {
        self.inner.in_hand()
    }

    /// Why the runtime stopped by itself, if it did: a `WorkerRefused`
    /// (the orchestrator refused the connection in the handshake), which
    /// `next_steps` raises too; `None` otherwise.
    #[getter]
    fn failure(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.inner
            .failure()
            .map(|e| errors::worker(e).into_value(py).into_any())
    }

    /// Waits (GIL released) for up to `max` steps.
    ///
    /// Returns a list of `Step` as soon as one is there; an empty list when
    /// `timeout` seconds pass; `None` once the runtime is stopping and holds
    /// no more undelivered steps; raises `WorkerRefused` once the
    /// orchestrator has refused the connection. Python signals end the wait.
    #[pyo3(signature = (max, timeout=None))]
    fn next_steps<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let timeout = policy::wait_timeout(timeout).map_err(errors::policy_value)?;
        let inner = &self.inner;
        match py.detach(|| inner.next_steps(max, timeout)) {
            Ok(steps) => {
                let steps = steps
                    .into_iter()
                    .map(|s| Bound::new(py, Step::new(py, s)))
                    .collect::<PyResult<Vec<_>>>()?;
                Ok(Some(PyList::new(py, steps)?))
            }
            Err(tasker_worker::WorkerError::Stopped) => Ok(None),
            Err(e) => Err(errors::worker(e)),
        }
    }

    /// Hands back results: a list of `(step, output, elapsed_seconds)`.
    ///
    /// Each output is converted to JSON here; one that cannot be (a set, an
    /// arbitrary object, NaN, a str with a lone surrogate, nesting deeper
    /// than the orchestrator's `max_json_depth`, ...) fails its step with
    /// `SerializationError` and the others go through. Never blocks.
    fn complete_many(&self, results: &Bound<'_, PyList>) -> PyResult<()> {
        let max_depth = self.inner.max_json_depth();
        let mut out = Vec::with_capacity(results.len());
        for item in results.iter() {
            let item = item.cast_into::<PyTuple>().map_err(|_| {
                PyTypeError::new_err("complete_many expects (step, output, elapsed) tuples")
            })?;
            if item.len() != 3 {
                return Err(PyTypeError::new_err(
                    "complete_many expects (step, output, elapsed) tuples",
                ));
            }
            let step_obj = item.get_item(0)?;
            let step = step_obj.cast::<Step>().map_err(|_| {
                PyTypeError::new_err("complete_many: the first item must be a Step")
            })?;
            let step = step.get();
            let elapsed: f64 = item.get_item(2)?.extract()?;
            let result = match convert::from_py(&item.get_item(1)?, max_depth) {
                Ok(output) => StepExecutionResult::completed(
                    step.step_ref,
                    output,
                    self.inner.worker_id(),
                    elapsed_ms(elapsed),
                ),
                Err(e) => self.failed_result(
                    step,
                    error_types::SERIALIZATION_ERROR.into(),
                    format!(
                        "the output of handler {:?} is not JSON-serialisable: {e}",
                        step.handler_class.bind(results.py()).to_cow()?
                    ),
                    false,
                    Vec::new(),
                    elapsed,
                ),
            };
            out.push(result);
        }
        self.inner.complete_many(out);
        Ok(())
    }

    /// Fails one step with the given error; never blocks. Texts that are not
    /// valid Unicode (a lone surrogate, as in a path decoded with
    /// `surrogateescape`) are sent with U+FFFD in its place: they only
    /// describe the failure.
    #[pyo3(signature = (step, error_type, message, retryable, backtrace=Vec::new(), elapsed=0.0))]
    fn fail(
        &self,
        step: &Bound<'_, Step>,
        error_type: &Bound<'_, PyString>,
        message: &Bound<'_, PyString>,
        retryable: bool,
        backtrace: Vec<Bound<'_, PyString>>,
        elapsed: f64,
    ) {
        let result = self.failed_result(
            step.get(),
            well_formed(error_type),
            well_formed(message),
            retryable,
            backtrace.iter().map(well_formed).collect(),
            elapsed,
        );
        self.inner.complete(result);
    }

    /// Begins a graceful stop and returns at once: unpulled steps go back to
    /// the orchestrator, `next_steps` returns `None` once empty, and the
    /// connection says goodbye when every pulled step is completed (or after
    /// `shutdown_timeout_ms`). Idempotent; safe from any thread.
    fn stop(&self) {
        self.inner.stop();
    }

    /// Waits (GIL released) up to `timeout` seconds (`None`: no limit) for
    /// the runtime to finish after `stop()`; True if it did. `wake()` ends
    /// the wait early (returning False).
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = policy::wait_timeout(timeout)
            .map_err(errors::policy_value)?
            .unwrap_or(policy::FOREVER);
        let inner = &self.inner;
        Ok(py.detach(|| inner.join(timeout)))
    }

    fn __repr__(&self) -> String {
        format!(
            "WorkerRuntime(worker_id={:?}, state={:?}, capacity={})",
            self.inner.worker_id(),
            self.state(),
            self.inner.capacity()
        )
    }
}

/// Adds the `WorkerRuntime` and `Step` classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Step>()?;
    m.add_class::<PyWorkerRuntime>()?;
    Ok(())
}
