//! What the store tests share: a real database of each kind, a task to
//! create, and the transitions an engine would commit.

#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tasker_engine::{Journal, JournalError, StepSnapshot, StepState, TaskTemplate, Transition};
use tasker_pgtest::PgServer;
use tasker_protocol::StepExecutionError;
use tasker_store::{Created, NewTask, Store};
use tempfile::TempDir;

/// A database a test opens (and may reopen).
pub struct TestDb {
    pub url: String,
    /// Keeps the SQLite file's folder while the test runs.
    _dir: Option<TempDir>,
}

impl TestDb {
    pub async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.url))
    }
}

/// A new SQLite file, in a folder that does not exist yet.
pub fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}/data/tasker.db", dir.path().display());
    TestDb {
        url,
        _dir: Some(dir),
    }
}

/// A new database on this test binary's PostgreSQL server, started on
/// first use. No PostgreSQL installed is a failure, not a skip.
pub fn postgres() -> TestDb {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    let server =
        SERVER.get_or_init(|| PgServer::start().unwrap_or_else(|e| panic!("PostgreSQL: {e}")));
    TestDb {
        url: server.fresh_database().expect("create a database"),
        _dir: None,
    }
}

/// Defines, for each `async fn NAME(db: TestDb)` given, a test
/// `sqlite::NAME` and a test `postgres::NAME`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::sqlite()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::postgres()).await
                }
            )*
        }
    };
}

/// `fetch → transform → publish`, with the fields a template can have.
pub fn template() -> TaskTemplate {
    TaskTemplate::from_yaml_str(
        r#"
name: etl
description: three steps in a row
defaults:
  timeout_ms: 5000
  retry: { max_attempts: 4, initial_ms: 50 }
steps:
  - name: fetch
    handler: http_get
    handler_config: { url: "https://example.invalid", headers: { accept: json } }
  - name: transform
    handler: jq
    depends_on: [fetch]
    retry: { max_attempts: 2, multiplier: 1.5, jitter: 0.0 }
  - name: publish
    handler: s3_put
    depends_on: [transform]
    timeout_ms: 100
"#,
    )
    .unwrap()
}

pub fn new_task(owner: &str, context: Value, key: Option<&str>) -> NewTask {
    let template = template();
    NewTask {
        workflow: template.name.clone(),
        request_hash: format!("hash-of-{context}"),
        template,
        context,
        idempotency_key: key.map(str::to_string),
        owner: owner.to_string(),
        lease: Duration::from_secs(60),
    }
}

/// Creates a task that must be new; returns `(task_id, step_ids)`.
pub async fn create(store: &Store, owner: &str, context: Value) -> (i64, Vec<i64>) {
    match store
        .create_task(new_task(owner, context, None))
        .await
        .unwrap()
    {
        Created::New(task) => (task.task_id, task.steps.iter().map(|s| s.step_id).collect()),
        other => panic!("expected a new task, got {other:?}"),
    }
}

/// Now, at the millisecond precision the store keeps.
pub fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
}

/// Commits `transitions` through `journal`, which must refuse them all as
/// a conflict: on step `on`, or on any step when `None`.
pub async fn assert_conflict(journal: &dyn Journal, transitions: Vec<Transition>, on: Option<i64>) {
    match journal.commit(transitions).await {
        Err(JournalError::Conflict { step_id }) => {
            if let Some(on) = on {
                assert_eq!(step_id, on, "the conflict names the stale step");
            }
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

pub fn step(task_id: i64, step_id: i64, from: &StepSnapshot, to: StepSnapshot) -> Transition {
    Transition::Step {
        task_id,
        step_id,
        from_state: from.state,
        from_attempt: from.attempt,
        to: Box::new(to),
        at: now(),
    }
}

/// The next attempt handed to executor `by`.
pub fn running(prev: &StepSnapshot, by: &str) -> StepSnapshot {
    StepSnapshot {
        state: StepState::Running,
        attempt: prev.attempt + 1,
        next_run_at: None,
        dispatched_by: Some(by.to_string()),
        first_dispatched_at: prev.first_dispatched_at.or(Some(now())),
        ..prev.clone()
    }
}

pub fn completed(prev: &StepSnapshot, worker: &str, output: Value) -> StepSnapshot {
    StepSnapshot {
        state: StepState::Completed,
        dispatched_by: None,
        ended_at: Some(now()),
        worker_id: Some(worker.to_string()),
        output: Some(output),
        ..prev.clone()
    }
}

pub fn retry_wait(prev: &StepSnapshot, worker: &str, next_run_at: DateTime<Utc>) -> StepSnapshot {
    StepSnapshot {
        state: StepState::RetryWait,
        dispatched_by: None,
        next_run_at: Some(next_run_at),
        worker_id: Some(worker.to_string()),
        error: Some(StepExecutionError::new(
            "Timeout::Error",
            "upstream took too long",
            true,
        )),
        ..prev.clone()
    }
}

pub fn ended(prev: &StepSnapshot, state: StepState) -> StepSnapshot {
    StepSnapshot {
        state,
        dispatched_by: None,
        ended_at: Some(now()),
        ..prev.clone()
    }
}

pub fn context(n: usize) -> Value {
    json!({ "order": n, "items": ["a", "b"], "note": "ünïcode \"quoted\"" })
}

/// Another connection holding what the store's writer needs next: the
/// write lock (SQLite) or task `task_id`'s row (PostgreSQL, where the
/// writer locks the tasks it cancels). The writer blocks on its next group
/// until [`release`](Self::release), and everything sent meanwhile queues.
pub enum WriterBlock {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl WriterBlock {
    pub async fn hold(db: &TestDb, task_id: i64) -> WriterBlock {
        use sqlx::Connection;
        if db.url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            WriterBlock::Sqlite(conn)
        } else {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
            sqlx::query("SELECT id FROM tasks WHERE id = $1 FOR UPDATE")
                .bind(task_id)
                .execute(&mut conn)
                .await
                .unwrap();
            WriterBlock::Postgres(conn)
        }
    }

    pub async fn release(self) {
        match self {
            WriterBlock::Sqlite(mut conn) => {
                sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
            }
            WriterBlock::Postgres(mut conn) => {
                sqlx::query("COMMIT").execute(&mut conn).await.unwrap();
            }
        }
    }
}
