//! `tasker task`: start, follow, list and cancel tasks of a running
//! `tasker serve` through its HTTP API.
//!
//! Exit status: 0 on success (for `submit --wait`, when the task
//! completed), 1 when a waited-for task failed or was cancelled, 2 when a
//! request failed (the server's problem `detail` is printed as `error:
//! ...`).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chrono::{SecondsFormat, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;
use tasker_client::{Client, ListTasks, TaskDetail};
use tasker_engine::{StepState, TaskEvent, TaskState};
use tasker_protocol::StepExecutionError;

use crate::run::{printable, truncate, Progress};
use crate::ConfigArgs;

#[derive(Args, Debug)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub command: TaskCommand,
}

#[derive(Subcommand, Debug)]
pub enum TaskCommand {
    /// Start a task of a workflow the server has loaded.
    Submit(SubmitArgs),
    /// Show a task and its steps.
    Get(GetArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Cancel a task: nothing more starts, running steps finish.
    Cancel(CancelArgs),
}

/// Where the API is.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The API's base URL, e.g. http://127.0.0.1:8080 (default: the
    /// config's `api_url`, TASKER_API_URL, else http:// and `api_listen`).
    #[arg(long)]
    pub api: Option<String>,
    /// Configuration file, for `api_url`/`api_listen` and `api_token`
    /// (default: config/zeromq.yaml when present).
    #[arg(long, env = "TASKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Environment section (default: TASKER_ENV or development).
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Seconds to wait for each answer before trying again (5 tries for
    /// all but a submit without key; default 30).
    #[arg(long, value_parser = seconds)]
    pub timeout: Option<Duration>,
}

/// A positive number of seconds.
fn seconds(text: &str) -> Result<Duration, String> {
    match text.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "expected seconds, more than 0 (e.g. 5 or 0.5), got {text:?}"
        )),
    }
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The workflow's name (`GET /v1/workflows` lists them).
    pub workflow: String,
    /// The task's context, a JSON object (handlers see it as
    /// `task_context`), or `@FILE` to read it from a file (`@-`: standard
    /// input).
    #[arg(long, default_value = "{}")]
    pub context: String,
    /// A key of your choosing: submitting the same workflow and context
    /// with it again returns the same task instead of a new one.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the task with live progress until it ends; exit 0 when it
    /// completed, 1 when it failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
    /// Print the API's JSON on stdout (with --wait: the final task).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The task's id.
    pub id: i64,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only tasks in this state: running, complete, failed, cancelled.
    #[arg(long)]
    pub status: Option<String>,
    /// Only tasks of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only tasks created at or after this time (RFC 3339, e.g.
    /// 2026-05-01T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Most tasks to show (1 to 1000; the server's default is 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// The next page: the cursor the previous page printed.
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The task's id.
    pub id: i64,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// How often `submit --wait` asks for the task.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// The first poll's delay; each next one's doubles up to [`POLL_EVERY`].
const POLL_FIRST: Duration = Duration::from_millis(25);
/// How long `submit --wait` keeps trying a server that went away (it may
/// be restarting: its tasks survive).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Runs a `tasker task` command; the exit status on success (0, or 1 for a
/// waited-for task that did not complete). An error is exit status 2.
pub fn run(args: TaskArgs) -> Result<i32> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        match args.command {
            TaskCommand::Submit(args) => submit(args).await,
            TaskCommand::Get(args) => {
                let task = client(&args.api)?.get(args.id).await?;
                if args.json {
                    print_json(&task);
                } else {
                    print_task(&task);
                }
                Ok(0)
            }
            TaskCommand::List(args) => list(args).await,
            TaskCommand::Cancel(args) => {
                let task = client(&args.api)?.cancel(args.id).await?;
                if args.json {
                    print_json(&task);
                } else {
                    println!(
                        "cancel requested for task {} ({}): nothing more starts; running steps \
                         finish and are recorded",
                        task.task_id, task.workflow
                    );
                    print_task(&task);
                }
                Ok(0)
            }
        }
    })
}

