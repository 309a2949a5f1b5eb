//! The API's own request and response types (the task and step types are
//! [`tasker_store`]'s, the workflow and worker types the service's). Each
//! is in the OpenAPI document under its Rust name.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tasker_engine::TaskState;

use crate::{WorkerView, WorkflowInfo};

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
    /// another workflow or context it is a 409.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
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

/// `GET /v1/workflows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowList {
    /// Every workflow loaded, by name.
    pub workflows: Vec<WorkflowInfo>,
}

/// `GET /v1/workers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerList {
    /// Every worker connected now.
    pub workers: Vec<WorkerView>,
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
}
