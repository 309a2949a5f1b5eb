//! How fast the store commits, on SQLite and PostgreSQL. Ignored by
//! default; run it in release mode:
//!
//! ```text
//! cargo test --release -p tasker-store --test bench -- --ignored --nocapture
//! ```
//!
//! `BENCH_CALLERS=1000` changes the number of concurrent callers (200),
//! `BENCH_ONLY=sqlite` or `postgres` runs one backend, and
//! `BENCH_SKIP_TRANSITIONS=1` only the lifecycle.
//!
//! * transitions: 200 concurrent callers, each committing calls of 2 step
//!   transitions (dispatch two steps, then complete them), as fast as the
//!   writer takes them.
//! * lifecycle: 200 concurrent callers each running tasks of 5 steps the
//!   way the engine commits them: create the task, then per step one call
//!   for its dispatch and one for its result (the last result with the
//!   task's end). Steps/s here is the ceiling the store puts on the whole
//!   system.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tasker_engine::{StepSnapshot, TaskState, TaskTemplate, Transition};
use tasker_store::{Created, NewTask, Store};

/// Concurrent callers (`BENCH_CALLERS` overrides).
fn caller_count() -> usize {
    std::env::var("BENCH_CALLERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

fn five_steps() -> TaskTemplate {
    TaskTemplate::from_yaml_str(
        "name: bench\nsteps:\n\
         - { name: s1, handler: noop }\n\
         - { name: s2, handler: noop, depends_on: [s1] }\n\
         - { name: s3, handler: noop, depends_on: [s2] }\n\
         - { name: s4, handler: noop, depends_on: [s3] }\n\
         - { name: s5, handler: noop, depends_on: [s4] }\n",
    )
    .unwrap()
}

fn bench_task(n: usize) -> NewTask {
    let template = five_steps();
    NewTask {
        workflow: template.name.clone(),
        template,
        context: json!({ "n": n }),
        idempotency_key: None,
        request_hash: n.to_string(),
        owner: "bench".into(),
        lease: Duration::from_secs(600),
    }
}

async fn create_bench_task(store: &Store, n: usize) -> (i64, Vec<i64>) {
    match store.create_task(bench_task(n)).await.unwrap() {
        Created::New(task) => (task.task_id, task.steps.iter().map(|s| s.step_id).collect()),
        Created::Existing { .. } => unreachable!("no idempotency key"),
    }
}

/// Steps dispatched and completed two per call; returns transitions/s.
async fn transitions(store: &Store, calls_per_caller: usize) -> f64 {
    // Each caller needs 2 steps per pair of calls.
    let steps_per_caller = calls_per_caller;
    let tasks_per_caller = steps_per_caller.div_ceil(5);
    let mut work = Vec::new();
    let mut setup = Vec::new();
    for caller in 0..caller_count() {
        let store = store.clone();
        setup.push(tokio::spawn(async move {
            let mut steps = Vec::new();
            for n in 0..tasks_per_caller {
                let (task_id, ids) = create_bench_task(&store, caller * 10_000 + n).await;
                steps.extend(ids.into_iter().map(|id| (task_id, id)));
            }
            steps.truncate(steps_per_caller);
            steps
        }));
    }
    for s in setup {
        work.push(s.await.unwrap());
    }

    let before = store.commit_stats();
    let journal = store.journal("bench");
    let started = Instant::now();
    let mut callers = Vec::new();
    for steps in work {
        let journal = Arc::clone(&journal);
        callers.push(tokio::spawn(async move {
            let waiting = StepSnapshot::waiting();
            let r = running(&waiting, "exec");
            let done = completed(&r, "worker", json!({ "ok": true }));
            for pair in steps.chunks(2) {
                let dispatch = pair
                    .iter()
                    .map(|&(task_id, id)| step(task_id, id, &waiting, r.clone()))
                    .collect();
                journal.commit(dispatch).await.unwrap();
                let complete = pair
                    .iter()
                    .map(|&(task_id, id)| step(task_id, id, &r, done.clone()))
                    .collect();
                journal.commit(complete).await.unwrap();
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = store.commit_stats();
    let transitions = after.transitions - before.transitions;
    let commits = after.commits - before.commits;
    println!(
        "  transitions: {transitions} in {elapsed:.2} s = {:.0}/s; {commits} commits ({:.0} transitions, {:.0} calls each)",
        transitions as f64 / elapsed,
        transitions as f64 / commits as f64,
        (after.calls - before.calls) as f64 / commits as f64,
    );
    transitions as f64 / elapsed
}

/// Whole tasks as the engine commits them; returns steps/s.
async fn lifecycle(store: &Store, tasks_per_caller: usize) -> f64 {
    let before = store.commit_stats();
    let journal = store.journal("bench");
    let started = Instant::now();
    let mut callers = Vec::new();
    for caller in 0..caller_count() {
        let store = store.clone();
        let journal = Arc::clone(&journal);
        callers.push(tokio::spawn(async move {
            let waiting = StepSnapshot::waiting();
            let r = running(&waiting, "exec");
            let done = completed(&r, "worker", json!({ "ok": true }));
            for n in 0..tasks_per_caller {
                let (task_id, ids) = create_bench_task(&store, caller * 10_000 + n).await;
                for (i, &id) in ids.iter().enumerate() {
                    journal
                        .commit(vec![step(task_id, id, &waiting, r.clone())])
                        .await
                        .unwrap();
                    let mut result = vec![step(task_id, id, &r, done.clone())];
                    if i + 1 == ids.len() {
                        result.push(Transition::Task {
                            task_id,
                            to: TaskState::Complete,
                            at: now(),
                        });
                    }
                    journal.commit(result).await.unwrap();
                }
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = store.commit_stats();
    let steps = (caller_count() * tasks_per_caller * 5) as f64;
    let commits = after.commits - before.commits;
    println!(
        "  lifecycle: {} tasks, {steps} steps in {elapsed:.2} s = {:.0} steps/s, {:.0} tasks/s; {commits} commits ({:.0} calls each)",
        caller_count() * tasks_per_caller,
        steps / elapsed,
        (caller_count() * tasks_per_caller) as f64 / elapsed,
        (after.calls - before.calls) as f64 / commits as f64,
    );
    steps / elapsed
}

async fn run(name: &str, store: Store, calls_per_caller: usize, tasks_per_caller: usize) {
    println!("{name}:");
    if std::env::var("BENCH_SKIP_TRANSITIONS").is_err() {
        transitions(&store, calls_per_caller).await;
    }
    lifecycle(&store, tasks_per_caller).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run in release mode with --ignored --nocapture"]
async fn store_throughput() {
    let sqlite_db = sqlite();
    if std::env::var("BENCH_ONLY").as_deref() != Ok("postgres") {
        run(
            "SQLite (WAL; each caller answered after the fsync covering its group)",
            sqlite_db.open().await,
            500,
            20,
        )
        .await;
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("sqlite") {
        return;
    }
    let server = tasker_pgtest::PgServer::start().unwrap();
    let store = Store::open(&server.fresh_database().unwrap())
        .await
        .unwrap();
    run(
        "PostgreSQL (default settings: fsync on, synchronous_commit on)",
        store,
        250,
        10,
    )
    .await;
}
