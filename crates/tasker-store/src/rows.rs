//! Rows as the database holds them, and their conversions to and from the
//! engine's and the API's types.
//!
//! Times are epoch milliseconds and JSON is text in both dialects, so one
//! row type decodes from SQLite and PostgreSQL alike. The writer hands
//! each dialect whole batches of the row types at the end of this file;
//! a JSON column (a step's output or error) is already a string then.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tasker_engine::{StepSnapshot, StepState, StoredStep, StoredTask, TaskState, TaskTemplate};
use tasker_protocol::StepExecutionError;

use crate::model::{JournalEntry, StepDetail, TaskDetail, TaskSummary};
use crate::StoreError;

/// A time as stored.
pub(crate) fn to_ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

/// A stored time.
pub(crate) fn from_ms(ms: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {ms} ms is out of range")))
}

fn opt_from_ms(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    ms.map(from_ms).transpose()
}

/// Now, at the precision the store keeps.
pub(crate) fn now_ms() -> i64 {
    to_ms(Utc::now())
}

fn count(value: i64, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is out of range")))
}

fn step_state(text: &str) -> Result<StepState, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("step state: {e}")))
}

fn task_state(text: &str) -> Result<TaskState, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Corrupt(format!("task status: {e}")))
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A task as the API shows it; its template only gives each step's
/// `depends_on`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TaskRow {
    pub id: i64,
    pub workflow: String,
    pub template: String,
    pub status: String,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub context: String,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

/// The columns of [`TaskRow`], in its order.
pub(crate) const TASK_COLUMNS: &str = "id, workflow, template, status, cancel_requested, \
     idempotency_key, context, created_at, finished_at";

