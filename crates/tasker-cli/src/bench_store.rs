//! `tasker bench --durable`: tasks of no-op steps through the in-memory
//! engine, and through `tasker serve`'s service on SQLite and on
//! PostgreSQL, in one run: what durability costs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_engine::{TaskStatus, TaskTemplate, WorkflowEngine};
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_worker::Worker;

/// Steps per task: independent, so each task is one batch.
const STEPS_PER_TASK: usize = 10;
/// Tasks being created at once.
const SUBMITTERS: usize = 32;

fn workflow_yaml() -> String {
    let mut yaml = String::from("name: bench\ndefaults:\n  timeout_ms: 120000\nsteps:\n");
    for i in 0..STEPS_PER_TASK {
        yaml.push_str(&format!("  - name: s{i}\n    handler: noop\n"));
    }
    yaml
}

fn config(store: &str, workflows: &std::path::Path) -> TaskerConfig {
    TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        queue_bound: 10_000_000,
        store: store.into(),
        api_listen: "127.0.0.1:0".into(),
        workflows_dir: workflows.display().to_string(),
        task_retention_hours: 0,
        ..TaskerConfig::default()
    }
}

fn worker(endpoint: &str) -> Result<tasker_worker::RunningWorker> {
    let config = TaskerConfig {
        endpoint: endpoint.to_string(),
        ..TaskerConfig::default()
    };
    Ok(Worker::new(config)
        .capacity(2_000)
        .threads(1)
        .handler("noop", |_| Ok(Value::Null))
        .spawn()?)
}

async fn in_memory(tasks: usize, workflows: &std::path::Path) -> Result<f64> {
    let template = TaskTemplate::from_yaml_str(&workflow_yaml())?;
    let config = config("sqlite:unused", workflows);
    let executor = Arc::new(ZmqPubSubExecutor::start(&config)?);
    let worker = worker(executor.endpoint())?;
    anyhow::ensure!(
        executor.wait_for_workers(1, Duration::from_secs(10)).await,
        "bench worker did not connect"
    );
    let engine = WorkflowEngine::new(executor.clone());
    let started = Instant::now();
    let running: Vec<_> = (0..tasks)
        .map(|i| engine.start(template.clone(), json!({ "n": i })))
        .collect();
    for task in running {
        let report = task.wait().await;
        anyhow::ensure!(report.status == TaskStatus::Complete, "a task failed");
    }
    let rate = (tasks * STEPS_PER_TASK) as f64 / started.elapsed().as_secs_f64();
    executor.shutdown(Duration::from_secs(1)).await;
    worker.join(Duration::from_secs(5));
    Ok(rate)
}

struct Durable {
    steps_per_sec: f64,
    commits: u64,
    transitions: u64,
}

async fn durable(tasks: usize, store: &str, workflows: &std::path::Path) -> Result<Durable> {
    let service = tasker_server::Service::start(&config(store, workflows))
        .await
        .with_context(|| format!("starting the service on {store}"))?;
    let worker = worker(service.endpoint())?;
    anyhow::ensure!(
        service
            .executor()
            .wait_for_workers(1, Duration::from_secs(10))
            .await,
        "bench worker did not connect"
    );
    let before = service.store().commit_stats();
    let started = Instant::now();
    let per = tasks.div_ceil(SUBMITTERS);
    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let service = Arc::clone(&service);
        let n = per.min(tasks.saturating_sub(s * per));
        submitters.push(tokio::spawn(async move {
            for i in 0..n {
                service
                    .create_task("bench", json!({ "n": s * per + i }), None)
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for s in submitters {
        s.await??;
    }
    while service.tasks_in_progress() > 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    let after = service.store().commit_stats();
    let page = service
        .list_tasks(&tasker_store::TaskFilter {
            status: Some(tasker_engine::TaskState::Complete),
            limit: 1,
            ..Default::default()
        })
        .await?;
    anyhow::ensure!(!page.tasks.is_empty(), "no task completed");
    service.shutdown().await;
    worker.join(Duration::from_secs(5));
    Ok(Durable {
        steps_per_sec: (tasks * STEPS_PER_TASK) as f64 / elapsed.as_secs_f64(),
        commits: after.commits - before.commits,
        transitions: after.transitions - before.transitions,
    })
}

/// Runs the comparison and prints it.
pub fn run(steps: usize, postgres: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tasks = steps.div_ceil(STEPS_PER_TASK);
    let dir = tempfile::tempdir()?;
    let workflows = dir.path().join("workflows");
    std::fs::create_dir_all(&workflows)?;
    std::fs::write(workflows.join("bench.yaml"), workflow_yaml())?;
    // Kept alive for the whole run when we started it.
    let mut throwaway = None;
    let postgres_url = match postgres {
        "off" => None,
        "auto" => match tasker_pgtest::PgServer::start() {
            Ok(server) => {
                let url = server.url();
                throwaway = Some(server);
                Some(url)
            }
            Err(e) => {
                println!("PostgreSQL skipped: {e}");
                None
            }
        },
        url => Some(url.to_string()),
    };
    println!(
        "tasker bench --durable: {tasks} tasks × {STEPS_PER_TASK} no-op steps, {SUBMITTERS} submitters, one Rust worker, tcp loopback"
    );
    println!();
    println!(
        "{:<28} {:>14} {:>10} {:>16}",
        "engine", "steps/s", "commits", "transitions/commit"
    );
    let memory = runtime.block_on(in_memory(tasks, &workflows))?;
    println!(
        "{:<28} {:>14.0} {:>10} {:>16}",
        "in memory (tasker run)", memory, "-", "-"
    );
    let sqlite = format!("sqlite:{}", dir.path().join("bench.db").display());
    let mut stores = vec![("serve, SQLite (WAL, FULL)", sqlite)];
    if let Some(url) = postgres_url {
        stores.push(("serve, PostgreSQL", url));
    }
    for (label, url) in stores {
        let figures = runtime.block_on(durable(tasks, &url, &workflows))?;
        println!(
            "{:<28} {:>14.0} {:>10} {:>16.1}",
            label,
            figures.steps_per_sec,
            figures.commits,
            figures.transitions as f64 / figures.commits.max(1) as f64
        );
    }
    drop(throwaway);
    println!();
    println!("serve: every dispatch and every result committed before it takes effect; creation through Service::create_task (what POST /v1/tasks calls), HTTP not included");
    Ok(())
}
