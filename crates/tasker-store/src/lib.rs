//! Durable task state for `tasker serve`: tasks, their steps and an
//! append-only journal of every transition, in an embedded SQLite file
//! (the default) or in PostgreSQL, behind one [`Store`].
//!
//! One writer per store, on a thread of its own, commits every write (task
//! creation, journal commits, cancel requests, claims, renewals, purges)
//! in groups: everything queued while the previous group was applied goes
//! into the next transaction, so a flush to disk is shared by every
//! transition in it, and each caller is answered once its write is
//! durable. Reads go to a connection pool beside it.
//!
//! Where to look: `writer.rs` (grouping and compare-and-swap),
//! `sqlite.rs` and `postgres.rs` (each dialect's SQL; the SQLite writer
//! uses rusqlite on sqlx's bundled SQLite, see there why), `wal_sync.rs`
//! (SQLite durability off the writer's path), `reads.rs`, `rows.rs`.
//!
//! ```no_run
//! # async fn demo(template: tasker_engine::TaskTemplate) -> Result<(), tasker_store::StoreError> {
//! use std::time::Duration;
//! use tasker_store::{Created, NewTask, Store};
//!
//! let store = Store::open("sqlite:tasker-data/tasker.db").await?;
//! let owner = store.orchestrator_id().await?;
//! let created = store
//!     .create_task(NewTask {
//!         workflow: template.name.clone(),
//!         template,
//!         context: serde_json::json!({ "order": 7 }),
//!         idempotency_key: Some("order-7".into()),
//!         request_hash: "digest of workflow and context".into(),
//!         owner: owner.clone(),
//!         lease: Duration::from_secs(30),
//!     })
//!     .await?;
//! if let Created::New(task) = created {
//!     let journal = store.journal(&owner); // hand it to the engine
//!     # let _ = (task, journal);
//! }
//! store.close().await;
//! # Ok(())
//! # }
//! ```

mod db;
mod journal;
mod model;
mod node;
mod postgres;
mod reads;
mod rows;
mod sqlite;
mod wal_sync;
mod writer;

pub use model::{
    CancelOutcome, Created, JournalEntry, NewTask, StepDetail, TaskDetail, TaskFilter, TaskPage,
    TaskSummary,
};
pub use node::NodeLock;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tasker_engine::{Journal, StoredTask, TaskState};
use tokio::sync::{mpsc, oneshot};

use crate::db::Db;
use crate::journal::StoreJournal;
use crate::rows::{now_ms, to_ms};
use crate::writer::{Fence, Op, Outcome, PreparedCreate, Request, Stats, WriteError, Writer};

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
    /// A file or folder of the store (the database, its lock file, their
    /// folder) could not be used: what was done to which path, and why
    /// (a read-only file system, permissions, hard links).
    #[error("{0}")]
    File(String),
    /// Migrations failed.
    #[error("migrating the store failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store was migrated by a newer tasker than this one: this build
    /// refuses it rather than run on a schema it does not know.
    #[error(
        "the store was migrated by a newer tasker (its schema has migration {applied}; this \
         build knows migrations up to {known}): run that version, or restore the backup taken \
         before the upgrade"
    )]
    NewerSchema {
        /// A migration the store has and this build does not.
        applied: i64,
        /// This build's newest migration.
        known: i64,
    },
    /// A migration the store has differs from this build's of the same
    /// number (a store made by another build of the same version).
    #[error(
        "the store's migration {version} is not this build's (a store made by another build of \
         this version?): run the build that made it, or restore a backup"
    )]
    ForeignSchema {
        /// The migration that differs.
        version: i64,
    },
    /// A stored row could not be read back (corrupt or from a newer version).
    #[error("stored data is not readable: {0}")]
    Corrupt(String),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// The grouped write transaction this operation was part of failed;
    /// nothing of it was stored.
    #[error("writing to the store failed: {0}")]
    Write(String),
    /// Another `tasker serve` holds the store's [`NodeLock`].
    #[error("another tasker serve is using this store: {0}; stop it first, or give this one another store")]
    InUse(String),
    /// The PostgreSQL server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        /// `HOST:PORT/DATABASE` (or the socket), without credentials.
        target: String,
        /// What the driver said.
        #[source]
        source: sqlx::Error,
    },
    /// Another `tasker serve` took the store over from this one (see
    /// [`Store::take_over`]): nothing this one writes commits any more.
    #[error("{0}")]
    Fenced(String),
}

