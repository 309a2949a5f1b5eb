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
use tasker_worker::Worker;

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
}

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
fn messages(n: usize) -> (OrchestratorMessage, WorkerMessage) {
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

struct RawEcho {
    router: zmq::Socket,
    peer: Vec<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _context: zmq::Context,
}

impl RawEcho {
    /// A ROUTER and an echoing DEALER thread that answers every message with
    /// `reply`: pre-encoded, or, when `typed`, after decoding the request
    /// and encoding the reply as any JSON worker must.
    fn start(reply: WorkerMessage, typed: bool) -> Result<Self> {
        let context = zmq::Context::new();
        let router = context.socket(zmq::ROUTER)?;
        router.bind("tcp://127.0.0.1:0")?;
        let endpoint = router.get_last_endpoint()?.expect("utf-8 endpoint");
        let dealer = context.socket(zmq::DEALER)?;
        dealer.connect(&endpoint)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_flag = std::sync::Arc::clone(&stop);
        dealer.send_multipart([b"hi".to_vec()], 0)?;
        let frames = router.recv_multipart(0)?;
        let peer = frames[0].clone();
        let thread = std::thread::spawn(move || {
            dealer.set_rcvtimeo(100).expect("rcvtimeo");
            let encoded = codec::encode(&reply).expect("encodable");
            while !stop_flag.load(Ordering::Relaxed) {
                let Ok(frames) = dealer.recv_multipart(0) else {
                    continue;
                };
                if typed {
                    let parsed: OrchestratorMessage =
                        codec::decode(&frames, usize::MAX).expect("valid request");
                    std::hint::black_box(parsed);
                    let _ = dealer.send_multipart(codec::encode(&reply).expect("encodable"), 0);
                } else {
                    let _ = dealer.send_multipart(encoded.iter(), 0);
                }
            }
        });
        Ok(Self {
            router,
            peer,
            stop,
            thread: Some(thread),
            _context: context,
        })
    }

    fn send(&self, body: &[Vec<u8>; 2]) -> Result<()> {
        self.router
            .send_multipart([&self.peer[..], &body[0][..], &body[1][..]], 0)?;
        Ok(())
    }

    /// The next reply's frames, without the routing id.
    fn recv(&self) -> Result<Vec<Vec<u8>>> {
        let mut frames = self.router.recv_multipart(0)?;
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
    }
}

fn raw_throughput(batch: usize, steps: usize, window: usize, typed: bool) -> Result<f64> {
    let (request, response) = messages(batch);
    let encoded = codec::encode(&request)?;
    let echo = RawEcho::start(response, typed)?;
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
    Ok((messages * batch) as f64 / started.elapsed().as_secs_f64())
}

fn raw_latency(samples: usize) -> Result<Vec<Duration>> {
    let (request, response) = messages(1);
    let request = codec::encode(&request)?;
    let echo = RawEcho::start(response, false)?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        echo.send(&request)?;
        echo.recv()?;
        out.push(t.elapsed());
    }
    Ok(out)
}

struct System {
    executor: ZmqPubSubExecutor,
    worker: tasker_worker::RunningWorker,
    /// The CURVE key files, when on.
    _keys: Option<tempfile::TempDir>,
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

async fn system(batch: usize, window: usize, curve: bool) -> Result<System> {
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
        ..orchestrator
    };
    let executor = ZmqPubSubExecutor::start(&config)?;
    let worker_config = TaskerConfig {
        endpoint: executor.endpoint().to_string(),
        curve_secret_key_file: worker.curve_secret_key_file,
        curve_server_public_key_file: worker.curve_server_public_key_file,
        curve_authorized_keys_dir: String::new(),
        ..config
    };
    let worker = Worker::new(worker_config)
        .capacity((batch * window) as u32)
        .threads(1)
        .handler("noop", |_| Ok(Value::Null))
        .spawn()?;
    if !executor.wait_for_workers(1, Duration::from_secs(10)).await {
        anyhow::bail!("bench worker did not connect");
    }
    Ok(System {
        executor,
        worker,
        _keys: keys,
    })
}

