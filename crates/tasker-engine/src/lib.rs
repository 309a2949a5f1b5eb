//! Workflows for tasker-core: which steps run, in what order, and what
//! happens when one fails.
//!
//! The executor ([`tasker_orchestrator`]) moves steps to workers and results
//! back; this crate decides what to move. A [`TaskTemplate`] (YAML, see
//! `examples/workflows/`) names steps, their handlers and `depends_on`
//! edges, timeouts and [`RetryPolicy`]s. A [`WorkflowEngine`] runs one task
//! of a template at a time per call, through any [`FrameworkIntegration`]:
//!
//! - every step whose dependencies completed is dispatched, the ready ones
//!   together in one batch;
//! - a step gets its dependencies' outputs in `previous_results`, keyed by
//!   step name;
//! - a retryable failure (including a timeout or a lost worker) is retried
//!   after the policy's backoff until its attempts are spent; a permanent
//!   failure, or spent attempts, fails the step and blocks every step
//!   downstream of it, while independent branches go on;
//! - the task ends complete, failed or cancelled, with a [`TaskReport`].
//!
//! [`FrameworkIntegration`]: tasker_orchestrator::FrameworkIntegration

mod durable;
mod engine;
mod report;
mod retry;
mod template;

pub use durable::{
    Journal, JournalError, StepSnapshot, StepState, StoredStep, StoredTask, TaskState, Transition,
    UnknownState,
};
pub use engine::{Canceller, Durable, RunningTask, TaskEvent, TaskStopped, WorkflowEngine};
pub use report::{StepOutcome, StepReport, TaskReport, TaskStatus};
pub use retry::RetryPolicy;
pub use template::{StepDefaults, StepTemplate, TaskTemplate, TemplateError, TemplateErrorKind};

/// Where the template format's schema is committed, relative to the
/// repository root; `tasker schema` writes it and a test checks it.
pub const TEMPLATE_SCHEMA_PATH: &str = "examples/workflows/workflow.schema.json";

/// The JSON Schema of the task template format, for editors and validators.
pub fn template_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(TaskTemplate);
    schema.insert(
        "$id".into(),
        "https://tasker-core.dev/workflow/1/workflow.schema.json".into(),
    );
    // Top-level `x-` keys hold YAML anchors and are not read.
    schema.insert(
        "patternProperties".into(),
        serde_json::json!({ "^x-": { "description": "Not read: a place for YAML anchors." } }),
    );
    schema.to_value()
}

/// [`template_schema`] as it is committed: pretty JSON, final newline.
pub fn render_template_schema() -> String {
    let mut text = serde_json::to_string_pretty(&template_schema()).expect("schemas serialise");
    text.push('\n');
    text
}
