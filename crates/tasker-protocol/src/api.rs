//! The HTTP API's task and workflow types (`tasker serve`, issue 9):
//! what the server answers and every client reads. They live here, beside
//! the ZeroMQ messages, so the server, the store and the clients share one
//! definition and one JSON Schema (`protocol/openapi.json`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::StepExecutionError;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// Its handler returned an output.
    Completed,
    /// Its last attempt failed and no retry was left or allowed.
    Failed,
    /// Not run: a step it depends on failed.
    Blocked,
    /// Not run (or not retried) because the task was cancelled.
    Cancelled,
}

/// Where a step of a durable task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not dispatched yet (dependencies unmet, or not picked yet).
    Waiting,
    /// Attempt `attempt` was handed to the executor (and may be at a worker).
    Running,
    /// Attempt `attempt` failed; the next one runs at `next_run_at`.
    RetryWait,
    /// Ended: its handler returned an output.
    Completed,
    /// Ended: its last attempt failed for good.
    Failed,
    /// Ended: a step it depends on failed.
    Blocked,
    /// Ended: the task was cancelled first.
    Cancelled,
}

impl StepState {
    /// Every state, for checks and schemas.
    pub const ALL: [StepState; 7] = [
        StepState::Waiting,
        StepState::Running,
        StepState::RetryWait,
        StepState::Completed,
        StepState::Failed,
        StepState::Blocked,
        StepState::Cancelled,
    ];

    /// The state's name as stored (`retry_wait`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Waiting => "waiting",
            StepState::Running => "running",
            StepState::RetryWait => "retry_wait",
            StepState::Completed => "completed",
            StepState::Failed => "failed",
            StepState::Blocked => "blocked",
            StepState::Cancelled => "cancelled",
        }
    }

    /// How a step in this state ended; `None` while it has not.
    pub fn outcome(self) -> Option<StepOutcome> {
        match self {
            StepState::Completed => Some(StepOutcome::Completed),
            StepState::Failed => Some(StepOutcome::Failed),
            StepState::Blocked => Some(StepOutcome::Blocked),
            StepState::Cancelled => Some(StepOutcome::Cancelled),
            StepState::Waiting | StepState::Running | StepState::RetryWait => None,
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`StepState::ALL`] or [`TaskState::ALL`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for StepState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// Where a durable task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Steps are running or will.
    Running,
    /// Every step completed.
    Complete,
    /// A step failed for good.
    Failed,
    /// Cancelled before it finished.
    Cancelled,
}

impl TaskState {
    /// Every state.
    pub const ALL: [TaskState; 4] = [
        TaskState::Running,
        TaskState::Complete,
        TaskState::Failed,
        TaskState::Cancelled,
    ];

    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
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
    /// The steps it waits for, by name (its edges in the task's DAG).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Where it is.
    pub state: StepState,
    /// How it ended, once it has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<StepOutcome>,
    /// Attempts dispatched.
    pub attempts: u32,
    /// From first dispatch to end, in ms (0 until both happened).
    pub duration_ms: u64,
    /// For a running step, the worker it is out at now (absent while it
    /// waits for one); for any other, the worker of its latest result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// The output, once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// The latest attempt's error while the step is failing (retrying or
    /// failed); cleared when an attempt completes.
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

/// One page of tasks, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskPage {
    /// The tasks.
    pub tasks: Vec<TaskSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A workflow the service can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowInfo {
    /// Its name (what `POST /v1/tasks` takes as `workflow`).
    pub name: String,
    /// What it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Its steps, in template order.
    pub steps: Vec<WorkflowStepInfo>,
}

/// One step of a [`WorkflowInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowStepInfo {
    /// The step's name.
    pub name: String,
    /// Its handler.
    pub handler: String,
    /// The steps it waits for.
    pub depends_on: Vec<String>,
}

/// `POST /v1/tasks`: start a task of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskRequest {
    /// The workflow's name (one of `GET /v1/workflows`).
    pub workflow: String,
    /// The task's context: handlers see it as `task_context`. A JSON object.
    #[serde(default)]
    pub context: Map<String, Value>,
    /// A key of the client's choosing: the same key with the same workflow
    /// and context returns the task it created (200 instead of 201); with
    /// another workflow or context it is a 409. 1 to 255 characters, none
    /// of them a control character.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), pattern(r"^[^\x00-\x1f\x7f-\x9f]+$"))]
    pub idempotency_key: Option<String>,
}

/// Longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

/// `GET /v1/tasks`: which tasks to list. Every parameter is optional.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ListTasksQuery {
    /// Only tasks in this state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskState>,
    /// Only tasks of this workflow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// Only tasks created at or after this time (RFC 3339, e.g.
    /// `2026-05-01T00:00:00Z`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_since: Option<DateTime<Utc>>,
    /// Most tasks in the page (default 50).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Default of [`ListTasksQuery::limit`].
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// Largest [`ListTasksQuery::limit`].
pub const MAX_LIST_LIMIT: u32 = 1000;
