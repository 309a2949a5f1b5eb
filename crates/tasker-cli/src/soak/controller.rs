//! The soak's controller: starts the orchestrator and worker processes,
//! disturbs them on a seeded schedule, samples the orchestrator's RSS, stops
//! everything, and hands the records to [`super::checks`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::checks::{self, Inputs};
use super::{epoch_ms, Rng, SoakArgs, ENV_LOG, ENV_PARENT, ENV_WORKER_ID, PYTHON_WORKER};

/// How long a worker may take to drain after SIGTERM.
const TERM_GRACE: Duration = Duration::from_secs(20);
/// How often the loop looks at the processes (and samples RSS).
const TICK: Duration = Duration::from_millis(10);
/// Youngest a replacement worker may be to be picked as a victim: it has
/// connected. (The first workers had all connected when the steps began.)
const MIN_VICTIM_AGE: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lang {
    Rust,
    Python,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ChaosKind {
    /// kill -9 a worker; a replacement starts at once.
    Kill,
    /// SIGTERM a worker: it drains and exits; then a replacement starts.
    Term,
    /// SIGSTOP a worker for a while, then SIGCONT.
    StopWorker,
    /// SIGSTOP the orchestrator for up to 2× the liveness expiry.
    StopOrchestrator,
}

impl ChaosKind {
    pub const ALL: [ChaosKind; 4] = [
        ChaosKind::Kill,
        ChaosKind::Term,
        ChaosKind::StopWorker,
        ChaosKind::StopOrchestrator,
    ];

    /// How often it is drawn, after the first one of each kind.
    fn weight(self) -> usize {
        match self {
            ChaosKind::Kill | ChaosKind::StopWorker => 3,
            ChaosKind::Term | ChaosKind::StopOrchestrator => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ChaosKind::Kill => "kill -9 worker",
            ChaosKind::Term => "SIGTERM worker",
            ChaosKind::StopWorker => "SIGSTOP worker",
            ChaosKind::StopOrchestrator => "SIGSTOP orchestrator",
        }
    }
}

/// One disturbance, as it happened.
#[derive(Clone, Debug)]
pub struct ChaosEvent {
    pub t_ms: u64,
    pub kind: ChaosKind,
    /// Worker id, or `orchestrator`.
    pub target: String,
    pub pid: u32,
    /// How long it stayed stopped (stops only).
    pub duration_ms: u64,
}

/// What became of a worker process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Still running when the soak stopped it (SIGTERM): how it exited.
    Stopped { status: String, clean: bool },
    /// kill -9 by the chaos.
    Killed,
    /// SIGTERM by the chaos: how it exited, and whether within the grace.
    Terminated { status: String, clean: bool },
    /// Exited by itself.
    Crashed { status: String },
}

/// A worker process, for the checks.
#[derive(Clone, Debug)]
pub struct WorkerSummary {
    pub id: String,
    pub lang: Lang,
    pub pid: u32,
    pub fate: Option<Fate>,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Stopped {
        until: Instant,
    },
    /// SIGTERM sent (by the chaos, or at the end of the run).
    Terminating {
        since: Instant,
        by_chaos: bool,
    },
    Killed,
    Gone,
}

struct WorkerProc {
    summary: WorkerSummary,
    child: Child,
    state: State,
    started: Instant,
    /// One of the workers started before the steps: known to have connected.
    first: bool,
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// SIGKILL (which also ends a stopped process) and reap, if still there.
fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sets the flag on SIGINT, SIGTERM or SIGHUP (instead of dying with the
/// children left behind).
fn watch_signals() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = Arc::clone(&flag);
    let _ = std::thread::Builder::new()
        .name("soak-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                let (Ok(mut term), Ok(mut hup)) = (
                    signal(SignalKind::terminate()),
                    signal(SignalKind::hangup()),
                ) else {
                    return;
                };
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                        _ = hup.recv() => {}
                    }
                    set.store(true, Ordering::SeqCst);
                }
            });
        });
    flag
}

