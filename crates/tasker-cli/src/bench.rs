//! `tasker bench`: end-to-end throughput and latency of the orchestrator and
//! a Rust worker, each beside a raw ZeroMQ ROUTER/DEALER echo of the same
//! JSON bodies measured in the same run (the ceiling no framework on this
//! transport can beat). Figures, not pass/fail: the machine is noisy, the
//! ratios within one run are what to read.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;
use tasker_config::TaskerConfig;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::{
    codec, OrchestratorMessage, StepBatchRequest, StepBatchResponse, StepExecutionRequest,
    StepExecutionResult, WorkerMessage,
};
use tasker_transport::curve::KeyPair;
use tasker_worker::{HandlerOptions, Worker};

use crate::bench_latency::{interleaved, percentile, Probe, Relay};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Steps per throughput run.
    #[arg(long, default_value_t = 50_000)]
    pub steps: usize,
    /// Batch sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 100])]
    pub batch_sizes: Vec<usize>,
    /// Batches in flight per worker (capacity = batch size × window).
    #[arg(long, default_value_t = 2)]
    pub window: usize,
    /// Round trips sampled for latency.
    #[arg(long, default_value_t = 2_000)]
    pub latency_samples: usize,
    /// Seconds of idleness over which CPU use is measured.
    #[arg(long, default_value_t = 3.0)]
    pub idle_secs: f64,
    /// Also measure tasks through `tasker serve`'s store: the in-memory
    /// engine beside SQLite and PostgreSQL.
    #[arg(long)]
    pub durable: bool,
    /// Only the `--durable` measurement.
    #[arg(long)]
    pub durable_only: bool,
    /// Steps per `--durable` run.
    #[arg(long, default_value_t = 50_000)]
    pub durable_steps: usize,
    /// PostgreSQL for `--durable`: a postgres:// URL, `auto` (a throwaway
    /// server from Debian's postgresql package), or `off`.
    #[arg(long, default_value = "auto")]
    pub postgres: String,
    /// Skip the CURVE measurement (plaintext beside CURVE, same run).
    #[arg(long)]
    pub no_curve: bool,
    /// Only tasker's own throughput runs (both placements), nothing
    /// beside them: a clean target for `perf record`.
    #[arg(long)]
    pub system_only: bool,
    /// Only the single-step round trips: tasker beside the raw echo, the
    /// raw echo relayed through a thread as tasker's caller is, the raw
    /// echo with an I/O thread at each end, and the raw echo with its
    /// echoing end in a process of its own, as the worker process is,
    /// also relayed.
    #[arg(long)]
    pub latency_only: bool,
    /// Internal: be the echoing end of the two-process echo, connected to
    /// `TASKER_ENDPOINT`, until stopped.
    #[arg(long, hide = true)]
    pub echo_peer: bool,
    /// Only the metrics comparison: tasker's throughput with its
    /// per-handler Prometheus metrics on and off, alternately.
    #[arg(long)]
    pub metrics_only: bool,
    /// Run the worker's no-op handler on a handler thread, as a handler
    /// that blocks must run, rather than inline on its I/O thread.
    #[arg(long)]
    pub handler_threads: bool,
}

/// Runs of each side in the metrics comparison; the best of each counts,
/// so one noisy run does not decide it.
const METRICS_ROUNDS: usize = 3;

/// Runs of each column of the throughput table (tasker in both
/// placements, both echoes); the best of each counts, as in the metrics
/// comparison.
const THROUGHPUT_ROUNDS: usize = 3;

static NEXT_STEP: AtomicI64 = AtomicI64::new(1);

/// `n` steps for the handler `noop`, with ids unique in this process.
pub(crate) fn noop_steps(n: usize) -> Vec<StepExecutionRequest> {
    (0..n)
        .map(|_| {
            let id = NEXT_STEP.fetch_add(1, Ordering::Relaxed);
            StepExecutionRequest::new(id, 1, "bench", "noop", 60_000)
        })
        .collect()
}

/// The messages the real system exchanges for a batch of `n` no-op steps.
pub(crate) fn messages(n: usize) -> (OrchestratorMessage, WorkerMessage) {
    let steps = noop_steps(n);
    let results: Vec<StepExecutionResult> = steps
        .iter()
        .map(|s| StepExecutionResult::completed(s.step_ref(), Value::Null, "rust-bench", 0))
        .collect();
    let request = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new("bench:1", steps));
    // The id is as long as a real orchestrator's (32 hex digits).
    let orchestrator_id = "0".repeat(32);
    let response = WorkerMessage::StepBatchResponse(StepBatchResponse::new(
        "bench:1",
        orchestrator_id,
        results,
    ));
    (request, response)
}

