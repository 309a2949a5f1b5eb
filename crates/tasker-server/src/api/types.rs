//! The API's own request and response types (the task and step types are
//! [`tasker_store`]'s, the workflow and worker types the service's). Each
//! is in the OpenAPI document under its Rust name.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tasker_engine::TaskState;

use crate::{Readiness, WorkerView, WorkflowInfo};

pub use tasker_protocol::api::{
    CreateTaskRequest, ListTasksQuery, DEFAULT_LIST_LIMIT, MAX_IDEMPOTENCY_KEY_CHARS,
    MAX_LIST_LIMIT,
};

/// `GET /v1/workflows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowList {
    /// Every workflow loaded, by name.
    pub workflows: Vec<WorkflowInfo>,
}

/// `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerList {
    /// The workers connected now, by `worker_id`: the first `limit`.
    pub workers: Vec<WorkerView>,
    /// How many workers are connected.
    pub total: usize,
    /// Their capacities, summed.
    pub capacity: u64,
    /// The steps they hold, summed.
    pub in_flight: u64,
}

/// Default of `GET /v1/workers`'s `limit`.
pub const DEFAULT_WORKERS_LIMIT: usize = 100;
/// Largest `limit` of `GET /v1/workers`.
pub const MAX_WORKERS_LIMIT: usize = 1000;

/// `GET /v1/tasks/{id}/journal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Journal {
    /// Every transition of the task and its steps, oldest first. A step's
    /// attempt runs from its `running` entry to the step's next entry.
    pub entries: Vec<tasker_store::JournalEntry>,
}

/// `GET /healthz`: the process serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: HealthStatus,
}

/// The only value of [`Health::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The process answers.
    Ok,
}

/// An error, as RFC 9457 problem details (`application/problem+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    /// What kind of problem: a URI under
    /// `https://tasker-core.dev/problems/`, stable across versions.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    #[schemars(range(min = 400, max = 599))]
    pub status: u16,
    /// What was wrong with this request; names the bad field or parameter.
    pub detail: String,
    /// The request field or parameter at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The task concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<i64>,
    /// The state the task is in, for a task that has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_status: Option<TaskState>,
    /// For an unknown workflow: the workflows loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_workflows: Option<Vec<String>>,
    /// For an unknown workflow: the loaded one closest to the name given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closest: Option<String>,
    /// For `not-ready` (`GET /readyz`): which part is not ready, as
    /// members beside the others (`ready`, `store`, `workers`,
    /// `shutting_down`), so the body reads as a 200's does.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
}
