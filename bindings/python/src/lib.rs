//! `tasker_core._native`: the thin native layer of the Python worker SDK.
//!
//! The ZeroMQ loop, heartbeats, credit, reconnects and JSON all stay in
//! [`tasker_worker::WorkerRuntime`]; this module only exposes it to Python:
//! a [`PyWorkerRuntime`] to pull steps and hand back results, a [`Step`]
//! view of each request, and the log bridge that carries `tracing` events to
//! Python's `logging`. Every blocking call releases the GIL and returns early
//! when its `wake` companion is called. The idiomatic API (`Worker`,
//! decorators, thread pool, asyncio, signals) is Python code in
//! `python/tasker_core/`.

mod convert;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use serde_json::Value;
use tasker_config::TaskerConfig;
use tasker_protocol::{
    error_types, StepExecutionError, StepExecutionRequest, StepExecutionResult, StepRef, StepStatus,
};
use tasker_worker::log_bridge::{self, LogBridge, LogLevel};
use tasker_worker::WorkerOptions;

create_exception!(
    _native,
    TaskerError,
    PyException,
    "Base class of every error raised by tasker_core."
);
create_exception!(
    _native,
    ConfigError,
    TaskerError,
    "The configuration (file, environment variable or keyword) is invalid."
);
create_exception!(
    _native,
    WorkerError,
    TaskerError,
    "The worker runtime could not start or was used wrongly."
);

/// Longest single wait; "no timeout" waits this long, which is forever in
/// practice and keeps the deadline arithmetic far from overflow.
const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

fn duration(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err(format!(
            "timeout must be a non-negative number of seconds, got {t}"
        ))),
        Some(t) => Ok(Some(
            Duration::try_from_secs_f64(t)
                .unwrap_or(FOREVER)
                .min(FOREVER),
        )),
    }
}

fn config_error(e: impl std::fmt::Display) -> PyErr {
    ConfigError::new_err(e.to_string())
}

/// Turns a keyword value into the text a `TASKER_<KEY>` variable would hold.
fn override_text(key: &str, value: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(b) = value.extract::<bool>() {
        return Ok(if b { "true" } else { "false" }.into());
    }
    if let Ok(s) = value.cast::<PyString>() {
        return Ok(s.to_cow()?.into_owned());
    }
    if let Ok(i) = value.extract::<i64>() {
        return Ok(i.to_string());
    }
    Err(ConfigError::new_err(format!(
        "config key {key}: expected a string, an integer or a bool, got {}",
        value.get_type().name()?
    )))
}

/// Loads a configuration and returns it as a dict of every key.
///
/// With `path`, the file's section for `environment` (default: `TASKER_ENV`,
/// else `development`); without, the built-in defaults. `TASKER_<KEY>`
/// environment variables apply in both cases, then `overrides` (config keys
/// such as `endpoint` or `worker_capacity`). Raises `ConfigError` naming the
/// bad key or value.
#[pyfunction]
#[pyo3(signature = (path=None, environment=None, overrides=None))]
fn load_config<'py>(
    py: Python<'py>,
    path: Option<std::path::PathBuf>,
    environment: Option<String>,
    overrides: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut config =
        TaskerConfig::load_from(path.as_deref(), environment.as_deref()).map_err(config_error)?;
    if let Some(overrides) = overrides {
        let mut vars = Vec::new();
        for (key, value) in overrides.iter() {
            let key: String = key
                .extract()
                .map_err(|_| ConfigError::new_err("config keys must be strings"))?;
            if !tasker_config::KEYS.contains(&key.as_str()) {
                return Err(ConfigError::new_err(format!(
                    "unknown config key {key:?}; expected one of: {}",
                    tasker_config::KEYS.join(", ")
                )));
            }
            if value.is_none() {
                continue;
            }
            let text = override_text(&key, &value)?;
            vars.push((format!("TASKER_{}", key.to_ascii_uppercase()), text));
        }
        config.apply_overrides(vars).map_err(|e| {
            // The error names the variable we made up; name the keyword.
            ConfigError::new_err(e.to_string().replace("TASKER_", "keyword TASKER_"))
        })?;
        config.validate().map_err(config_error)?;
    }
    let value = serde_json::to_value(&config).map_err(config_error)?;
    convert::to_py(py, &value)
}

