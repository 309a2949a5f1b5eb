//! `tasker bench-workers`: steps/s of whole worker processes, each in any
//! language, served by the same orchestrator code in the same run.
//!
//! Each `--worker NAME=COMMAND` runs as `sh -c COMMAND` with `TASKER_ENDPOINT`
//! and `TASKER_WORKER_CAPACITY` set; it must serve the handler `noop` and exit
//! on SIGTERM. Rounds interleave the workers so that a slow patch of a noisy
//! machine hits all of them; the best round of each is reported, with its
//! ratio to the first worker, and the median round beside it.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde::Serialize;
use tasker_config::TaskerConfig;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::StepBatchRequest;

use crate::bench::{drive, noop_steps};
use crate::children::{parse_named_command, Group, Output, WorkerProcess};

#[derive(Args, Debug)]
pub struct BenchWorkersArgs {
    /// A worker to measure, as NAME=COMMAND (run with `sh -c`). Repeat it;
    /// ratios are to the first.
    #[arg(long = "worker", value_parser = parse_named_command, required = true)]
    pub workers: Vec<(String, String)>,
    /// Steps per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub steps: usize,
    /// Steps per message to the worker.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Capacity each worker is told to declare (TASKER_WORKER_CAPACITY).
    #[arg(long, default_value_t = 200)]
    pub capacity: u32,
    /// Measured runs per worker; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds a worker may take to start and connect.
    #[arg(long, default_value_t = 60.0)]
    pub connect_timeout: f64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Figure {
    worker: String,
    steps_per_sec: f64,
    median_steps_per_sec: f64,
    rounds: Vec<f64>,
    ratio_to_first: f64,
    worker_cpu_us_per_step: Option<f64>,
}

/// One measured run: steps/s, and the worker's CPU time per step.
struct Run {
    rate: f64,
    cpu_per_step: Option<Duration>,
}

async fn measure(args: &BenchWorkersArgs, command: &str) -> Result<Run> {
    let config = TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        batch_size: args.batch,
        queue_bound: args.steps.max(10_000) * 2,
        ..TaskerConfig::default()
    };
    let executor = ZmqPubSubExecutor::start(&config)?;
    let capacity = [("TASKER_WORKER_CAPACITY", args.capacity.to_string())];
    let worker = WorkerProcess::spawn(
        "bench",
        command,
        executor.endpoint(),
        &capacity,
        Output::Quiet,
        Group::Shared,
    )?;
    let connect = Duration::from_secs_f64(args.connect_timeout);
    if !executor.wait_for_workers(1, connect).await {
        bail!("{command:?} did not connect within {connect:?}");
    }
    // Warm-up: first-touch allocation, JIT and caches are not what is measured.
    let warm = args.batch * 10;
    executor
        .execute_step_batch(StepBatchRequest::new("warm", noop_steps(warm)))
        .await?;
    let cpu_before = worker.cpu_time();
    let elapsed = drive(&executor, args.steps)
        .await
        .with_context(|| format!("{command:?}"))?;
    let cpu = match (cpu_before, worker.cpu_time()) {
        (Some(a), Some(b)) => Some((b.saturating_sub(a)) / args.steps as u32),
        _ => None,
    };
    // How it exits does not matter here, only that it does.
    worker.stop(Duration::from_secs(10))?;
    executor.shutdown(Duration::from_secs(1)).await;
    Ok(Run {
        rate: args.steps as f64 / elapsed.as_secs_f64(),
        cpu_per_step: cpu,
    })
}

pub fn run(args: BenchWorkersArgs) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(
        args.batch > 0 && args.steps > 0,
        "--batch and --steps must be positive"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rounds: Vec<Vec<Run>> = args.workers.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.rounds {
        for (i, (name, command)) in args.workers.iter().enumerate() {
            let run = runtime
                .block_on(measure(&args, command))
                .with_context(|| format!("worker {name}, round {round}"))?;
            eprintln!("round {round}: {name:<12} {:>10.0} steps/s", run.rate);
            rounds[i].push(run);
        }
    }
    let best = |r: &[Run]| r.iter().map(|r| r.rate).fold(0.0, f64::max);
    let median = |r: &[Run]| {
        let mut rates: Vec<f64> = r.iter().map(|r| r.rate).collect();
        rates.sort_by(f64::total_cmp);
        let mid = rates.len() / 2;
        if rates.len() % 2 == 0 {
            (rates[mid - 1] + rates[mid]) / 2.0
        } else {
            rates[mid]
        }
    };
    // The least CPU a round needed: noise (other processes, cache misses)
    // only ever adds.
    let least_cpu = |r: &[Run]| r.iter().filter_map(|r| r.cpu_per_step).min();
    let first = best(&rounds[0]);
    let figures: Vec<Figure> = args
        .workers
        .iter()
        .zip(&rounds)
        .map(|((name, _), runs)| Figure {
            worker: name.clone(),
            steps_per_sec: best(runs),
            median_steps_per_sec: median(runs),
            ratio_to_first: best(runs) / first,
            worker_cpu_us_per_step: least_cpu(runs).map(|d| d.as_secs_f64() * 1e6),
            rounds: runs.iter().map(|r| r.rate).collect(),
        })
        .collect();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        return Ok(());
    }
    println!(
        "no-op steps, batch {}, capacity {}, {} steps, best of {} rounds",
        args.batch, args.capacity, args.steps, args.rounds
    );
    println!(
        "{:<14} {:>10} {:>9} {:>10} {:>22}",
        "worker", "steps/s", "vs first", "median", "worker CPU us/step"
    );
    for f in &figures {
        let cpu = f
            .worker_cpu_us_per_step
            .map_or_else(|| "-".to_string(), |us| format!("{us:.1}"));
        println!(
            "{:<14} {:>10.0} {:>8.0}% {:>10.0} {:>22}",
            f.worker,
            f.steps_per_sec,
            f.ratio_to_first * 100.0,
            f.median_steps_per_sec,
            cpu
        );
    }
    println!("worker CPU: user + system time of the worker process (10 ms resolution), least of the rounds");
    Ok(())
}