pub(crate) struct RawEcho {
    pub(crate) router: zmq::Socket,
    peer: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The echoing end, when it is a process of its own.
    process: Option<crate::children::WorkerProcess>,
    _context: zmq::Context,
}

/// Where the echoing DEALER of a [`RawEcho`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EchoPeer {
    /// A thread of this process, in the ROUTER's ZeroMQ context: one libzmq
    /// I/O thread passes the TCP bytes to itself.
    Shared,
    /// A thread of this process with a ZeroMQ context of its own, and so
    /// its own libzmq I/O thread: the TCP bytes cross between two I/O
    /// threads, as they do between an orchestrator and a worker process.
    Apart,
    /// A process of its own (`tasker bench --echo-peer`), as the worker
    /// process is: two I/O threads, and each hand-over between the ends
    /// also a switch between address spaces.
    Process,
}

impl EchoPeer {
    fn label(self) -> &'static str {
        match self {
            EchoPeer::Shared => "raw echo",
            EchoPeer::Apart => "echo, two I/O threads",
            EchoPeer::Process => "echo, two processes",
        }
    }
}

/// Answers every message on `dealer` with `reply` (pre-encoded, or when
/// `typed`, after decoding the request and encoding the reply as any JSON
/// worker must) until `stop` says so; `stop` is asked at least every
/// 100 ms.
fn echo_loop(dealer: &zmq::Socket, reply: &WorkerMessage, typed: bool, stop: impl Fn() -> bool) {
    dealer.set_rcvtimeo(100).expect("rcvtimeo");
    let encoded = codec::encode(reply).expect("encodable");
    while !stop() {
        // Frames left in libzmq's buffers, as tasker's own ends read them.
        let Ok(frames) = tasker_transport::recv_frames(dealer, 0) else {
            continue;
        };
        if typed {
            let parsed: OrchestratorMessage =
                codec::decode(&frames, usize::MAX).expect("valid request");
            std::hint::black_box(parsed);
            let _ = dealer.send_multipart(codec::encode(reply).expect("encodable"), 0);
        } else {
            let _ = dealer.send_multipart(encoded.iter(), 0);
        }
    }
}

/// `tasker bench --echo-peer`: the echoing end of the two-process echo,
/// connected to `TASKER_ENDPOINT`; runs until it is signalled to stop. Its
/// replies answer batches of `TASKER_ECHO_BATCH` steps (default 1), decoded
/// and encoded when `TASKER_ECHO_TYPED` is `1`.
fn echo_peer() -> Result<()> {
    let endpoint = std::env::var("TASKER_ENDPOINT").context("TASKER_ENDPOINT is not set")?;
    let batch = std::env::var("TASKER_ECHO_BATCH")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let typed = std::env::var("TASKER_ECHO_TYPED").is_ok_and(|v| v == "1");
    let context = zmq::Context::new();
    let dealer = context.socket(zmq::DEALER)?;
    dealer.connect(&endpoint)?;
    dealer.send_multipart([b"hi".to_vec()], 0)?;
    let (_, reply) = messages(batch);
    // The bench stops it with SIGTERM; its parent gone, it stops too.
    let parent = std::os::unix::process::parent_id();
    echo_loop(&dealer, &reply, typed, || {
        std::os::unix::process::parent_id() != parent
    });
    Ok(())
}

