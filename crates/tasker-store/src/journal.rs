//! The engine's [`Journal`] on a store: each `commit` call is one request
//! to the writer, grouped with everyone else's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tasker_engine::{Journal, JournalError, StepState, TaskState, Transition};

use crate::rows::{to_ms, JournalLine, StepUpdate, TaskEnd};
use crate::writer::{
    Change, Check, Outcome, PreparedCommit, PreparedTransition, Request, WriteError,
};
use crate::Store;

/// Commits transitions of the tasks `owner` holds.
pub(crate) struct StoreJournal {
    pub store: Store,
    pub owner: Arc<str>,
}

impl Journal for StoreJournal {
    fn commit(
        &self,
        transitions: Vec<Transition>,
    ) -> Pin<Box<dyn Future<Output = Result<(), JournalError>> + Send + '_>> {
        Box::pin(async move {
            if transitions.is_empty() {
                return Ok(());
            }
            // Serialised here, on the caller's task: the writer only joins rows.
            let commit = prepare(&self.owner, transitions)?;
            match self.store.submit(Request::Commit(commit)).await {
                Ok(Outcome::Committed) => Ok(()),
                Ok(Outcome::Conflict { step_id }) => Err(JournalError::Conflict { step_id }),
                Ok(_) => Err(JournalError::Invalid(
                    "the store's writer answered a commit with something else".into(),
                )),
                // Fenced: for this server the store is closed for good.
                Err(WriteError::Closed | WriteError::Fenced(_)) => Err(JournalError::Closed),
                Err(e @ (WriteError::Failed(_) | WriteError::Guessed)) => {
                    Err(JournalError::Store(e.to_string()))
                }
            }
        })
    }
}

fn serialise_error(e: serde_json::Error) -> JournalError {
    JournalError::Invalid(format!("serialising a transition: {e}"))
}

/// Turns transitions into the checks and rows the writer needs.
pub(crate) fn prepare(
    owner: &Arc<str>,
    transitions: Vec<Transition>,
) -> Result<PreparedCommit, JournalError> {
    let mut prepared = Vec::with_capacity(transitions.len());
    for transition in transitions {
        prepared.push(match transition {
            Transition::Step {
                task_id,
                step_id,
                from_state,
                from_attempt,
                to,
                at,
            } => {
                // A result names its worker; a dispatch names its executor.
                let result_of_attempt =
                    from_state == StepState::Running && to.state != StepState::Running;
                let detail = match (&to.dispatched_by, to.state) {
                    (Some(by), StepState::Running) => {
                        Some(serde_json::json!({ "dispatched_by": by }).to_string())
                    }
                    _ => None,
                };
                let journal = JournalLine {
                    task_id,
                    step_id: Some(step_id),
                    from_state: from_state.as_str(),
                    to_state: to.state.as_str(),
                    attempt: i64::from(to.attempt),
                    worker_id: to.worker_id.clone().filter(|_| result_of_attempt),
                    at: to_ms(at),
                    detail,
                };
                let check = Check::Step {
                    task_id,
                    step_id,
                    from: from_state,
                    from_attempt,
                    to: to.state,
                    to_attempt: to.attempt,
                };
                PreparedTransition {
                    check,
                    change: Change::Step(StepUpdate::new(step_id, *to).map_err(serialise_error)?),
                    journal,
                }
            }
            Transition::Task { task_id, to, at } => {
                if to == TaskState::Running {
                    return Err(JournalError::Invalid(format!(
                        "task {task_id} cannot move back to running"
                    )));
                }
                PreparedTransition {
                    check: Check::Task { task_id },
                    change: Change::Task(TaskEnd {
                        id: task_id,
                        status: to.as_str(),
                        finished_at: to_ms(at),
                    }),
                    journal: JournalLine {
                        task_id,
                        step_id: None,
                        from_state: TaskState::Running.as_str(),
                        to_state: to.as_str(),
                        attempt: 0,
                        worker_id: None,
                        at: to_ms(at),
                        detail: None,
                    },
                }
            }
        });
    }
    Ok(PreparedCommit {
        owner: Arc::clone(owner),
        transitions: prepared,
    })
}
