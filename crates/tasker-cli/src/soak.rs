//! `tasker soak`: a chaos soak over real processes and real sockets.
//!
//! The command (the *controller*) starts three kinds of processes, all on
//! TCP loopback:
//!
//! - the *orchestrator*: this binary again, `tasker soak --role
//!   orchestrator`, embedding [`tasker_orchestrator::ZmqPubSubExecutor`]. It
//!   submits `--steps` steps in batches, retries every retryable failure
//!   with `attempt + 1` as a workflow engine would, and writes one JSON line
//!   per final result it receives;
//! - Rust workers (`tasker worker --handlers soak`) and Python workers
//!   (`soak/python_worker.py` on the `tasker_core` SDK), all serving the
//!   handler `soak`, which appends `step_id attempt pid` to a shared
//!   append-only file at each start and tracks how many steps its process
//!   runs at once.
//!
//! While the steps run, the controller disturbs the processes on a schedule
//! drawn from `--seed`: kill -9 a worker (and start a replacement), SIGTERM
//! one (it drains; then a replacement), SIGSTOP one for a while, and SIGSTOP
//! the orchestrator for up to twice the liveness expiry. It samples the
//! orchestrator's RSS. At the end it checks the records (see [`checks`]) and
//! prints `soak: N passed, M failed`; it exits 0 only when every check
//! passed.

mod checks;
mod controller;
pub mod handler;
mod orchestrator;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};

/// The Python worker the soak runs, shipped inside the binary.
pub const PYTHON_WORKER: &str = include_str!("../soak/python_worker.py");

/// Environment variable naming the shared file of handler runs.
pub const ENV_LOG: &str = "TASKER_SOAK_LOG";
/// Environment variable with the controller's pid: a soak child whose parent
/// is gone exits.
pub const ENV_PARENT: &str = "TASKER_SOAK_PARENT";
/// Environment variable with the worker id a Python soak worker announces.
pub const ENV_WORKER_ID: &str = "TASKER_SOAK_WORKER_ID";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Starts everything, disturbs it, checks the records.
    Controller,
    /// The orchestrator process (started by the controller).
    Orchestrator,
}

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Steps to run to completion.
    #[arg(long, default_value_t = 20_000)]
    pub steps: u64,
    /// Seed of the chaos schedule, victims, pauses and handler timings.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rust worker processes (`tasker worker --handlers soak`).
    #[arg(long, default_value_t = 2)]
    pub rust_workers: usize,
    /// Python worker processes (the `tasker_core` SDK).
    #[arg(long, default_value_t = 2)]
    pub python_workers: usize,
    /// Python interpreter that can `import tasker_core` (default:
    /// TASKER_SOAK_PYTHON, else bindings/python/.venv/bin/python found from
    /// the working directory or this binary, else python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Capacity every worker declares.
    #[arg(long, default_value_t = 8)]
    pub capacity: u32,
    /// Longest a handler sleeps, in microseconds (each step sleeps a seeded
    /// amount from 0 to this).
    #[arg(long, default_value_t = 2_000)]
    pub handler_max_us: u64,
    /// Steps, per thousand, whose first attempt fails with a retryable
    /// handler error.
    #[arg(long, default_value_t = 5)]
    pub flaky_permille: u32,
    /// Steps per submitted batch.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Most step attempts submitted and not finished at once.
    #[arg(long, default_value_t = 2_000)]
    pub window: usize,
    /// Each step attempt's timeout, in ms.
    #[arg(long, default_value_t = 10_000)]
    pub step_timeout_ms: u64,
    /// Most attempts of a step before the soak gives it up.
    #[arg(long, default_value_t = 20)]
    pub max_attempts: u32,
    /// Heartbeat interval of the orchestrator and workers, in ms.
    #[arg(long, default_value_t = 200)]
    pub heartbeat_ms: u64,
    /// Missed intervals after which a peer is dead (expiry = heartbeat ×
    /// liveness).
    #[arg(long, default_value_t = 3)]
    pub liveness: u32,
    /// Chaos events over the run (default: one per 5,000 steps, at least
    /// one of each kind in use; the first ones are one of each kind). 0
    /// runs without chaos.
    #[arg(long)]
    pub chaos_events: Option<usize>,
    /// Kinds of chaos to use, comma-separated (default: all four).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_values_t = controller::ChaosKind::ALL
    )]
    pub chaos_kinds: Vec<controller::ChaosKind>,
    /// Largest orchestrator RSS accepted, in MiB (a run keeps about 25 MiB
    /// with the default window, whatever its length).
    #[arg(long, default_value_t = 128)]
    pub max_rss_mb: u64,
    /// Seconds after which the run is stopped and counted failed.
    #[arg(long, default_value_t = 900.0)]
    pub timeout: f64,
    /// Directory for the records and logs (default: a new one under the
    /// system's temporary directory, removed after a passing run).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory even when every check passed.
    #[arg(long)]
    pub keep: bool,
    /// Print each chaos event as it happens.
    #[arg(long, short)]
    pub verbose: bool,
    #[arg(long, value_enum, default_value_t = Role::Controller, hide = true)]
    pub role: Role,
    /// (Orchestrator role.) Submit the last tenth of the steps only once
    /// the controller writes `release` on standard input (or closes it).
    #[arg(long, hide = true)]
    pub hold_tail: bool,
}

impl SoakArgs {
    /// The last step submitted before a held tail is released (see
    /// `hold_tail`). Chaos is planned before 88% of the run, at step 1 at
    /// the earliest: the steps before the tail always reach every event.
    pub fn tail_starts_after(&self) -> u64 {
        (self.steps * 9 / 10).max(1)
    }

    /// Heartbeat interval × liveness.
    pub fn expiry_ms(&self) -> u64 {
        self.heartbeat_ms * u64::from(self.liveness)
    }

    /// What step `id` asks of its handler, the same at every attempt: how
    /// long to sleep (µs), and whether its first attempt fails (retryably).
    pub fn step_plan(&self, id: i64) -> (u64, bool) {
        let h = mix(self.seed ^ mix(id as u64));
        let sleep_us = match self.handler_max_us {
            0 => 0,
            max => h % (max + 1),
        };
        let fail_first = (h >> 40) % 1000 < u64::from(self.flaky_permille);
        (sleep_us, fail_first)
    }
}

/// Runs the soak (or, with `--role orchestrator`, its orchestrator); true
/// when every check passed.
pub fn run(args: SoakArgs) -> Result<bool> {
    match args.role {
        Role::Controller => controller::run(args),
        Role::Orchestrator => orchestrator::run(args).map(|()| true),
    }
}

/// SplitMix64: a small seeded generator; enough for schedules and timings,
/// and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The SplitMix64 finaliser: a well-spread hash of one word.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Milliseconds since the Unix epoch: the clock every soak process writes
/// in its records, so they can be compared.
pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Exits this process when the soak controller that started it is gone
/// (`TASKER_SOAK_PARENT` names it), so that no child outlives a killed soak.
pub fn exit_with_parent() {
    let Some(parent) = std::env::var(ENV_PARENT)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("soak-parent-watch".into())
        .spawn(move || loop {
            if std::os::unix::process::parent_id() != parent {
                eprintln!("soak controller {parent} is gone: exiting");
                std::process::exit(3);
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        });
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_generator_is_seeded_and_spread() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..4).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = Rng::new(8);
        let mut buckets = [0u32; 4];
        for _ in 0..4000 {
            buckets[r.below(4)] += 1;
            let x = r.unit();
            assert!((0.0..1.0).contains(&x));
        }
        assert!(buckets.iter().all(|&n| n > 800), "{buckets:?}");
    }
}
