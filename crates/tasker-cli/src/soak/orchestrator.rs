//! The soak's orchestrator process (`tasker soak --role orchestrator`): an
//! embedded executor driven as a workflow engine would drive it.
//!
//! It binds an ephemeral loopback port, waits for the first workers, then
//! keeps up to `--window` step attempts submitted, in batches of `--batch`.
//! A retryable failure (lost worker, timeout, retryable handler error) is
//! submitted again with `attempt + 1`, up to `--max-attempts`. Every final
//! result received is one line of `results.jsonl`; every attempt submitted
//! is one line `STEP_ID ATTEMPT` of `submitted.txt`.
//!
//! Its standard output is read by the controller, one line each:
//! `endpoint E`, `started`, `progress FINAL COMPLETED IN_FLIGHT` and, at the
//! end, `done {json}`. With `--hold-tail` it submits the last tenth of the
//! steps only after the controller writes `release` on its standard input:
//! a run that goes faster than its chaos schedule waits for the schedule
//! instead of ending before it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_orchestrator::{BatchHandle, ExecutorError, ZmqPubSubExecutor};
use tasker_protocol::{
    StepBatchRequest, StepExecutionRequest, StepExecutionResult, StepId, StepRef, StepStatus,
};
use tokio::sync::mpsc;

use super::{epoch_ms, SoakArgs};

/// What the batch-forwarding tasks tell the main loop.
enum Event {
    Result(StepExecutionResult),
    /// The batch's stream ended without results for these attempts.
    Missing(Vec<StepRef>),
}

pub fn run(args: SoakArgs) -> Result<()> {
    super::exit_with_parent();
    let dir = args
        .work_dir
        .clone()
        .context("the orchestrator role needs --work-dir")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(orchestrate(&args, &dir))
}

/// The request for one attempt of step `id`: its sleep and whether its
/// first attempt fails are drawn from the seed and the id alone, so every
/// attempt (and every rerun of the soak) asks the same of its handler.
fn step(args: &SoakArgs, id: StepId, attempt: u32) -> StepExecutionRequest {
    let (sleep_us, fail_first) = args.step_plan(id);
    let mut step =
        StepExecutionRequest::new(id, id, format!("soak-{id}"), "soak", args.step_timeout_ms);
    step.metadata.attempt = attempt;
    step.metadata.retry_limit = args.max_attempts.saturating_sub(1);
    step.handler_config = json!({ "sleep_us": sleep_us, "fail_first": fail_first });
    step
}

/// Receives once the controller writes `release` on standard input, or
/// closes it (a controller that is gone holds nothing back).
fn released() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            match line {
                Ok(line) if line.trim() != "release" => continue,
                _ => break,
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// Forwards a batch's results to the main loop, then the attempts it never
/// answered, if any.
async fn forward(
    mut handle: BatchHandle,
    refs: Vec<StepRef>,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut answered = HashSet::with_capacity(refs.len());
    while let Some(result) = handle.next().await {
        answered.insert(result.step_ref());
        let _ = events.send(Event::Result(result));
    }
    let missing: Vec<StepRef> = refs.into_iter().filter(|r| !answered.contains(r)).collect();
    if !missing.is_empty() {
        let _ = events.send(Event::Missing(missing));
    }
}

fn status_name(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Completed => "completed",
        StepStatus::Failed => "failed",
        StepStatus::TimedOut => "timed_out",
        StepStatus::Cancelled => "cancelled",
    }
}

/// The `VmHWM` (peak RSS) of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The engine's books: which attempt of each step is out, what to retry.
struct Books<'a> {
    args: &'a SoakArgs,
    results: BufWriter<File>,
    submitted: BufWriter<File>,
    /// Attempts submitted and not ended, by step.
    open: HashMap<StepId, u32>,
    retries: VecDeque<(StepId, u32)>,
    next_id: StepId,
    /// The last fresh step that may be submitted now.
    fresh_limit: u64,
    batches: u64,
    finals: u64,
    completed: u64,
    unexpected: u64,
    refusals: u64,
}

