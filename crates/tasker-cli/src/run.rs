//! `tasker run`: one task of a workflow, from the command line.
//!
//! Binds the orchestrator, optionally starts worker processes (`--spawn`,
//! their output shown on stderr with their names), waits until every
//! handler the workflow needs is served, runs the task with live progress
//! on stderr, prints a summary (or `--json`), and stops the workers it
//! started. Exit status: 0 when the task completed, 1 when it
//! failed or was cancelled (Ctrl-C cancels), 2 when it could not start.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;
use tasker_engine::{StepOutcome, TaskEvent, TaskReport, TaskStatus, TaskTemplate, WorkflowEngine};
use tasker_orchestrator::{WorkerInfo, ZmqPubSubExecutor};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::children::{parse_named_command, Group, Output, WorkerProcess};
use crate::ConfigArgs;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The workflow (task template) YAML file.
    pub workflow: PathBuf,
    /// The task's context, as JSON (handlers see it as `task_context`), or
    /// `@FILE` to read it from a file (`@-`: standard input).
    #[arg(long, default_value = "{}")]
    pub context: String,
    /// Start a worker process, as NAME=COMMAND; repeat for more. It gets the
    /// orchestrator's endpoint in TASKER_ENDPOINT and SIGTERM at the end.
    /// When the orchestrator requires CURVE, spawned workers get a key pair
    /// made for this run (in TASKER_CURVE_*), admitted for this run only.
    #[arg(long = "spawn", value_parser = parse_named_command)]
    pub spawn: Vec<(String, String)>,
    /// Seconds to wait for workers serving every handler the workflow needs.
    #[arg(long, default_value_t = 60.0)]
    pub wait: f64,
    /// Print the report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,
    /// Write each spawned worker's output to DIR/NAME.log instead of
    /// showing it on stderr, each line prefixed `[NAME]`.
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Why `run` could not start the task: exit status 2, not 1.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct StartError(anyhow::Error);

/// A `--context` argument: JSON, or `@FILE` naming a file that holds it
/// (`@-`: standard input). A context over 128 KiB does not fit in one
/// argument on Linux ("Argument list too long"), and the API takes 1 MiB.
pub fn read_context(arg: &str) -> anyhow::Result<Value> {
    use anyhow::Context as _;
    let Some(path) = arg.strip_prefix('@') else {
        return serde_json::from_str(arg)
            .map_err(|e| anyhow::anyhow!("--context is not valid JSON: {e}"));
    };
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("--context @-: reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("--context @{path}: reading it"))?
    };
    serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("--context @{path} does not hold valid JSON: {e}"))
}

pub fn run(args: RunArgs) -> Result<TaskStatus> {
    let template = TaskTemplate::load(&args.workflow)
        .map_err(|e| StartError(anyhow::anyhow!("{}: {e}", args.workflow.display())))?;
    let context = read_context(&args.context).map_err(StartError)?;
    // As `serve` refuses it (a 422): every handler reads named fields of
    // its task's context, and `[1]` reached them as a handler's failure.
    if !context.is_object() {
        return Err(StartError(anyhow::anyhow!(
            "--context must be a JSON object (`{{\"order_id\": 7}}`), not {}",
            json_kind(&context)
        ))
        .into());
    }
    let mut config = args.config.load().map_err(StartError)?;
    let spawn_keys = if args.spawn.is_empty() {
        None
    } else {
        crate::spawn_keys::prepare(&mut config).map_err(StartError)?
    };
    let child_env: Vec<(&str, String)> = spawn_keys
        .as_ref()
        .map(|keys| keys.env.clone())
        .unwrap_or_default();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut signals = StopSignals::listen();
        let executor =
            Arc::new(ZmqPubSubExecutor::start(&config).map_err(|e| StartError(e.into()))?);
        if let Some(dir) = &args.logs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))
                .map_err(StartError)?;
        }
        let mut children = Vec::new();
        for (name, command) in &args.spawn {
            let log = args
                .logs
                .as_ref()
                .map(|dir| dir.join(format!("{name}.log")));
            let output = match &log {
                Some(log) => Output::File(log),
                None => Output::Prefixed,
            };
            children.push(
                WorkerProcess::spawn(
                    name,
                    command,
                    executor.endpoint(),
                    &child_env,
                    output,
                    Group::Own,
                )
                    .map_err(StartError)?,
            );
        }
        let mut joined = Joined::new(&children);
        let outcome = async {
            tokio::select! {
                waited = wait_for_handlers(&executor, &template, &mut children, &mut joined, args.wait) => waited?,
                why = signals.recv() => anyhow::bail!("{why} while waiting for workers; no task was started"),
            }
            Ok::<_, anyhow::Error>(
                run_task(&executor, template, context, args.json, &mut joined, &mut signals).await,
            )
        }
        .await;
        // Workers first, so they drain and say goodbye to a live orchestrator.
        let mut stop_errors = Vec::new();
        for child in children {
            let name = child.name().to_string();
            let note = child.output_note();
            match child.stop(Duration::from_secs(15)) {
                Ok(status) if status.success() => {}
                Ok(status) => stop_errors.push(format!("worker {name} exited with {status}{note}")),
                Err(e) => stop_errors.push(format!("{e:#}{note}")),
            }
        }
        executor.shutdown(Duration::from_secs(2)).await;
        let report = outcome?;
        for e in &stop_errors {
            eprintln!("warning: {e}");
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_summary(&report);
        }
        Ok(report.status)
    })
}