fn config_from_dict(config: &Bound<'_, PyDict>) -> PyResult<TaskerConfig> {
    let value = convert::from_py(config.as_any(), convert::MAX_DEPTH)
        .map_err(|e| ConfigError::new_err(format!("config is not plain data: {e}")))?;
    let config: TaskerConfig = serde_json::from_value(value).map_err(config_error)?;
    config.validate().map_err(config_error)?;
    Ok(config)
}

/// One step to run: the fields of a `StepExecutionRequest` as attributes.
///
/// `task_context`, `handler_config` and `previous_results` are plain
/// dicts/lists built on first access (a handler that does not read them
/// costs nothing) and the same object on every access after that.
#[pyclass(frozen, module = "tasker_core._native")]
pub struct Step {
    step_ref: StepRef,
    task_id: i64,
    step_name: String,
    handler_class: Py<PyString>,
    retry_limit: u32,
    timeout_ms: u64,
    created_at: chrono::DateTime<chrono::Utc>,
    raw_task_context: Value,
    raw_handler_config: Value,
    raw_previous_results: BTreeMap<String, Value>,
    task_context: PyOnceLock<Py<PyAny>>,
    handler_config: PyOnceLock<Py<PyAny>>,
    previous_results: PyOnceLock<Py<PyAny>>,
    created_at_py: PyOnceLock<Py<PyAny>>,
}

impl Step {
    fn new(py: Python<'_>, request: StepExecutionRequest) -> Self {
        Self {
            step_ref: request.step_ref(),
            task_id: request.task_id,
            step_name: request.step_name,
            // Interned: every step of a handler shares one string, and its
            // hash is computed once for the handler lookup.
            handler_class: PyString::intern(py, &request.handler_class).unbind(),
            retry_limit: request.metadata.retry_limit,
            timeout_ms: request.metadata.timeout_ms,
            created_at: request.metadata.created_at,
            raw_task_context: request.task_context,
            raw_handler_config: request.handler_config,
            raw_previous_results: request.previous_results,
            task_context: PyOnceLock::new(),
            handler_config: PyOnceLock::new(),
            previous_results: PyOnceLock::new(),
            created_at_py: PyOnceLock::new(),
        }
    }

    fn cached<'py>(
        py: Python<'py>,
        cell: &PyOnceLock<Py<PyAny>>,
        make: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        cell.get_or_try_init(py, || make().map(Bound::unbind))
            .map(|v| v.bind(py).clone())
    }
}

#[pymethods]
impl Step {
    /// The step's id (with `attempt`, the identity of this attempt).
    #[getter]
    fn step_id(&self) -> i64 {
        self.step_ref.step_id
    }

    /// The workflow instance the step belongs to.
    #[getter]
    fn task_id(&self) -> i64 {
        self.task_id
    }

    /// The step's name within its workflow.
    #[getter]
    fn step_name(&self) -> &str {
        &self.step_name
    }

    /// The handler name the step is routed to.
    #[getter]
    fn handler_class(&self, py: Python<'_>) -> Py<PyString> {
        self.handler_class.clone_ref(py)
    }

