//! The engine's [`Journal`] on a store: each `commit` call is one request
//! to the writer, grouped with everyone else's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tasker_engine::{Journal, JournalError, StepState, TaskState, Transition};
use tasker_protocol::StepExecutionError;

use crate::rows::{to_ms, JournalLine, StepUpdate, TaskEnd};
use crate::writer::{
    Change, Check, Outcome, PreparedCommit, PreparedTransition, Request, WriteError,
};
use crate::{Store, StoreError};

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

/// Characters of a failed attempt's message the journal keeps: the step
/// keeps its latest error whole, and a handler's message may be as large
/// as a result (a journal line is written for every failed attempt).
const MESSAGE_CHARS: usize = 1_000;

/// A journal line's `detail`: who an attempt was dispatched by, or why it
/// failed.
#[derive(Serialize, Deserialize, Default)]
struct Detail {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dispatched_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<StepExecutionError>,
}

/// The error a journal line's `detail` records, if it ended an attempt
/// failing.
pub(crate) fn failed_attempt(detail: &str) -> Result<Option<StepExecutionError>, StoreError> {
    serde_json::from_str::<Detail>(detail)
        .map(|d| d.error)
        .map_err(|e| StoreError::Corrupt(format!("a journal line's detail: {e}")))
}

/// What the journal keeps of an attempt's error: the kind and
/// retryability, the message cut, no backtrace.
fn journal_error(error: &StepExecutionError) -> StepExecutionError {
    let message = match error.message.char_indices().nth(MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &error.message[..cut]),
        None => error.message.clone(),
    };
    StepExecutionError::new(error.error_type.clone(), message, error.retryable)
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
                // A take-back (a stop withdrew the attempt before any worker
                // had it) is no result: it names no worker, and the attempt
                // taken back, where the step goes back to the attempts
                // before it (the next start sends the same number again).
                // Written as the step's, it read as the previous attempt
                // ending twice, by the previous attempt's worker.
                let taken_back = from_state == StepState::Running && to.state == StepState::Waiting;
                let result_of_attempt = from_state == StepState::Running
                    && to.state != StepState::Running
                    && !taken_back;
                let detail = match (&to.dispatched_by, &to.error, to.state) {
                    (Some(by), _, StepState::Running) => Some(Detail {
                        dispatched_by: Some(by.clone()),
                        ..Detail::default()
                    }),
                    (_, Some(error), StepState::RetryWait | StepState::Failed)
                        if result_of_attempt =>
                    {
                        Some(Detail {
                            error: Some(journal_error(error)),
                            ..Detail::default()
                        })
                    }
                    _ => None,
                }
                .map(|d| serde_json::to_string(&d))
                .transpose()
                .map_err(serialise_error)?;
                let journal = JournalLine {
                    task_id,
                    step_id: Some(step_id),
                    from_state: from_state.as_str(),
                    to_state: to.state.as_str(),
                    attempt: i64::from(if taken_back { from_attempt } else { to.attempt }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_attempts_line_keeps_its_kind_and_a_cut_message() {
        let mut error =
            StepExecutionError::new("Gateway::Busy", "é".repeat(MESSAGE_CHARS + 5), true);
        error.backtrace = vec!["app.rb:3".into()];
        let detail = serde_json::to_string(&Detail {
            error: Some(journal_error(&error)),
            ..Detail::default()
        })
        .unwrap();
        let kept = failed_attempt(&detail).unwrap().unwrap();
        assert_eq!(
            (kept.error_type.as_str(), kept.retryable),
            ("Gateway::Busy", true)
        );
        assert_eq!(kept.message, format!("{}…", "é".repeat(MESSAGE_CHARS)));
        assert!(kept.backtrace.is_empty(), "the step keeps the backtrace");
        // A dispatch's line names its executor and no error.
        assert_eq!(
            failed_attempt(r#"{"dispatched_by":"orch-1"}"#).unwrap(),
            None
        );
        assert!(matches!(failed_attempt("{"), Err(StoreError::Corrupt(_))));
    }
}
