//! `tasker`: the command line of tasker-core.

mod bench;
mod bench_latency;
mod bench_store;
mod bench_workers;
mod children;
mod dispatch;
mod keygen;
mod open_files;
mod run;
mod serve;
mod soak;
mod spawn_keys;
mod task;
mod worker;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use tasker_config::TaskerConfig;

#[derive(Parser)]
#[command(
    name = "tasker",
    version = tasker_server::VERSION,
    about = "tasker-core: language-agnostic step execution over ZeroMQ"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines on stderr as text, or as one JSON object per line for a
    /// log collector.
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        env = "TASKER_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    /// `{"timestamp":…,"level":"INFO","message":…,"target":…}` and the
    /// event's fields beside them.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Write the JSON Schema of every wire message and the API's OpenAPI
    /// document (or check they are current).
    Schema {
        /// Directory to write into.
        #[arg(long, default_value = "protocol/schema")]
        out: PathBuf,
        /// Where the workflow (task template) schema goes.
        #[arg(long, default_value = tasker_engine::TEMPLATE_SCHEMA_PATH)]
        workflow_out: PathBuf,
        /// Where the HTTP API's OpenAPI document goes.
        #[arg(long, default_value = tasker_server::api::OPENAPI_PATH)]
        openapi_out: PathBuf,
        /// Only compare with the files there; exit 1 when they differ.
        #[arg(long)]
        check: bool,
    },
    /// Bind the orchestrator, send one batch (JSON file or stdin) to the
    /// connected workers and print the results as JSON.
    Dispatch(dispatch::DispatchArgs),
    /// Run one task of a workflow (YAML) against connected or spawned
    /// workers, with live progress and a summary.
    Run(run::RunArgs),
    /// Run a Rust worker with the built-in example handlers.
    Worker(worker::WorkerArgs),
    /// Measure steps/s and latency against a raw ZeroMQ echo ceiling.
    Bench(bench::BenchArgs),
    /// Compare steps/s of worker processes in any language, run by command.
    BenchWorkers(bench_workers::BenchWorkersArgs),
    /// Chaos soak: run steps through Rust and Python worker processes while
    /// killing, terminating and stopping them and stopping the
    /// orchestrator, then check that nothing was lost, duplicated or
    /// overcommitted. Exits 0 only when every check passed.
    Soak(soak::SoakArgs),
    /// Start, show, list and cancel tasks of a running `tasker serve`
    /// through its HTTP API.
    Task(task::TaskArgs),
    /// Run the orchestrator as a service: tasks kept in a store (SQLite by
    /// default, or PostgreSQL) survive a crash; an HTTP API starts, shows
    /// and cancels them. Stops cleanly on SIGTERM or Ctrl-C.
    Serve(serve::ServeArgs),
    /// Write a CURVE key pair: NAME.key (secret, mode 0600) and NAME.pub
    /// (public). The orchestrator admits a worker whose NAME.pub is in its
    /// curve_authorized_keys_dir; a worker names the orchestrator's in
    /// curve_server_public_key_file.
    Keygen(keygen::KeygenArgs),
}

/// Options every networked command shares.
#[derive(Args, Clone, Debug)]
pub struct ConfigArgs {
    /// Configuration file (default: config/zeromq.yaml when present).
    #[arg(long, env = "TASKER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Environment section (default: TASKER_ENV or development).
    #[arg(long = "env")]
    pub environment: Option<String>,
    /// Endpoint to bind or connect, overriding the config.
    #[arg(long)]
    pub endpoint: Option<String>,
}

impl ConfigArgs {
    /// Loads the configuration these options name.
    pub fn load(&self) -> Result<TaskerConfig> {
        let mut config =
            TaskerConfig::discover(self.config.as_deref(), self.environment.as_deref())?;
        if let Some(endpoint) = &self.endpoint {
            config.endpoint = endpoint.clone();
            config.validate()?;
        }
        Ok(config)
    }
}

fn init_logging(default_level: &str, format: LogFormat) {
    // PostgreSQL's notices reach the log through sqlx at info, and the one
    // every start gave ("relation \"_sqlx_migrations\" already exists,
    // skipping") read as a migration when none ran: they are kept for
    // RUST_LOG to ask for.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let notices = match default_level {
            "error" | "warn" => "",
            _ => ",sqlx::postgres::notice=warn",
        };
        tracing_subscriber::EnvFilter::new(format!("{default_level}{notices}"))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written is lost, not reported: the
        // report goes through `eprintln!`, which panics when stderr fails
        // too, so a full disk under a log file panicked whichever thread
        // logged, the store's writer among them, and the server never
        // wrote again after space came back.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => {
            // Colour only for a person at a terminal: a log file or a pipe
            // gets plain text (and NO_COLOR is honoured).
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").map_or(true, |v| v.is_empty());
            builder.with_ansi(ansi).init();
        }
        // Flattened, without span lists: a collector finds `level` and
        // `message` at the top of every line.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn main() {
    let cli = Cli::parse();
    open_files::raise_to_hard_limit();
    if let Err(e) = run_command(cli.command, cli.log_format) {
        fail(&e, 1);
    }
}