async fn submit(args: SubmitArgs) -> Result<i32> {
    let context = crate::run::read_context(&args.context)?;
    let client = client(&args.api)?;
    let handle = client
        .submit(&args.workflow, context, args.idempotency_key.as_deref())
        .await?;
    let (created, task) = (handle.created, handle.task);
    if !args.wait {
        if args.json {
            print_json(&task);
        } else {
            if created {
                println!(
                    "created task {} ({}): {}, {} step{}",
                    task.task_id,
                    task.workflow,
                    task.status,
                    task.steps.len(),
                    if task.steps.len() == 1 { "" } else { "s" }
                );
            } else {
                println!(
                    "task {} ({}) was created before with this idempotency key: {}",
                    task.task_id, task.workflow, task.status
                );
            }
            println!("follow it: tasker task get {}", task.task_id);
        }
        return Ok(0);
    }
    if !created {
        eprintln!(
            "task {} was created before with this idempotency key; following it",
            task.task_id
        );
    }
    let last = follow(&client, task, args.json).await?;
    match last {
        Followed::Ended(task) => {
            if args.json {
                print_json(&task);
            } else {
                println!();
                print_task(&task);
            }
            Ok(if task.status == TaskState::Complete {
                0
            } else {
                1
            })
        }
        Followed::Interrupted(task_id) => {
            eprintln!(
                "\nstopped following: task {task_id} goes on in the server \
                 (`tasker task get {task_id}`, `tasker task cancel {task_id}`)"
            );
            Ok(130)
        }
    }
}

enum Followed {
    /// The task as it ended.
    Ended(TaskDetail),
    Interrupted(i64),
}

