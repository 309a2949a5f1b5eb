//! `tasker worker`: a Rust worker with example handlers.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Value};
use tasker_protocol::StepExecutionRequest;
use tasker_worker::{HandlerError, HandlerOptions, HandlerResult, Worker};

use crate::ConfigArgs;

/// The built-in handlers.
pub const BUILTIN: &[&str] = &[
    "noop",
    "echo",
    "sleep",
    "fail_retryable",
    "fail_permanent",
    "flaky",
    "panic",
];

/// Handlers served only when named: `soak` records its runs for `tasker
/// soak` (see [`crate::soak::handler`]).
pub const ON_REQUEST: &[&str] = &["soak"];

#[derive(Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Handlers to serve, comma-separated (default: all built-in ones:
    /// noop, echo, sleep, fail_retryable, fail_permanent, flaky, panic;
    /// `soak`, for `tasker soak`, only when named).
    #[arg(long, value_delimiter = ',')]
    pub handlers: Vec<String>,
    /// Capacity to declare (default: worker_capacity from the config).
    #[arg(long)]
    pub capacity: Option<u32>,
    /// Threads running handlers (default: capacity, at most 16).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Worker id (default: generated).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// Run every handler on the handler threads. By default the built-in
    /// handlers that only compute (noop, echo, fail_retryable,
    /// fail_permanent, flaky) run inline on the worker's I/O thread.
    #[arg(long)]
    pub no_inline: bool,
}

/// Milliseconds to sleep: `handler_config.ms`, else `task_context.sleep_ms`.
fn sleep_ms(step: &StepExecutionRequest) -> u64 {
    step.handler_config
        .get("ms")
        .or_else(|| step.task_context.get("sleep_ms"))
        .and_then(Value::as_u64)
        .unwrap_or(100)
}

/// `echo`: returns what it was given, so callers can check the round trip.
fn echo(step: &StepExecutionRequest) -> HandlerResult {
    Ok(json!({
        "step_name": step.step_name,
        "task_context": step.task_context,
        "handler_config": step.handler_config,
        "previous_results": step.previous_results,
        "attempt": step.metadata.attempt,
    }))
}

/// Adds the built-in handlers named in `names` to `worker`, which declares
/// `capacity`; those that only compute run inline unless `no_inline`.
pub fn with_builtin(
    mut worker: Worker,
    names: &[String],
    capacity: u32,
    no_inline: bool,
) -> Result<Worker> {
    let quick = if no_inline {
        HandlerOptions::new()
    } else {
        HandlerOptions::new().inline()
    };
    for name in names {
        worker = match name.as_str() {
            "soak" => {
                let soak = crate::soak::handler::SoakHandler::from_env(capacity)?;
                crate::soak::exit_with_parent();
                worker.handler("soak", move |step| soak.call(step))
            }
            "noop" => worker.handler_with("noop", quick.clone(), |_| Ok(Value::Null)),
            "echo" => worker.handler_with("echo", quick.clone(), echo),
            "sleep" => worker.handler("sleep", |step| {
                let ms = sleep_ms(step);
                std::thread::sleep(Duration::from_millis(ms));
                Ok(json!({ "slept_ms": ms }))
            }),
            "fail_retryable" => worker.handler_with("fail_retryable", quick.clone(), |step| {
                Err(HandlerError::retryable(format!(
                    "{} failed (retryable)",
                    step.step_name
                )))
            }),
            "fail_permanent" => worker.handler_with("fail_permanent", quick.clone(), |step| {
                Err(HandlerError::permanent(format!(
                    "{} failed (permanent)",
                    step.step_name
                )))
            }),
            // Fails retryably until attempt `handler_config.succeed_on` (default 2).
            "flaky" => worker.handler_with("flaky", quick.clone(), |step| {
                let succeed_on = step
                    .handler_config
                    .get("succeed_on")
                    .and_then(Value::as_u64)
                    .unwrap_or(2);
                if u64::from(step.metadata.attempt) < succeed_on {
                    Err(HandlerError::retryable(format!(
                        "attempt {} of {} fails on purpose",
                        step.metadata.attempt, step.step_name
                    )))
                } else {
                    echo(step)
                }
            }),
            "panic" => worker.handler("panic", |step| -> HandlerResult {
                panic!("handler for {} panicked on purpose", step.step_name)
            }),
            other => bail!(
                "unknown built-in handler {other:?}; known: {}, {}",
                BUILTIN.join(", "),
                ON_REQUEST.join(", ")
            ),
        };
    }
    Ok(worker)
}

pub fn run(args: WorkerArgs) -> Result<()> {
    let config = args.config.load()?;
    let names: Vec<String> = if args.handlers.is_empty() {
        BUILTIN.iter().map(|s| s.to_string()).collect()
    } else {
        args.handlers.clone()
    };
    let capacity = args.capacity.unwrap_or(config.worker_capacity);
    let mut worker = with_builtin(Worker::new(config), &names, capacity, args.no_inline)?;
    if let Some(capacity) = args.capacity {
        worker = worker.capacity(capacity);
    }
    if let Some(threads) = args.threads {
        worker = worker.threads(threads);
    }
    if let Some(id) = args.worker_id {
        worker = worker.worker_id(id);
    }
    let running = worker.spawn()?;
    tracing::info!(worker_id = running.worker_id(), handlers = ?names, "worker started");
    if !running.serve_until_signal()? {
        tracing::warn!("stopped with steps unfinished");
    }
    Ok(())
}
