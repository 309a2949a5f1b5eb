//! What a durable task is made of: the persisted state of each step, the
//! transitions between states, and the [`Journal`] that commits them.
//!
//! The engine itself keeps no files: a [`Journal`] (the `tasker-store`
//! crate is one) receives every transition and must have committed it
//! before the call returns. The engine calls it *before* a step leaves for
//! a worker (write-ahead dispatch) and *before* it acts on a result, so a
//! crash at any point leaves a state the engine can resume from
//! ([`WorkflowEngine::start_durable`](crate::WorkflowEngine::start_durable)).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tasker_orchestrator::BoxFuture;
use tasker_protocol::{StepExecutionError, StepId};

use crate::template::TaskTemplate;
pub use tasker_protocol::api::{StepState, TaskState, UnknownState};

impl From<crate::TaskStatus> for TaskState {
    fn from(status: crate::TaskStatus) -> Self {
        match status {
            crate::TaskStatus::Complete => TaskState::Complete,
            crate::TaskStatus::Failed => TaskState::Failed,
            crate::TaskStatus::Cancelled => TaskState::Cancelled,
        }
    }
}

/// Everything persisted about one step, as it is after a transition.
/// Stores write all of it on every transition, so a reader never sees a
/// state with another state's fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSnapshot {
    /// Where the step is.
    pub state: StepState,
    /// Attempts dispatched so far (0 before the first).
    pub attempt: u32,
    /// For [`StepState::RetryWait`]: when the next attempt is due.
    pub next_run_at: Option<DateTime<Utc>>,
    /// For [`StepState::Running`]: the `orchestrator_id` of the executor
    /// the attempt was handed to; a worker's result for this attempt must
    /// name it.
    pub dispatched_by: Option<String>,
    /// When attempt 1 was dispatched.
    pub first_dispatched_at: Option<DateTime<Utc>>,
    /// When the step ended (completed, failed, blocked, cancelled).
    pub ended_at: Option<DateTime<Utc>>,
    /// The worker that produced the latest result.
    pub worker_id: Option<String>,
    /// The output, once completed.
    pub output: Option<Value>,
    /// The latest attempt's error while the step is failing (retrying or
    /// failed); cleared when an attempt completes.
    pub error: Option<StepExecutionError>,
    /// For a blocked step: the failed step upstream.
    pub blocked_by: Option<String>,
}

impl StepSnapshot {
    /// A step not dispatched yet.
    pub fn waiting() -> Self {
        Self {
            state: StepState::Waiting,
            attempt: 0,
            next_run_at: None,
            dispatched_by: None,
            first_dispatched_at: None,
            ended_at: None,
            worker_id: None,
            output: None,
            error: None,
            blocked_by: None,
        }
    }
}

/// One change of state. A store applies a step transition only if the
/// step is still in `from_state` at `from_attempt` (compare-and-swap), so
/// a stale writer cannot overwrite a newer state; each applied transition
/// is also appended to the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// A step moves from `(from_state, from_attempt)` to `to`.
    Step {
        /// The step's task.
        task_id: i64,
        /// The step.
        step_id: StepId,
        /// The state expected now.
        from_state: StepState,
        /// The attempt expected now.
        from_attempt: u32,
        /// The whole new state.
        to: Box<StepSnapshot>,
        /// When it happened.
        at: DateTime<Utc>,
    },
    /// A task ends (it was created `running`).
    Task {
        /// The task.
        task_id: i64,
        /// Its end state (never `Running`).
        to: TaskState,
        /// When it happened.
        at: DateTime<Utc>,
    },
}

/// Why a [`Journal`] could not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// A compare-and-swap found another state: someone else (a newer
    /// owner of the task) changed the step. The task must stop here.
    #[error(
        "step {step_id} is no longer in the state this engine expected (another writer changed it)"
    )]
    Conflict {
        /// The step.
        step_id: StepId,
    },
    /// The store failed (I/O, a lost connection, a full disk) and, as far
    /// as it can tell, nothing of the commit applied: the same changes may
    /// be committed again, and the engine does so until they go in. Where it
    /// cannot tell (a connection lost during `COMMIT`), a commit that did
    /// apply is then refused as [`JournalError::Conflict`].
    #[error("the store failed: {0}")]
    Store(String),
    /// The store is closed: nothing more will commit.
    #[error("the store is closed")]
    Closed,
    /// These transitions can never commit (a task moving back to running,
    /// a value that does not serialise).
    #[error("the transitions cannot be committed: {0}")]
    Invalid(String),
}

/// Commits transitions durably.
///
/// Implementations group the commits of many callers into one transaction;
/// a call returns once its transitions are committed (or could not be).
/// Either all of one call's transitions apply or none do.
pub trait Journal: Send + Sync {
    /// Commits `transitions`, in order.
    fn commit(&self, transitions: Vec<Transition>) -> BoxFuture<'_, Result<(), JournalError>>;
}

/// A durable task as a store holds it, new or half done: what
/// [`WorkflowEngine::start_durable`](crate::WorkflowEngine::start_durable) runs.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTask {
    /// The task's id.
    pub task_id: i64,
    /// The template as it was when the task was created.
    pub template: TaskTemplate,
    /// The task's context.
    pub context: Value,
    /// When the task was created.
    pub created_at: DateTime<Utc>,
    /// Whether a cancel was requested.
    pub cancel_requested: bool,
    /// One per template step, in template order.
    pub steps: Vec<StoredStep>,
}

/// One step of a [`StoredTask`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredStep {
    /// The step's id (unique in the store, never reused).
    pub step_id: StepId,
    /// Its state.
    pub snapshot: StepSnapshot,
}