/// Polls the task until it ends, printing progress as `tasker run` does.
async fn follow(client: &Client, first: TaskDetail, json: bool) -> Result<Followed> {
    let task_id = first.task_id;
    let mut progress = Progress::new(first.steps.len(), std::io::stderr().is_terminal() && !json);
    eprintln!(
        "task {task_id} ({}): {} steps",
        first.workflow,
        first.steps.len()
    );
    let mut changes = Changes::default();
    let mut task = first;
    let mut lost_since: Option<Instant> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // The first polls come sooner: a short task's lines showed the time of
    // the first poll, 0.2 s, for a task done in 0.05.
    let mut poll_every = POLL_FIRST;
    loop {
        for event in changes.between(&task) {
            match event {
                Change::Event(event) => progress.event(&event),
                Change::Line(text) => progress.line(&text),
            }
        }
        progress.redraw();
        if task.status != TaskState::Running {
            progress.finish();
            return Ok(Followed::Ended(task));
        }
        tokio::select! {
            _ = tokio::time::sleep(poll_every) => {}
            _ = &mut ctrl_c => {
                progress.finish();
                return Ok(Followed::Interrupted(task_id));
            }
        }
        poll_every = (poll_every * 2).min(POLL_EVERY);
        match client.get(task_id).await {
            Ok(answer) => {
                if lost_since.take().is_some() {
                    progress.line("the server answers again");
                }
                task = answer;
            }
            // The client has retried for a few seconds already; a server
            // being restarted may need longer, and carries on with the task.
            Err(e @ tasker_client::Error::ServerUnavailable { .. }) => {
                let since = *lost_since.get_or_insert_with(|| {
                    progress.line(&format!(
                        "{e}; retrying for {} s (a restarted server carries on with the task)",
                        RECONNECT_FOR.as_secs()
                    ));
                    Instant::now()
                });
                if since.elapsed() > RECONNECT_FOR {
                    progress.finish();
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                progress.finish();
                return Err(e.into());
            }
        }
    }
}

/// What a poll showed that the previous did not.
enum Change {
    Event(TaskEvent),
    Line(String),
}

/// The steps' states at the previous poll, to turn the next one into
/// progress events.
#[derive(Default)]
struct Changes {
    seen: HashMap<i64, (StepState, u32)>,
    cancelling: bool,
}

impl Changes {
    fn between(&mut self, task: &TaskDetail) -> Vec<Change> {
        let mut out = Vec::new();
        if task.cancel_requested && !self.cancelling {
            self.cancelling = true;
            out.push(Change::Event(TaskEvent::Cancelling));
        }
        // Steps already running end first; then the attempts that started
        // since the last poll, then how those of them that finished ended;
        // steps blocked last, as a failure blocks them (a poll that saw a
        // whole task said `blocked` before the failure upstream had
        // started).
        let mut started_here: Vec<Started> = Vec::new();
        let mut ended_running = Vec::new();
        let mut blocked = Vec::new();
        for step in &task.steps {
            let (was, was_attempts) = self
                .seen
                .insert(step.step_id, (step.state, step.attempts))
                .unwrap_or((StepState::Waiting, 0));
            if (was, was_attempts) == (step.state, step.attempts) {
                continue;
            }
            let started = step.attempts > was_attempts;
            if started {
                // An attempt that failed and was retried between two polls
                // never showed as `retry_wait`.
                let missed_retry = was_attempts > 0 && was != StepState::RetryWait;
                if missed_retry || step.attempts > was_attempts + 1 {
                    // A step that completed since has no error left to
                    // show, but its retry still happened.
                    let why = step
                        .error
                        .as_ref()
                        .map(|e| format!(": {}: {}", e.error_type, e.message))
                        .unwrap_or_default();
                    out.push(Change::Line(format!(
                        "retried   {} after attempt {}{why}",
                        step.name,
                        step.attempts - 1,
                    )));
                }
                started_here.push(Started {
                    name: step.name.clone(),
                    attempt: step.attempts,
                    depends_on: step.depends_on.clone(),
                    ended: None,
                });
            }
            let event = match step.state {
                StepState::Completed => Some(TaskEvent::Completed {
                    step: step.name.clone(),
                    attempt: step.attempts,
                    worker_id: step.worker_id.clone().unwrap_or_else(|| "-".into()),
                    execution_time_ms: step.duration_ms,
                }),
                StepState::RetryWait => Some(TaskEvent::Retrying {
                    step: step.name.clone(),
                    attempt: step.attempts,
                    error: step.error.clone().unwrap_or_else(unknown_error),
                    delay: step
                        .next_run_at
                        .and_then(|at| (at - Utc::now()).to_std().ok())
                        .unwrap_or_default(),
                }),
                StepState::Failed => Some(TaskEvent::Failed {
                    step: step.name.clone(),
                    attempt: step.attempts,
                    error: step.error.clone().unwrap_or_else(unknown_error),
                }),
                StepState::Blocked => Some(TaskEvent::Blocked {
                    step: step.name.clone(),
                    by: step.blocked_by.clone().unwrap_or_else(|| "?".into()),
                }),
                StepState::Waiting | StepState::Running | StepState::Cancelled => None,
            };
            if step.state == StepState::Blocked {
                blocked.extend(event);
            } else if started {
                started_here.last_mut().expect("pushed above").ended = event;
            } else {
                ended_running.extend(event);
            }
        }
        out.extend(ended_running.into_iter().map(Change::Event));
        // A step that started after a parent which started and ended in
        // the same poll comes after that parent's end, as it happened:
        // `started charge` was said before `completed validate`.
        let levels = dependency_levels(&started_here);
        for level in 0..=levels.iter().copied().max().unwrap_or(0) {
            let at: Vec<&Started> = started_here
                .iter()
                .zip(&levels)
                .filter(|(_, l)| **l == level)
                .map(|(s, _)| s)
                .collect();
            if at.is_empty() {
                continue;
            }
            out.push(Change::Event(TaskEvent::Dispatched {
                steps: at.iter().map(|s| (s.name.clone(), s.attempt)).collect(),
            }));
            out.extend(at.iter().filter_map(|s| s.ended.clone()).map(Change::Event));
        }
        out.extend(blocked.into_iter().map(Change::Event));
        out
    }
}

/// An attempt that started since the last poll, and how it ended if it
/// did.
struct Started {
    name: String,
    attempt: u32,
    depends_on: Vec<String>,
    ended: Option<TaskEvent>,
}

/// For each of `started`, how many of its ancestors also started (and
/// ended) in the same poll, along its longest chain of them: the order in
/// which they must be told.
fn dependency_levels(started: &[Started]) -> Vec<usize> {
    let mut levels = vec![0; started.len()];
    // A chain is at most as long as the steps in it.
    for _ in 0..started.len() {
        let mut changed = false;
        for (i, step) in started.iter().enumerate() {
            let level = started
                .iter()
                .zip(&levels)
                .filter(|(parent, _)| step.depends_on.contains(&parent.name))
                .map(|(_, l)| l + 1)
                .max()
                .unwrap_or(0);
            if level != levels[i] {
                levels[i] = level;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    levels
}

fn unknown_error() -> StepExecutionError {
    StepExecutionError::new("Unknown", "no error recorded", false)
}

async fn list(args: ListArgs) -> Result<i32> {
    let query = ListTasks {
        status: args
            .status
            .as_deref()
            .map(|s| {
                s.parse::<TaskState>().map_err(|_| {
                    let states: Vec<&str> = TaskState::ALL.iter().map(|s| s.as_str()).collect();
                    anyhow!("--status {s:?}: expected one of {}", states.join(", "))
                })
            })
            .transpose()?,
        workflow: args.workflow.clone(),
        created_since: args
            .since
            .as_deref()
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| {
                        anyhow!(
                            "--since {s:?}: not an RFC 3339 time ({e}), e.g. 2026-05-01T00:00:00Z"
                        )
                    })
            })
            .transpose()?,
        limit: args.limit,
        cursor: args.cursor.clone(),
    };
    let page = client(&args.api)?.list(&query).await?;
    if args.json {
        print_json(&page);
        return Ok(0);
    }
    if page.tasks.is_empty() {
        println!("no tasks");
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = page
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.task_id.to_string(),
                t.workflow.clone(),
                format!(
                    "{}{}",
                    status_word(t.status),
                    if t.cancel_requested && t.status == TaskState::Running {
                        " (cancelling)"
                    } else {
                        ""
                    }
                ),
                format!("{}/{}", t.steps_completed, t.steps_total),
                t.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                t.finished_at
                    .map(|f| f.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "WORKFLOW",
            "STATUS",
            "STEPS DONE",
            "STARTED",
            "FINISHED",
        ],
        &rows,
    );
    if let Some(cursor) = &page.next_cursor {
        println!("more: tasker task list --cursor {cursor} (with the same filters)");
    }
    Ok(0)
}

fn status_word(status: TaskState) -> &'static str {
    match status {
        TaskState::Running => "running",
        TaskState::Complete => "complete",
        TaskState::Failed => "FAILED",
        TaskState::Cancelled => "CANCELLED",
    }
}