/// The workers that registered, told apart: those of the processes this
/// run spawned (or of their children), and the others, which get a warning
/// when the run spawned workers of its own: a worker left running on the
/// same endpoint by an earlier run would take steps with its old code.
struct Joined {
    /// The spawned processes.
    spawned: Vec<u32>,
    /// The workers seen so far.
    seen: BTreeSet<String>,
}

impl Joined {
    fn new(children: &[WorkerProcess]) -> Self {
        Self {
            spawned: children.iter().map(WorkerProcess::pid).collect(),
            seen: BTreeSet::new(),
        }
    }

    /// The spawned process `worker` belongs to, if any.
    fn spawned_by(&self, worker: &WorkerInfo) -> Option<u32> {
        worker
            .pid
            .and_then(|pid| crate::children::descends_from(pid, &self.spawned))
    }

    /// Whether every spawned process has a registered worker.
    fn all_spawned_registered(&self, workers: &[WorkerInfo]) -> bool {
        let registered: BTreeSet<u32> = workers.iter().filter_map(|w| self.spawned_by(w)).collect();
        self.spawned.iter().all(|pid| registered.contains(pid))
    }

    /// A warning for each worker registered now, not seen before, that no
    /// spawned process started (none when the run spawned nothing: its
    /// workers are all started elsewhere).
    fn strangers(&mut self, workers: &[WorkerInfo]) -> Vec<String> {
        let mut warnings = Vec::new();
        for worker in workers {
            if !self.seen.insert(worker.worker_id.clone()) || self.spawned.is_empty() {
                continue;
            }
            if self.spawned_by(worker).is_none() {
                warnings.push(format!(
                    "warning: worker {} ({}) joined, but this run did not start it; it may be \
                     given steps (stop it if it was left running by an earlier run)",
                    worker.worker_id,
                    describe(worker)
                ));
            }
        }
        warnings
    }
}

/// `LANGUAGE, pid PID`, with what the worker announced.
fn describe(worker: &WorkerInfo) -> String {
    let language = worker.language.as_deref().unwrap_or("?");
    match worker.pid {
        Some(pid) => format!("{language}, pid {pid}"),
        None => format!("{language}, pid unknown"),
    }
}

