//! The PostgreSQL dialect.
//!
//! Written so that several `serve` instances can share one database later:
//! the writer locks the rows it checks (`FOR UPDATE`, and `FOR SHARE` on
//! the owning task, so a claim cannot move it meanwhile), claims skip rows
//! another instance has locked (`FOR UPDATE SKIP LOCKED`), ids come from
//! sequences, and an idempotency key taken by another instance between our
//! look-up and our insert is skipped (`ON CONFLICT DO NOTHING`) and looked
//! up again. A group's rows go in as one array per column, taken apart with
//! `unnest` (half the cost per row of one JSON array and
//! `json_to_recordset`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use crate::rows::{
    ClaimedTaskRow, JournalLine, NewStepRow, NewTaskRow, StepLock, StepRow, StepUpdate, TaskEnd,
    TaskLock, CLAIMED_TASK_COLUMNS, STEP_COLUMNS,
};
use crate::writer::{Expected, WriteError, WriteTx};
use crate::StoreError;

/// Connections for readers (the writer has its own).
const READERS: u32 = 8;

/// Longest a read waits for a connection. sqlx's default, 30 s, kept an
/// API request waiting that long while PostgreSQL was down (sqlx retries a
/// refused connection until then); 10 s covers a database restart's usual
/// gap and then answers, as 503 `store-unavailable`.
const READ_WAIT: Duration = Duration::from_secs(10);