impl Books<'_> {
    /// Attempts not submitted yet: retries and fresh steps.
    fn waiting(&self) -> u64 {
        self.retries.len() as u64 + (self.fresh_limit + 1).saturating_sub(self.next_id as u64)
    }

    /// The next batch to submit, if the window has room for a whole one
    /// (or for all that is left).
    fn next_batch(&mut self, window: usize, batch: usize) -> Option<Vec<StepExecutionRequest>> {
        let waiting = self.waiting();
        let room = window.saturating_sub(self.open.len());
        if waiting == 0 || room == 0 || (room < batch && waiting > room as u64) {
            return None;
        }
        let mut steps = Vec::with_capacity(batch.min(room));
        while steps.len() < batch.min(room) {
            let (id, attempt) = match self.retries.pop_front() {
                Some(retry) => retry,
                None if self.next_id as u64 <= self.fresh_limit => {
                    self.next_id += 1;
                    (self.next_id - 1, 1)
                }
                None => break,
            };
            steps.push(step(self.args, id, attempt));
        }
        Some(steps)
    }

    fn submitted(&mut self, refs: &[StepRef]) -> Result<()> {
        for r in refs {
            writeln!(self.submitted, "{} {}", r.step_id, r.attempt)?;
            self.open.insert(r.step_id, r.attempt);
        }
        Ok(())
    }

    fn write(&mut self, line: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.results, line)?;
        self.results.write_all(b"\n")?;
        Ok(())
    }

    fn on_event(&mut self, event: Event) -> Result<()> {
        match event {
            Event::Result(result) => self.on_result(result),
            Event::Missing(refs) => {
                for r in refs {
                    if self.open.get(&r.step_id) != Some(&r.attempt) {
                        continue;
                    }
                    self.open.remove(&r.step_id);
                    self.finals += 1;
                    self.write(&json!({
                        "step_id": r.step_id,
                        "attempt": r.attempt,
                        "status": "missing",
                        "t_ms": epoch_ms(),
                    }))?;
                }
                Ok(())
            }
        }
    }

    fn on_result(&mut self, result: StepExecutionResult) -> Result<()> {
        let r = result.step_ref();
        let expected = self.open.get(&r.step_id) == Some(&r.attempt);
        let error = result.error.as_ref();
        let message: Option<String> = error.map(|e| e.message.chars().take(300).collect());
        let mut line = json!({
            "step_id": r.step_id,
            "attempt": r.attempt,
            "status": status_name(result.status),
            "error_type": error.map(|e| e.error_type.as_str()),
            "worker_id": result.metadata.worker_id,
            "pid": result.output.as_ref().and_then(|o| o.get("pid")).and_then(Value::as_u64),
            "retryable": result.is_retryable(),
            // When the result was made: by the worker, or by the
            // orchestrator for its own verdicts.
            "t_ms": result.metadata.completed_at.timestamp_millis(),
            "recv_ms": epoch_ms(),
            "message": message,
        });
        if !expected {
            // A second result for an attempt, or one never submitted:
            // recorded for the checks, not acted on.
            self.unexpected += 1;
            line["unexpected"] = Value::Bool(true);
        }
        self.write(&line)?;
        if expected {
            self.open.remove(&r.step_id);
            if result.status == StepStatus::Completed {
                self.finals += 1;
                self.completed += 1;
            } else if result.is_retryable() && r.attempt < self.args.max_attempts {
                self.retries.push_back((r.step_id, r.attempt + 1));
            } else {
                self.finals += 1;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.results.flush()?;
        self.submitted.flush()?;
        Ok(())
    }

    fn progress(&self) {
        println!(
            "progress {} {} {}",
            self.finals,
            self.completed,
            self.open.len()
        );
    }
}

async fn orchestrate(args: &SoakArgs, dir: &Path) -> Result<()> {
    let window = args.window.max(1);
    let batch = args.batch.clamp(1, window);
    let config = TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        heartbeat_interval_ms: args.heartbeat_ms,
        liveness: args.liveness,
        default_step_timeout_ms: args.step_timeout_ms,
        queue_bound: window + batch,
        linger_ms: 0,
        ..TaskerConfig::default()
    };
    let executor = ZmqPubSubExecutor::start(&config)?;
    println!("endpoint {}", executor.endpoint());
    let workers = args.rust_workers + args.python_workers;
    if !executor
        .wait_for_workers(workers, Duration::from_secs(120))
        .await
    {
        bail!("{workers} workers did not all connect within 120 s");
    }
    println!("started");

    let mut books = Books {
        args,
        results: BufWriter::new(File::create(dir.join("results.jsonl"))?),
        submitted: BufWriter::new(File::create(dir.join("submitted.txt"))?),
        open: HashMap::with_capacity(window),
        retries: VecDeque::new(),
        next_id: 1,
        fresh_limit: if args.hold_tail {
            args.tail_starts_after()
        } else {
            args.steps
        },
        batches: 0,
        finals: 0,
        completed: 0,
        unexpected: 0,
        refusals: 0,
    };
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut release = args.hold_tail.then(released);
    let progress_every = (args.steps / 200).max(1);
    let mut last_progress = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();

    while books.finals < args.steps {
        while let Some(steps) = books.next_batch(window, batch) {
            let refs: Vec<StepRef> = steps.iter().map(StepExecutionRequest::step_ref).collect();
            books.batches += 1;
            let request = StepBatchRequest::new(format!("soak-{}", books.batches), steps);
            match executor.submit(request).await {
                Ok(handle) => {
                    books.submitted(&refs)?;
                    tokio::spawn(forward(handle, refs, events_tx.clone()));
                }
                Err(ExecutorError::DuplicateStep { step_id }) => {
                    // The executor still holds an earlier attempt of a step
                    // whose result it gave: say so, try again soon.
                    books.refusals += 1;
                    eprintln!(
                        "soak warning: submit refused, step {step_id} still in flight; retrying"
                    );
                    for r in refs.into_iter().rev() {
                        books.retries.push_front((r.step_id, r.attempt));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    break;
                }
                Err(e) => return Err(e).context("submit failed"),
            }
        }
        tokio::select! {
            event = events.recv() => {
                let event = event.context("result streams closed")?;
                books.on_event(event)?;
                // Everything already queued, before the window is topped up.
                while let Ok(event) = events.try_recv() {
                    books.on_event(event)?;
                }
                if books.finals >= last_progress + progress_every {
                    last_progress = books.finals;
                    books.progress();
                }
            }
            _ = ticker.tick() => {
                books.flush()?;
                books.progress();
            }
            _ = async { release.as_mut().expect("guarded").recv().await }, if release.is_some() => {
                release = None;
                books.fresh_limit = args.steps;
            }
        }
    }
    let elapsed = started.elapsed();
    books.flush()?;
    books.progress();
    let metrics = executor.metrics();
    let report = executor.shutdown(Duration::from_secs(5)).await;
    let done = json!({
        "elapsed_s": elapsed.as_secs_f64(),
        "steps": args.steps,
        "completed": books.completed,
        "batches": books.batches,
        "unexpected_results": books.unexpected,
        "duplicate_step_refusals": books.refusals,
        "abandoned_at_shutdown": report.abandoned.len(),
        "peak_rss_kib": peak_rss_kib(),
        "metrics": metrics,
    });
    println!("done {done}");
    Ok(())
}
