//! The one writer of a store: group commit.
//!
//! Every write (task creation, journal commits, cancel requests, claims,
//! lease renewals, purges) is queued to a single writer. It takes everything
//! queued (up to [`GROUP_CAP`] rows) and applies it in ONE transaction, then
//! answers each caller once the transaction is durable. While a group is
//! applied, new work queues up, so groups grow with the load and durability
//! costs one flush per group rather than per step, without any added delay.
//!
//! A group costs a fixed number of statements per kind of row on
//! PostgreSQL (one array per column, `unnest`), and one cached prepared
//! statement per row on SQLite, where statements are function calls.
//! Compare-and-swap is decided here: the steps a group touches are read
//! once, every commit call is checked in arrival order against that state
//! as the group's earlier calls left it, and a call that fails its check
//! gets a conflict and changes nothing, while the others still commit.
//! On PostgreSQL the read (which would lock, that is write, every row) is
//! skipped at first: see [`WriteTx::OPTIMISTIC`].
//!
//! The writer runs on a thread of its own, with a connection of its own.
//! As one task among the callers' it would wait behind them at every
//! statement. On SQLite it answers through the WAL syncer (`wal_sync.rs`),
//! which flushes the disk while the writer goes on with the next group.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rusqlite::TransactionBehavior;
use sqlx::{Connection, PgConnection};
use tasker_engine::{StepSnapshot, StepState, StoredStep, StoredTask};
use tokio::sync::{mpsc, oneshot};

use crate::db::Connector;
use crate::model::{CancelOutcome, Created, NewTask};
use crate::rows::{
    ClaimedTaskRow, JournalLine, NewStepRow, NewTaskRow, StepLock, StepRow, StepUpdate, TaskEnd,
    TaskLock,
};
use crate::wal_sync::{Answer, WalSyncer};

/// Most rows (transitions, plus a task's steps) one group commits.
pub(crate) const GROUP_CAP: usize = 4096;

/// What the writer needs from a dialect: each method is one statement (or
/// a fixed few) over a whole group's rows.
pub(crate) trait WriteTx {
    /// Whether commits are first tried optimistically: without reading and
    /// locking the steps first, each step's expected state checked by the
    /// UPDATE itself ([`update_steps_if`](Self::update_steps_if)); a group
    /// where any check fails is rolled back and applied again carefully.
    /// Worth it where a row lock costs a write (PostgreSQL), not where the
    /// writer holds the database's only write lock anyway (SQLite).
    const OPTIMISTIC: bool;

    /// `(key, id, request_hash)` of the tasks holding these keys.
    fn tasks_by_key(
        &mut self,
        keys: &[&str],
    ) -> impl Future<Output = Result<Vec<(String, i64, String)>, WriteError>>;

    /// Reserves ids for `tasks` new tasks and `steps` new steps.
    fn reserve_ids(
        &mut self,
        tasks: usize,
        steps: usize,
    ) -> impl Future<Output = Result<(Vec<i64>, Vec<i64>), WriteError>>;