async fn system_throughput(batch: usize, steps: usize, window: usize, curve: bool) -> Result<f64> {
    let sys = system(batch, window, curve).await?;
    // Warm up connections and allocators.
    sys.executor
        .execute_step_batch(StepBatchRequest::new("warm", noop_steps(batch * 4)))
        .await?;
    let started = Instant::now();
    let results = sys
        .executor
        .execute_step_batch(StepBatchRequest::new("bench", noop_steps(steps)))
        .await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(results.len() == steps, "lost results");
    anyhow::ensure!(
        results
            .iter()
            .all(|r| r.status == tasker_protocol::StepStatus::Completed),
        "some steps failed: {:?}",
        results
            .iter()
            .find(|r| r.status != tasker_protocol::StepStatus::Completed)
    );
    sys.executor.shutdown(Duration::from_secs(1)).await;
    sys.worker.join(Duration::from_secs(5));
    Ok(steps as f64 / elapsed.as_secs_f64())
}

async fn system_latency(
    samples: usize,
    idle_secs: f64,
    curve: bool,
) -> Result<(Vec<Duration>, f64)> {
    let sys = system(1, 1, curve).await?;
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        sys.executor
            .execute_step_batch(StepBatchRequest::new("lat", noop_steps(1)))
            .await?;
        out.push(t.elapsed());
    }
    // Idle: orchestrator and worker connected, exchanging heartbeats only.
    let cpu_before = process_cpu()?;
    let wall = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
    let idle = (process_cpu()? - cpu_before) / wall.elapsed().as_secs_f64() * 100.0;
    sys.executor.shutdown(Duration::from_secs(1)).await;
    sys.worker.join(Duration::from_secs(5));
    Ok((out, idle))
}

/// User + system CPU seconds of this process, from /proc.
fn process_cpu() -> Result<f64> {
    let cpu = crate::children::cpu_time_of("self").context("reading /proc/self/stat")?;
    Ok(cpu.as_secs_f64())
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.durable_only {
        return crate::bench_store::run(args.durable_steps, &args.postgres);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    println!(
        "tasker bench: {} steps per run, window {} batches, no-op handler, tcp loopback",
        args.steps, args.window
    );
    println!();
    println!(
        "{:<12} {:>15} {:>15} {:>8} {:>15} {:>8}",
        "throughput", "tasker", "raw echo", "ratio", "echo+JSON", "ratio"
    );
    for &batch in &args.batch_sizes {
        let steps = if batch == 1 {
            args.steps.min(20_000)
        } else {
            args.steps
        };
        let raw = raw_throughput(batch, steps, args.window, false)?;
        let json = raw_throughput(batch, steps, args.window, true)?;
        let ours = runtime.block_on(system_throughput(batch, steps, args.window, false))?;
        println!(
            "{:<12} {:>10.0} st/s {:>10.0} st/s {:>7.0}% {:>10.0} st/s {:>7.0}%",
            format!("batch {batch}"),
            ours,
            raw,
            ours / raw * 100.0,
            json,
            ours / json * 100.0
        );
    }
    println!(
        "raw echo: the same bodies, unparsed; echo+JSON: both ends also decode and encode them"
    );
    let mut raw = raw_latency(args.latency_samples)?;
    let (mut ours, idle) =
        runtime.block_on(system_latency(args.latency_samples, args.idle_secs, false))?;
    let mut curve = if args.no_curve {
        None
    } else {
        Some(
            runtime
                .block_on(system_latency(args.latency_samples, 0.0, true))?
                .0,
        )
    };
    println!();
    println!(
        "{:<28} {:>14} {:>14} {:>14}",
        "single-step round trip", "tasker", "raw echo", "tasker+CURVE"
    );
    for (label, p) in [("p50", 0.50), ("p99", 0.99)] {
        let with_curve = curve
            .as_mut()
            .map_or("-".to_string(), |c| format!("{:.1} us", percentile(c, p)));
        println!(
            "{:<28} {:>11.1} us {:>11.1} us {:>14}",
            label,
            percentile(&mut ours, p),
            percentile(&mut raw, p),
            with_curve
        );
    }
    if !args.no_curve {
        println!();
        println!(
            "{:<12} {:>15} {:>15} {:>8}",
            "CURVE", "plaintext", "CURVE", "ratio"
        );
        for &batch in &args.batch_sizes {
            let steps = if batch == 1 {
                args.steps.min(20_000)
            } else {
                args.steps
            };
            let plain = runtime.block_on(system_throughput(batch, steps, args.window, false))?;
            let curve = runtime.block_on(system_throughput(batch, steps, args.window, true))?;
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
