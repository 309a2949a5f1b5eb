//! Reads, straight on the pool beside the writer: the same SQL on both
//! dialects.

use tasker_engine::TaskState;

use crate::db::{with_pool, Db};
use crate::model::{JournalEntry, TaskDetail, TaskFilter, TaskPage};
use crate::rows::{to_ms, JournalRow, StepRow, SummaryRow, TaskRow, STEP_COLUMNS, TASK_COLUMNS};
use crate::StoreError;

/// Most tasks one page lists.
const MAX_PAGE: u32 = 1000;

/// The `meta` key of this store's orchestrator id.
const ORCHESTRATOR_ID_KEY: &str = "orchestrator_id";
/// The `meta` key of the epoch a server raises when it takes the store
/// over (see `Store::take_over`).
pub(crate) const NODE_EPOCH_KEY: &str = "node_epoch";
/// `meta` key of [`Store::writable`](crate::Store::writable)'s probe.
pub(crate) const WRITE_PROBE_KEY: &str = "write_probe";

/// A read failed: a closed pool is a closed store.
pub(crate) fn read_error(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolClosed => StoreError::Closed,
        e => StoreError::Database(e),
    }
}

pub(crate) async fn get_task(db: &Db, task_id: i64) -> Result<Option<TaskDetail>, StoreError> {
    let task_sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1");
    let steps_sql =
        format!("SELECT {STEP_COLUMNS} FROM steps WHERE task_id = $1 ORDER BY position");
    // The task first: its steps, read after, are at least as new, so a task
    // never shows as ended with a step still running.
    let (task, steps) = with_pool!(db, pool => {
        let task: Option<TaskRow> = sqlx::query_as(&task_sql)
            .bind(task_id)
            .fetch_optional(pool)
            .await
            .map_err(read_error)?;
        if task.is_none() {
            return Ok(None);
        }
        let steps: Vec<StepRow> = sqlx::query_as(&steps_sql)
            .bind(task_id)
            .fetch_all(pool)
            .await
            .map_err(read_error)?;
        (task, steps)
    });
    task.map(|task| task.into_detail(steps)).transpose()
}

/// A value bound to a list query.
enum Arg {
    Text(String),
    Int(i64),
}

pub(crate) async fn list_tasks(db: &Db, filter: &TaskFilter) -> Result<TaskPage, StoreError> {
    let limit = filter.limit.clamp(1, MAX_PAGE);
    // Only the filters given go into the SQL, so each can use its index.
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    let mut condition = |sql: &str, arg: Arg| {
        args.push(arg);
        conditions.push(format!("{sql} ${}", args.len()));
    };
    if let Some(status) = filter.status {
        condition("t.status =", Arg::Text(status.as_str().to_string()));
    }
    if let Some(workflow) = &filter.workflow {
        condition("t.workflow =", Arg::Text(workflow.clone()));
    }
    if let Some(since) = filter.created_since {
        condition("t.created_at >=", Arg::Int(to_ms(since)));
    }
    if let Some(before) = filter.before_id {
        condition("t.id <", Arg::Int(before));
    }
    let where_clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    // One row more than asked tells whether another page follows.
    args.push(Arg::Int(i64::from(limit) + 1));
    let sql = format!(
        "SELECT t.id, t.workflow, t.status, t.cancel_requested, t.idempotency_key, \
                t.created_at, t.finished_at, \
                (SELECT count(*) FROM steps AS s WHERE s.task_id = t.id) AS steps_total, \
                (SELECT count(*) FROM steps AS s \
                 WHERE s.task_id = t.id AND s.state = 'completed') AS steps_completed \
         FROM tasks AS t {where_clause} ORDER BY t.id DESC LIMIT ${}",
        args.len()
    );
    let mut rows: Vec<SummaryRow> = with_pool!(db, pool => {
        let mut query = sqlx::query_as(&sql);
        for arg in &args {
            query = match arg {
                Arg::Text(text) => query.bind(text.as_str()),
                Arg::Int(n) => query.bind(*n),
            };
        }
        query.fetch_all(pool).await.map_err(read_error)?
    });
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|row| row.id.to_string())
    } else {
        None
    };
    Ok(TaskPage {
        tasks: rows
            .into_iter()
            .map(SummaryRow::into_summary)
            .collect::<Result<_, _>>()?,
        next_cursor,
    })
}

pub(crate) async fn journal_entries(
    db: &Db,
    task_id: i64,
) -> Result<Vec<JournalEntry>, StoreError> {
    let rows: Vec<JournalRow> = with_pool!(db, pool => {
        sqlx::query_as(
            "SELECT seq, task_id, step_id, from_state, to_state, attempt, worker_id, at, detail \
             FROM transitions WHERE task_id = $1 ORDER BY seq",
        )
        .bind(task_id)
        .fetch_all(pool)
        .await
        .map_err(read_error)?
    });
    rows.into_iter().map(JournalRow::into_entry).collect()
}

/// How many tasks are in each state (states with none are absent).
pub(crate) async fn count_by_status(db: &Db) -> Result<Vec<(TaskState, u64)>, StoreError> {
    let rows: Vec<(String, i64)> = with_pool!(db, pool => {
        sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
            .fetch_all(pool)
            .await
            .map_err(read_error)?
    });
    rows.into_iter()
        .map(|(status, n)| {
            let state = status
                .parse::<TaskState>()
                .map_err(|e| StoreError::Corrupt(format!("task status: {e}")))?;
            Ok((state, n.max(0) as u64))
        })
        .collect()
}

pub(crate) async fn orchestrator_id(db: &Db) -> Result<String, StoreError> {
    let fresh = uuid::Uuid::new_v4().simple().to_string();
    with_pool!(db, pool => {
        // Two openers racing both insert; the first wins and both read it.
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(ORCHESTRATOR_ID_KEY)
            .bind(&fresh)
            .execute(pool)
            .await
            .map_err(read_error)?;
        sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(ORCHESTRATOR_ID_KEY)
            .fetch_one(pool)
            .await
            .map_err(read_error)
    })
}

pub(crate) async fn ping(db: &Db) -> Result<(), StoreError> {
    with_pool!(db, pool => {
        sqlx::query("SELECT 1").execute(pool).await.map_err(read_error)?;
    });
    Ok(())
}