/// The interpreter for the Python workers: one that imports `tasker_core`.
fn find_python(args: &SoakArgs) -> Result<PathBuf> {
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import tasker_core"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let named = args
        .python
        .clone()
        .or_else(|| std::env::var_os("TASKER_SOAK_PYTHON").map(PathBuf::from));
    if let Some(python) = named {
        ensure!(
            imports(&python),
            "{} cannot `import tasker_core` (build it with bindings/python/build.sh)",
            python.display()
        );
        return Ok(python);
    }
    let venv = Path::new("bindings/python/.venv/bin/python");
    let mut candidates = vec![std::env::current_dir()?.join(venv)];
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/tasker (or target/<profile>/deps/...) in the repo.
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join(venv));
        }
    }
    candidates.push(PathBuf::from("python3"));
    for python in &candidates {
        if (python.is_absolute() && !python.exists()) || !imports(python) {
            continue;
        }
        return Ok(python.clone());
    }
    bail!(
        "no Python that can `import tasker_core`: run bindings/python/build.sh, pass --python, \
         or run without Python workers (--python-workers 0)"
    )
}

/// The kinds of chaos in use, each once.
pub fn kinds(args: &SoakArgs) -> Vec<ChaosKind> {
    ChaosKind::ALL
        .into_iter()
        .filter(|k| args.chaos_kinds.contains(k))
        .collect()
}

/// When each chaos event fires (after this many steps have a final result)
/// and what it is. The first ones are one of each kind in use, in a seeded
/// order; then kinds are drawn by weight.
fn plan(args: &SoakArgs, rng: &mut Rng) -> Vec<(u64, ChaosKind)> {
    let mut first = kinds(args);
    if first.is_empty() {
        return Vec::new();
    }
    let n = args
        .chaos_events
        .unwrap_or_else(|| (args.steps / 5_000).max(first.len() as u64) as usize);
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i + 1));
    }
    let bag: Vec<ChaosKind> = first
        .iter()
        .flat_map(|&k| std::iter::repeat(k).take(k.weight()))
        .collect();
    (0..n)
        .map(|k| {
            let kind = match first.get(k) {
                Some(&kind) => kind,
                None => bag[rng.below(bag.len())],
            };
            // Spread over 3%..88% of the run, jittered within each slot.
            let frac = 0.03 + 0.85 * (k as f64 + rng.range(0.2, 0.8)) / n as f64;
            let at = ((frac * args.steps as f64) as u64).max(1);
            (at, kind)
        })
        .collect()
}

enum Outcome {
    Finished,
    TimedOut,
    Interrupted,
}

struct Soak {
    args: SoakArgs,
    dir: PathBuf,
    python: Option<PathBuf>,
    exe: PathBuf,
    rng: Rng,
    interrupted: Arc<AtomicBool>,
    endpoint: Option<String>,
    orchestrator: Child,
    orchestrator_pid: u32,
    orchestrator_stopped_until: Option<Instant>,
    orchestrator_exit: Option<ExitStatus>,
    lines: mpsc::Receiver<String>,
    workers: Vec<WorkerProc>,
    spawned: [usize; 2],
    chaos_plan: Vec<(u64, ChaosKind)>,
    next_event: usize,
    /// The orchestrator's standard input while it holds the last tenth of
    /// the steps back, so the run cannot end before its chaos has happened.
    tail_held: Option<ChildStdin>,
    events: Vec<ChaosEvent>,
    started: Option<Instant>,
    started_ms: u64,
    progress: u64,
    done: Option<Value>,
    max_rss_kib: u64,
    rss_samples: u64,
    /// No more replacements: the run is over.
    stopping: bool,
    /// Workers that exited by themselves.
    crashes: usize,
}

impl Drop for Soak {
    fn drop(&mut self) {
        kill_child(&mut self.orchestrator);
    }
}

/// Every `TASKER_*` variable of this process: removed from the children's
/// environment, so that only what the soak sets configures them.
fn inherited_tasker_vars() -> Vec<String> {
    std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("TASKER_"))
        .collect()
}

/// A child in its own process group (a Ctrl-C at the terminal reaches only
/// the controller, which then stops everything), in the work directory (so
/// no config/zeromq.yaml is read), with a clean `TASKER_*` environment.
fn child_command(program: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for key in inherited_tasker_vars() {
        cmd.env_remove(key);
    }
    cmd.current_dir(dir)
        .env(ENV_PARENT, std::process::id().to_string())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .process_group(0);
    cmd
}