impl TaskRow {
    pub(crate) fn into_detail(self, steps: Vec<StepRow>) -> Result<TaskDetail, StoreError> {
        let finished_at = opt_from_ms(self.finished_at)?;
        let end = self.finished_at.unwrap_or_else(now_ms);
        let template: TaskTemplate = json(&self.template, "task template")?;
        let mut depends_on: HashMap<String, Vec<String>> = template
            .steps
            .into_iter()
            .map(|step| (step.name, step.depends_on))
            .collect();
        Ok(TaskDetail {
            task_id: self.id,
            workflow: self.workflow,
            status: task_state(&self.status)?,
            cancel_requested: self.cancel_requested,
            idempotency_key: self.idempotency_key,
            context: json(&self.context, "task context")?,
            started_at: from_ms(self.created_at)?,
            finished_at,
            duration_ms: end.saturating_sub(self.created_at).max(0) as u64,
            steps: steps
                .into_iter()
                .map(|row| {
                    let deps = depends_on.remove(&row.name).unwrap_or_default();
                    row.into_detail(deps)
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A task in a list.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SummaryRow {
    pub id: i64,
    pub workflow: String,
    pub status: String,
    pub cancel_requested: bool,
    pub idempotency_key: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub steps_total: i64,
    pub steps_completed: i64,
}

impl SummaryRow {
    pub(crate) fn into_summary(self) -> Result<TaskSummary, StoreError> {
        Ok(TaskSummary {
            task_id: self.id,
            workflow: self.workflow,
            status: task_state(&self.status)?,
            cancel_requested: self.cancel_requested,
            idempotency_key: self.idempotency_key,
            started_at: from_ms(self.created_at)?,
            finished_at: opt_from_ms(self.finished_at)?,
            steps_total: count(self.steps_total, "step count")?,
            steps_completed: count(self.steps_completed, "step count")?,
        })
    }
}

/// A task as the engine resumes it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ClaimedTaskRow {
    pub id: i64,
    pub template: String,
    pub context: String,
    pub created_at: i64,
    pub cancel_requested: bool,
}

/// The columns of [`ClaimedTaskRow`].
pub(crate) const CLAIMED_TASK_COLUMNS: &str = "id, template, context, created_at, cancel_requested";

impl ClaimedTaskRow {
    pub(crate) fn into_stored(self, steps: Vec<StepRow>) -> Result<StoredTask, StoreError> {
        let template: TaskTemplate = json(&self.template, "task template")?;
        if template.steps.len() != steps.len() {
            return Err(StoreError::Corrupt(format!(
                "task {} has {} steps stored for {} in its template",
                self.id,
                steps.len(),
                template.steps.len()
            )));
        }
        Ok(StoredTask {
            task_id: self.id,
            template,
            context: json(&self.context, "task context")?,
            created_at: from_ms(self.created_at)?,
            cancel_requested: self.cancel_requested,
            steps: steps
                .into_iter()
                .map(|row| {
                    Ok(StoredStep {
                        step_id: row.id,
                        snapshot: row.snapshot()?,
                    })
                })
                .collect::<Result<_, StoreError>>()?,
        })
    }
}

/// A step with everything about it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StepRow {
    pub id: i64,
    pub task_id: i64,
    pub name: String,
    pub handler: String,
    pub state: String,
    pub attempt: i64,
    pub next_run_at: Option<i64>,
    pub dispatched_by: Option<String>,
    pub first_dispatched_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub worker_id: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub blocked_by: Option<String>,
}

/// The columns of [`StepRow`].
pub(crate) const STEP_COLUMNS: &str = "id, task_id, name, handler, state, attempt, next_run_at, \
     dispatched_by, first_dispatched_at, ended_at, worker_id, output, error, blocked_by";

impl StepRow {
    pub(crate) fn snapshot(&self) -> Result<StepSnapshot, StoreError> {
        Ok(StepSnapshot {
            state: step_state(&self.state)?,
            attempt: count(self.attempt, "attempt")?,
            next_run_at: opt_from_ms(self.next_run_at)?,
            dispatched_by: self.dispatched_by.clone(),
            first_dispatched_at: opt_from_ms(self.first_dispatched_at)?,
            ended_at: opt_from_ms(self.ended_at)?,
            worker_id: self.worker_id.clone(),
            output: self
                .output
                .as_deref()
                .map(|text| json::<Value>(text, "step output"))
                .transpose()?,
            error: self
                .error
                .as_deref()
                .map(|text| json::<StepExecutionError>(text, "step error"))
                .transpose()?,
            blocked_by: self.blocked_by.clone(),
        })
    }

    fn into_detail(self, depends_on: Vec<String>) -> Result<StepDetail, StoreError> {
        let snapshot = self.snapshot()?;
        let duration_ms = match (self.first_dispatched_at, self.ended_at) {
            (Some(start), Some(end)) => end.saturating_sub(start).max(0) as u64,
            _ => 0,
        };
        Ok(StepDetail {
            step_id: self.id,
            name: self.name,
            handler: self.handler,
            depends_on,
            state: snapshot.state,
            outcome: snapshot.state.outcome(),
            attempts: snapshot.attempt,
            duration_ms,
            worker_id: snapshot.worker_id,
            output: snapshot.output,
            error: snapshot.error,
            blocked_by: snapshot.blocked_by,
            next_run_at: snapshot.next_run_at,
        })
    }
}

/// One journal line.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JournalRow {
    pub seq: i64,
    pub task_id: i64,
    pub step_id: Option<i64>,
    pub from_state: String,
    pub to_state: String,
    pub attempt: i64,
    pub worker_id: Option<String>,
    pub at: i64,
    pub detail: Option<String>,
}

impl JournalRow {
    pub(crate) fn into_entry(self) -> Result<JournalEntry, StoreError> {
        Ok(JournalEntry {
            seq: self.seq,
            task_id: self.task_id,
            step_id: self.step_id,
            from_state: self.from_state,
            to_state: self.to_state,
            attempt: count(self.attempt, "attempt")?,
            worker_id: self.worker_id,
            error: match self.detail.as_deref() {
                Some(detail) => crate::journal::failed_attempt(detail)?,
                None => None,
            },
            at: from_ms(self.at)?,
        })
    }
}

/// A step's state as the writer checks it: `(id, task, state, attempt,
/// the task's owner)`.
pub(crate) type StepLock = (i64, i64, String, i64, Option<String>);

/// A task's state as the writer checks it: `(id, status, owner)`.
pub(crate) type TaskLock = (i64, String, Option<String>);

/// A new task (`tasks` row, `running`) in a writer batch.
pub(crate) struct NewTaskRow<'a> {
    pub id: i64,
    pub workflow: &'a str,
    pub template: &'a str,
    pub context: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub request_hash: &'a str,
    pub owner: &'a str,
    pub lease_expires_at: i64,
    pub created_at: i64,
}

/// A new step (`steps` row, `waiting`) in a writer batch.
pub(crate) struct NewStepRow<'a> {
    pub id: i64,
    pub task_id: i64,
    pub position: i64,
    pub name: &'a str,
    pub handler: &'a str,
}

/// A step's whole new state in a writer batch. JSON columns (output,
/// error) are serialised by the caller, off the writer.
#[derive(Debug)]
pub(crate) struct StepUpdate {
    pub id: i64,
    pub state: &'static str,
    pub attempt: i64,
    pub next_run_at: Option<i64>,
    pub dispatched_by: Option<String>,
    pub first_dispatched_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub worker_id: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub blocked_by: Option<String>,
}

impl StepUpdate {
    pub(crate) fn new(id: i64, to: StepSnapshot) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id,
            state: to.state.as_str(),
            attempt: i64::from(to.attempt),
            next_run_at: to.next_run_at.map(to_ms),
            dispatched_by: to.dispatched_by,
            first_dispatched_at: to.first_dispatched_at.map(to_ms),
            ended_at: to.ended_at.map(to_ms),
            worker_id: to.worker_id,
            output: to.output.as_ref().map(serde_json::to_string).transpose()?,
            error: to.error.as_ref().map(serde_json::to_string).transpose()?,
            blocked_by: to.blocked_by,
        })
    }
}

/// A task's end in a writer batch.
#[derive(Debug)]
pub(crate) struct TaskEnd {
    pub id: i64,
    pub status: &'static str,
    pub finished_at: i64,
}

/// A journal line in a writer batch.
#[derive(Debug)]
pub(crate) struct JournalLine {
    pub task_id: i64,
    pub step_id: Option<i64>,
    pub from_state: &'static str,
    pub to_state: &'static str,
    pub attempt: i64,
    pub worker_id: Option<String>,
    pub at: i64,
    /// Serialised JSON, when there is more to say.
    pub detail: Option<String>,
}