impl StoreError {
    /// Whether the database could not take the call for now (unreachable,
    /// restarting, out of disk or connections, locked), as opposed to a
    /// call or a stored row that is wrong. The same call may succeed once
    /// the database is back: an API answers such a failure 503 rather than
    /// 500.
    ///
    /// ```
    /// use tasker_store::StoreError;
    ///
    /// assert!(StoreError::Database(sqlx::Error::PoolTimedOut).is_unavailable());
    /// assert!(!StoreError::Corrupt("row 3: bad JSON".into()).is_unavailable());
    /// ```
    pub fn is_unavailable(&self) -> bool {
        match self {
            // A grouped write failed: the writer's own connection was lost
            // or the database refused the commit (a full disk, a lock held
            // past the busy timeout). Calls that are wrong fail before the
            // group, with errors of their own.
            StoreError::Write(_) | StoreError::Closed => true,
            // This server is going away; the one that took over may answer.
            StoreError::Fenced(_) => true,
            StoreError::Database(e) | StoreError::Connect { source: e, .. } => sqlx_unavailable(e),
            StoreError::BadUrl(_)
            | StoreError::IdempotencyConflict { .. }
            | StoreError::Migrate(_)
            | StoreError::NewerSchema { .. }
            | StoreError::ForeignSchema { .. }
            | StoreError::Corrupt(_)
            | StoreError::InUse(_)
            | StoreError::File(_) => false,
        }
    }
}

/// [`StoreError::is_unavailable`] for a database driver's error.
fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // SQLSTATE classes: 08 connection, 53 insufficient
                // resources (disk full, too many connections), 57P operator
                // intervention (shutdown, starting up), 58 system (I/O);
                // and the two a retry resolves by itself.
                let code = pg.code();
                ["08", "53", "57P", "58", "40001", "40P01"]
                    .iter()
                    .any(|class| code.starts_with(class))
            } else {
                // SQLite's extended codes keep the primary code in their low
                // byte: BUSY 5, LOCKED 6, NOMEM 7, READONLY 8, IOERR 10,
                // FULL 13, CANTOPEN 14.
                db.code()
                    .and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| matches!(code & 0xff, 5..=8 | 10 | 13 | 14))
            }
        }
        _ => false,
    }
}

impl From<WriteError> for StoreError {
    fn from(e: WriteError) -> Self {
        match &e {
            WriteError::Closed => StoreError::Closed,
            WriteError::Failed(message) => StoreError::Write(message.clone()),
            WriteError::Guessed => StoreError::Write(e.to_string()),
            WriteError::Fenced(message) => StoreError::Fenced(message.clone()),
        }
    }
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed.
    pub commits: u64,
    /// Operations (journal commits, creates, cancels, ...) they carried.
    pub calls: u64,
    /// Step and task transitions committed.
    pub transitions: u64,
    /// Tasks created.
    pub tasks_created: u64,
    /// Writes waiting for the writer now.
    pub queued: u64,
}

/// A handle on the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    queue: mpsc::Sender<Op>,
    closed: AtomicBool,
    /// Whether the writer still runs; held while closing.
    writer_running: tokio::sync::Mutex<bool>,
    stats: Arc<Stats>,
    fence: Arc<Fence>,
}

/// Writes waiting for the writer, at most; callers wait beyond that.
const QUEUE_DEPTH: usize = 16 * 1024;

/// Tasks one purge transaction deletes at most, so that a large purge
/// does not hold up commits.
const PURGE_CHUNK: i64 = 1000;

/// How long a group's transaction may take before the store is not
/// [`writable`](Store::writable): a commit takes milliseconds, and one held
/// on a lock makes every create wait.
const STUCK_WRITE_MS: u64 = 2_000;

fn lease_until(lease: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
}

fn unexpected(outcome: &str) -> StoreError {
    StoreError::Write(format!("the store's writer answered with {outcome}"))
}