impl RawEcho {
    /// A ROUTER and an echoing DEALER, where `peer` says, that answers
    /// every message with `reply` (see [`echo_loop`]).
    pub(crate) fn start_in(reply: WorkerMessage, typed: bool, peer: EchoPeer) -> Result<Self> {
        let context = zmq::Context::new();
        let router = context.socket(zmq::ROUTER)?;
        router.bind("tcp://127.0.0.1:0")?;
        let endpoint = router.get_last_endpoint()?.expect("utf-8 endpoint");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread, process) = if peer == EchoPeer::Process {
            let exe = std::env::current_exe().context("finding the tasker binary")?;
            let command = format!("'{}' bench --echo-peer", exe.display());
            let batch = match &reply {
                WorkerMessage::StepBatchResponse(response) => response.results.len(),
                _ => 1,
            };
            let env = [
                ("TASKER_ECHO_BATCH", batch.to_string()),
                (
                    "TASKER_ECHO_TYPED",
                    if typed { "1" } else { "0" }.to_string(),
                ),
            ];
            let process = crate::children::WorkerProcess::spawn(
                "echo",
                &command,
                &endpoint,
                &env,
                crate::children::Output::Quiet,
                crate::children::Group::Shared,
            )?;
            router.set_rcvtimeo(10_000)?;
            (None, Some(process))
        } else {
            let dealer_context = if peer == EchoPeer::Apart {
                zmq::Context::new()
            } else {
                context.clone()
            };
            let dealer = dealer_context.socket(zmq::DEALER)?;
            dealer.connect(&endpoint)?;
            dealer.send_multipart([b"hi".to_vec()], 0)?;
            let stop_flag = std::sync::Arc::clone(&stop);
            let thread = std::thread::Builder::new()
                .name("echo-dealer".into())
                .spawn(move || {
                    echo_loop(&dealer, &reply, typed, || stop_flag.load(Ordering::Relaxed));
                    // The socket closes before its context terminates.
                    drop(dealer);
                    drop(dealer_context);
                })?;
            (Some(thread), None)
        };
        let frames = router
            .recv_multipart(0)
            .context("the echo's peer did not say hello")?;
        router.set_rcvtimeo(-1)?;
        let peer = frames[0].clone();
        Ok(Self {
            router,
            peer,
            stop,
            thread,
            process,
            _context: context,
        })
    }

    pub(crate) fn send(&self, body: &[Vec<u8>; 2]) -> Result<()> {
        self.router
            .send_multipart([&self.peer[..], &body[0][..], &body[1][..]], 0)?;
        Ok(())
    }

    /// The next reply's frames, without the routing id.
    pub(crate) fn recv(&self) -> Result<Vec<tasker_transport::Frame>> {
        let mut frames = tasker_transport::recv_frames(&self.router, 0)?.into_vec();
        frames.remove(0);
        Ok(frames)
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(process) = self.process.take() {
            let _ = process.stop(Duration::from_secs(5));
        }
    }
}

/// Steps/s through a ROUTER/DEALER echo of `batch`-step bodies, the
/// DEALER where `peer` says; `typed`: both ends decode and encode them.
fn raw_throughput(
    batch: usize,
    steps: usize,
    window: usize,
    typed: bool,
    peer: EchoPeer,
) -> Result<f64> {
    let (request, response) = messages(batch);
    let encoded = codec::encode(&request)?;
    let echo = RawEcho::start_in(response, typed, peer)?;
    let send = |echo: &RawEcho| -> Result<()> {
        if typed {
            echo.send(&codec::encode(&request)?)
        } else {
            echo.send(&encoded)
        }
    };
    let recv = |echo: &RawEcho| -> Result<()> {
        let frames = echo.recv()?;
        if typed {
            let parsed: WorkerMessage = codec::decode(&frames, usize::MAX)?;
            std::hint::black_box(parsed);
        }
        Ok(())
    };
    let messages = steps.div_ceil(batch);
    let cpu_before = threads_cpu();
    let started = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    while sent < messages.min(window) {
        send(&echo)?;
        sent += 1;
    }
    while received < messages {
        recv(&echo)?;
        received += 1;
        if sent < messages {
            send(&echo)?;
            sent += 1;
        }
    }
    let rate = (messages * batch) as f64 / started.elapsed().as_secs_f64();
    let label = match (typed, peer) {
        (true, EchoPeer::Process) => "echo+JSON, two processes",
        (true, _) => "echo+JSON",
        (false, _) => "raw echo",
    };
    print_threads_cpu(label, &cpu_before, messages * batch);
    Ok(rate)
}

/// Where the bench's worker runs: on threads of this process, or as a
/// `tasker worker` process of its own, as every deployment runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Sharing the executor's ZeroMQ context, as a program embedding both
    /// should.
    InProcess,
    /// On threads of this process with a ZeroMQ context of its own: for
    /// the metrics comparison, whose figure is the CPU per step of the
    /// orchestrator's I/O thread. With one libzmq thread for both ends,
    /// the cost of waking it lands on whichever thread wakes it, and moved
    /// that figure threefold between runs.
    InProcessApart,
    Process,
}

enum BenchWorker {
    InProcess(tasker_worker::RunningWorker),
    Process(crate::children::WorkerProcess),
}

pub(crate) struct System {
    pub(crate) executor: ZmqPubSubExecutor,
    worker: BenchWorker,
    /// The CURVE key files, when on.
    _keys: Option<tempfile::TempDir>,
}

impl System {
    pub(crate) async fn stop(self) -> Result<()> {
        self.executor.shutdown(Duration::from_secs(1)).await;
        match self.worker {
            BenchWorker::InProcess(worker) => {
                worker.join(Duration::from_secs(5));
            }
            BenchWorker::Process(worker) => {
                worker.stop(Duration::from_secs(10))?;
            }
        }
        Ok(())
    }
}