    /// Inserts `running` tasks, skipping those whose idempotency key
    /// another writer took; returns the ids inserted.
    fn insert_tasks(
        &mut self,
        rows: &[NewTaskRow<'_>],
    ) -> impl Future<Output = Result<Vec<i64>, WriteError>>;

    /// Inserts `waiting` steps.
    fn insert_steps(
        &mut self,
        rows: &[NewStepRow<'_>],
    ) -> impl Future<Output = Result<u64, WriteError>>;

    /// These tasks' status and owner, locked until the end of the
    /// transaction against other writers.
    fn lock_tasks(
        &mut self,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<TaskLock>, WriteError>>;

    /// These steps' state with their task's owner, locked likewise.
    fn lock_steps(
        &mut self,
        ids: &[i64],
    ) -> impl Future<Output = Result<Vec<StepLock>, WriteError>>;

    /// Flags these tasks as cancel-requested.
    fn flag_cancel(&mut self, ids: &[i64]) -> impl Future<Output = Result<u64, WriteError>>;

    /// Writes steps' whole new state.
    fn update_steps(
        &mut self,
        rows: &[&StepUpdate],
    ) -> impl Future<Output = Result<u64, WriteError>>;

    /// Writes steps' whole new state where each step still is as
    /// expected; returns how many were.
    fn update_steps_if(
        &mut self,
        rows: &[(&StepUpdate, Expected<'_>)],
    ) -> impl Future<Output = Result<u64, WriteError>>;

    /// Ends tasks that still run under the given owner; returns how many.
    fn end_tasks_if(
        &mut self,
        rows: &[(&TaskEnd, &str)],
    ) -> impl Future<Output = Result<u64, WriteError>>;

    /// Ends tasks, releasing their lease.
    fn end_tasks(&mut self, rows: &[&TaskEnd]) -> impl Future<Output = Result<u64, WriteError>>;

    /// Appends journal lines, in order.
    fn append_journal(
        &mut self,
        rows: &[&JournalLine],
    ) -> impl Future<Output = Result<u64, WriteError>>;

    /// Gives `owner`, until `lease_until`, every running task that it holds,
    /// that nobody holds, or whose holder's lease ran out before `now`;
    /// returns their ids.
    fn claim(
        &mut self,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> impl Future<Output = Result<Vec<i64>, WriteError>>;

    /// These tasks with their steps (by task, in template order).
    fn load_tasks(
        &mut self,
        ids: &[i64],
    ) -> impl Future<Output = Result<(Vec<ClaimedTaskRow>, Vec<StepRow>), WriteError>>;

    /// Extends `owner`'s lease on its running tasks.
    fn renew(
        &mut self,
        owner: &str,
        lease_until: i64,
    ) -> impl Future<Output = Result<u64, WriteError>>;

    /// Deletes up to `limit` tasks that ended before `cutoff`, with their
    /// steps and journal.
    fn purge(&mut self, cutoff: i64, limit: i64) -> impl Future<Output = Result<u64, WriteError>>;

    /// Raises the store's epoch and returns it: from its commit on, every
    /// group of a writer that took over before this one fails its
    /// [`epoch`](Self::epoch) check. A group under way when it is called is
    /// either committed before the raise or checked after it.
    fn take_over(&mut self) -> impl Future<Output = Result<i64, WriteError>>;

    /// The store's epoch, read so that no [`take_over`](Self::take_over)
    /// commits between the read and this transaction's commit (0 before any).
    fn epoch(&mut self) -> impl Future<Output = Result<i64, WriteError>>;

    /// Records `now` in the `meta` table: a write that changes a page, so
    /// it fails where any other would (a full disk), and is harmless.
    fn probe(&mut self, now: i64) -> impl Future<Output = Result<(), WriteError>>;
}

/// A task to create, serialised by the caller.
pub(crate) struct PreparedCreate {
    pub new: NewTask,
    pub template_json: String,
    pub context_json: String,
    /// Truncated to the millisecond, as stored.
    pub created_at: DateTime<Utc>,
    pub lease_until: i64,
}

impl PreparedCreate {
    fn weight(&self) -> usize {
        1 + self.new.template.steps.len()
    }

    fn into_stored(self, task_id: i64, step_ids: Vec<i64>) -> StoredTask {
        StoredTask {
            task_id,
            template: self.new.template,
            context: self.new.context,
            created_at: self.created_at,
            cancel_requested: false,
            steps: step_ids
                .into_iter()
                .map(|step_id| StoredStep {
                    step_id,
                    snapshot: StepSnapshot::waiting(),
                })
                .collect(),
        }
    }
}

/// One `Journal::commit` call, serialised by the caller.
pub(crate) struct PreparedCommit {
    pub owner: Arc<str>,
    pub transitions: Vec<PreparedTransition>,
}

/// One transition: what to check, and the rows to write if it holds.
pub(crate) struct PreparedTransition {
    pub check: Check,
    pub change: Change,
    pub journal: JournalLine,
}

/// What a transition writes.
pub(crate) enum Change {
    /// The step's whole new state.
    Step(StepUpdate),
    /// The task's end.
    Task(TaskEnd),
}

/// Where an optimistic group expects a step to be before its first
/// transition in the group.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expected<'a> {
    pub state: &'static str,
    pub attempt: i64,
    pub task_id: i64,
    pub owner: &'a str,
}

/// The compare-and-swap of one transition.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Check {
    Step {
        task_id: i64,
        step_id: i64,
        from: StepState,
        from_attempt: u32,
        to: StepState,
        to_attempt: u32,
    },
    Task {
        task_id: i64,
    },
}

/// A write for the writer.
pub(crate) enum Request {
    Create(Box<PreparedCreate>),
    Commit(PreparedCommit),
    Cancel {
        task_id: i64,
    },
    Claim {
        owner: String,
        lease_until: i64,
        now: i64,
    },
    Renew {
        owner: String,
        lease_until: i64,
    },
    Purge {
        cutoff: i64,
        limit: i64,
    },
    /// Makes this writer's the store's writes that count: see
    /// [`WriteTx::take_over`].
    TakeOver,
    /// Writes one small row, to learn whether writes go through again
    /// after they failed (a full disk): see [`WriteTx::probe`].
    Probe {
        now: i64,
    },
}

impl Request {
    /// Rows it adds to a group.
    fn weight(&self) -> usize {
        match self {
            Request::Create(create) => create.weight(),
            Request::Commit(commit) => commit.transitions.len().max(1),
            _ => 1,
        }
    }

    /// Whether it is applied together with others of its kind (the rest
    /// are rare and run one by one, in order, in the same transaction).
    fn grouped(&self) -> bool {
        matches!(
            self,
            Request::Create(_) | Request::Commit(_) | Request::Cancel { .. }
        )
    }
}

/// What a write did.
pub(crate) enum Outcome {
    Created(Created),
    /// Inside the writer only: becomes `Created::New` once committed.
    NewTask {
        task_id: i64,
        step_ids: Vec<i64>,
    },
    IdempotencyConflict {
        key: String,
        task_id: i64,
    },
    Committed,
    Conflict {
        step_id: i64,
    },
    Cancel(CancelOutcome),
    Claimed {
        tasks: Vec<ClaimedTaskRow>,
        steps: Vec<StepRow>,
    },
    Count(u64),
}

/// Why a write did not happen.
#[derive(Debug, Clone)]
pub(crate) enum WriteError {
    /// The store is closed.
    Closed,
    /// The group's transaction failed (the database's message).
    Failed(String),
    /// Inside the writer only: an optimistic group found a step or task
    /// not as expected; it is rolled back and applied again carefully.
    Guessed,
    /// Another server took the store over: nothing of this writer's commits
    /// any more.
    Fenced(String),
}

impl From<sqlx::Error> for WriteError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolClosed => WriteError::Closed,
            e => WriteError::Failed(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        WriteError::Failed(e.to_string())
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Closed => f.write_str("the store is closed"),
            WriteError::Failed(message) => f.write_str(message),
            WriteError::Guessed => f.write_str("an optimistic group guessed wrong"),
            WriteError::Fenced(message) => f.write_str(message),
        }
    }
}

/// The store's node epoch, as `meta` keeps it (text).
pub(crate) fn parse_epoch(value: &str) -> Result<i64, WriteError> {
    value
        .parse()
        .map_err(|_| inconsistent(format!("the store's node epoch {value:?} is not a number")))
}

/// A group found the database in a state it cannot be in.
fn inconsistent(message: impl Into<String>) -> WriteError {
    WriteError::Failed(message.into())
}

type Reply = oneshot::Sender<Result<Outcome, WriteError>>;

/// What the writer's queue carries.
pub(crate) enum Op {
    Write {
        request: Request,
        reply: Reply,
    },
    /// Commit what was queued before, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Counters of the writer's work.
#[derive(Debug)]
pub(crate) struct Stats {
    pub commits: AtomicU64,
    pub calls: AtomicU64,
    /// Whether the last group failed: nothing is written until one goes
    /// through again (`/readyz` asks).
    pub failing: std::sync::atomic::AtomicBool,
    /// When the transaction in progress began (ms since the epoch), 0
    /// between transactions: one that waits on a lock is not failing yet,
    /// but takes no writes either (`/readyz` asks).
    pub writing_since_ms: AtomicU64,
    pub transitions: AtomicU64,
    pub tasks_created: AtomicU64,
    /// How long each group's transaction took (Prometheus).
    pub commit_seconds: Histogram,
    /// Operations each group carried (Prometheus).
    pub commit_operations: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            commits: AtomicU64::default(),
            calls: AtomicU64::default(),
            failing: Default::default(),
            writing_since_ms: AtomicU64::default(),
            transitions: AtomicU64::default(),
            tasks_created: AtomicU64::default(),
            // 100 µs to about 6.5 s.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 4.0, 9)),
            // 1 to 4096 operations.
            commit_operations: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

/// What one group committed.
#[derive(Default)]
struct GroupCounts {
    transitions: u64,
    tasks_created: u64,
    /// The epoch a [`Request::TakeOver`] in the group raised the store to.
    epoch: Option<i64>,
}

enum WriteConn {
    Sqlite(rusqlite::Connection),
    Postgres(PgConnection),
}

impl Connector {
    async fn connect(&self) -> Result<WriteConn, WriteError> {
        Ok(match self {
            Connector::Sqlite(path) => WriteConn::Sqlite(crate::sqlite::open_writer(path)?),
            Connector::Postgres(options) => {
                WriteConn::Postgres(PgConnection::connect_with(options).await?)
            }
        })
    }
}

impl WriteConn {
    async fn close(self) {
        match self {
            WriteConn::Sqlite(conn) => {
                let _ = conn.close();
            }
            WriteConn::Postgres(conn) => {
                let _ = conn.close().await;
            }
        }
    }
}

/// The writer.
pub(crate) struct Writer {
    connector: Connector,
    queue: mpsc::Receiver<Op>,
    stats: Arc<Stats>,
    /// Kept between groups; dropped after a failure, reopened for the next.
    conn: Option<WriteConn>,
    /// SQLite: answers callers once their group is on disk.
    syncer: Option<WalSyncer>,
    /// Groups failed in a row: while the database is down, callers try
    /// again and again, and only the first failure is worth a warning.
    failing: u64,
    /// The store's epoch when this writer took it over; every group checks
    /// it first. `None`: this writer never took over, and checks nothing.
    epoch: Option<i64>,
    /// Told, once, that another server took the store over.
    fence: Arc<Fence>,
}

/// Whether another server took the store over from this one, and why.
pub(crate) type Fence = tokio::sync::watch::Sender<Option<String>>;

/// Closes the fence if the writer's thread unwinds: with the writer gone
/// nothing is written again, and a server that stayed up answered every
/// write with an error until someone restarted it; fenced, it stops, and
/// its supervisor starts it again.
struct FenceOnPanic(Arc<Fence>);

impl Drop for FenceOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.send_replace(Some(
                "the store's writer failed (a panic, logged above); nothing more can be written"
                    .into(),
            ));
        }
    }
}

impl Writer {
    /// Starts the writer's thread, fed by `queue`, once its connection is
    /// open.
    pub(crate) async fn start(
        connector: Connector,
        queue: mpsc::Receiver<Op>,
        stats: Arc<Stats>,
        fence: Arc<Fence>,
    ) -> Result<(), crate::StoreError> {
        let (ready, started) = oneshot::channel();
        std::thread::Builder::new()
            .name("tasker-store-writer".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(WriteError::Failed(e.to_string())));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let conn = match connector.connect().await {
                        Ok(conn) => conn,
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    let syncer = match &connector {
                        Connector::Sqlite(path) => match WalSyncer::start(path.clone()) {
                            Ok(syncer) => Some(syncer),
                            Err(e) => {
                                let _ = ready.send(Err(WriteError::Failed(e.to_string())));
                                return;
                            }
                        },
                        Connector::Postgres(_) => None,
                    };
                    let writer = Writer {
                        connector,
                        queue,
                        stats,
                        conn: Some(conn),
                        syncer,
                        failing: 0,
                        epoch: None,
                        fence: Arc::clone(&fence),
                    };
                    let _stopped = FenceOnPanic(fence);
                    if ready.send(Ok(())).is_ok() {
                        writer.run().await;
                    }
                });
            })
            .map_err(|e| crate::StoreError::Database(sqlx::Error::Io(e)))?;
        match started.await {
            Ok(result) => result.map_err(crate::StoreError::from),
            Err(_) => Err(crate::StoreError::Closed),
        }
    }

    async fn run(mut self) {
        while let Some(first) = self.queue.recv().await {
            let mut ops = Vec::new();
            let mut weight = 0;
            let mut shutdown = None;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::Shutdown(reply) => {
                        shutdown = Some(reply);
                        break;
                    }
                    Op::Write { request, reply } => {
                        weight += request.weight();
                        ops.push((request, reply));
                    }
                }
                if weight < GROUP_CAP {
                    next = self.queue.try_recv().ok();
                }
            }
            if !ops.is_empty() {
                self.write(ops).await;
            }
            if let Some(reply) = shutdown {
                // Whatever was queued after the shutdown is dropped with the
                // queue: its callers see the store closed.
                self.queue.close();
                self.stop().await;
                let _ = reply.send(());
                return;
            }
        }
        // Every handle on the store is gone.
        self.stop().await;
    }

    /// Answers what waits for its sync, then closes the connection.
    async fn stop(&mut self) {
        if let Some(syncer) = self.syncer.take() {
            syncer.finish();
        }
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    async fn write(&mut self, ops: Vec<(Request, Reply)>) {
        let (requests, replies): (Vec<Request>, Vec<Reply>) = ops.into_iter().unzip();
        let started = std::time::Instant::now();
        self.stats
            .writing_since_ms
            .store(crate::rows::now_ms().max(1) as u64, Ordering::Relaxed);
        let written = self.transact(&requests).await;
        self.stats.writing_since_ms.store(0, Ordering::Relaxed);
        match written {
            Ok((outcomes, counts)) => {
                if counts.epoch.is_some() {
                    self.epoch = counts.epoch;
                }
                if self.failing > 0 {
                    tracing::info!(
                        failed_before = self.failing,
                        "store writes go through again"
                    );
                    self.failing = 0;
                    self.stats.failing.store(false, Ordering::Relaxed);
                }
                self.stats
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.stats.commit_operations.observe(requests.len() as f64);
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .calls
                    .fetch_add(requests.len() as u64, Ordering::Relaxed);
                self.stats
                    .transitions
                    .fetch_add(counts.transitions, Ordering::Relaxed);
                self.stats
                    .tasks_created
                    .fetch_add(counts.tasks_created, Ordering::Relaxed);
                let answers: Vec<Answer> = requests
                    .into_iter()
                    .zip(replies)
                    .zip(outcomes)
                    .map(|((request, reply), outcome)| {
                        let outcome = match (request, outcome) {
                            (Request::Create(create), Outcome::NewTask { task_id, step_ids }) => {
                                Outcome::Created(Created::New(
                                    create.into_stored(task_id, step_ids),
                                ))
                            }
                            (_, outcome) => outcome,
                        };
                        (reply, Ok(outcome))
                    })
                    .collect();
                match &self.syncer {
                    Some(syncer) => syncer.answer_when_durable(answers),
                    None => {
                        for (reply, answer) in answers {
                            let _ = reply.send(answer);
                        }
                    }
                }
            }
            Err(error) => {
                if let WriteError::Fenced(why) = &error {
                    if self.fence.borrow().is_none() {
                        tracing::error!(%error, "another server took this store over: nothing of this one commits any more");
                        self.fence.send_replace(Some(why.clone()));
                    }
                }
                self.failing += 1;
                self.stats.failing.store(true, Ordering::Relaxed);
                if self.failing == 1 {
                    tracing::warn!(%error, operations = replies.len(), "store write failed; nothing of it was committed");
                } else {
                    tracing::debug!(%error, operations = replies.len(), failed_in_a_row = self.failing, "store write failed; nothing of it was committed");
                }
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Applies `requests` in one transaction on the writer's connection.
    async fn transact(
        &mut self,
        requests: &[Request],
    ) -> Result<(Vec<Outcome>, GroupCounts), WriteError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connector.connect().await?,
        };
        let result = match &mut conn {
            WriteConn::Sqlite(c) => {
                // IMMEDIATE takes the write lock first: a deferred transaction
                // that reads, then writes, could fail instead of waiting.
                let mut tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let result = apply(&mut tx, requests, Mode::Careful, self.epoch).await?;
                tx.commit()?;
                result
            }
            WriteConn::Postgres(c) => {
                let mut tx = c.begin().await?;
                match apply(&mut tx, requests, Mode::Optimistic, self.epoch).await {
                    Ok(result) => {
                        tx.commit().await?;
                        result
                    }
                    Err(WriteError::Guessed) => {
                        tx.rollback().await?;
                        let mut tx = c.begin().await?;
                        let result = apply(&mut tx, requests, Mode::Careful, self.epoch).await?;
                        tx.commit().await?;
                        result
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        self.conn = Some(conn);
        Ok(result)
    }
}

/// Applies a group: runs of creates, commits and cancels together, the
/// other requests one by one, all in arrival order.
/// How commits check their transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Read (and lock) the steps, check, then write.
    Careful,
    /// Where the dialect wants it: write with the checks in the UPDATE.
    Optimistic,
}

async fn apply<T: WriteTx>(
    tx: &mut T,
    requests: &[Request],
    mode: Mode,
    epoch: Option<i64>,
) -> Result<(Vec<Outcome>, GroupCounts), WriteError> {
    if let Some(mine) = epoch {
        let now = tx.epoch().await?;
        if now != mine {
            return Err(WriteError::Fenced(format!(
                "another tasker serve took this store over (the store's epoch is {now}, this server's {mine}); this one writes nothing more"
            )));
        }
    }
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut counts = GroupCounts::default();
    let mut start = 0;
    while start < requests.len() {
        if requests[start].grouped() {
            let end = requests[start..]
                .iter()
                .position(|r| !r.grouped())
                .map_or(requests.len(), |n| start + n);
            outcomes.extend(apply_grouped(tx, &requests[start..end], &mut counts, mode).await?);
            start = end;
        } else {
            let outcome = apply_single(tx, &requests[start]).await?;
            if let (Request::TakeOver, Outcome::Count(epoch)) = (&requests[start], &outcome) {
                counts.epoch = Some(*epoch as i64);
            }
            outcomes.push(outcome);
            start += 1;
        }
    }
    Ok((outcomes, counts))
}

async fn apply_single<T: WriteTx>(tx: &mut T, request: &Request) -> Result<Outcome, WriteError> {
    Ok(match request {
        Request::Claim {
            owner,
            lease_until,
            now,
        } => {
            let ids = tx.claim(owner, *lease_until, *now).await?;
            let (tasks, steps) = if ids.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                tx.load_tasks(&ids).await?
            };
            Outcome::Claimed { tasks, steps }
        }
        Request::Renew { owner, lease_until } => {
            Outcome::Count(tx.renew(owner, *lease_until).await?)
        }
        Request::Purge { cutoff, limit } => Outcome::Count(tx.purge(*cutoff, *limit).await?),
        Request::TakeOver => Outcome::Count(tx.take_over().await? as u64),
        Request::Probe { now } => {
            tx.probe(*now).await?;
            Outcome::Count(1)
        }
        Request::Create(_) | Request::Commit(_) | Request::Cancel { .. } => {
            return Err(inconsistent(
                "a grouped request reached the single-request path",
            ))
        }
    })
}

/// Creates, cancels and commits of one group, each kind in a fixed number
/// of statements.
async fn apply_grouped<T: WriteTx>(
    tx: &mut T,
    requests: &[Request],
    counts: &mut GroupCounts,
    mode: Mode,
) -> Result<Vec<Outcome>, WriteError> {
    let mut outcomes: Vec<Outcome> = requests.iter().map(|_| Outcome::Committed).collect();
    let created = create_tasks(tx, requests, &mut outcomes, counts).await?;
    request_cancels(tx, requests, &mut outcomes).await?;
    let committed = commit_transitions(tx, requests, &mut outcomes, counts, mode).await?;
    let journal: Vec<&JournalLine> = created.iter().chain(committed).collect();
    if !journal.is_empty() {
        tx.append_journal(&journal).await?;
    }
    Ok(outcomes)
}

/// The answer to a key seen before: the same request gets its task, a
/// different one a conflict.
fn repeat_of(key: &str, request_hash: &str, task_id: i64, stored_hash: &str) -> Outcome {
    if request_hash == stored_hash {
        Outcome::Created(Created::Existing { task_id })
    } else {
        Outcome::IdempotencyConflict {
            key: key.to_string(),
            task_id,
        }
    }
}

/// How a create of this group is answered.
enum Plan {
    /// Inserted (unless another writer takes its key meanwhile).
    New,
    /// Its key was first used by this earlier create of the group.
    SameAs(usize),
    /// Answered already (the key was in the store).
    Answered,
}

/// Creates the group's tasks; returns their journal lines.
async fn create_tasks<T: WriteTx>(
    tx: &mut T,
    requests: &[Request],
    outcomes: &mut [Outcome],
    counts: &mut GroupCounts,
) -> Result<Vec<JournalLine>, WriteError> {
    let creates: Vec<(usize, &PreparedCreate)> = requests
        .iter()
        .enumerate()
        .filter_map(|(i, request)| match request {
            Request::Create(create) => Some((i, &**create)),
            _ => None,
        })
        .collect();
    let mut journal = Vec::new();
    if creates.is_empty() {
        return Ok(journal);
    }
    let key_of = |n: usize| creates[n].1.new.idempotency_key.as_deref();

    let mut keys: Vec<&str> = (0..creates.len()).filter_map(key_of).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut known: HashMap<String, (i64, String)> = if keys.is_empty() {
        HashMap::new()
    } else {
        tx.tasks_by_key(&keys)
            .await?
            .into_iter()
            .map(|(key, id, hash)| (key, (id, hash)))
            .collect()
    };

    let mut plans = Vec::with_capacity(creates.len());
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    for (n, (i, create)) in creates.iter().enumerate() {
        let plan = match key_of(n) {
            Some(key) => {
                if let Some((task_id, hash)) = known.get(key) {
                    outcomes[*i] = repeat_of(key, &create.new.request_hash, *task_id, hash);
                    Plan::Answered
                } else if let Some(&first) = first_with_key.get(key) {
                    Plan::SameAs(first)
                } else {
                    first_with_key.insert(key, n);
                    Plan::New
                }
            }
            None => Plan::New,
        };
        plans.push(plan);
    }

    let new: Vec<usize> = (0..creates.len())
        .filter(|&n| matches!(plans[n], Plan::New))
        .collect();
    let mut inserted_ids: Vec<Option<i64>> = vec![None; creates.len()];
    if !new.is_empty() {
        let steps_needed = new
            .iter()
            .map(|&n| creates[n].1.new.template.steps.len())
            .sum();
        let (task_ids, step_ids) = tx.reserve_ids(new.len(), steps_needed).await?;
        if task_ids.len() != new.len() || step_ids.len() != steps_needed {
            return Err(inconsistent(format!(
                "reserved {} task ids and {} step ids for {} tasks with {steps_needed} steps",
                task_ids.len(),
                step_ids.len(),
                new.len()
            )));
        }
        let rows: Vec<NewTaskRow> = new
            .iter()
            .zip(&task_ids)
            .map(|(&n, &id)| {
                let create = creates[n].1;
                NewTaskRow {
                    id,
                    workflow: &create.new.workflow,
                    template: &create.template_json,
                    context: &create.context_json,
                    idempotency_key: create.new.idempotency_key.as_deref(),
                    request_hash: &create.new.request_hash,
                    owner: &create.new.owner,
                    lease_expires_at: create.lease_until,
                    created_at: create.created_at.timestamp_millis(),
                }
            })
            .collect();
        let inserted: HashSet<i64> = tx.insert_tasks(&rows).await?.into_iter().collect();

        let mut step_rows = Vec::with_capacity(steps_needed);
        let mut lost_keys = Vec::new();
        let mut next_step = 0;
        for (&n, &task_id) in new.iter().zip(&task_ids) {
            let (i, create) = creates[n];
            let ids = &step_ids[next_step..next_step + create.new.template.steps.len()];
            next_step += ids.len();
            if !inserted.contains(&task_id) {
                // Another writer took the key between our look-up and insert.
                lost_keys.extend(key_of(n));
                continue;
            }
            for (position, (step, &id)) in create.new.template.steps.iter().zip(ids).enumerate() {
                step_rows.push(NewStepRow {
                    id,
                    task_id,
                    position: position as i64,
                    name: &step.name,
                    handler: &step.handler,
                });
            }
            journal.push(JournalLine {
                task_id,
                step_id: None,
                from_state: "created",
                to_state: "running",
                attempt: 0,
                worker_id: None,
                at: create.created_at.timestamp_millis(),
                detail: Some(serde_json::json!({ "owner": create.new.owner }).to_string()),
            });
            inserted_ids[n] = Some(task_id);
            outcomes[i] = Outcome::NewTask {
                task_id,
                step_ids: ids.to_vec(),
            };
            counts.tasks_created += 1;
        }
        if !step_rows.is_empty() {
            tx.insert_steps(&step_rows).await?;
        }
        if !lost_keys.is_empty() {
            known.extend(
                tx.tasks_by_key(&lost_keys)
                    .await?
                    .into_iter()
                    .map(|(key, id, hash)| (key, (id, hash))),
            );
            for &n in &new {
                if inserted_ids[n].is_some() {
                    continue;
                }
                let (i, create) = creates[n];
                let key = key_of(n).unwrap_or_default();
                let (task_id, hash) = known
                    .get(key)
                    .ok_or_else(|| inconsistent("an idempotency key conflicted, then vanished"))?;
                outcomes[i] = repeat_of(key, &create.new.request_hash, *task_id, hash);
            }
        }
    }

    // A key used twice in this group: the later uses repeat the first.
    for (n, plan) in plans.iter().enumerate() {
        let Plan::SameAs(first) = *plan else { continue };
        let (i, create) = creates[n];
        let key = key_of(n).unwrap_or_default();
        outcomes[i] = match inserted_ids[first] {
            Some(task_id) => repeat_of(
                key,
                &create.new.request_hash,
                task_id,
                &creates[first].1.new.request_hash,
            ),
            None => match known.get(key) {
                Some((task_id, hash)) => repeat_of(key, &create.new.request_hash, *task_id, hash),
                None => return Err(inconsistent("an idempotency key conflicted, then vanished")),
            },
        };
    }
    Ok(journal)
}

async fn request_cancels<T: WriteTx>(
    tx: &mut T,
    requests: &[Request],
    outcomes: &mut [Outcome],
) -> Result<(), WriteError> {
    let mut ids: Vec<i64> = requests
        .iter()
        .filter_map(|request| match request {
            Request::Cancel { task_id } => Some(*task_id),
            _ => None,
        })
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    ids.dedup();
    let found: HashMap<i64, String> = tx
        .lock_tasks(&ids)
        .await?
        .into_iter()
        .map(|(id, status, _)| (id, status))
        .collect();
    let running: Vec<i64> = found
        .iter()
        .filter(|(_, status)| status.as_str() == "running")
        .map(|(id, _)| *id)
        .collect();
    if !running.is_empty() {
        tx.flag_cancel(&running).await?;
    }
    for (request, outcome) in requests.iter().zip(outcomes.iter_mut()) {
        let Request::Cancel { task_id } = request else {
            continue;
        };
        *outcome =
            Outcome::Cancel(match found.get(task_id).map(String::as_str) {
                None => CancelOutcome::NotFound,
                Some("running") => CancelOutcome::Requested,
                Some(status) => CancelOutcome::Ended(status.parse().map_err(
                    |e: tasker_engine::UnknownState| inconsistent(format!("task {task_id}: {e}")),
                )?),
            });
    }
    Ok(())
}

/// A step as the group's earlier commits left it.
struct StepNow {
    task_id: i64,
    state: StepState,
    attempt: i64,
    owner: Option<String>,
}

/// A task as the group's earlier commits left it.
struct TaskNow {
    running: bool,
    owner: Option<String>,
}

/// Applies the commit calls that hold; returns their journal lines.
async fn commit_transitions<'r, T: WriteTx>(
    tx: &mut T,
    requests: &'r [Request],
    outcomes: &mut [Outcome],
    counts: &mut GroupCounts,
    mode: Mode,
) -> Result<Vec<&'r JournalLine>, WriteError> {
    let commits: Vec<(usize, &PreparedCommit)> = requests
        .iter()
        .enumerate()
        .filter_map(|(i, request)| match request {
            Request::Commit(commit) => Some((i, commit)),
            _ => None,
        })
        .collect();
    if commits.is_empty() {
        return Ok(Vec::new());
    }
    if T::OPTIMISTIC && mode == Mode::Optimistic {
        return commit_optimistically(tx, &commits, outcomes, counts).await;
    }
    let mut step_ids = Vec::new();
    let mut task_ids = Vec::new();
    for (_, commit) in &commits {
        for transition in &commit.transitions {
            match transition.check {
                Check::Step { step_id, .. } => step_ids.push(step_id),
                Check::Task { task_id } => task_ids.push(task_id),
            }
        }
    }
    step_ids.sort_unstable();
    step_ids.dedup();
    task_ids.sort_unstable();
    task_ids.dedup();

    let mut steps: HashMap<i64, StepNow> = HashMap::with_capacity(step_ids.len());
    if !step_ids.is_empty() {
        for (id, task_id, state, attempt, owner) in tx.lock_steps(&step_ids).await? {
            let state = state.parse().map_err(|e: tasker_engine::UnknownState| {
                inconsistent(format!("step {id}: {e}"))
            })?;
            steps.insert(
                id,
                StepNow {
                    task_id,
                    state,
                    attempt,
                    owner,
                },
            );
        }
    }
    let mut tasks: HashMap<i64, TaskNow> = HashMap::new();
    if !task_ids.is_empty() {
        for (id, status, owner) in tx.lock_tasks(&task_ids).await? {
            tasks.insert(
                id,
                TaskNow {
                    running: status == "running",
                    owner,
                },
            );
        }
    }

    let (step_rows, task_rows, journal) =
        check_calls(&commits, &mut steps, &mut tasks, outcomes, counts);
    if !step_rows.is_empty() {
        let expected = step_rows.len();
        let rows: Vec<&StepUpdate> = step_rows.into_values().collect();
        let updated = tx.update_steps(&rows).await?;
        if updated != expected as u64 {
            return Err(inconsistent(format!(
                "{updated} of {expected} checked steps were updated"
            )));
        }
    }
    if !task_rows.is_empty() {
        let expected = task_rows.len();
        let updated = tx.end_tasks(&task_rows).await?;
        if updated != expected as u64 {
            return Err(inconsistent(format!(
                "{updated} of {expected} checked tasks were ended"
            )));
        }
    }
    Ok(journal)
}

/// Checks each commit call, in arrival order, against `steps` and `tasks`
/// as the calls before it left them; a call that holds updates them and
/// adds its rows, one that does not gets a conflict. Returns each step's
/// last new row, the tasks' ends and the journal lines.
#[allow(clippy::type_complexity)]
fn check_calls<'r>(
    commits: &[(usize, &'r PreparedCommit)],
    steps: &mut HashMap<i64, StepNow>,
    tasks: &mut HashMap<i64, TaskNow>,
    outcomes: &mut [Outcome],
    counts: &mut GroupCounts,
) -> (
    HashMap<i64, &'r StepUpdate>,
    Vec<&'r TaskEnd>,
    Vec<&'r JournalLine>,
) {
    let mut journal = Vec::new();
    let mut step_rows: HashMap<i64, &StepUpdate> = HashMap::new();
    let mut task_rows: Vec<&TaskEnd> = Vec::new();
    for &(i, commit) in commits {
        let owner = Some(&*commit.owner);
        // This call's changes, applied to `steps`/`tasks` only if all hold.
        let mut steps_after: Vec<(i64, StepState, i64)> = Vec::new();
        let mut tasks_after: Vec<i64> = Vec::new();
        let mut conflict = None;
        for transition in &commit.transitions {
            match transition.check {
                Check::Step {
                    task_id,
                    step_id,
                    from,
                    from_attempt,
                    to,
                    to_attempt,
                } => {
                    let current = steps_after
                        .iter()
                        .rev()
                        .find(|(id, _, _)| *id == step_id)
                        .map(|&(_, state, attempt)| (state, attempt))
                        .or_else(|| {
                            steps
                                .get(&step_id)
                                .filter(|s| s.task_id == task_id && s.owner.as_deref() == owner)
                                .map(|s| (s.state, s.attempt))
                        });
                    if current != Some((from, i64::from(from_attempt))) {
                        conflict = Some(step_id);
                        break;
                    }
                    steps_after.push((step_id, to, i64::from(to_attempt)));
                }
                Check::Task { task_id } => {
                    let running = !tasks_after.contains(&task_id)
                        && tasks
                            .get(&task_id)
                            .is_some_and(|t| t.running && t.owner.as_deref() == owner);
                    if !running {
                        // A task's own transition has no step to name.
                        conflict = Some(0);
                        break;
                    }
                    tasks_after.push(task_id);
                }
            }
        }
        if let Some(step_id) = conflict {
            outcomes[i] = Outcome::Conflict { step_id };
            continue;
        }
        for (step_id, state, attempt) in steps_after {
            if let Some(step) = steps.get_mut(&step_id) {
                step.state = state;
                step.attempt = attempt;
            }
        }
        for task_id in tasks_after {
            if let Some(task) = tasks.get_mut(&task_id) {
                task.running = false;
            }
        }
        for transition in &commit.transitions {
            match &transition.change {
                // Every row holds the step's whole state: the last one wins.
                Change::Step(row) => {
                    step_rows.insert(row.id, row);
                }
                Change::Task(row) => task_rows.push(row),
            }
            journal.push(&transition.journal);
        }
        counts.transitions += commit.transitions.len() as u64;
        outcomes[i] = Outcome::Committed;
    }

    (step_rows, task_rows, journal)
}

/// [`Mode::Optimistic`]: each step is taken to be where its first
/// transition in the group says, owned by that call's owner; the UPDATE
/// checks it. A wrong guess rolls the group back ([`WriteError::Guessed`]).
async fn commit_optimistically<'r, T: WriteTx>(
    tx: &mut T,
    commits: &[(usize, &'r PreparedCommit)],
    outcomes: &mut [Outcome],
    counts: &mut GroupCounts,
) -> Result<Vec<&'r JournalLine>, WriteError> {
    let mut steps: HashMap<i64, StepNow> = HashMap::new();
    let mut tasks: HashMap<i64, TaskNow> = HashMap::new();
    let mut expected_steps: HashMap<i64, Expected<'r>> = HashMap::new();
    let mut expected_tasks: HashMap<i64, &'r str> = HashMap::new();
    for &(_, commit) in commits {
        for transition in &commit.transitions {
            match transition.check {
                Check::Step {
                    task_id,
                    step_id,
                    from,
                    from_attempt,
                    ..
                } => {
                    expected_steps.entry(step_id).or_insert_with(|| {
                        steps.insert(
                            step_id,
                            StepNow {
                                task_id,
                                state: from,
                                attempt: i64::from(from_attempt),
                                owner: Some(commit.owner.to_string()),
                            },
                        );
                        Expected {
                            state: from.as_str(),
                            attempt: i64::from(from_attempt),
                            task_id,
                            owner: &commit.owner,
                        }
                    });
                }
                Check::Task { task_id } => {
                    expected_tasks.entry(task_id).or_insert_with(|| {
                        tasks.insert(
                            task_id,
                            TaskNow {
                                running: true,
                                owner: Some(commit.owner.to_string()),
                            },
                        );
                        &commit.owner
                    });
                }
            }
        }
    }
    let (step_rows, task_rows, journal) =
        check_calls(commits, &mut steps, &mut tasks, outcomes, counts);
    // A conflict found here may rest on a guess no UPDATE verifies (the
    // call that made it did not hold): only the careful path may report one.
    // When every call holds, every step and task guessed about gets a row,
    // and the UPDATEs below verify every guess.
    if commits
        .iter()
        .any(|&(i, _)| matches!(outcomes[i], Outcome::Conflict { .. }))
    {
        return Err(WriteError::Guessed);
    }
    if !step_rows.is_empty() {
        let rows: Vec<(&StepUpdate, Expected<'_>)> = step_rows
            .into_iter()
            .filter_map(|(id, row)| Some((row, *expected_steps.get(&id)?)))
            .collect();
        if tx.update_steps_if(&rows).await? != rows.len() as u64 {
            return Err(WriteError::Guessed);
        }
    }
    if !task_rows.is_empty() {
        let rows: Vec<(&TaskEnd, &str)> = task_rows
            .into_iter()
            .filter_map(|row| Some((row, *expected_tasks.get(&row.id)?)))
            .collect();
        if tx.end_tasks_if(&rows).await? != rows.len() as u64 {
            return Err(WriteError::Guessed);
        }
    }
    Ok(journal)
}

#[cfg(test)]
mod panic_tests {
    use super::*;

    #[test]
    fn a_writer_thread_that_panics_fences_the_store_and_one_that_ends_does_not() {
        let fence = Arc::new(Fence::new(None));
        let guarded = Arc::clone(&fence);
        let ended = std::thread::spawn(move || {
            let _stopped = FenceOnPanic(guarded);
        });
        ended.join().unwrap();
        assert_eq!(*fence.borrow(), None, "a clean end is not a failure");
        let guarded = Arc::clone(&fence);
        let failed = std::thread::spawn(move || {
            let _stopped = FenceOnPanic(guarded);
            panic!("a bug in a write");
        });
        assert!(failed.join().is_err());
        assert!(fence
            .borrow()
            .as_deref()
            .is_some_and(|why| why.contains("the store's writer failed")));
    }
}