/// Waits until each handler of the template is served by a connected,
/// non-draining worker. Fails early when a spawned worker exits, or when
/// every spawned worker has registered and some handler is still missing.
async fn wait_for_handlers(
    executor: &ZmqPubSubExecutor,
    template: &TaskTemplate,
    children: &mut [WorkerProcess],
    joined: &mut Joined,
    wait_secs: f64,
) -> Result<()> {
    let needed: BTreeSet<&str> = template.steps.iter().map(|s| s.handler.as_str()).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(wait_secs);
    loop {
        let workers = executor.workers().await;
        for warning in joined.strangers(&workers) {
            eprintln!("{warning}");
        }
        let served: BTreeSet<&str> = workers
            .iter()
            .filter(|w| !w.draining)
            .flat_map(|w| w.handlers.iter().map(String::as_str))
            .collect();
        let missing: Vec<&str> = needed
            .iter()
            .copied()
            .filter(|h| !served.contains(h))
            .collect();
        if missing.is_empty() {
            let mut langs: Vec<String> = workers
                .iter()
                .map(|w| format!("{} ({})", w.worker_id, describe(w)))
                .collect();
            langs.sort();
            eprintln!("workers: {}", langs.join(", "));
            return Ok(());
        }
        for child in children.iter_mut() {
            if let Some(status) = child.exited() {
                let how = format!(
                    "worker {} exited with {status} before the task started",
                    child.name()
                );
                let Some(log) = child.log() else {
                    // Its last lines go out before this message.
                    child.flush_output(Duration::from_secs(1));
                    bail!(StartError(anyhow::anyhow!(
                        "{how} (its output is above, each line prefixed [{}])",
                        child.name()
                    )));
                };
                let tail = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(StartError(anyhow::anyhow!(
                    "{how}; its log ({}):\n{}",
                    log.display(),
                    tail.join("\n")
                )));
            }
        }
        if !children.is_empty() && joined.all_spawned_registered(&workers) {
            bail!(StartError(anyhow::anyhow!(
                "{}: every spawned worker has registered, and {}",
                no_worker_serves(&missing, &served),
                what_is_served(&served)
            )));
        }
        if Instant::now() >= deadline {
            bail!(StartError(anyhow::anyhow!(
                "{} after {wait_secs} s (connect one to {}, or use --spawn); {}",
                no_worker_serves(&missing, &served),
                executor.endpoint(),
                what_is_served(&served)
            )));
        }
        // Start-up only: workers announce themselves within milliseconds of
        // connecting, so a short poll costs nothing while the task runs.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `no worker serves a, b (did you mean c?)`.
fn no_worker_serves(missing: &[&str], served: &BTreeSet<&str>) -> String {
    let named: Vec<String> = missing
        .iter()
        .map(
            |handler| match tasker_config::closest(served.iter().copied(), handler) {
                Some(near) => format!("{handler} (did you mean {near}?)"),
                None => handler.to_string(),
            },
        )
        .collect();
    format!("no worker serves {}", named.join(", "))
}

fn what_is_served(served: &BTreeSet<&str>) -> String {
    if served.is_empty() {
        "no worker has registered".into()
    } else {
        let list: Vec<&str> = served.iter().copied().collect();
        format!("the registered workers serve {}", list.join(", "))
    }
}

async fn run_task(
    executor: &Arc<ZmqPubSubExecutor>,
    template: TaskTemplate,
    context: Value,
    json: bool,
    joined: &mut Joined,
    signals: &mut StopSignals,
) -> TaskReport {
    let engine = WorkflowEngine::new(executor.clone());
    let total = template.steps.len();
    let name = template.name.clone();
    let mut task = engine.start(template, context);
    let mut events = task.events().expect("events are taken once");
    let canceller = task.canceller();
    let mut progress = Progress::new(total, std::io::stderr().is_terminal() && !json);
    eprintln!("task {} ({name}): {total} steps", task.task_id());
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut interrupted = false;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => progress.event(&event),
                None => break,
            },
            _ = tick.tick() => {
                if !joined.spawned.is_empty() {
                    for warning in joined.strangers(&executor.workers().await) {
                        progress.line(&warning);
                    }
                }
                progress.redraw();
            }
            why = signals.recv(), if !interrupted => {
                interrupted = true;
                eprintln!("\n{why}: cancelling (running steps finish first)");
                canceller.cancel();
            }
        }
    }
    progress.finish();
    task.wait().await
}

/// The signals that stop a run, listened to from before the workers are
/// spawned until the end: the workers are in process groups of their own,
/// so a Ctrl-C, a closed terminal (SIGHUP) or a service manager (SIGTERM)
/// reaches only this process, which must stop them rather than die and
/// leave them running. One stream each for the whole run: a fresh
/// `ctrl_c()` future per loop turn would miss a signal that lands while an
/// event is being printed.
struct StopSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
    hangup: Option<Signal>,
}

impl StopSignals {
    fn listen() -> Self {
        let stream = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(e) => {
                eprintln!("warning: {name} will not stop the run: {e}");
                None
            }
        };
        StopSignals {
            interrupt: stream(SignalKind::interrupt(), "Ctrl-C"),
            terminate: stream(SignalKind::terminate(), "SIGTERM"),
            hangup: stream(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// The next stop signal, named for a message (`interrupted` for Ctrl-C).
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            Some(()) = recv_signal(&mut self.interrupt) => "interrupted",
            Some(()) = recv_signal(&mut self.terminate) => "SIGTERM",
            Some(()) = recv_signal(&mut self.hangup) => "SIGHUP",
            else => std::future::pending().await,
        }
    }
}