/// Prints `error` on stderr, as `error: ...`, and exits with `code`.
fn fail(error: &anyhow::Error, code: i32) -> ! {
    eprintln!("error: {}", run::printable(&error_text(error), true));
    std::process::exit(code)
}

/// What to do when the orchestrator's endpoint is taken.
const ENDPOINT_IN_USE: &str = "; another tasker (run, serve or dispatch) or another program is \
    using it: stop it, or pass --endpoint tcp://127.0.0.1:0 for a free port";
/// What to do when the API address is taken.
const API_IN_USE: &str = "; another tasker serve or another program is using it: stop it, \
    or pass --api-listen 127.0.0.1:0 for a free port";

/// An error in one line: each cause once (most errors here quote their
/// cause, which `{:#}` would print again after them), and what to do when
/// an address is taken.
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut hint = "";
    for cause in error.chain() {
        if matches!(cause.downcast_ref(), Some(zmq::Error::EADDRINUSE)) {
            hint = ENDPOINT_IN_USE;
        }
        if let Some(tasker_server::StartError::Bind { source, .. }) = cause.downcast_ref() {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                hint = API_IN_USE;
            }
        }
        let said = cause.to_string();
        if text.ends_with(&said) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&said);
    }
    text.push_str(hint);
    text
}

fn run_command(command: Command, log_format: LogFormat) -> Result<()> {
    match command {
        Command::Schema {
            out,
            workflow_out,
            openapi_out,
            check,
        } => schema(&out, &workflow_out, &openapi_out, check),
        Command::Dispatch(args) => {
            init_logging("warn", log_format);
            dispatch::run(args)
        }
        Command::Run(args) => {
            init_logging("warn", log_format);
            match run::run(args) {
                Ok(tasker_engine::TaskStatus::Complete) => Ok(()),
                Ok(_) => std::process::exit(1),
                Err(e) => {
                    let start_error = e.downcast_ref::<run::StartError>().is_some();
                    fail(&e, if start_error { 2 } else { 1 });
                }
            }
        }
        Command::Worker(args) => {
            init_logging("info", log_format);
            worker::run(args)
        }
        Command::Bench(args) => {
            init_logging("error", log_format);
            bench::run(args)
        }
        Command::BenchWorkers(args) => {
            init_logging("error", log_format);
            bench_workers::run(args)
        }
        Command::Serve(args) => {
            init_logging("info", log_format);
            serve::run(args)
        }
        Command::Keygen(args) => keygen::run(args).map_err(|e| fail(&e, 2)),
        Command::Task(args) => {
            init_logging("warn", log_format);
            die_quietly_on_a_closed_pipe();
            match task::run(args) {
                Ok(0) => Ok(()),
                Ok(code) => std::process::exit(code),
                Err(e) => fail(&e, 2),
            }
        }
        Command::Soak(args) => {
            init_logging("warn", log_format);
            match soak::run(args) {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => fail(&e, 2),
            }
        }
    }
}

/// `tasker task list | head` panicked ("failed printing to stdout") once
/// `head` had read enough: Rust ignores SIGPIPE, so `println!` meets
/// EPIPE. The `task` commands print to a terminal or a pipe and hold
/// nothing a sudden end would lose, so they end as a shell tool does;
/// their HTTP connections are sockets, which report EPIPE without the
/// signal (MSG_NOSIGNAL).
fn die_quietly_on_a_closed_pipe() {
    // SAFETY: sets a signal disposition before any thread of ours writes to
    // a pipe; SIG_DFL is a valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn schema(
    out: &std::path::Path,
    workflow_out: &std::path::Path,
    openapi_out: &std::path::Path,
    check: bool,
) -> Result<()> {
    let workflow_schema = tasker_engine::render_template_schema();
    let openapi = tasker_server::api::render_openapi();
    if !check {
        for path in tasker_protocol::schema::write_all(out)? {
            println!("wrote {}", path.display());
        }
        std::fs::write(workflow_out, workflow_schema)
            .with_context(|| format!("writing {}", workflow_out.display()))?;
        println!("wrote {}", workflow_out.display());
        std::fs::write(openapi_out, &openapi)
            .with_context(|| format!("writing {}", openapi_out.display()))?;
        println!("wrote {}", openapi_out.display());
        return Ok(());
    }
    let mut stale: Vec<String> = tasker_protocol::schema::stale(out)
        .into_iter()
        .map(|f| out.join(f).display().to_string())
        .collect();
    if std::fs::read_to_string(workflow_out).ok().as_deref() != Some(workflow_schema.as_str()) {
        stale.push(workflow_out.display().to_string());
    }
    if std::fs::read_to_string(openapi_out).ok().as_deref() != Some(openapi.as_str()) {
        stale.push(openapi_out.display().to_string());
    }
    if stale.is_empty() {
        println!("schema is up to date");
        Ok(())
    } else {
        anyhow::bail!(
            "schema files out of date (run `tasker schema`): {}",
            stale.join(", ")
        )
    }
}