/// Key files for a CURVE run: the orchestrator's pair and one admitted
/// worker's, as `tasker keygen` writes them.
fn curve_keys() -> Result<(tempfile::TempDir, TaskerConfig, TaskerConfig)> {
    let dir = tempfile::tempdir()?;
    let authorized = dir.path().join("authorized");
    std::fs::create_dir(&authorized)?;
    KeyPair::generate()?.write(dir.path(), "orchestrator")?;
    KeyPair::generate()?.write(&authorized, "worker")?;
    let file = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let orchestrator = TaskerConfig {
        curve_secret_key_file: file("orchestrator.key"),
        curve_authorized_keys_dir: file("authorized"),
        ..TaskerConfig::default()
    };
    let worker = TaskerConfig {
        curve_secret_key_file: file("authorized/worker.key"),
        curve_server_public_key_file: file("orchestrator.pub"),
        ..TaskerConfig::default()
    };
    Ok((dir, orchestrator, worker))
}

/// How the bench's worker registers its no-op handler: inline on its I/O
/// thread, or (`--handler-threads`) on a handler thread.
fn noop_options(inline: bool) -> HandlerOptions {
    if inline {
        HandlerOptions::new().inline()
    } else {
        HandlerOptions::new()
    }
}

pub(crate) async fn system(
    batch: usize,
    window: usize,
    curve: bool,
    metrics: bool,
    placement: Placement,
    inline: bool,
) -> Result<System> {
    let (keys, orchestrator, worker) = if curve {
        let (dir, orchestrator, worker) = curve_keys()?;
        (Some(dir), orchestrator, worker)
    } else {
        (None, TaskerConfig::default(), TaskerConfig::default())
    };
    let config = TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        batch_size: batch,
        queue_bound: 10_000_000,
        metrics,
        ..orchestrator
    };
    let executor = ZmqPubSubExecutor::start(&config)?;
    let capacity = (batch * window) as u32;
    let worker = match placement {
        Placement::InProcess | Placement::InProcessApart => {
            let worker_config = TaskerConfig {
                endpoint: executor.endpoint().to_string(),
                curve_secret_key_file: worker.curve_secret_key_file,
                curve_server_public_key_file: worker.curve_server_public_key_file,
                curve_authorized_keys_dir: String::new(),
                ..config
            };
            let mut worker = Worker::new(worker_config)
                .capacity(capacity)
                .threads(1)
                .handler_with("noop", noop_options(inline), |_| Ok(Value::Null));
            if placement == Placement::InProcess {
                // One ZeroMQ context for both ends, as a program embedding
                // both should have (see `ZmqPubSubExecutor::zmq_context`).
                let context = executor
                    .zmq_context()
                    .context("the executor stopped before its worker started")?;
                worker = worker.zmq_context(context);
            }
            BenchWorker::InProcess(worker.spawn()?)
        }
        Placement::Process => {
            let exe = std::env::current_exe().context("finding the tasker binary")?;
            let no_inline = if inline { "" } else { " --no-inline" };
            let command = format!(
                "'{}' worker --handlers noop --capacity {capacity} --threads 1{no_inline}",
                exe.display()
            );
            let env = [
                ("TASKER_CURVE_SECRET_KEY_FILE", worker.curve_secret_key_file),
                (
                    "TASKER_CURVE_SERVER_PUBLIC_KEY_FILE",
                    worker.curve_server_public_key_file,
                ),
            ];
            BenchWorker::Process(crate::children::WorkerProcess::spawn(
                "bench",
                &command,
                executor.endpoint(),
                &env,
                crate::children::Output::Quiet,
                crate::children::Group::Shared,
            )?)
        }
    };
    if !executor.wait_for_workers(1, Duration::from_secs(10)).await {
        anyhow::bail!("bench worker did not connect");
    }
    Ok(System {
        executor,
        worker,
        _keys: keys,
    })
}

/// Steps per submitted batch in a throughput run, and batches submitted
/// ahead: a steady stream, as an engine with many tasks submits, which
/// keeps the queue ahead of the worker's credit.
const SUBMIT_CHUNK: usize = 1_000;
const SUBMIT_AHEAD: usize = 4;

