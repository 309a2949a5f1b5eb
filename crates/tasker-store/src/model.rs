//! What the store gives back: tasks and steps as the API shows them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tasker_engine::{StoredTask, TaskState, TaskTemplate};
pub use tasker_protocol::api::{StepDetail, TaskDetail, TaskPage, TaskSummary};

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
    /// The step's attempt after the transition (0 for task entries); for a
    /// take-back (`running` → `waiting`: a stop withdrew the attempt before
    /// any worker had it, and the next start sends it again under the same
    /// number), the attempt taken back.
    pub attempt: u32,
    /// The worker whose result caused it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    /// Why the attempt failed, on the entry that ended it failing
    /// (`running` → `retry_wait` or `failed`): the step itself keeps only
    /// its latest attempt's error. The message is cut to 1,000 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<tasker_protocol::StepExecutionError>,
    /// When it happened.
    pub at: DateTime<Utc>,
}