    /// The task's input (plain JSON data; `{}` when none was given).
    #[getter]
    fn task_context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Self::cached(py, &self.task_context, || {
            convert::to_py(py, &self.raw_task_context)
        })
    }

    /// The handler's configuration for this step (plain JSON data).
    #[getter]
    fn handler_config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Self::cached(py, &self.handler_config, || {
            convert::to_py(py, &self.raw_handler_config)
        })
    }

    /// Outputs of the steps this one depends on, by step name.
    #[getter]
    fn previous_results<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Self::cached(py, &self.previous_results, || {
            let dict = PyDict::new(py);
            for (name, value) in &self.raw_previous_results {
                dict.set_item(name, convert::to_py(py, value)?)?;
            }
            Ok(dict.into_any())
        })
    }

    /// Which attempt this is, from 1.
    #[getter]
    fn attempt(&self) -> u32 {
        self.step_ref.attempt
    }

    /// Retries the workflow allows for this step.
    #[getter]
    fn retry_limit(&self) -> u32 {
        self.retry_limit
    }

    /// The step's timeout in milliseconds, as enforced by the orchestrator.
    #[getter]
    fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// The step's timeout in seconds.
    #[getter]
    fn timeout(&self) -> f64 {
        self.timeout_ms as f64 / 1000.0
    }

    /// When the attempt was created (an aware `datetime` in UTC).
    #[getter]
    fn created_at<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        Self::cached(py, &self.created_at_py, || {
            let text = self
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
            py.import("datetime")?
                .getattr("datetime")?
                .call_method1("fromisoformat", (text,))
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Step(step_id={}, attempt={}, handler_class={:?}, step_name={:?}, task_id={})",
            self.step_ref.step_id,
            self.step_ref.attempt,
            self.handler_class.bind(py).to_string(),
            self.step_name,
            self.task_id
        )
    }
}

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
    inner: Arc<tasker_worker::WorkerRuntime>,
}

impl PyWorkerRuntime {
    fn failure(
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
    /// announced.
    #[new]
    #[pyo3(signature = (config, handlers, worker_id=None))]
    fn new(
        config: &Bound<'_, PyDict>,
        handlers: Vec<String>,
        worker_id: Option<String>,
    ) -> PyResult<Self> {
        let config = config_from_dict(config)?;
        let mut options = WorkerOptions::new(config, handlers);
        options.worker_id = worker_id;
        options.language = "python".into();
        let inner = tasker_worker::WorkerRuntime::start(options).map_err(|e| match e {
            tasker_worker::WorkerError::InvalidOptions(_) => ConfigError::new_err(e.to_string()),
            _ => WorkerError::new_err(e.to_string()),
        })?;
        Ok(Self {
            inner: Arc::new(inner),
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

    /// Waits (GIL released) for up to `max` steps.
    ///
    /// Returns a list of `Step` as soon as one is there; an empty list when
    /// `timeout` seconds pass; `None` once the runtime is stopping and holds
    /// no more undelivered steps. Python signals end the wait.
    #[pyo3(signature = (max, timeout=None))]
    fn next_steps<'py>(
        &self,
        py: Python<'py>,
        max: usize,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let timeout = duration(timeout)?;
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
            Err(e) => Err(WorkerError::new_err(e.to_string())),
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
                Err(e) => self.failure(
                    step,
                    error_types::SERIALIZATION_ERROR.into(),
                    format!("handler output is not JSON-serialisable: {e}"),
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
        let result = self.failure(
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
        let timeout = duration(timeout)?.unwrap_or(FOREVER);
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

fn parse_level(level: &str) -> PyResult<LogLevel> {
    level
        .parse::<LogLevel>()
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

fn bridge() -> PyResult<&'static LogBridge> {
    log_bridge::installed().ok_or_else(|| WorkerError::new_err("the log bridge is not installed"))
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
    let timeout = duration(timeout)?;
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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("TaskerError", py.get_type::<TaskerError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("WorkerError", py.get_type::<WorkerError>())?;
    m.add("UNKNOWN_HANDLER", error_types::UNKNOWN_HANDLER)?;
    m.add_class::<Step>()?;
    m.add_class::<PyWorkerRuntime>()?;
    m.add_function(wrap_pyfunction!(load_config, m)?)?;
    m.add_function(wrap_pyfunction!(install_log_bridge, m)?)?;
    m.add_function(wrap_pyfunction!(set_log_level, m)?)?;
    m.add_function(wrap_pyfunction!(next_log_records, m)?)?;
    m.add_function(wrap_pyfunction!(wake_logs, m)?)?;
    Ok(())
}
