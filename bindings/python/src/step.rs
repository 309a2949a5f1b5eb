//! The step view: one `StepExecutionRequest` as a read-only Python object
//! whose JSON fields become Python objects only when first read.

use std::collections::BTreeMap;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;
use tasker_protocol::{StepExecutionRequest, StepRef};

use crate::convert;

/// One step to run: the fields of a `StepExecutionRequest` as attributes.
///
/// `task_context`, `handler_config` and `previous_results` are plain
/// dicts/lists built on first access (a handler that does not read them
/// costs nothing) and the same object on every access after that.
#[pyclass(frozen, module = "tasker_core._native")]
pub struct Step {
    /// The attempt's identity, which its result carries.
    pub(crate) step_ref: StepRef,
    task_id: i64,
    step_name: String,
    pub(crate) handler_class: Py<PyString>,
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
    pub(crate) fn new(py: Python<'_>, request: StepExecutionRequest) -> Self {
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