/// One column of a batch of rows, bound as an array for `unnest`.
fn column<'r, R, T>(rows: &'r [R], field: impl Fn(&'r R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// A failed connection, naming where it went (the driver's message says
/// only "Connection refused").
pub(crate) fn connect_error(options: &PgConnectOptions, source: sqlx::Error) -> StoreError {
    let target = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    StoreError::Connect {
        target: format!("{target}/{}", options.get_database().unwrap_or_default()),
        source,
    }
}

/// Connects to the server `url` names: the pool readers use.
pub(crate) async fn connect(url: &str) -> Result<(PgPool, PgConnectOptions), StoreError> {
    let options = PgConnectOptions::from_str(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(READERS)
        .acquire_timeout(READ_WAIT)
        .connect_with(options.clone())
        .await
        .map_err(|e| connect_error(&options, e))?;
    // Asked before the migrations make the tables: as SQLite's line does,
    // so a misspelt database name shows at the first line.
    let existing: bool = sqlx::query_scalar("SELECT to_regclass('tasks') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    let database = options.get_database().unwrap_or_default();
    if existing {
        tracing::info!(
            host = options.get_host(),
            database,
            "opened the PostgreSQL store"
        );
    } else {
        tracing::info!(
            host = options.get_host(),
            database,
            "created a new, empty PostgreSQL store (the database had no tasker tables)"
        );
    }
    Ok((pool, options))
}

/// The advisory lock key that orders epoch raises after the groups under
/// way ("tasker" and 2; the node lock is 1).
const EPOCH_LOCK_KEY: i64 = 0x7461_736b_6572_0002;

impl WriteTx for Transaction<'_, Postgres> {
    // Locking a row writes it (and logs the write): checking in the UPDATE
    // saves a statement and a write per step.
    const OPTIMISTIC: bool = true;

    async fn tasks_by_key(
        &mut self,
        keys: &[&str],
    ) -> Result<Vec<(String, i64, String)>, WriteError> {
        sqlx::query_as(
            "SELECT idempotency_key, id, request_hash FROM tasks WHERE idempotency_key = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&mut **self)
        .await
        .map_err(WriteError::from)
    }

    async fn reserve_ids(
        &mut self,
        tasks: usize,
        steps: usize,
    ) -> Result<(Vec<i64>, Vec<i64>), WriteError> {
        let (mut task_ids, mut step_ids): (Vec<i64>, Vec<i64>) = sqlx::query_as(
            "SELECT \
               ARRAY(SELECT nextval(pg_get_serial_sequence('tasks', 'id')) \
                     FROM generate_series(1, $1)), \
               ARRAY(SELECT nextval(pg_get_serial_sequence('steps', 'id')) \
                     FROM generate_series(1, $2))",
        )
        .bind(tasks as i64)
        .bind(steps as i64)
        .fetch_one(&mut **self)
        .await?;
        // Ascending, so ids follow the order tasks and steps were asked for.
        task_ids.sort_unstable();
        step_ids.sort_unstable();
        Ok((task_ids, step_ids))
    }

    async fn insert_tasks(&mut self, rows: &[NewTaskRow<'_>]) -> Result<Vec<i64>, WriteError> {
        sqlx::query_scalar(
            "INSERT INTO tasks (id, workflow, template, context, status, idempotency_key, \
                                request_hash, owner, lease_expires_at, created_at) \
             SELECT v.id, v.workflow, v.template, v.context, 'running', v.idempotency_key, \
                    v.request_hash, v.owner, v.lease_expires_at, v.created_at \
             FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::text[], $7::text[], $8::bigint[], $9::bigint[]) \
                  AS v(id, workflow, template, context, idempotency_key, request_hash, owner, \
                       lease_expires_at, created_at) \
             ON CONFLICT (idempotency_key) DO NOTHING \
             RETURNING id",
        )
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.workflow))
        .bind(column(rows, |r| r.template))
        .bind(column(rows, |r| r.context))
        .bind(column(rows, |r| r.idempotency_key))
        .bind(column(rows, |r| r.request_hash))
        .bind(column(rows, |r| r.owner))
        .bind(column(rows, |r| r.lease_expires_at))
        .bind(column(rows, |r| r.created_at))
        .fetch_all(&mut **self)
        .await
        .map_err(WriteError::from)
    }

    async fn insert_steps(&mut self, rows: &[NewStepRow<'_>]) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "INSERT INTO steps (id, task_id, position, name, handler, state, attempt) \
             SELECT v.id, v.task_id, v.position, v.name, v.handler, 'waiting', 0 \
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[]) \
                  AS v(id, task_id, position, name, handler)",
        )
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.task_id))
        .bind(column(rows, |r| r.position))
        .bind(column(rows, |r| r.name))
        .bind(column(rows, |r| r.handler))
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn lock_tasks(&mut self, ids: &[i64]) -> Result<Vec<TaskLock>, WriteError> {
        sqlx::query_as(
            "SELECT id, status, owner FROM tasks WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind(ids)
        .fetch_all(&mut **self)
        .await
        .map_err(WriteError::from)
    }

    async fn lock_steps(&mut self, ids: &[i64]) -> Result<Vec<StepLock>, WriteError> {
        sqlx::query_as(
            "SELECT s.id, s.task_id, s.state, s.attempt, t.owner \
             FROM steps AS s JOIN tasks AS t ON t.id = s.task_id \
             WHERE s.id = ANY($1) ORDER BY s.id \
             FOR UPDATE OF s FOR SHARE OF t",
        )
        .bind(ids)
        .fetch_all(&mut **self)
        .await
        .map_err(WriteError::from)
    }

    async fn flag_cancel(&mut self, ids: &[i64]) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "UPDATE tasks SET cancel_requested = TRUE WHERE id = ANY($1) AND status = 'running'",
        )
        .bind(ids)
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn update_steps(&mut self, rows: &[&StepUpdate]) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "UPDATE steps AS s SET \
               state = v.state, attempt = v.attempt, next_run_at = v.next_run_at, \
               dispatched_by = v.dispatched_by, first_dispatched_at = v.first_dispatched_at, \
               ended_at = v.ended_at, worker_id = v.worker_id, output = v.output, \
               error = v.error, blocked_by = v.blocked_by \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
                         $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], \
                         $11::text[]) \
                  AS v(id, state, attempt, next_run_at, dispatched_by, first_dispatched_at, \
                       ended_at, worker_id, output, error, blocked_by) \
             WHERE s.id = v.id",
        )
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.state))
        .bind(column(rows, |r| r.attempt))
        .bind(column(rows, |r| r.next_run_at))
        .bind(column(rows, |r| r.dispatched_by.as_deref()))
        .bind(column(rows, |r| r.first_dispatched_at))
        .bind(column(rows, |r| r.ended_at))
        .bind(column(rows, |r| r.worker_id.as_deref()))
        .bind(column(rows, |r| r.output.as_deref()))
        .bind(column(rows, |r| r.error.as_deref()))
        .bind(column(rows, |r| r.blocked_by.as_deref()))
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    // The owner is checked, never searched by: written `IS NOT DISTINCT
    // FROM` so that the planner cannot pick the index of running tasks by
    // owner (every running task of the owner, for each row) over the key.
    async fn update_steps_if(
        &mut self,
        rows: &[(&StepUpdate, Expected<'_>)],
    ) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "UPDATE steps AS s SET \
               state = v.state, attempt = v.attempt, next_run_at = v.next_run_at, \
               dispatched_by = v.dispatched_by, first_dispatched_at = v.first_dispatched_at, \
               ended_at = v.ended_at, worker_id = v.worker_id, output = v.output, \
               error = v.error, blocked_by = v.blocked_by \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
                         $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[], \
                         $11::text[], $12::text[], $13::bigint[], $14::bigint[], $15::text[]) \
                  AS v(id, state, attempt, next_run_at, dispatched_by, first_dispatched_at, \
                       ended_at, worker_id, output, error, blocked_by, \
                       expected_state, expected_attempt, task_id, owner) \
             WHERE s.id = v.id AND s.state = v.expected_state \
               AND s.attempt = v.expected_attempt AND s.task_id = v.task_id \
               AND EXISTS (SELECT 1 FROM tasks AS t \
                           WHERE t.id = v.task_id AND t.owner IS NOT DISTINCT FROM v.owner)",
        )
        .bind(column(rows, |(r, _)| r.id))
        .bind(column(rows, |(r, _)| r.state))
        .bind(column(rows, |(r, _)| r.attempt))
        .bind(column(rows, |(r, _)| r.next_run_at))
        .bind(column(rows, |(r, _)| r.dispatched_by.as_deref()))
        .bind(column(rows, |(r, _)| r.first_dispatched_at))
        .bind(column(rows, |(r, _)| r.ended_at))
        .bind(column(rows, |(r, _)| r.worker_id.as_deref()))
        .bind(column(rows, |(r, _)| r.output.as_deref()))
        .bind(column(rows, |(r, _)| r.error.as_deref()))
        .bind(column(rows, |(r, _)| r.blocked_by.as_deref()))
        .bind(column(rows, |(_, e)| e.state))
        .bind(column(rows, |(_, e)| e.attempt))
        .bind(column(rows, |(_, e)| e.task_id))
        .bind(column(rows, |(_, e)| e.owner))
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn end_tasks_if(&mut self, rows: &[(&TaskEnd, &str)]) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "UPDATE tasks AS t SET \
               status = v.status, finished_at = v.finished_at, lease_expires_at = NULL \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[]) \
                  AS v(id, status, finished_at, owner) \
             WHERE t.id = v.id AND t.status = 'running' \
               AND t.owner IS NOT DISTINCT FROM v.owner",
        )
        .bind(column(rows, |(r, _)| r.id))
        .bind(column(rows, |(r, _)| r.status))
        .bind(column(rows, |(r, _)| r.finished_at))
        .bind(column(rows, |(_, owner)| *owner))
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn end_tasks(&mut self, rows: &[&TaskEnd]) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "UPDATE tasks AS t SET \
               status = v.status, finished_at = v.finished_at, lease_expires_at = NULL \
             FROM unnest($1::bigint[], $2::text[], $3::bigint[]) AS v(id, status, finished_at) \
             WHERE t.id = v.id",
        )
        .bind(column(rows, |r| r.id))
        .bind(column(rows, |r| r.status))
        .bind(column(rows, |r| r.finished_at))
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn append_journal(&mut self, rows: &[&JournalLine]) -> Result<u64, WriteError> {
        // unnest keeps the rows' order, so seq follows the journal's order.
        Ok(sqlx::query(
            "INSERT INTO transitions (task_id, step_id, from_state, to_state, attempt, \
                                      worker_id, at, detail) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                                  $5::bigint[], $6::text[], $7::bigint[], $8::text[])",
        )
        .bind(column(rows, |r| r.task_id))
        .bind(column(rows, |r| r.step_id))
        .bind(column(rows, |r| r.from_state))
        .bind(column(rows, |r| r.to_state))
        .bind(column(rows, |r| r.attempt))
        .bind(column(rows, |r| r.worker_id.as_deref()))
        .bind(column(rows, |r| r.at))
        .bind(column(rows, |r| r.detail.as_deref()))
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn claim(
        &mut self,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<i64>, WriteError> {
        sqlx::query_scalar(
            "UPDATE tasks SET owner = $1, lease_expires_at = $2 \
             WHERE id IN ( \
               SELECT id FROM tasks \
               WHERE status = 'running' \
                 AND (owner = $1 OR owner IS NULL OR lease_expires_at IS NULL \
                      OR lease_expires_at < $3) \
               FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .fetch_all(&mut **self)
        .await
        .map_err(WriteError::from)
    }

    async fn load_tasks(
        &mut self,
        ids: &[i64],
    ) -> Result<(Vec<ClaimedTaskRow>, Vec<StepRow>), WriteError> {
        let tasks = sqlx::query_as(&format!(
            "SELECT {CLAIMED_TASK_COLUMNS} FROM tasks WHERE id = ANY($1) ORDER BY id"
        ))
        .bind(ids)
        .fetch_all(&mut **self)
        .await?;
        let steps = sqlx::query_as(&format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE task_id = ANY($1) ORDER BY task_id, position"
        ))
        .bind(ids)
        .fetch_all(&mut **self)
        .await?;
        Ok((tasks, steps))
    }

    async fn renew(&mut self, owner: &str, lease_until: i64) -> Result<u64, WriteError> {
        Ok(sqlx::query(
            "UPDATE tasks SET lease_expires_at = $2 WHERE owner = $1 AND status = 'running'",
        )
        .bind(owner)
        .bind(lease_until)
        .execute(&mut **self)
        .await?
        .rows_affected())
    }

    async fn take_over(&mut self) -> Result<i64, WriteError> {
        // Exclusive: waits for every group holding the shared lock (below)
        // to end, so none commits after this raise on the old epoch.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EPOCH_LOCK_KEY)
            .execute(&mut **self)
            .await?;
        let epoch: String = sqlx::query_scalar(
            "INSERT INTO meta (key, value) VALUES ($1, '1') \
             ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + 1)::text \
             RETURNING value",
        )
        .bind(crate::reads::NODE_EPOCH_KEY)
        .fetch_one(&mut **self)
        .await?;
        crate::writer::parse_epoch(&epoch)
    }

    async fn probe(&mut self, now: i64) -> Result<(), WriteError> {
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(crate::reads::WRITE_PROBE_KEY)
        .bind(now.to_string())
        .execute(&mut **self)
        .await?;
        Ok(())
    }

    async fn epoch(&mut self) -> Result<i64, WriteError> {
        // Taken before the read, and the read is a statement of its own: its
        // snapshot then sees every raise committed before the lock.
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(EPOCH_LOCK_KEY)
            .execute(&mut **self)
            .await?;
        let epoch: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(crate::reads::NODE_EPOCH_KEY)
            .fetch_optional(&mut **self)
            .await?;
        epoch.as_deref().map_or(Ok(0), crate::writer::parse_epoch)
    }

    async fn purge(&mut self, cutoff: i64, limit: i64) -> Result<u64, WriteError> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM tasks \
             WHERE finished_at IS NOT NULL AND finished_at < $1 AND status <> 'running' \
             ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&mut **self)
        .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        sqlx::query("DELETE FROM transitions WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(&mut **self)
            .await?;
        sqlx::query("DELETE FROM steps WHERE task_id = ANY($1)")
            .bind(&ids)
            .execute(&mut **self)
            .await?;
        Ok(sqlx::query("DELETE FROM tasks WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut **self)
            .await?
            .rows_affected())
    }
}
