//! The SQLite dialect: an embedded file in WAL mode.
//!
//! Readers use a sqlx pool. The writer has a connection of its own, opened
//! with rusqlite on the same bundled SQLite: it runs every statement on the
//! writer's thread. Through sqlx each statement would be a round trip to
//! the connection's worker thread and each result row a message back; with
//! a group's hundreds of rows that capped the writer near half the speed.
//!
//! The writer holds SQLite's one write lock for each group (`BEGIN
//! IMMEDIATE`), so its checks and writes see no other writer; readers
//! work beside it (WAL). Rows are written one statement each, from cached
//! prepared statements: in-process, that is cheaper than any multi-row
//! form (`json_each` re-parses JSON for every column it extracts).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, ToSql, Transaction};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::rows::{
    ClaimedTaskRow, JournalLine, NewStepRow, NewTaskRow, StepLock, StepRow, StepUpdate, TaskEnd,
    TaskLock, CLAIMED_TASK_COLUMNS, STEP_COLUMNS,
};
use crate::writer::{Expected, WriteError, WriteTx};
use crate::StoreError;

/// `UPDATE steps` of every persisted field (`?1` the step's id, `?2`–`?11`
/// in the order of [`step_values`]), with more conditions appended to the
/// `WHERE`.
macro_rules! update_step_sql {
    ($and:literal) => {
        concat!(
            "UPDATE steps SET \
               state = ?2, attempt = ?3, next_run_at = ?4, dispatched_by = ?5, \
               first_dispatched_at = ?6, ended_at = ?7, worker_id = ?8, output = ?9, \
               error = ?10, blocked_by = ?11 \
             WHERE id = ?1",
            $and
        )
    };
}

/// A step row's values for [`update_step_sql`], `?1` to `?11`.
fn step_values(row: &StepUpdate) -> [&dyn ToSql; 11] {
    [
        &row.id,
        &row.state,
        &row.attempt,
        &row.next_run_at,
        &row.dispatched_by,
        &row.first_dispatched_at,
        &row.ended_at,
        &row.worker_id,
        &row.output,
        &row.error,
        &row.blocked_by,
    ]
}

/// Connections for readers (the writer has its own).
const READERS: u32 = 4;

/// How long a connection waits for another's lock before failing.
///
/// Only another process takes one (the one `tasker serve` writes alone):
/// a `sqlite3` shell in a transaction, a `VACUUM`. At 30 s a create waited
/// out its client's default timeout, and the client never saw the 503 the
/// failure becomes, nor learnt that nothing was created.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pages of cache per connection, in KiB (SQLite's negative `cache_size`).
const CACHE_KIB: i64 = 16_000;

/// Opens (creating it and its folder) the database file at `path`: the
/// pool readers use.
pub(crate) async fn connect(path: &Path) -> Result<SqlitePool, StoreError> {
    let new = !path.exists();
    let mut new_folder = None;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            new_folder = Some(parent.display().to_string());
        }
        std::fs::create_dir_all(parent)
            .map_err(|e| StoreError::File(format!("creating {}: {e}", parent.display())))?;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .pragma("temp_store", "memory")
        .pragma("cache_size", format!("-{CACHE_KIB}"));
    let pool = SqlitePoolOptions::new()
        .max_connections(READERS)
        .connect_with(options)
        .await?;
    // A misspelt path makes a new, empty store rather than an error (the
    // default's folder must be made on a first start): say which it was.
    match (new, new_folder) {
        (false, _) => tracing::info!(path = %path.display(), "opened the SQLite store"),
        (true, None) => tracing::info!(path = %path.display(), "created a new, empty SQLite store"),
        (true, Some(folder)) => tracing::info!(
            path = %path.display(),
            %folder,
            "created a new, empty SQLite store and its folder"
        ),
    }
    Ok(pool)
}

/// The writer's connection to the file at `path` (which [`connect`] has
/// created and put in WAL mode).
pub(crate) fn open_writer(path: &Path) -> Result<rusqlite::Connection, rusqlite::Error> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // NORMAL: a commit does not wait for the disk; the WAL syncer does,
    // before anyone is told (see wal_sync.rs).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

fn step_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StepRow> {
    Ok(StepRow {
        id: row.get(0)?,
        task_id: row.get(1)?,
        name: row.get(2)?,
        handler: row.get(3)?,
        state: row.get(4)?,
        attempt: row.get(5)?,
        next_run_at: row.get(6)?,
        dispatched_by: row.get(7)?,
        first_dispatched_at: row.get(8)?,
        ended_at: row.get(9)?,
        worker_id: row.get(10)?,
        output: row.get(11)?,
        error: row.get(12)?,
        blocked_by: row.get(13)?,
    })
}

fn claimed_task_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClaimedTaskRow> {
    Ok(ClaimedTaskRow {
        id: row.get(0)?,
        template: row.get(1)?,
        context: row.get(2)?,
        created_at: row.get(3)?,
        cancel_requested: row.get(4)?,
    })
}