/// Runs `steps` no-op steps through `executor` as a steady stream of
/// batches, checking every result; how long it took.
pub(crate) async fn drive(executor: &ZmqPubSubExecutor, steps: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let (mut submitted, mut done) = (0, 0);
    while done < steps {
        while submitted < steps && pending.len() < SUBMIT_AHEAD {
            let n = SUBMIT_CHUNK.min(steps - submitted);
            let chunk = StepBatchRequest::new(format!("bench-{submitted}"), noop_steps(n));
            pending.push_back(executor.submit(chunk).await?);
            submitted += n;
        }
        let handle = pending.pop_front().expect("submitted ahead");
        let expected = handle.len();
        let results = handle.collect().await;
        anyhow::ensure!(results.len() == expected, "lost results");
        if let Some(bad) = results
            .iter()
            .find(|r| r.status != tasker_protocol::StepStatus::Completed)
        {
            anyhow::bail!("a step failed: {bad:?}");
        }
        done += results.len();
    }
    Ok(started.elapsed())
}

/// One throughput run: steps/s, and the CPU time per step of the
/// orchestrator's I/O thread (where its work and its metrics happen), in
/// microseconds.
struct Run {
    rate: f64,
    io_us: f64,
}

/// The orchestrator's I/O thread as `/proc` names it (15 bytes of
/// `tasker-orchestrator-io`).
const IO_THREAD: &str = "tasker-orchestr";

async fn system_throughput(
    batch: usize,
    steps: usize,
    window: usize,
    curve: bool,
    metrics: bool,
    placement: Placement,
    inline: bool,
) -> Result<Run> {
    let sys = system(batch, window, curve, metrics, placement, inline).await?;
    // Warm up connections and allocators.
    sys.executor
        .execute_step_batch(StepBatchRequest::new("warm", noop_steps(batch * 4)))
        .await?;
    let cpu_before = threads_cpu();
    let elapsed = drive(&sys.executor, steps).await?;
    let cpu_after = print_threads_cpu(&format!("tasker, {placement:?}"), &cpu_before, steps);
    let io_us = cpu_after.get(IO_THREAD).map_or(f64::NAN, |cpu| {
        let before = cpu_before.get(IO_THREAD).copied().unwrap_or_default();
        cpu.saturating_sub(before).as_secs_f64() * 1e6 / steps as f64
    });
    sys.stop().await?;
    Ok(Run {
        rate: steps as f64 / elapsed.as_secs_f64(),
        io_us,
    })
}

/// With `TASKER_BENCH_THREADS` set, prints where a run's CPU went since
/// `before`, per thread of this process and in all, per step; the CPU
/// time of its threads now.
///
/// Comparing the sums says whether a gap to the echo is work or waiting:
/// libzmq's I/O threads count as `tasker`, as the main thread does, and a
/// worker in a process of its own is not counted.
fn print_threads_cpu(
    label: &str,
    before: &std::collections::BTreeMap<String, Duration>,
    steps: usize,
) -> std::collections::BTreeMap<String, Duration> {
    let after = threads_cpu();
    if std::env::var_os("TASKER_BENCH_THREADS").is_some() {
        let per_step = |cpu: Duration| cpu.as_secs_f64() * 1e6 / steps as f64;
        let mut total = Duration::ZERO;
        eprintln!("{label}: CPU per step by thread");
        for (name, cpu) in &after {
            let used = cpu.saturating_sub(before.get(name).copied().unwrap_or_default());
            total += used;
            eprintln!("  {name:<24} {:6.2} us/step", per_step(used));
        }
        eprintln!("  {:<24} {:6.2} us/step", "all", per_step(total));
    }
    after
}

/// What a thread of this process has used: CPU time, how often it went
/// to sleep (voluntary context switches) and how often the scheduler took
/// its CPU from it (involuntary ones, mostly a thread it just woke).
#[derive(Default, Clone, Copy)]
pub(crate) struct ThreadUse {
    pub(crate) cpu: Duration,
    pub(crate) sleeps: u64,
    pub(crate) preempted: u64,
}

/// [`ThreadUse`] of this process's threads, summed by thread name.
pub(crate) fn threads_use() -> std::collections::BTreeMap<String, ThreadUse> {
    let mut out = std::collections::BTreeMap::<String, ThreadUse>::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let read = |file: &str| std::fs::read_to_string(format!("/proc/self/task/{tid}/{file}"));
        // A thread that has exited meanwhile is left out.
        let (Ok(name), Ok(status)) = (read("comm"), read("status")) else {
            continue;
        };
        let count = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let entry = out.entry(name.trim().to_string()).or_default();
        entry.cpu += thread_cpu(&tid).unwrap_or_default();
        entry.sleeps += count("voluntary_ctxt_switches:");
        entry.preempted += count("nonvoluntary_ctxt_switches:");
    }
    out
}

