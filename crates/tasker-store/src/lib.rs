//! Durable task state for `tasker serve`: tasks, their steps and an
//! append-only journal of every transition, in an embedded SQLite file
//! (the default) or in PostgreSQL, behind one [`Store`].
//!
//! SKELETON: signatures are fixed; bodies are being written.

mod model;

pub use model::{
    CancelOutcome, Created, JournalEntry, NewTask, StepDetail, TaskDetail, TaskFilter, TaskPage,
    TaskSummary,
};

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tasker_engine::{Journal, StoredTask};

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:PATH` nor `postgres://...`.
    #[error("store URL {0:?} is neither sqlite:PATH nor postgres://...")]
    BadUrl(String),
    /// The idempotency key belongs to a task created with another body.
    #[error("idempotency key {key:?} was used for task {task_id} with a different request")]
    IdempotencyConflict {
        /// The key.
        key: String,
        /// The task created with it.
        task_id: i64,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migrating the store failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored row could not be read back (corrupt or from a newer version).
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<()>,
}

impl Store {
    /// Opens (and creates, for SQLite, with its parent folder) the store at
    /// `url` and brings its schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let _ = url;
        todo!()
    }

    /// The database in use.
    pub fn backend(&self) -> Backend {
        todo!()
    }

    /// This node's orchestrator id: created on first open, the same on
    /// every later one, so workers holding steps across a restart are
    /// recognised.
    pub async fn orchestrator_id(&self) -> Result<String, StoreError> {
        todo!()
    }

    /// Creates a task with one `waiting` step per template step, owned by
    /// `new.owner`; or, for an idempotency key seen before with the same
    /// `request_hash`, returns the task it created.
    pub async fn create_task(&self, new: NewTask) -> Result<Created, StoreError> {
        let _ = new;
        todo!()
    }

    /// A [`Journal`] committing transitions of tasks `owner` holds: a
    /// transition of a task owned by someone else is a conflict (fencing).
    pub fn journal(&self, owner: &str) -> Arc<dyn Journal> {
        let _ = owner;
        todo!()
    }

    /// Records that a task should stop dispatching.
    pub async fn request_cancel(&self, task_id: i64) -> Result<CancelOutcome, StoreError> {
        let _ = task_id;
        todo!()
    }

    /// A task with its steps.
    pub async fn get_task(&self, task_id: i64) -> Result<Option<TaskDetail>, StoreError> {
        let _ = task_id;
        todo!()
    }

    /// Tasks, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<TaskPage, StoreError> {
        let _ = filter;
        todo!()
    }

    /// Every unfinished task that `owner` holds, nobody holds, or whose
    /// holder's lease ran out, now held by `owner` for `lease`.
    pub async fn claim_unfinished(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<StoredTask>, StoreError> {
        let _ = (owner, lease);
        todo!()
    }

    /// Extends `owner`'s lease on its unfinished tasks.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let _ = (owner, lease);
        todo!()
    }

    /// Deletes tasks that ended before `cutoff`, with their steps and
    /// journal; returns how many.
    pub async fn purge_ended_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let _ = cutoff;
        todo!()
    }

    /// A task's journal, oldest first.
    pub async fn journal_entries(&self, task_id: i64) -> Result<Vec<JournalEntry>, StoreError> {
        let _ = task_id;
        todo!()
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Commits what is queued, then closes the connections.
    pub async fn close(&self) {
        todo!()
    }
}