/// A task as `tasker run` summarises one: a header line and a table of
/// its steps.
fn print_task(task: &TaskDetail) {
    let retries: u32 = task
        .steps
        .iter()
        .map(|s| s.attempts.saturating_sub(1))
        .sum();
    let timing = if task.status == TaskState::Running {
        format!("for {:.2} s", task.duration_ms as f64 / 1000.0)
    } else {
        format!("in {:.2} s", task.duration_ms as f64 / 1000.0)
    };
    println!(
        "{} (task {}): {}{} {timing}, {retries} retr{}",
        task.workflow,
        task.task_id,
        status_word(task.status),
        if task.cancel_requested && task.status == TaskState::Running {
            " (cancel requested)"
        } else {
            ""
        },
        if retries == 1 { "y" } else { "ies" }
    );
    let rows: Vec<Vec<String>> = task
        .steps
        .iter()
        .map(|s| {
            let state = match s.state {
                StepState::Failed => "FAILED".to_string(),
                StepState::RetryWait => match s.next_run_at {
                    Some(at) => format!(
                        "retry in {:.1} s",
                        (at - Utc::now()).num_milliseconds().max(0) as f64 / 1000.0
                    ),
                    None => "retry_wait".to_string(),
                },
                other => other.to_string(),
            };
            let detail = match (&s.output, &s.error, &s.blocked_by) {
                (_, _, Some(by)) => format!("needs {by}"),
                (Some(out), _, _) => out.to_string(),
                // Its first line: a backtrace's lines, escaped onto one,
                // hid the cause (the failed steps' errors follow whole).
                (_, Some(e), _) => {
                    let first = e.message.lines().find(|l| !l.trim().is_empty());
                    format!("{}: {}", e.error_type, first.unwrap_or_default())
                }
                _ => String::new(),
            };
            vec![
                // A 5,000-character name made every row as wide.
                truncate(&s.name, 60),
                state,
                s.attempts.to_string(),
                format!("{} ms", s.duration_ms),
                match (&s.worker_id, s.state) {
                    (Some(worker), _) => truncate(worker, 40),
                    // Queued in the server: no worker serving its handler
                    // has taken it yet.
                    (None, StepState::Running) => "(none yet)".into(),
                    (None, _) => "-".into(),
                },
                truncate(&detail, 60),
            ]
        })
        .collect();
    print_table(
        &[
            "STEP",
            "STATE",
            "ATTEMPTS",
            "TIME",
            "WORKER",
            "OUTPUT / ERROR",
        ],
        &rows,
    );
    print!("{}", failed_errors(&task.steps));
}