impl Soak {
    fn start(
        args: SoakArgs,
        dir: PathBuf,
        python: Option<PathBuf>,
        interrupted: Arc<AtomicBool>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the tasker binary")?;
        let mut rng = Rng::new(args.seed);
        let chaos_plan = plan(&args, &mut rng);
        let log = std::fs::File::create(dir.join("orchestrator.log"))?;
        let a = &args;
        let mut cmd = child_command(&exe, &dir);
        cmd.args(["soak", "--role", "orchestrator", "--work-dir"])
            .arg(&dir)
            .args([
                format!("--steps={}", a.steps),
                format!("--seed={}", a.seed),
                format!("--rust-workers={}", a.rust_workers),
                format!("--python-workers={}", a.python_workers),
                format!("--handler-max-us={}", a.handler_max_us),
                format!("--flaky-permille={}", a.flaky_permille),
                format!("--batch={}", a.batch),
                format!("--window={}", a.window),
                format!("--step-timeout-ms={}", a.step_timeout_ms),
                format!("--max-attempts={}", a.max_attempts),
                format!("--heartbeat-ms={}", a.heartbeat_ms),
                format!("--liveness={}", a.liveness),
            ])
            .stdout(Stdio::piped())
            .stderr(log);
        // Worker events need two workers running to pick a victim from;
        // with fewer, holding the tail back would only wait for nothing.
        let hold = !chaos_plan.is_empty() && a.rust_workers + a.python_workers >= 2;
        if hold {
            cmd.arg("--hold-tail").stdin(Stdio::piped());
        }
        let mut orchestrator = cmd.spawn().context("starting the soak orchestrator")?;
        let tail_held = orchestrator.stdin.take();
        let stdout = orchestrator.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name("soak-orchestrator-out".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })?;
        let orchestrator_pid = orchestrator.id();
        Ok(Self {
            args,
            dir,
            python,
            exe,
            rng,
            interrupted,
            endpoint: None,
            orchestrator,
            orchestrator_pid,
            orchestrator_stopped_until: None,
            orchestrator_exit: None,
            lines,
            workers: Vec::new(),
            spawned: [0, 0],
            chaos_plan,
            next_event: 0,
            tail_held,
            events: Vec::new(),
            started: None,
            started_ms: epoch_ms(),
            progress: 0,
            done: None,
            max_rss_kib: 0,
            rss_samples: 0,
            stopping: false,
            crashes: 0,
        })
    }

    fn spawn_worker(&mut self, lang: Lang) -> Result<()> {
        let endpoint = self.endpoint.clone().context("no endpoint yet")?;
        let n = &mut self.spawned[lang as usize];
        *n += 1;
        let id = format!("soak-{}-{n}", lang.name());
        let log_path = self.dir.join(format!("{id}.log"));
        let log = std::fs::File::create(&log_path)?;
        let capacity = self.args.capacity;
        let mut cmd = match lang {
            Lang::Rust => {
                let mut cmd = child_command(&self.exe, &self.dir);
                cmd.args(["worker", "--handlers", "soak", "--worker-id", &id])
                    .arg(format!("--capacity={capacity}"))
                    // More threads than capacity: were the worker ever
                    // handed more steps than its capacity, more would run
                    // at once and the records would show it.
                    .arg(format!("--threads={}", capacity * 2));
                cmd
            }
            Lang::Python => {
                let python = self.python.clone().context("no Python interpreter")?;
                let mut cmd = child_command(&python, &self.dir);
                cmd.arg(self.dir.join("python_worker.py"))
                    .env(ENV_WORKER_ID, &id)
                    .env("PYTHONUNBUFFERED", "1");
                cmd
            }
        };
        cmd.env("TASKER_ENDPOINT", &endpoint)
            .env("TASKER_WORKER_CAPACITY", capacity.to_string())
            .env(
                "TASKER_HEARTBEAT_INTERVAL_MS",
                self.args.heartbeat_ms.to_string(),
            )
            .env("TASKER_LIVENESS", self.args.liveness.to_string())
            .env("TASKER_RECONNECT_INITIAL_MS", "50")
            .env("TASKER_RECONNECT_MAX_MS", "1000")
            .env(ENV_LOG, self.dir.join("runs.log"))
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting worker {id}"))?;
        let pid = child.id();
        self.workers.push(WorkerProc {
            summary: WorkerSummary {
                id,
                lang,
                pid,
                fate: None,
                log: log_path,
            },
            child,
            state: State::Running,
            started: Instant::now(),
            first: self.started.is_none(),
        });
        Ok(())
    }

    fn say(&self, what: impl std::fmt::Display) {
        if self.args.verbose {
            let t = self
                .started
                .map(|s| s.elapsed().as_secs_f64())
                .unwrap_or(0.0);
            eprintln!("soak [{t:7.2}s] {what}");
        }
    }

    fn on_line(&mut self, line: &str) -> Result<()> {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "endpoint" if self.endpoint.is_none() => {
                self.endpoint = Some(rest.trim().to_string());
                for _ in 0..self.args.rust_workers {
                    self.spawn_worker(Lang::Rust)?;
                }
                for _ in 0..self.args.python_workers {
                    self.spawn_worker(Lang::Python)?;
                }
            }
            "started" => {
                self.started = Some(Instant::now());
                self.started_ms = epoch_ms();
                self.say("all workers connected; steps flowing");
            }
            "progress" => {
                if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                    self.progress = n;
                }
            }
            "done" => {
                self.done = serde_json::from_str(rest).ok();
            }
            _ => {}
        }
        Ok(())
    }

    /// Picks a worker to disturb: running, old enough to have connected,
    /// and not the last one running.
    fn victim(&mut self) -> Option<usize> {
        let running = self
            .workers
            .iter()
            .filter(|w| w.state == State::Running)
            .count();
        if running < 2 {
            return None;
        }
        let eligible: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.state == State::Running && (w.first || w.started.elapsed() >= MIN_VICTIM_AGE)
            })
            .collect();
        if eligible.is_empty() {
            return None;
        }
        Some(eligible[self.rng.below(eligible.len())])
    }

    /// Lets the orchestrator submit the steps it held back.
    fn release_tail(&mut self) {
        if let Some(mut stdin) = self.tail_held.take() {
            // Closing the pipe releases it too, should the write fail.
            let _ = stdin.write_all(b"release\n");
            self.say("every planned event happened; the last steps go out");
        }
    }

    /// Fires the next planned event if it is due and possible; true if it
    /// fired.
    fn chaos(&mut self) -> Result<bool> {
        let Some(&(at, kind)) = self.chaos_plan.get(self.next_event) else {
            return Ok(false);
        };
        if self.started.is_none()
            || self.done.is_some()
            || self.progress < at
            || self.orchestrator_stopped_until.is_some()
        {
            return Ok(false);
        }
        let expiry = self.args.expiry_ms() as f64;
        let now_ms = epoch_ms();
        let event = if kind == ChaosKind::StopOrchestrator {
            let ms = (expiry * self.rng.range(1.2, 2.0)) as u64;
            if !signal(self.orchestrator_pid, "STOP") {
                return Ok(false);
            }
            self.orchestrator_stopped_until = Some(Instant::now() + Duration::from_millis(ms));
            ChaosEvent {
                t_ms: now_ms,
                kind,
                target: "orchestrator".into(),
                pid: self.orchestrator_pid,
                duration_ms: ms,
            }
        } else {
            let Some(i) = self.victim() else {
                return Ok(false);
            };
            let mut duration_ms = 0;
            let w = &mut self.workers[i];
            match kind {
                ChaosKind::Kill => {
                    let _ = w.child.kill();
                    w.state = State::Killed;
                }
                ChaosKind::Term => {
                    signal(w.summary.pid, "TERM");
                    w.state = State::Terminating {
                        since: Instant::now(),
                        by_chaos: true,
                    };
                }
                ChaosKind::StopWorker => {
                    duration_ms = (expiry * self.rng.range(0.3, 3.0)) as u64;
                    signal(w.summary.pid, "STOP");
                    w.state = State::Stopped {
                        until: Instant::now() + Duration::from_millis(duration_ms),
                    };
                }
                ChaosKind::StopOrchestrator => unreachable!(),
            }
            let event = ChaosEvent {
                t_ms: now_ms,
                kind,
                target: w.summary.id.clone(),
                pid: w.summary.pid,
                duration_ms,
            };
            if kind == ChaosKind::Kill {
                let lang = w.summary.lang;
                self.spawn_worker(lang)?;
            }
            event
        };
        self.say(format_args!(
            "chaos {}/{} at {} steps: {} {} (pid {}){}",
            self.next_event + 1,
            self.chaos_plan.len(),
            self.progress,
            event.kind.name(),
            event.target,
            event.pid,
            if event.duration_ms > 0 {
                format!(" for {} ms", event.duration_ms)
            } else {
                String::new()
            }
        ));
        self.events.push(event);
        self.next_event += 1;
        Ok(true)
    }

    /// Resumes what is due, reaps what exited, replaces what left.
    fn tend_workers(&mut self) -> Result<()> {
        let now = Instant::now();
        let mut replace = Vec::new();
        for w in &mut self.workers {
            match w.state {
                State::Stopped { until } if now >= until => {
                    signal(w.summary.pid, "CONT");
                    w.state = State::Running;
                }
                State::Gone => continue,
                _ => {}
            }
            if let State::Terminating { since, .. } = w.state {
                if now.duration_since(since) > TERM_GRACE {
                    let _ = w.child.kill();
                    let _ = w.child.wait();
                    w.summary.fate = Some(Fate::Terminated {
                        status: format!("ignored SIGTERM for {TERM_GRACE:?}: killed"),
                        clean: false,
                    });
                    w.state = State::Gone;
                    replace.push(w.summary.lang);
                    continue;
                }
            }
            let Ok(Some(status)) = w.child.try_wait() else {
                continue;
            };
            let text = describe(status);
            w.summary.fate = Some(match w.state {
                State::Killed => Fate::Killed,
                State::Terminating { by_chaos: true, .. } => {
                    replace.push(w.summary.lang);
                    Fate::Terminated {
                        clean: status.success(),
                        status: text,
                    }
                }
                State::Terminating { .. } => Fate::Stopped {
                    clean: status.success(),
                    status: text,
                },
                _ => {
                    // It died by itself: a crash, counted by the checks;
                    // the run goes on with a replacement.
                    self.crashes += 1;
                    replace.push(w.summary.lang);
                    eprintln!(
                        "soak warning: worker {} (pid {}) exited by itself ({text}); see {}",
                        w.summary.id,
                        w.summary.pid,
                        w.summary.log.display()
                    );
                    Fate::Crashed { status: text }
                }
            });
            w.state = State::Gone;
        }
        let most = 3 * (self.args.rust_workers + self.args.python_workers) + 3;
        if self.crashes > most && !self.stopping {
            bail!(
                "{} worker processes exited by themselves; giving up (see the worker logs in {})",
                self.crashes,
                self.dir.display()
            );
        }
        if !self.stopping {
            for lang in replace {
                self.spawn_worker(lang)?;
            }
        }
        Ok(())
    }

    fn sample_rss(&mut self) {
        if let Some(kib) = rss_kib(self.orchestrator_pid) {
            self.max_rss_kib = self.max_rss_kib.max(kib);
            self.rss_samples += 1;
        }
    }

    fn drive(&mut self) -> Result<Outcome> {
        let begun = Instant::now();
        let deadline = begun + Duration::from_secs_f64(self.args.timeout);
        let mut last_report = Instant::now();
        loop {
            if self.interrupted.load(Ordering::SeqCst) {
                return Ok(Outcome::Interrupted);
            }
            if Instant::now() >= deadline {
                return Ok(Outcome::TimedOut);
            }
            while let Ok(line) = self.lines.try_recv() {
                self.on_line(&line)?;
            }
            if self.endpoint.is_none() && begun.elapsed() > Duration::from_secs(30) {
                bail!("the soak orchestrator did not bind within 30 s");
            }
            if let Some(until) = self.orchestrator_stopped_until {
                if Instant::now() >= until {
                    signal(self.orchestrator_pid, "CONT");
                    self.orchestrator_stopped_until = None;
                }
            }
            self.tend_workers()?;
            while self.chaos()? {}
            if self.next_event == self.chaos_plan.len() {
                self.release_tail();
            }
            self.sample_rss();
            if let Some(status) = self.orchestrator.try_wait()? {
                self.orchestrator_exit = Some(status);
                // Its last lines may still be in the pipe.
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.on_line(&line)?;
                }
                return Ok(Outcome::Finished);
            }
            if last_report.elapsed() >= Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!(
                    "soak progress: {}/{} steps ended, {} chaos events, orchestrator RSS {:.1} MiB",
                    self.progress,
                    self.args.steps,
                    self.events.len(),
                    self.max_rss_kib as f64 / 1024.0
                );
            }
            std::thread::sleep(TICK);
        }
    }

    /// Stops every process: the orchestrator (if still there) at once, the
    /// workers with SIGTERM (SIGKILL when interrupted or past the grace).
    fn teardown(&mut self, gently: bool) {
        self.stopping = true;
        if self.orchestrator_exit.is_none() {
            signal(self.orchestrator_pid, "CONT");
            kill_child(&mut self.orchestrator);
        }
        let now = Instant::now();
        for w in &mut self.workers {
            match w.state {
                State::Gone | State::Killed => {}
                State::Stopped { .. } | State::Running if gently => {
                    signal(w.summary.pid, "CONT");
                    signal(w.summary.pid, "TERM");
                    w.state = State::Terminating {
                        since: now,
                        by_chaos: false,
                    };
                }
                State::Terminating { .. } if gently => {}
                _ => {
                    signal(w.summary.pid, "CONT");
                    kill_child(&mut w.child);
                    if w.summary.fate.is_none() {
                        w.summary.fate = Some(Fate::Stopped {
                            status: "killed: the run stopped early".into(),
                            clean: true,
                        });
                    }
                    w.state = State::Gone;
                }
            }
        }
        let deadline = Instant::now() + TERM_GRACE;
        loop {
            let _ = self.tend_workers();
            let pending = self
                .workers
                .iter()
                .filter(|w| matches!(w.state, State::Terminating { .. } | State::Killed))
                .count();
            if pending == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(TICK);
        }
        for w in &mut self.workers {
            if w.state != State::Gone {
                kill_child(&mut w.child);
                if w.summary.fate.is_none() {
                    w.summary.fate = Some(Fate::Stopped {
                        status: format!("ignored SIGTERM for {TERM_GRACE:?}: killed"),
                        clean: false,
                    });
                }
                w.state = State::Gone;
            }
        }
    }
}