impl WriteTx for Transaction<'_> {
    // The writer holds the only write lock; reading first costs no lock.
    const OPTIMISTIC: bool = false;

    async fn tasks_by_key(
        &mut self,
        keys: &[&str],
    ) -> Result<Vec<(String, i64, String)>, WriteError> {
        let mut select =
            self.prepare_cached("SELECT id, request_hash FROM tasks WHERE idempotency_key = ?1")?;
        let mut found = Vec::new();
        for &key in keys {
            let row = select
                .query_row([key], |row| Ok((key.to_string(), row.get(0)?, row.get(1)?)))
                .optional()?;
            found.extend(row);
        }
        Ok(found)
    }

    async fn reserve_ids(
        &mut self,
        tasks: usize,
        steps: usize,
    ) -> Result<(Vec<i64>, Vec<i64>), WriteError> {
        // The write lock is ours: nobody else takes ids until we commit.
        // AUTOINCREMENT's high-water mark (sqlite_sequence) moves past the
        // ids we insert, so a purged task's ids are never handed out again.
        let (last_task, last_step): (i64, i64) = self
            .prepare_cached(
                "SELECT \
                   max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tasks'), 0), \
                       coalesce((SELECT max(id) FROM tasks), 0)), \
                   max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'steps'), 0), \
                       coalesce((SELECT max(id) FROM steps), 0))",
            )?
            .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        Ok((
            (1..=tasks as i64).map(|n| last_task + n).collect(),
            (1..=steps as i64).map(|n| last_step + n).collect(),
        ))
    }

    async fn insert_tasks(&mut self, rows: &[NewTaskRow<'_>]) -> Result<Vec<i64>, WriteError> {
        let mut insert = self.prepare_cached(
            "INSERT INTO tasks (id, workflow, template, context, status, idempotency_key, \
                                request_hash, owner, lease_expires_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )?;
        let mut inserted = Vec::with_capacity(rows.len());
        for row in rows {
            let changed = insert.execute(params![
                row.id,
                row.workflow,
                row.template,
                row.context,
                row.idempotency_key,
                row.request_hash,
                row.owner,
                row.lease_expires_at,
                row.created_at,
            ])?;
            if changed == 1 {
                inserted.push(row.id);
            }
        }
        Ok(inserted)
    }

    async fn insert_steps(&mut self, rows: &[NewStepRow<'_>]) -> Result<u64, WriteError> {
        let mut insert = self.prepare_cached(
            "INSERT INTO steps (id, task_id, position, name, handler, state, attempt) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'waiting', 0)",
        )?;
        let mut inserted = 0;
        for row in rows {
            inserted += insert.execute(params![
                row.id,
                row.task_id,
                row.position,
                row.name,
                row.handler
            ])?;
        }
        Ok(inserted as u64)
    }

    async fn lock_tasks(&mut self, ids: &[i64]) -> Result<Vec<TaskLock>, WriteError> {
        let mut select = self.prepare_cached("SELECT status, owner FROM tasks WHERE id = ?1")?;
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            let row = select
                .query_row([id], |row| Ok((id, row.get(0)?, row.get(1)?)))
                .optional()?;
            found.extend(row);
        }
        Ok(found)
    }

    async fn lock_steps(&mut self, ids: &[i64]) -> Result<Vec<StepLock>, WriteError> {
        let ids = serde_json::to_string(ids).map_err(|e| WriteError::Failed(e.to_string()))?;
        let mut select = self.prepare_cached(
            "SELECT s.id, s.task_id, s.state, s.attempt, t.owner \
             FROM steps AS s JOIN tasks AS t ON t.id = s.task_id \
             WHERE s.id IN (SELECT value FROM json_each(?1))",
        )?;
        let found = select
            .query_map([ids], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(found)
    }

    async fn flag_cancel(&mut self, ids: &[i64]) -> Result<u64, WriteError> {
        let mut update = self.prepare_cached(
            "UPDATE tasks SET cancel_requested = TRUE WHERE id = ?1 AND status = 'running'",
        )?;
        let mut flagged = 0;
        for &id in ids {
            flagged += update.execute([id])?;
        }
        Ok(flagged as u64)
    }

    async fn update_steps(&mut self, rows: &[&StepUpdate]) -> Result<u64, WriteError> {
        let mut update = self.prepare_cached(update_step_sql!(""))?;
        let mut updated = 0;
        for row in rows {
            updated += update.execute(&step_values(row)[..])?;
        }
        Ok(updated as u64)
    }

    async fn update_steps_if(
        &mut self,
        rows: &[(&StepUpdate, Expected<'_>)],
    ) -> Result<u64, WriteError> {
        let mut update = self.prepare_cached(update_step_sql!(
            " AND state = ?12 AND attempt = ?13 AND task_id = ?14 \
              AND EXISTS (SELECT 1 FROM tasks WHERE tasks.id = ?14 AND tasks.owner = ?15)"
        ))?;
        let mut updated = 0;
        for (row, expected) in rows {
            let mut values = step_values(row).to_vec();
            values.extend([
                &expected.state as &dyn ToSql,
                &expected.attempt,
                &expected.task_id,
                &expected.owner,
            ]);
            updated += update.execute(&values[..])?;
        }
        Ok(updated as u64)
    }

    async fn end_tasks_if(&mut self, rows: &[(&TaskEnd, &str)]) -> Result<u64, WriteError> {
        let mut update = self.prepare_cached(
            "UPDATE tasks SET status = ?2, finished_at = ?3, lease_expires_at = NULL \
             WHERE id = ?1 AND status = 'running' AND owner = ?4",
        )?;
        let mut updated = 0;
        for (row, owner) in rows {
            updated += update.execute(params![row.id, row.status, row.finished_at, owner])?;
        }
        Ok(updated as u64)
    }

    async fn end_tasks(&mut self, rows: &[&TaskEnd]) -> Result<u64, WriteError> {
        let mut update = self.prepare_cached(
            "UPDATE tasks SET status = ?2, finished_at = ?3, lease_expires_at = NULL WHERE id = ?1",
        )?;
        let mut updated = 0;
        for row in rows {
            updated += update.execute(params![row.id, row.status, row.finished_at])?;
        }
        Ok(updated as u64)
    }

    async fn append_journal(&mut self, rows: &[&JournalLine]) -> Result<u64, WriteError> {
        let mut insert = self.prepare_cached(
            "INSERT INTO transitions (task_id, step_id, from_state, to_state, attempt, \
                                      worker_id, at, detail) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        for row in rows {
            insert.execute(params![
                row.task_id,
                row.step_id,
                row.from_state,
                row.to_state,
                row.attempt,
                row.worker_id,
                row.at,
                row.detail,
            ])?;
        }
        Ok(rows.len() as u64)
    }

    async fn claim(
        &mut self,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> Result<Vec<i64>, WriteError> {
        let mut update = self.prepare_cached(
            "UPDATE tasks SET owner = ?1, lease_expires_at = ?2 \
             WHERE status = 'running' \
               AND (owner = ?1 OR owner IS NULL OR lease_expires_at IS NULL \
                    OR lease_expires_at < ?3) \
             RETURNING id",
        )?;
        let mut ids = update
            .query_map(params![owner, lease_until, now], |row| row.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn load_tasks(
        &mut self,
        ids: &[i64],
    ) -> Result<(Vec<ClaimedTaskRow>, Vec<StepRow>), WriteError> {
        let mut task = self.prepare_cached(&format!(
            "SELECT {CLAIMED_TASK_COLUMNS} FROM tasks WHERE id = ?1"
        ))?;
        let mut steps_of = self.prepare_cached(&format!(
            "SELECT {STEP_COLUMNS} FROM steps WHERE task_id = ?1 ORDER BY position"
        ))?;
        let mut tasks = Vec::with_capacity(ids.len());
        let mut steps = Vec::new();
        for &id in ids {
            if let Some(row) = task.query_row([id], claimed_task_row).optional()? {
                tasks.push(row);
                for step in steps_of.query_map([id], step_row)? {
                    steps.push(step?);
                }
            }
        }
        Ok((tasks, steps))
    }

    async fn renew(&mut self, owner: &str, lease_until: i64) -> Result<u64, WriteError> {
        let renewed = self
            .prepare_cached(
                "UPDATE tasks SET lease_expires_at = ?2 WHERE owner = ?1 AND status = 'running'",
            )?
            .execute(params![owner, lease_until])?;
        Ok(renewed as u64)
    }

    async fn take_over(&mut self) -> Result<i64, WriteError> {
        // The writer's transaction holds the database's write lock: no
        // other writer's group is under way.
        let epoch: String = self
            .prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, '1') \
                 ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) \
                 RETURNING value",
            )?
            .query_row(params![crate::reads::NODE_EPOCH_KEY], |row| row.get(0))?;
        crate::writer::parse_epoch(&epoch)
    }

    async fn probe(&mut self, now: i64) -> Result<(), WriteError> {
        self.prepare_cached(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![crate::reads::WRITE_PROBE_KEY, now.to_string()])?;
        Ok(())
    }

    async fn epoch(&mut self) -> Result<i64, WriteError> {
        let epoch: Option<String> = self
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row(params![crate::reads::NODE_EPOCH_KEY], |row| row.get(0))
            .optional()?;
        epoch.as_deref().map_or(Ok(0), crate::writer::parse_epoch)
    }

    async fn purge(&mut self, cutoff: i64, limit: i64) -> Result<u64, WriteError> {
        let ids = self
            .prepare_cached(
                "SELECT id FROM tasks \
                 WHERE finished_at IS NOT NULL AND finished_at < ?1 AND status <> 'running' \
                 ORDER BY finished_at LIMIT ?2",
            )?
            .query_map(params![cutoff, limit], |row| row.get(0))?
            .collect::<Result<Vec<i64>, _>>()?;
        for sql in [
            "DELETE FROM transitions WHERE task_id = ?1",
            "DELETE FROM steps WHERE task_id = ?1",
            "DELETE FROM tasks WHERE id = ?1",
        ] {
            let mut delete = self.prepare_cached(sql)?;
            for &id in &ids {
                delete.execute([id])?;
            }
        }
        Ok(ids.len() as u64)
    }
}