/// The whole error of each failed step, lines kept (each escaped as the
/// table is): the cause of a failure is often below a message's first
/// line, and the table showed a backtrace's lines escaped onto one.
fn failed_errors(steps: &[tasker_protocol::api::StepDetail]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for step in steps {
        if let (StepState::Failed, Some(e)) = (step.state, &step.error) {
            let lines: Vec<&str> = e.message.lines().collect();
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{} failed: {}",
                printable(&step.name, false),
                printable(&e.error_type, false)
            );
            for line in lines.iter().take(ERROR_LINES_SHOWN) {
                let _ = writeln!(out, "  {}", printable(line, false));
            }
            if lines.len() > ERROR_LINES_SHOWN {
                let _ = writeln!(
                    out,
                    "  … {} more lines (--json or the dashboard shows them)",
                    lines.len() - ERROR_LINES_SHOWN
                );
            }
        }
    }
    out
}

/// Lines of a failed step's error `tasker task get` prints under the table.
const ERROR_LINES_SHOWN: usize = 20;

/// Prints `rows` under `header`, each column as wide as its widest cell.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let print_row = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    };
    print_row(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        print_row(row);
    }
}

/// Prints what the API answered, as JSON (the same types the server
/// serialises, so the same JSON).
fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("API types serialise")
    );
}