/// CPU time of this process's threads, summed by thread name.
fn threads_cpu() -> std::collections::BTreeMap<String, Duration> {
    threads_use()
        .into_iter()
        .map(|(name, used)| (name, used.cpu))
        .collect()
}

/// CPU time of thread `tid` of this process, from its CPU clock: to the
/// nanosecond, where /proc's 10 ms ticks read as nothing for a short run's
/// quieter threads.
fn thread_cpu(tid: &str) -> Option<Duration> {
    let tid: libc::pid_t = tid.parse().ok()?;
    // The clock id glibc's `pthread_getcpuclockid` makes for a thread:
    // `CPUCLOCK_PERTHREAD_MASK | CPUCLOCK_SCHED` under the inverted id.
    let clock: libc::clockid_t = (!tid << 3) | 6;
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid, writable timespec; a thread that has
    // exited meanwhile makes the call fail (EINVAL), nothing worse.
    if unsafe { libc::clock_gettime(clock, &mut time) } != 0 {
        return None;
    }
    Some(Duration::new(time.tv_sec as u64, time.tv_nsec as u32))
}

/// User + system CPU seconds of this process, from /proc.
fn process_cpu() -> Result<f64> {
    let cpu = crate::children::cpu_time_of("self").context("reading /proc/self/stat")?;
    Ok(cpu.as_secs_f64())
}

/// Steps of a throughput run at this batch size: batch 1 moves a step per
/// message, so fewer make as long a run.
fn run_steps(args: &BenchArgs, batch: usize) -> usize {
    if batch == 1 {
        args.steps.min(20_000)
    } else {
        args.steps
    }
}

/// Stops every probe's system, as a shutdown, not a drop, would.
fn stop_probes(probes: Vec<(String, Probe)>, runtime: &tokio::runtime::Runtime) -> Result<()> {
    for (_, probe) in probes {
        if let Probe::System(sys) = probe {
            runtime.block_on(sys.stop())?;
        }
    }
    Ok(())
}

