//! What a task run produced: its end state and, per step, what happened.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
pub use tasker_protocol::api::StepOutcome;
use tasker_protocol::StepExecutionError;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Every step completed.
    Complete,
    /// A step failed for good; its dependents were blocked.
    Failed,
    /// The task was cancelled before it finished.
    Cancelled,
}

/// One step's part in a task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepReport {
    /// The step's name in the template.
    pub name: String,
    /// Its handler.
    pub handler: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Attempts made (0 when never dispatched).
    pub attempts: u32,
    /// From first dispatch to final result, retries and waits included, in ms.
    pub duration_ms: u64,
    /// The worker that produced the final result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The output, when completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The last attempt's error, when the step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepExecutionError>,
    /// For a blocked step, the failed step that blocked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
}

/// The result of running one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskReport {
    /// The task's id (the `task_id` of every step it dispatched).
    pub task_id: i64,
    /// The template's name.
    pub workflow: String,
    /// How the task ended.
    pub status: TaskStatus,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it ran, in ms.
    pub duration_ms: u64,
    /// Each step, in template order.
    pub steps: Vec<StepReport>,
}

impl TaskReport {
    /// The report of the step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Retries made across all steps.
    pub fn retries(&self) -> u32 {
        self.steps
            .iter()
            .map(|s| s.attempts.saturating_sub(1))
            .sum()
    }
}