async fn recv_signal(stream: &mut Option<Signal>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// Live progress: a status line redrawn in place on a terminal, one line per
/// event otherwise.
pub(crate) struct Progress {
    total: usize,
    done: usize,
    retries: usize,
    running: BTreeSet<String>,
    started: Instant,
    terminal: bool,
}

impl Progress {
    pub(crate) fn new(total: usize, terminal: bool) -> Self {
        Self {
            total,
            done: 0,
            retries: 0,
            running: BTreeSet::new(),
            started: Instant::now(),
            terminal,
        }
    }

    pub(crate) fn line(&self, text: &str) {
        // Lines quote workers (ids, error types and messages): whatever
        // they hold must not drive the terminal.
        let text = printable(text, false);
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(
            err,
            "{:>7.2}s  {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    pub(crate) fn event(&mut self, event: &TaskEvent) {
        match event {
            TaskEvent::Dispatched { steps } => {
                for (step, attempt) in steps {
                    self.running.insert(step.clone());
                    if !self.terminal {
                        self.line(&format!("started   {step} (attempt {attempt})"));
                    }
                }
            }
            TaskEvent::Completed {
                step,
                attempt,
                worker_id,
                execution_time_ms,
            } => {
                self.running.remove(step);
                self.done += 1;
                self.line(&format!(
                    "completed {step} (attempt {attempt}, {worker_id}, {execution_time_ms} ms)"
                ));
            }
            TaskEvent::Retrying {
                step,
                attempt,
                error,
                delay,
            } => {
                self.running.remove(step);
                self.retries += 1;
                self.line(&format!(
                    "retrying  {step} after attempt {attempt} in {} ms: {}: {}",
                    delay.as_millis(),
                    error.error_type,
                    error.message
                ));
            }
            TaskEvent::Failed {
                step,
                attempt,
                error,
            } => {
                self.running.remove(step);
                self.done += 1;
                self.line(&format!(
                    "FAILED    {step} after {attempt} attempt(s): {}: {}",
                    error.error_type, error.message
                ));
            }
            TaskEvent::Blocked { step, by } => {
                self.done += 1;
                self.line(&format!("blocked   {step} ({by} failed)"));
            }
            TaskEvent::Cancelling => self.line("cancelling: no further steps start"),
        }
        self.redraw();
    }

    pub(crate) fn redraw(&self) {
        if !self.terminal {
            return;
        }
        let running: Vec<&str> = self.running.iter().map(String::as_str).collect();
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[2K[{}/{} done] {:.1}s  running: {}  retries: {}",
            self.done,
            self.total,
            self.started.elapsed().as_secs_f64(),
            if running.is_empty() {
                "-".to_string()
            } else {
                running.join(", ")
            },
            self.retries
        );
        let _ = err.flush();
    }

    pub(crate) fn finish(&self) {
        if self.terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
}

fn print_summary(report: &TaskReport) {
    let status = match report.status {
        TaskStatus::Complete => "complete",
        TaskStatus::Failed => "FAILED",
        TaskStatus::Cancelled => "CANCELLED",
    };
    println!();
    println!(
        "{} (task {}): {status} in {:.2} s, {} retr{}",
        report.workflow,
        report.task_id,
        report.duration_ms as f64 / 1000.0,
        report.retries(),
        if report.retries() == 1 { "y" } else { "ies" }
    );
    let rows: Vec<[String; 6]> = report
        .steps
        .iter()
        .map(|s| {
            let outcome = match s.outcome {
                StepOutcome::Completed => "completed",
                StepOutcome::Failed => "FAILED",
                StepOutcome::Blocked => "blocked",
                StepOutcome::Cancelled => "cancelled",
            };
            let detail = match (&s.output, &s.error, &s.blocked_by) {
                (_, Some(e), _) => format!("{}: {}", e.error_type, e.message),
                (_, _, Some(by)) => format!("needs {by}"),
                (Some(out), _, _) => out.to_string(),
                _ => String::new(),
            };
            [
                s.name.clone(),
                outcome.to_string(),
                s.attempts.to_string(),
                format!("{} ms", s.duration_ms),
                s.worker_id.clone().unwrap_or_else(|| "-".into()),
                truncate(&detail, 60),
            ]
        })
        .collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    crate::task::print_table(
        &[
            "STEP",
            "OUTCOME",
            "ATTEMPTS",
            "TIME",
            "WORKER",
            "OUTPUT / ERROR",
        ],
        &rows,
    );
}

/// `text` with its control characters escaped (`\u{1b}`), line ends too
/// unless `keep_lines`: a worker's output, or a server's words quoted in an
/// error, may hold a terminal's escape sequences, which are not ours to
/// send to the terminal.
pub(crate) fn printable(text: &str, keep_lines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let hidden = c.is_control() || tasker_protocol::codec::is_invisible(c);
        if hidden && !(keep_lines && c == '\n') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    // A worker's output or error message is shown on one line.
    let text = printable(text, false);
    if text.chars().count() <= max {
        return text;
    }
    let cut: String = text.chars().take(max - 1).collect();
    format!("{cut}…")
}

/// What kind of JSON value `value` is, with its article.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