/// CPU use of a connected orchestrator and worker in this process over
/// `secs` while they exchange heartbeats only, in percent of one core.
async fn idle_cpu(secs: f64, inline: bool) -> Result<f64> {
    let sys = system(1, 1, false, true, Placement::InProcess, inline).await?;
    let cpu_before = process_cpu()?;
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let idle = (process_cpu()? - cpu_before) / wall.elapsed().as_secs_f64() * 100.0;
    sys.stop().await?;
    Ok(idle)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.echo_peer {
        return echo_peer();
    }
    let inline = !args.handler_threads;
    if args.durable_only {
        return crate::bench_store::run(args.durable_steps, &args.postgres);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let throughput_with = |batch: usize, curve: bool, metrics: bool, placement: Placement| {
        let steps = if args.system_only {
            args.steps
        } else {
            run_steps(&args, batch)
        };
        runtime.block_on(system_throughput(
            batch,
            steps,
            args.window,
            curve,
            metrics,
            placement,
            inline,
        ))
    };
    let throughput = |batch: usize, curve: bool, placement: Placement| {
        throughput_with(batch, curve, true, placement).map(|run| run.rate)
    };
    let metrics_table = || -> Result<()> {
        println!(
            "{:<12} {:>15} {:>15} {:>8}   {:>15} {:>15} {:>8}",
            "metrics", "on", "off", "on/off", "I/O thread on", "off", "on/off"
        );
        for &batch in &args.batch_sizes {
            let (mut on, mut off) = (0f64, 0f64);
            let (mut on_io, mut off_io) = (f64::INFINITY, f64::INFINITY);
            // Alternated, so drift in the machine's speed hits both sides,
            // and each side goes first in turn, so neither always runs
            // right after the other's teardown.
            for round in 0..METRICS_ROUNDS {
                let sides = if round % 2 == 0 {
                    [true, false]
                } else {
                    [false, true]
                };
                for metrics in sides {
                    let run = throughput_with(batch, false, metrics, Placement::InProcessApart)?;
                    let (best, best_io) = if metrics {
                        (&mut on, &mut on_io)
                    } else {
                        (&mut off, &mut off_io)
                    };
                    *best = best.max(run.rate);
                    *best_io = best_io.min(run.io_us);
                }
            }
            println!(
                "{:<12} {:>10.0} st/s {:>10.0} st/s {:>7.1}%   {:>7.2} us/step {:>7.2} us/step {:>7.1}%",
                format!("batch {batch}"),
                on,
                off,
                on / off * 100.0,
                on_io,
                off_io,
                on_io / off_io * 100.0
            );
        }
        println!(
            "metrics: the orchestrator's per-handler Prometheus counters and histograms \
             (`metrics` setting); best of {METRICS_ROUNDS} alternated runs each; I/O thread: \
             the CPU time per step of the orchestrator's I/O thread, where the recording happens \
             (the worker in this process with a ZeroMQ context of its own)"
        );
        Ok(())
    };
    if args.metrics_only {
        return metrics_table();
    }
    if args.system_only {
        for &batch in &args.batch_sizes {
            for placement in [Placement::InProcess, Placement::Process] {
                let ours = throughput(batch, false, placement)?;
                println!("batch {batch}, {placement:?}: {ours:.0} st/s");
            }
        }
        return Ok(());
    }
    // A tasker system as a latency probe: one step per batch, one in flight.
    let system_probe = |curve: bool, placement: Placement| -> Result<Probe> {
        Ok(Probe::System(Box::new(
            runtime.block_on(system(1, 1, curve, true, placement, inline))?,
        )))
    };
    if args.latency_only {
        let mut probes = vec![
            ("raw echo".to_string(), Probe::echo(EchoPeer::Shared)?),
            ("echo+JSON".to_string(), Probe::echo_json(EchoPeer::Shared)?),
            (
                "relayed echo".to_string(),
                Probe::Relayed(Relay::start(EchoPeer::Shared)?),
            ),
            (
                EchoPeer::Apart.label().to_string(),
                Probe::echo(EchoPeer::Apart)?,
            ),
            (
                EchoPeer::Process.label().to_string(),
                Probe::echo(EchoPeer::Process)?,
            ),
            (
                "relayed echo, two processes".to_string(),
                Probe::Relayed(Relay::start(EchoPeer::Process)?),
            ),
            (
                "tasker, InProcess".to_string(),
                system_probe(false, Placement::InProcess)?,
            ),
            (
                "tasker, Process".to_string(),
                system_probe(false, Placement::Process)?,
            ),
        ];
        let mut samples = interleaved(&mut probes, args.latency_samples, &runtime)?;
        let labels: Vec<String> = probes.iter().map(|(label, _)| label.clone()).collect();
        stop_probes(probes, &runtime)?;
        for p in [0.5, 0.99] {
            let [raw, rest @ ..] = &mut samples[..] else {
                unreachable!("the raw echo is the first probe")
            };
            let raw = percentile(raw, p);
            for (label, samples) in labels[1..].iter().zip(rest) {
                let ours = percentile(samples, p);
                println!(
                    "p{:.0} {label}: {ours:.1} us, raw {raw:.1} us, {:.2}x",
                    p * 100.0,
                    ours / raw
                );
            }
        }
        return Ok(());
    }
    println!(
        "tasker bench: {} steps per run, window {} batches, no-op handler, tcp loopback",
        args.steps, args.window
    );
    println!(
        "tasker: orchestrator and a Rust worker in this process, one ZeroMQ context; worker process: \
         the same worker as `tasker worker`; the no-op handler runs {}",
        if args.handler_threads {
            "on a handler thread"
        } else {
            "inline on the worker's I/O thread (--handler-threads: on a handler thread)"
        }
    );
    println!();
    println!(
        "{:<11} {:>14} {:>6} {:>15} {:>6} {:>6} {:>15} {:>15} {:>15}",
        "throughput",
        "tasker",
        "ratio",
        "worker process",
        "ratio",
        "(2p)",
        "echo+JSON",
        "echo+JSON, 2p",
        "raw echo"
    );
    for &batch in &args.batch_sizes {
        let steps = run_steps(&args, batch);
        // Best of THROUGHPUT_ROUNDS each, alternated and each going first
        // in turn: one run of each, one after the other, put the ratio
        // anywhere between 46% and 86% in runs of one binary.
        let mut best = [0f64; 5];
        for round in 0..THROUGHPUT_ROUNDS {
            for k in 0..best.len() {
                let which = (round + k) % best.len();
                let rate = match which {
                    0 => raw_throughput(batch, steps, args.window, false, EchoPeer::Shared)?,
                    1 => raw_throughput(batch, steps, args.window, true, EchoPeer::Shared)?,
                    2 => raw_throughput(batch, steps, args.window, true, EchoPeer::Process)?,
                    3 => throughput(batch, false, Placement::InProcess)?,
                    _ => throughput(batch, false, Placement::Process)?,
                };
                best[which] = best[which].max(rate);
            }
        }
        let [raw, json, json_apart, ours, process] = best;
        println!(
            "{:<11} {:>9.0} st/s {:>5.0}% {:>10.0} st/s {:>5.0}% {:>5.0}% {:>10.0} st/s {:>10.0} st/s {:>10.0} st/s",
            format!("batch {batch}"),
            ours,
            ours / json * 100.0,
            process,
            process / json * 100.0,
            process / json_apart * 100.0,
            json,
            json_apart,
            raw,
        );
    }
    println!(
        "ratio: to echo+JSON, a ROUTER/DEALER echo whose ends decode and encode the same \
         bodies; (2p): the worker process's, to echo+JSON with its echoing end in a process \
         of its own (echo+JSON, 2p), as the worker process is; raw echo: the bodies \
         unparsed; best of {THROUGHPUT_ROUNDS} alternated runs each"
    );
    // Each with the index of its like-for-like floor: the raw echo with
    // the same thread hand-overs and none of tasker's work.
    let mut probes = vec![
        ("raw echo".to_string(), Probe::echo(EchoPeer::Shared)?),
        ("echo+JSON".to_string(), Probe::echo_json(EchoPeer::Shared)?),
        (
            "relayed echo".to_string(),
            Probe::Relayed(Relay::start(EchoPeer::Shared)?),
        ),
        (
            "tasker".to_string(),
            system_probe(false, Placement::InProcess)?,
        ),
        (
            "echo, two processes".to_string(),
            Probe::echo(EchoPeer::Process)?,
        ),
        (
            "relayed echo, two processes".to_string(),
            Probe::Relayed(Relay::start(EchoPeer::Process)?),
        ),
        (
            "worker process".to_string(),
            system_probe(false, Placement::Process)?,
        ),
    ];
    let floors = [None, None, None, Some(2), None, None, Some(5), Some(2)];
    if !args.no_curve {
        probes.push((
            "tasker+CURVE".to_string(),
            system_probe(true, Placement::InProcess)?,
        ));
    }
    let samples = interleaved(&mut probes, args.latency_samples, &runtime)?;
    let labels: Vec<String> = probes.iter().map(|(label, _)| label.clone()).collect();
    stop_probes(probes, &runtime)?;
    let idle = runtime.block_on(idle_cpu(args.idle_secs, inline))?;
    let quantiles: Vec<[f64; 2]> = samples
        .into_iter()
        .map(|mut s| [percentile(&mut s, 0.5), percentile(&mut s, 0.99)])
        .collect();
    println!();
    println!(
        "{:<29} {:>17} {:>17} {:>15}",
        "single-step round trip", "p50", "p99", "like for like"
    );
    let raw = quantiles[0];
    for ((label, q), floor) in labels.iter().zip(&quantiles).zip(floors) {
        let like = floor.map_or(String::new(), |f| {
            let f: [f64; 2] = quantiles[f];
            format!("{:.2}x / {:.2}x", q[0] / f[0], q[1] / f[1])
        });
        println!(
            "{label:<29} {:>8.1} us {:>5.2}x {:>8.1} us {:>5.2}x {like:>15}",
            q[0],
            q[0] / raw[0],
            q[1],
            q[1] / raw[1],
        );
    }
    println!(
        "x: times the raw echo's round trip (a ROUTER/DEALER echo of the same bodies, unparsed, \
         one ZeroMQ context); echo+JSON: the same echo, its ends decoding and encoding the \
         bodies as tasker's do, with no hand-over; relayed echo: the raw echo with its ROUTER on a thread of its own \
         that the caller hands each request to, as tasker's caller does; two processes: its \
         echoing end in a process of its own, as the worker process is; like for like: p50 / p99 \
         times the relayed echo's of the same placement; {} rounds, each probe in turn",
        crate::bench_latency::ROUNDS
    );
    if !args.no_curve {
        println!();
        println!(
            "{:<12} {:>15} {:>15} {:>8}",
            "CURVE", "plaintext", "CURVE", "ratio"
        );
        for &batch in &args.batch_sizes {
            let plain = throughput(batch, false, Placement::InProcess)?;
            let curve = throughput(batch, true, Placement::InProcess)?;
            println!(
                "{:<12} {:>10.0} st/s {:>10.0} st/s {:>7.0}%",
                format!("batch {batch}"),
                plain,
                curve,
                curve / plain * 100.0
            );
        }
        println!("CURVE: every connection encrypted and its worker key checked (RFC 26, 27)");
    }
    println!();
    metrics_table()?;
    println!();
    println!(
        "idle CPU, orchestrator + worker (one process, {:.0} s): {:.2}% of one core",
        args.idle_secs, idle
    );
    if args.durable {
        println!();
        crate::bench_store::run(args.durable_steps, &args.postgres)?;
    }
    Ok(())
}
