//! What the store gives back: tasks and steps as the API shows them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tasker_engine::{StepOutcome, StepState, StoredTask, TaskState, TaskTemplate};
use tasker_protocol::StepExecutionError;

/// A task to create.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// The workflow's name.
    pub workflow: String,
    /// The template as it is now; kept with the task.
    pub template: TaskTemplate,
    /// The task's context.
    pub context: Value,
    /// A client's key: the same key with the same request returns the
    /// same task.
    pub idempotency_key: Option<String>,
    /// A digest of the request (workflow and context), to tell a repeated
    /// request from a different one under the same key.
    pub request_hash: String,
    /// The orchestrator that will run it.
    pub owner: String,
    /// How long `owner` holds it without renewing.
    pub lease: std::time::Duration,
}

/// What [`Store::create_task`](crate::Store::create_task) did.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new task, with its step ids.
    New(StoredTask),
    /// The task this idempotency key created before.
    Existing {
        /// Its id.
        task_id: i64,
    },
}

/// What [`Store::request_cancel`](crate::Store::request_cancel) found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// No such task.
    NotFound,
    /// The task had ended already, in this state.
    Ended(TaskState),
    /// Recorded (or had been already).
    Requested,
}

/// A task and its steps: the report `tasker run --json` prints, with the
/// task's id and state while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskDetail {
    /// The task's id.
    pub task_id: i64,
    /// The workflow's name.
    pub workflow: String,
    /// Where the task is.
    pub status: TaskState,
    /// Whether a cancel was requested (the task stops dispatching).
    pub cancel_requested: bool,
    /// The key it was created with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// The task's context.
    pub context: Value,
    /// When it was created (and started).
    pub started_at: DateTime<Utc>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// From creation to end (or to now), in ms.
    pub duration_ms: u64,
    /// Each step, in template order.
    pub steps: Vec<StepDetail>,
}

/// One step of a [`TaskDetail`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepDetail {
    /// The step's id (the `step_id` its workers see).
    pub step_id: i64,
    /// Its name in the template.
    pub name: String,
    /// Its handler.
    pub handler: String,
    /// Where it is.
    pub state: StepState,
    /// How it ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<StepOutcome>,
    /// Attempts dispatched.
    pub attempts: u32,
    /// From first dispatch to end, in ms (0 until both happened).
    pub duration_ms: u64,
    /// The worker of the latest result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The latest failed attempt's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepExecutionError>,
    /// For a blocked step, the failed step upstream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_by: Option<String>,
    /// While waiting out a retry backoff: when the next attempt is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<DateTime<Utc>>,
}

/// A task in a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskSummary {
    /// The task's id.
    pub task_id: i64,
    /// The workflow's name.
    pub workflow: String,
    /// Where the task is.
    pub status: TaskState,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// The key it was created with, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// When it was created.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// Steps in all.
    pub steps_total: u32,
    /// Steps completed.
    pub steps_completed: u32,
}

/// Which tasks to list.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFilter {
    /// Only tasks in this state.
    pub status: Option<TaskState>,
    /// Only tasks of this workflow.
    pub workflow: Option<String>,
    /// Only tasks created at or after this.
    pub created_since: Option<DateTime<Utc>>,
    /// Only tasks with an id below this (the previous page's cursor).
    pub before_id: Option<i64>,
    /// Most tasks returned (1 to 1000).
    pub limit: u32,
}

impl Default for TaskFilter {
    fn default() -> Self {
        Self {
            status: None,
            workflow: None,
            created_since: None,
            before_id: None,
            limit: 50,
        }
    }
}

/// One page of tasks, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One line of a task's journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JournalEntry {
    /// Order of commit, across the store.
    pub seq: i64,
    /// The task.
    pub task_id: i64,
    /// The step; absent for the task's own transitions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_id: Option<i64>,
    /// The state before (`created` for a task's first entry).
    pub from_state: String,
    /// The state after.
    pub to_state: String,
    /// The step's attempt after the transition (0 for task entries).
    pub attempt: u32,
    /// The worker whose result caused it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// When it happened.
    pub at: DateTime<Utc>,
}
