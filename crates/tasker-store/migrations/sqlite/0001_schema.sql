-- Durable tasks: one row per task, one per step, and an append-only journal
-- of every state transition. Times are epoch milliseconds; JSON is TEXT.
-- AUTOINCREMENT: a purged task's ids are never handed out again (workers
-- tell an old step from a new one by its id).

CREATE TABLE tasks (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow         TEXT    NOT NULL,
    template         TEXT    NOT NULL,
    context          TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT FALSE,
    idempotency_key  TEXT    UNIQUE,
    request_hash     TEXT    NOT NULL,
    owner            TEXT,
    lease_expires_at INTEGER,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER
);

-- Recovery and lease renewal: the unfinished tasks of an owner.
CREATE INDEX tasks_running_owner ON tasks (owner) WHERE status = 'running';
-- Listing, newest first, by status or by workflow.
CREATE INDEX tasks_status_id ON tasks (status, id);
CREATE INDEX tasks_workflow_id ON tasks (workflow, id);
-- Retention.
CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE steps (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id             INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    position            INTEGER NOT NULL,
    name                TEXT    NOT NULL,
    handler             TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    attempt             INTEGER NOT NULL DEFAULT 0,
    next_run_at         INTEGER,
    dispatched_by       TEXT,
    first_dispatched_at INTEGER,
    ended_at            INTEGER,
    worker_id           TEXT,
    output              TEXT,
    error               TEXT,
    blocked_by          TEXT
);

CREATE UNIQUE INDEX steps_task_position ON steps (task_id, position);

-- Plain INTEGER PRIMARY KEY: the journal's order needs no never-reused
-- numbers, and AUTOINCREMENT would cost a write per line.
CREATE TABLE transitions (
    seq        INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL,
    step_id    INTEGER,
    from_state TEXT    NOT NULL,
    to_state   TEXT    NOT NULL,
    attempt    INTEGER NOT NULL,
    worker_id  TEXT,
    at         INTEGER NOT NULL,
    detail     TEXT
);

CREATE INDEX transitions_task ON transitions (task_id, seq);

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