/// `chaos.log` in the work directory: what was done when (seconds from the
/// start of the steps, and epoch ms as in results.jsonl), and which pid
/// each worker id had.
fn write_timeline(
    dir: &Path,
    t0_ms: u64,
    events: &[ChaosEvent],
    workers: &[WorkerSummary],
) -> Result<()> {
    use std::fmt::Write as _;
    let mut text = String::new();
    for e in events {
        let _ = writeln!(
            text,
            "+{:.3}s t_ms={} {} {} pid={} duration_ms={}",
            (e.t_ms as f64 - t0_ms as f64) / 1000.0,
            e.t_ms,
            e.kind.name(),
            e.target,
            e.pid,
            e.duration_ms
        );
    }
    for w in workers {
        let _ = writeln!(
            text,
            "worker {} {} pid={} {:?}",
            w.id,
            w.lang.name(),
            w.pid,
            w.fate
        );
    }
    std::fs::write(dir.join("chaos.log"), text).context("writing chaos.log")
}

pub fn run(args: SoakArgs) -> Result<bool> {
    ensure!(args.steps > 0, "--steps must be positive");
    ensure!(
        args.rust_workers + args.python_workers > 0,
        "at least one worker is needed"
    );
    let chaos = args.chaos_events != Some(0) && !kinds(&args).is_empty();
    ensure!(
        !chaos || args.rust_workers + args.python_workers >= 2,
        "chaos needs at least two workers (one keeps running while another is disturbed)"
    );
    ensure!(
        args.heartbeat_ms > 0 && args.liveness > 0,
        "heartbeat and liveness must be positive"
    );
    let dir = match &args.work_dir {
        Some(dir) => dir.clone(),
        None => {
            std::env::temp_dir().join(format!("tasker-soak-{}-{}", std::process::id(), epoch_ms()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    for stale in ["runs.log", "results.jsonl", "submitted.txt"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let python = if args.python_workers > 0 {
        let python = find_python(&args)?;
        std::fs::write(dir.join("python_worker.py"), PYTHON_WORKER)?;
        Some(python)
    } else {
        None
    };
    println!(
        "tasker soak: {} steps, seed {}, {} Rust + {} Python workers of capacity {}, \
         expiry {} ms, work dir {}",
        args.steps,
        args.seed,
        args.rust_workers,
        args.python_workers,
        args.capacity,
        args.expiry_ms(),
        dir.display()
    );
    let interrupted = watch_signals();
    let mut soak = Soak::start(args.clone(), dir.clone(), python, interrupted)?;
    let outcome = soak.drive();
    let gently = matches!(outcome, Ok(Outcome::Finished));
    soak.teardown(gently);
    let outcome = outcome?;
    let note = match outcome {
        Outcome::Finished => None,
        Outcome::TimedOut => Some(format!("stopped after --timeout {} s", args.timeout)),
        Outcome::Interrupted => Some("interrupted".to_string()),
    };
    let workers: Vec<WorkerSummary> = soak.workers.iter().map(|w| w.summary.clone()).collect();
    write_timeline(&dir, soak.started_ms, &soak.events, &workers)?;
    let passed = checks::report(Inputs {
        args: &args,
        dir: &dir,
        workers: &workers,
        chaos: &soak.events,
        planned_events: soak.chaos_plan.len(),
        orchestrator_exit: soak.orchestrator_exit.map(describe),
        orchestrator_clean: soak.orchestrator_exit.is_some_and(|s| s.success()),
        done: soak.done.as_ref(),
        sampled_rss_kib: soak.max_rss_kib,
        rss_samples: soak.rss_samples,
        stopped_early: note,
        t0_ms: soak.started_ms,
    })?;
    if passed && !args.keep && args.work_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("records and logs kept in {}", dir.display());
    }
    if matches!(outcome, Outcome::Interrupted) {
        return Ok(false);
    }
    Ok(passed)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{plan, ChaosKind};
    use crate::soak::{Rng, SoakArgs};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        soak: SoakArgs,
    }

    fn args(extra: &[&str]) -> SoakArgs {
        let mut argv = vec!["soak"];
        argv.extend_from_slice(extra);
        Cli::parse_from(argv).soak
    }

    #[test]
    fn the_plan_starts_with_one_of_each_kind_and_spreads_over_the_run() {
        let a = args(&["--steps", "100000", "--seed", "3"]);
        let p = plan(&a, &mut Rng::new(a.seed));
        assert_eq!(p.len(), 20);
        let mut first: Vec<ChaosKind> = p[..4].iter().map(|&(_, k)| k).collect();
        first.sort_by_key(|k| *k as u8);
        assert_eq!(first, ChaosKind::ALL);
        assert!(p.windows(2).all(|w| w[0].0 < w[1].0), "{p:?}");
        assert!(p.iter().all(|&(at, _)| (1..=88_000).contains(&at)), "{p:?}");
        assert_eq!(p, plan(&a, &mut Rng::new(a.seed)), "seeded");
    }

    #[test]
    fn the_plan_uses_only_the_kinds_asked_for() {
        let a = args(&[
            "--steps",
            "4000",
            "--chaos-kinds",
            "stop-orchestrator",
            "--chaos-events",
            "5",
        ]);
        let p = plan(&a, &mut Rng::new(a.seed));
        assert_eq!(p.len(), 5);
        assert!(p.iter().all(|&(_, k)| k == ChaosKind::StopOrchestrator));
        let none = args(&["--chaos-events", "0"]);
        assert!(plan(&none, &mut Rng::new(1)).is_empty());
    }
}