/// A client of the API `args` name: `--api`, else the config's `api_url`
/// (or `api_listen`), with its `api_token`.
fn client(args: &ApiArgs) -> Result<Client> {
    let config = ConfigArgs {
        config: args.config.clone(),
        environment: args.environment.clone(),
        endpoint: None,
    }
    .load()?;
    let client = match &args.api {
        Some(url) => {
            let client = Client::new(url).map_err(|e| anyhow!("--api {e}"))?;
            match config.api_token.as_str() {
                "" => client,
                token => client.with_token(token),
            }
        }
        None => Client::from_config(&config)?,
    };
    Ok(match args.timeout {
        Some(timeout) => client.with_timeout(timeout),
        None => client,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_steps_whole_error_is_shown_under_the_table_line_by_line() {
        let message = format!(
            "undefined method `[]' for nil\n\n{}",
            "  from app.rb:1\n".repeat(25)
        );
        let steps: Vec<tasker_protocol::api::StepDetail> = serde_json::from_value(serde_json::json!([
            { "step_id": 1, "name": "ok", "handler": "h", "depends_on": [], "state": "completed",
              "attempts": 1, "duration_ms": 1, "output": 1 },
            { "step_id": 2, "name": "charge", "handler": "h", "depends_on": [], "state": "failed",
              "attempts": 3, "duration_ms": 1,
              "error": { "error_type": "NoMethodError", "message": message, "retryable": false } }
        ]))
        .unwrap();
        let shown = super::failed_errors(&steps);
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[1], "charge failed: NoMethodError");
        assert_eq!(lines[2], "  undefined method `[]' for nil");
        assert_eq!(lines[4], "    from app.rb:1");
        assert_eq!(
            lines.last().unwrap(),
            &"  … 7 more lines (--json or the dashboard shows them)"
        );
        assert!(!shown.contains("\\n"), "{shown}");
    }

    use super::*;
    use tasker_store::StepDetail;

    fn step(id: i64, name: &str, state: StepState, attempts: u32) -> StepDetail {
        StepDetail {
            step_id: id,
            name: name.into(),
            handler: "h".into(),
            depends_on: Vec::new(),
            state,
            outcome: state.outcome(),
            attempts,
            duration_ms: 5,
            worker_id: (state == StepState::Completed).then(|| "w1".to_string()),
            output: None,
            error: (attempts > 1 || state == StepState::Failed)
                .then(|| StepExecutionError::new("Boom", "it broke", true)),
            blocked_by: None,
            next_run_at: None,
        }
    }

    #[test]
    fn a_workers_text_is_shown_on_one_line_with_its_control_characters_escaped() {
        let shown = truncate("a\u{1b}[2Jb\nc", 60);
        assert_eq!(shown, "a\\u{1b}[2Jb\\nc");
        // Nor may it turn the line around, or hide in it.
        assert_eq!(truncate("w\u{202e}1\u{200b}", 60), "w\\u{202e}1\\u{200b}");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }

    fn task(steps: Vec<StepDetail>, cancel_requested: bool) -> TaskDetail {
        TaskDetail {
            task_id: 1,
            workflow: "wf".into(),
            status: TaskState::Running,
            cancel_requested,
            idempotency_key: None,
            context: serde_json::json!({}),
            started_at: Utc::now(),
            finished_at: None,
            duration_ms: 0,
            steps,
        }
    }

    fn describe(changes: Vec<Change>) -> Vec<String> {
        changes
            .into_iter()
            .map(|c| match c {
                Change::Line(text) => text,
                Change::Event(TaskEvent::Dispatched { steps }) => format!("dispatched {steps:?}"),
                Change::Event(TaskEvent::Completed { step, attempt, .. }) => {
                    format!("completed {step} {attempt}")
                }
                Change::Event(TaskEvent::Retrying { step, attempt, .. }) => {
                    format!("retrying {step} {attempt}")
                }
                Change::Event(TaskEvent::Failed { step, attempt, .. }) => {
                    format!("failed {step} {attempt}")
                }
                Change::Event(TaskEvent::Blocked { step, .. }) => format!("blocked {step}"),
                Change::Event(TaskEvent::Cancelling) => "cancelling".into(),
            })
            .collect()
    }

    /// A poll that finds a step done and its dependent already started
    /// says the first's start and end before the second's start, as they
    /// happened (it said `started charge` before `completed validate`).
    #[test]
    fn a_dependent_started_in_the_same_poll_as_its_parent_ended_is_said_after_it() {
        // validate -> {charge, render}, charge -> notify, in the states given.
        let poll = |charge: (StepState, u32), notify: (StepState, u32)| {
            let with_parent = |mut step: StepDetail, parent: &str| {
                step.depends_on = vec![parent.into()];
                step
            };
            task(
                vec![
                    step(1, "validate", StepState::Completed, 1),
                    with_parent(step(2, "charge", charge.0, charge.1), "validate"),
                    with_parent(step(4, "render", StepState::Running, 1), "validate"),
                    with_parent(step(3, "notify", notify.0, notify.1), "charge"),
                ],
                false,
            )
        };
        let mut changes = Changes::default();
        let first = poll((StepState::Running, 1), (StepState::Waiting, 0));
        assert_eq!(
            describe(changes.between(&first)),
            [
                "dispatched [(\"validate\", 1)]",
                "completed validate 1",
                "dispatched [(\"charge\", 1), (\"render\", 1)]",
            ]
        );
        let later = poll((StepState::Completed, 1), (StepState::Completed, 1));
        assert_eq!(
            describe(changes.between(&later)),
            [
                "completed charge 1",
                "dispatched [(\"notify\", 1)]",
                "completed notify 1",
            ]
        );
    }

    #[test]
    fn polls_become_the_events_tasker_run_prints() {
        let mut changes = Changes::default();
        let first = task(
            vec![
                step(1, "a", StepState::Waiting, 0),
                step(2, "b", StepState::Waiting, 0),
            ],
            false,
        );
        assert!(describe(changes.between(&first)).is_empty());
        let second = task(
            vec![
                step(1, "a", StepState::Running, 1),
                step(2, "b", StepState::Waiting, 0),
            ],
            false,
        );
        assert_eq!(
            describe(changes.between(&second)),
            vec![r#"dispatched [("a", 1)]"#]
        );
        // No change: nothing printed.
        assert!(describe(changes.between(&second)).is_empty());
        // a finished and b ran and completed between two polls.
        let third = task(
            vec![
                step(1, "a", StepState::RetryWait, 1),
                step(2, "b", StepState::Completed, 1),
            ],
            false,
        );
        assert_eq!(
            describe(changes.between(&third)),
            vec![
                "retrying a 1".to_string(),
                r#"dispatched [("b", 1)]"#.into(),
                "completed b 1".into()
            ]
        );
        let fourth = task(
            vec![
                step(1, "a", StepState::Failed, 2),
                step(2, "b", StepState::Completed, 1),
            ],
            true,
        );
        assert_eq!(
            describe(changes.between(&fourth)),
            vec![
                "cancelling".to_string(),
                r#"dispatched [("a", 2)]"#.into(),
                "failed a 2".into()
            ]
        );
    }

    #[test]
    fn a_step_blocked_by_a_failure_in_the_same_poll_is_said_after_it() {
        let mut changes = Changes::default();
        changes.between(&task(
            vec![
                step(1, "charge", StepState::Waiting, 0),
                step(2, "ship", StepState::Waiting, 0),
            ],
            false,
        ));
        let mut ship = step(2, "ship", StepState::Blocked, 0);
        ship.blocked_by = Some("charge".into());
        assert_eq!(
            describe(changes.between(&task(
                vec![ship, step(1, "charge", StepState::Failed, 1)],
                false
            ))),
            vec![
                r#"dispatched [("charge", 1)]"#.to_string(),
                "failed charge 1".into(),
                "blocked ship".into()
            ]
        );
    }

    #[test]
    fn a_retry_of_a_step_that_completed_between_polls_is_reported_without_an_error() {
        let mut changes = Changes::default();
        changes.between(&task(vec![step(1, "a", StepState::Waiting, 0)], false));
        // Attempt 1 failed, attempt 2 ran and completed: a completed step
        // keeps no error.
        let mut done = step(1, "a", StepState::Completed, 2);
        done.error = None;
        assert_eq!(
            describe(changes.between(&task(vec![done], false))),
            vec![
                "retried   a after attempt 1".to_string(),
                r#"dispatched [("a", 2)]"#.into(),
                "completed a 2".into()
            ]
        );
    }

    #[test]
    fn a_retry_between_polls_is_still_reported() {
        let mut changes = Changes::default();
        changes.between(&task(vec![step(1, "a", StepState::Running, 1)], false));
        let lines =
            describe(changes.between(&task(vec![step(1, "a", StepState::Running, 2)], false)));
        assert_eq!(
            lines,
            vec![
                "retried   a after attempt 1: Boom: it broke".to_string(),
                r#"dispatched [("a", 2)]"#.into()
            ]
        );
    }
}