impl Store {
    /// Opens (and creates, for SQLite, with its parent folder) the store at
    /// `url` and brings its schema up to date.
    ///
    /// `url` is `sqlite:PATH` (or `sqlite://PATH`), or a `postgres://` /
    /// `postgresql://` URL. Must be called inside a Tokio runtime: the
    /// store's writer is a task on it.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let (db, connector) = Db::open(url).await?;
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let stats = Arc::new(Stats::default());
        let fence = Arc::new(Fence::new(None));
        if let Err(e) =
            Writer::start(connector, receiver, Arc::clone(&stats), Arc::clone(&fence)).await
        {
            db.close().await;
            return Err(e);
        }
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                queue,
                closed: AtomicBool::new(false),
                writer_running: tokio::sync::Mutex::new(true),
                stats,
                fence,
            }),
        })
    }

    /// Makes this handle's writes the only ones that count on the store:
    /// raises the store's epoch, and from then on every write checks it
    /// first. A handle that took the store over before fails every later
    /// write with [`StoreError::Fenced`], and its [`fenced`](Self::fenced)
    /// resolves; a write of it under way is committed before the raise.
    ///
    /// The [`NodeLock`] keeps a second server off the store; but a
    /// PostgreSQL restart drops it with its connection, and a server that
    /// starts before the first takes it again gets it. The epoch makes that
    /// a hand-over instead of two servers writing the same tasks.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tasker_store::StoreError> {
    /// let first = tasker_store::Store::open("postgres://localhost/tasker").await?;
    /// first.take_over().await?;
    /// let second = tasker_store::Store::open("postgres://localhost/tasker").await?;
    /// second.take_over().await?;
    /// let why = first.fenced().await; // and `first` commits nothing more
    /// # Ok(()) }
    /// ```
    pub async fn take_over(&self) -> Result<i64, StoreError> {
        match self.submit(Request::TakeOver).await? {
            Outcome::Count(epoch) => Ok(epoch as i64),
            _ => Err(unexpected("something else than an epoch")),
        }
    }

    /// Resolves once another handle [took the store over](Self::take_over)
    /// from this one, or this one's writer failed for good (it panicked),
    /// with why; never while this one's writes count.
    pub async fn fenced(&self) -> String {
        let mut fence = self.inner.fence.subscribe();
        // No error: this handle holds the sender.
        let why = fence
            .wait_for(Option::is_some)
            .await
            .map(|why| why.clone().unwrap_or_default())
            .unwrap_or_default();
        why
    }

    /// The database in use.
    pub fn backend(&self) -> Backend {
        self.inner.db.backend()
    }

    /// What the writer has committed so far.
    pub fn commit_stats(&self) -> CommitStats {
        let stats = &self.inner.stats;
        CommitStats {
            commits: stats.commits.load(Ordering::Relaxed),
            calls: stats.calls.load(Ordering::Relaxed),
            transitions: stats.transitions.load(Ordering::Relaxed),
            tasks_created: stats.tasks_created.load(Ordering::Relaxed),
            queued: (self.inner.queue.max_capacity() - self.inner.queue.capacity()) as u64,
        }
    }

    /// Adds the store's metrics to `registry`: `store_commit_seconds` and
    /// `store_commit_operations`, a histogram each over the writer's group
    /// commits.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "store_commit_seconds",
            "How long each group commit of the store's writer took",
            self.inner.stats.commit_seconds.clone(),
        );
        registry.register(
            "store_commit_operations",
            "Operations (task creations, journal commits, cancels, ...) per group commit",
            self.inner.stats.commit_operations.clone(),
        );
    }

    /// Queues a write and waits until it is committed (or failed).
    pub(crate) async fn submit(&self, request: Request) -> Result<Outcome, WriteError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(WriteError::Closed);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .queue
            .send(Op::Write { request, reply })
            .await
            .map_err(|_| WriteError::Closed)?;
        answer.await.map_err(|_| WriteError::Closed)?
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.inner.closed.load(Ordering::Acquire) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }

    /// This node's orchestrator id: created on first open, the same on
    /// every later one, so workers holding steps across a restart are
    /// recognised.
    pub async fn orchestrator_id(&self) -> Result<String, StoreError> {
        self.check_open()?;
        reads::orchestrator_id(&self.inner.db).await
    }

    /// Creates a task with one `waiting` step per template step, owned by
    /// `new.owner`; or, for an idempotency key seen before with the same
    /// `request_hash`, returns the task it created.
    ///
    /// The same key with another `request_hash` is
    /// [`StoreError::IdempotencyConflict`], and nothing is stored.
    pub async fn create_task(&self, new: NewTask) -> Result<Created, StoreError> {
        let serialise =
            |e: serde_json::Error| StoreError::Write(format!("serialising a task: {e}"));
        let now = now_ms();
        let create = PreparedCreate {
            template_json: serde_json::to_string(&new.template).map_err(serialise)?,
            context_json: serde_json::to_string(&new.context).map_err(serialise)?,
            created_at: rows::from_ms(now)?,
            lease_until: lease_until(new.lease),
            new,
        };
        match self.submit(Request::Create(Box::new(create))).await? {
            Outcome::Created(created) => Ok(created),
            Outcome::IdempotencyConflict { key, task_id } => {
                Err(StoreError::IdempotencyConflict { key, task_id })
            }
            _ => Err(unexpected("something else than a task")),
        }
    }

    /// A [`Journal`] committing transitions of tasks `owner` holds: a
    /// transition of a task owned by someone else is a conflict (fencing).
    ///
    /// A step transition holds if the step is still at its `from_state` and
    /// `from_attempt` and its task is `owner`'s; a task transition if the
    /// task is still running and `owner`'s (a failed task transition is
    /// reported as a conflict on step 0: it has no step). When one
    /// transition of a `commit` call fails, none of that call's apply.
    pub fn journal(&self, owner: &str) -> Arc<dyn Journal> {
        Arc::new(StoreJournal {
            store: self.clone(),
            owner: Arc::from(owner),
        })
    }

    /// Records that a task should stop dispatching.
    pub async fn request_cancel(&self, task_id: i64) -> Result<CancelOutcome, StoreError> {
        match self.submit(Request::Cancel { task_id }).await? {
            Outcome::Cancel(outcome) => Ok(outcome),
            _ => Err(unexpected("something else than a cancel outcome")),
        }
    }

    /// A task with its steps.
    pub async fn get_task(&self, task_id: i64) -> Result<Option<TaskDetail>, StoreError> {
        self.check_open()?;
        reads::get_task(&self.inner.db, task_id).await
    }

    /// Tasks, newest first.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<TaskPage, StoreError> {
        self.check_open()?;
        reads::list_tasks(&self.inner.db, filter).await
    }

    /// Every unfinished task that `owner` holds, nobody holds, or whose
    /// holder's lease ran out, now held by `owner` for `lease`.
    pub async fn claim_unfinished(
        &self,
        owner: &str,
        lease: Duration,
    ) -> Result<Vec<StoredTask>, StoreError> {
        let request = Request::Claim {
            owner: owner.to_string(),
            lease_until: lease_until(lease),
            now: now_ms(),
        };
        let Outcome::Claimed { tasks, steps } = self.submit(request).await? else {
            return Err(unexpected("something else than claimed tasks"));
        };
        // Steps come ordered by task, then position, as tasks by id.
        let mut steps = steps.into_iter().peekable();
        tasks
            .into_iter()
            .map(|task| {
                let mut own = Vec::new();
                while let Some(step) = steps.next_if(|step| step.task_id == task.id) {
                    own.push(step);
                }
                task.into_stored(own)
            })
            .collect()
    }

    /// Extends `owner`'s lease on its unfinished tasks.
    pub async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let request = Request::Renew {
            owner: owner.to_string(),
            lease_until: lease_until(lease),
        };
        match self.submit(request).await? {
            Outcome::Count(n) => Ok(n),
            _ => Err(unexpected("something else than a count")),
        }
    }

    /// Deletes tasks that ended before `cutoff`, with their steps and
    /// journal; returns how many.
    pub async fn purge_ended_before(&self, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
        let cutoff = to_ms(cutoff);
        let mut purged = 0;
        loop {
            let request = Request::Purge {
                cutoff,
                limit: PURGE_CHUNK,
            };
            let Outcome::Count(n) = self.submit(request).await? else {
                return Err(unexpected("something else than a count"));
            };
            purged += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(purged);
            }
        }
    }

    /// A task's journal, oldest first.
    pub async fn journal_entries(&self, task_id: i64) -> Result<Vec<JournalEntry>, StoreError> {
        self.check_open()?;
        reads::journal_entries(&self.inner.db, task_id).await
    }

    /// How many tasks the store holds in each state; states with none are
    /// left out.
    pub async fn count_tasks_by_status(&self) -> Result<Vec<(TaskState, u64)>, StoreError> {
        self.check_open()?;
        reads::count_by_status(&self.inner.db).await
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.check_open()?;
        reads::ping(&self.inner.db).await
    }

    /// Whether writes go through: true unless the writer's last group
    /// failed (a full disk, a database gone), in which case one small row
    /// is written to find out whether they go through again, or the group
    /// in progress has waited more than 2 s. Reads may still answer when
    /// writes do not, so a readiness check asks both.
    pub async fn writable(&self) -> bool {
        // A write held this long (another process's lock on a SQLite file)
        // has not failed yet, and for all that time nothing is written.
        let since = self.inner.stats.writing_since_ms.load(Ordering::Relaxed);
        if since != 0 && now_ms() as u64 > since + STUCK_WRITE_MS {
            return false;
        }
        if !self.inner.stats.failing.load(Ordering::Relaxed) {
            return true;
        }
        matches!(
            self.submit(Request::Probe { now: now_ms() }).await,
            Ok(Outcome::Count(_))
        )
    }

    /// Commits what is queued, then closes the connections. Later calls
    /// fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let mut running = self.inner.writer_running.lock().await;
        if *running {
            let (done, stopped) = oneshot::channel();
            if self.inner.queue.send(Op::Shutdown(done)).await.is_ok() {
                let _ = stopped.await;
            }
            *running = false;
        }
        self.inner.db.close().await;
    }
}
