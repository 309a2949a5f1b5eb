//! The service: workflows, the store, the engine and the executor, and the
//! operations the API offers on them.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tasker_store::{StoreError, TaskDetail, TaskFilter, TaskPage};

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

/// A connected worker, as `GET /v1/workers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkerView {
    /// The id the worker announced.
    pub worker_id: String,
    /// The language it announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The handlers it serves.
    pub handlers: Vec<String>,
    /// Steps it may hold at once.
    pub capacity: u32,
    /// Steps it holds now.
    pub in_flight: u64,
    /// Whether it asked for no more work.
    pub draining: bool,
    /// Its process id, if announced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the orchestrator last heard from it.
    pub last_heartbeat_at: DateTime<Utc>,
}

/// What `GET /readyz` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Readiness {
    /// Whether the service takes tasks now.
    pub ready: bool,
    /// Whether the store answers.
    pub store: bool,
    /// Workers connected.
    pub workers: u64,
    /// Whether the service is shutting down.
    pub shutting_down: bool,
}

/// Why an operation failed; the API maps each to a status and a
/// problem document.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No workflow of that name is loaded.
    #[error("unknown workflow {name:?}{}", closest.as_ref().map(|c| format!("; did you mean {c:?}?")).unwrap_or_default())]
    UnknownWorkflow {
        /// The name asked for.
        name: String,
        /// The loaded workflow closest to it, if close.
        closest: Option<String>,
        /// Every loaded workflow.
        known: Vec<String>,
    },
    /// No task has that id.
    #[error("no task {0}")]
    TaskNotFound(i64),
    /// The idempotency key was used with another request.
    #[error("idempotency key {key:?} was used for task {task_id} with a different workflow or context")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The task created with it.
        task_id: i64,
    },
    /// The task ended already.
    #[error("task {task_id} has already ended ({status})")]
    TaskEnded {
        /// The task.
        task_id: i64,
        /// How it ended.
        status: tasker_engine::TaskState,
    },
    /// The service is stopping and takes no new tasks.
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The running service.
pub struct Service {
    _private: (),
}

impl Service {
    /// Creates a task of `workflow`, or returns the one `idempotency_key`
    /// created before; the flag says whether it is new.
    pub async fn create_task(
        &self,
        workflow: &str,
        context: Value,
        idempotency_key: Option<String>,
    ) -> Result<(TaskDetail, bool), ServiceError> {
        let _ = (workflow, context, idempotency_key);
        todo!()
    }

    /// A task with its steps.
    pub async fn get_task(&self, task_id: i64) -> Result<TaskDetail, ServiceError> {
        let _ = task_id;
        todo!()
    }

    /// Tasks, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<TaskPage, ServiceError> {
        let _ = filter;
        todo!()
    }

    /// Stops a task's dispatching; running steps finish and are recorded.
    pub async fn cancel_task(&self, task_id: i64) -> Result<TaskDetail, ServiceError> {
        let _ = task_id;
        todo!()
    }

    /// The workflows loaded, by name.
    pub fn workflows(&self) -> Vec<WorkflowInfo> {
        todo!()
    }

    /// The workers connected now.
    pub async fn workers(&self) -> Vec<WorkerView> {
        todo!()
    }

    /// Whether the service takes tasks.
    pub async fn readiness(&self) -> Readiness {
        todo!()
    }
}
