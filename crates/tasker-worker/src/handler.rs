//! A Rust host for the runtime: register closures as handlers and run them
//! on a thread pool (sync handlers) or a tokio runtime (async handlers).

use foldhash::{HashMap, HashMapExt};
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use tasker_config::TaskerConfig;
use tasker_protocol::{
    error_types, StepExecutionError, StepExecutionRequest, StepExecutionResult, StepStatus,
};

use crate::inline::InlineHandlers;
use crate::{WorkerError, WorkerOptions, WorkerRuntime};

/// What a handler returns: the step's output, or why it failed.
pub type HandlerResult = Result<Value, HandlerError>;

pub(crate) type SyncHandler = dyn Fn(&StepExecutionRequest) -> HandlerResult + Send + Sync;
type AsyncHandler = dyn Fn(StepExecutionRequest) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>>
    + Send
    + Sync;

#[derive(Clone)]
enum Handler {
    Sync(Arc<SyncHandler>),
    Async(Arc<AsyncHandler>),
}

/// A handler's failure.
///
/// ```
/// use tasker_worker::HandlerError;
/// let e = HandlerError::retryable("gateway busy").with_type("GatewayBusy");
/// assert!(e.retryable);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    /// The error's kind, reported as `error_type`.
    pub error_type: String,
    /// Human-readable description.
    pub message: String,
    /// Whether trying again may succeed.
    pub retryable: bool,
    /// Backtrace lines, if any.
    pub backtrace: Vec<String>,
}

impl HandlerError {
    /// A failure that may succeed on a later attempt (`RetryableError`).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            error_type: "RetryableError".into(),
            message: message.into(),
            retryable: true,
            backtrace: Vec::new(),
        }
    }

    /// A failure no retry can fix (`PermanentError`).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            error_type: "PermanentError".into(),
            message: message.into(),
            retryable: false,
            backtrace: Vec::new(),
        }
    }

    /// The same error under another `error_type`.
    pub fn with_type(mut self, error_type: impl Into<String>) -> Self {
        self.error_type = error_type.into();
        self
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for HandlerError {}

/// Options of one handler, given at registration with
/// [`Worker::handler_with`] or [`Worker::async_handler_with`].
///
/// ```
/// use tasker_worker::HandlerOptions;
///
/// // At most 2 steps of this handler at once on this worker.
/// let options = HandlerOptions::new().concurrency(2);
/// assert_eq!(options.concurrency, Some(2));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandlerOptions {
    /// Most steps of this handler the worker runs at once; `None` (the
    /// default): as many as its capacity allows. Announced in the hello
    /// (`handler_limits`) and enforced by the orchestrator, which sends no
    /// more of its steps while that many are out here; the rest of the
    /// capacity serves the other handlers. At least 1 (0 fails
    /// [`Worker::spawn`] with [`WorkerError::InvalidOptions`]); a limit at
    /// least the capacity limits nothing.
    pub concurrency: Option<u32>,
    /// Run on the worker's I/O thread, between reading a batch and sending
    /// its results, rather than on a handler thread: see
    /// [`inline`](Self::inline). Off by default.
    pub inline: bool,
}

impl HandlerOptions {
    /// No options: the handler is limited by the worker's capacity only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets [`concurrency`](Self::concurrency).
    pub fn concurrency(mut self, limit: u32) -> Self {
        self.concurrency = Some(limit);
        self
    }

    /// Runs this handler on the worker's I/O thread: for a blocking
    /// handler that only computes and returns within microseconds
    /// (validate, map, route). It saves the two hand-offs between threads
    /// that a step on a handler thread costs, which take longer than such
    /// a handler runs: in `tasker bench` they are a fifth to a third of a
    /// single step's round trip.
    ///
    /// While it runs, the I/O thread reads nothing and sends no heartbeat,
    /// so a handler that waits (on a socket, a lock, a sleep) must not be
    /// inline. As a safeguard, an inline handler that once runs longer than
    /// 10 ms is logged and its steps go to the handler threads from then
    /// on; that one run still held the I/O thread. Steps of one inline
    /// handler run one at a time, in the order received. Only for
    /// [`Worker::handler_with`]: [`Worker::spawn`] refuses an inline async
    /// handler with [`WorkerError::InvalidOptions`].
    ///
    /// ```no_run
    /// use serde_json::json;
    /// use tasker_worker::{HandlerOptions, Worker};
    ///
    /// let worker = Worker::new(tasker_config::TaskerConfig::default())
    ///     .handler_with("route_order", HandlerOptions::new().inline(), |step| {
    ///         let express = step.task_context["express"].as_bool().unwrap_or(false);
    ///         Ok(json!({ "queue": if express { "fast" } else { "standard" } }))
    ///     })
    ///     .spawn()
    ///     .unwrap();
    /// ```
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }
}

/// A Rust worker under construction: handlers and options.
pub struct Worker {
    options: WorkerOptions,
    handlers: HashMap<String, Handler>,
    /// Handlers registered with [`HandlerOptions::inline`].
    inline: std::collections::BTreeSet<String>,
    threads: Option<usize>,
}

impl Worker {
    /// A worker with no handlers yet.
    pub fn new(config: TaskerConfig) -> Self {
        Self {
            options: WorkerOptions::new(config, Vec::new()),
            handlers: HashMap::new(),
            inline: std::collections::BTreeSet::new(),
            threads: None,
        }
    }

    /// Sets the worker id (default: generated).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.options.worker_id = Some(id.into());
        self
    }

    /// Sets the declared capacity (default: `worker_capacity`).
    pub fn capacity(mut self, capacity: u32) -> Self {
        self.options.capacity = Some(capacity);
        self
    }

    /// Sets how many threads run sync handlers (default: capacity, at most
    /// [`policy::DEFAULT_MAX_THREADS`](crate::policy::DEFAULT_MAX_THREADS);
    /// never more than capacity).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads.max(1));
        self
    }

    /// Opens the worker's socket in this ZeroMQ context instead of one of
    /// its own: for a worker in the same process as its orchestrator, pass
    /// `ZmqPubSubExecutor::zmq_context()`, and one ZeroMQ I/O thread
    /// carries both ends of the connection (the ZeroMQ guide's one context
    /// per process) rather than each end's own thread handing every
    /// message to the other's. Nothing else changes: the worker still
    /// connects to `endpoint`, and the context ends with the last socket
    /// in it, whichever side closes last.
    ///
    /// ```no_run
    /// use tasker_config::TaskerConfig;
    /// use tasker_worker::Worker;
    ///
    /// // In a program that embeds the orchestrator:
    /// // let context = executor.zmq_context().expect("running");
    /// let context = zmq::Context::new();
    /// let worker = Worker::new(TaskerConfig::default())
    ///     .zmq_context(context)
    ///     .handler("noop", |_| Ok(serde_json::Value::Null))
    ///     .spawn()?;
    /// # Ok::<(), tasker_worker::WorkerError>(())
    /// ```
    pub fn zmq_context(mut self, context: zmq::Context) -> Self {
        self.options.context = Some(crate::runtime::SharedContext(context));
        self
    }

    /// Registers a blocking handler, run on the worker's thread pool.
    pub fn handler<F>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(&StepExecutionRequest) -> HandlerResult + Send + Sync + 'static,
    {
        self.handler_with(name, HandlerOptions::default(), f)
    }

    /// Registers a blocking handler with options, such as how many of its
    /// steps may run at once on this worker:
    ///
    /// ```no_run
    /// use serde_json::json;
    /// use tasker_worker::{HandlerOptions, Worker};
    ///
    /// let worker = Worker::new(tasker_config::TaskerConfig::default())
    ///     .capacity(8)
    ///     // A rate-limited API: at most 2 calls at once from this worker;
    ///     // the other 6 slots serve `resize_image`.
    ///     .handler_with("call_api", HandlerOptions::new().concurrency(2), |step| {
    ///         Ok(json!({ "called": step.step_id }))
    ///     })
    ///     .handler("resize_image", |_| Ok(json!({ "resized": true })))
    ///     .spawn()
    ///     .unwrap();
    /// ```
    pub fn handler_with<F>(mut self, name: impl Into<String>, options: HandlerOptions, f: F) -> Self
    where
        F: Fn(&StepExecutionRequest) -> HandlerResult + Send + Sync + 'static,
    {
        let name = name.into();
        self.set_options(&name, &options);
        self.handlers.insert(name, Handler::Sync(Arc::new(f)));
        self
    }

    /// Registers an async handler, run on the worker's tokio runtime.
    pub fn async_handler<F, Fut>(self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(StepExecutionRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.async_handler_with(name, HandlerOptions::default(), f)
    }

    /// Registers an async handler with options (see
    /// [`handler_with`](Self::handler_with)).
    pub fn async_handler_with<F, Fut>(
        mut self,
        name: impl Into<String>,
        options: HandlerOptions,
        f: F,
    ) -> Self
    where
        F: Fn(StepExecutionRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        let boxed = move |step| -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> {
            Box::pin(f(step))
        };
        let name = name.into();
        self.set_options(&name, &options);
        self.handlers.insert(name, Handler::Async(Arc::new(boxed)));
        self
    }

    /// A handler registered (again) takes these options, and only these.
    fn set_options(&mut self, name: &str, options: &HandlerOptions) {
        if self.handlers.contains_key(name) {
            // Allowed (it replaces the first, options and all), but a copied
            // handler whose name was not changed hides another: say so.
            tracing::warn!(
                handler = name,
                "handler registered again: this one replaces the first"
            );
        }
        match options.concurrency {
            Some(limit) => {
                self.options.handler_limits.insert(name.to_string(), limit);
            }
            None => {
                self.options.handler_limits.remove(name);
            }
        }
        if options.inline {
            self.inline.insert(name.to_string());
        } else {
            self.inline.remove(name);
        }
    }

    /// Connects and starts serving; returns at once.
    pub fn spawn(mut self) -> Result<RunningWorker, WorkerError> {
        let mut names: Vec<String> = self.handlers.keys().cloned().collect();
        names.sort();
        self.options.handlers = names;
        // Handler threads decode their own steps: the I/O thread, one per
        // worker, only checks each batch, and the typed parse runs on as
        // many threads as handlers do. With every handler inline the I/O
        // thread decodes every step itself: in one typed pass, not a check
        // and then a parse.
        if self.inline.len() < self.handlers.len() {
            crate::event_loop::keep_raw_steps(&mut self.options);
        }
        if !self.inline.is_empty() {
            let mut inline = Vec::with_capacity(self.inline.len());
            for name in &self.inline {
                match &self.handlers[name] {
                    Handler::Sync(f) => inline.push((name.clone(), Arc::clone(f))),
                    Handler::Async(_) => {
                        return Err(WorkerError::InvalidOptions(format!(
                            "handler {name:?}: only a blocking handler can run inline"
                        )))
                    }
                }
            }
            self.options.inline = Some(Arc::new(InlineHandlers::new(inline)));
        }
        let needs_tokio = self
            .handlers
            .values()
            .any(|h| matches!(h, Handler::Async(_)));
        let tokio = if needs_tokio {
            Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tasker-worker-async")
                    .enable_all()
                    .build()
                    .map_err(|e| WorkerError::Setup(e.to_string()))?,
            )
        } else {
            None
        };
        let runtime = Arc::new(WorkerRuntime::start(self.options)?);
        let capacity = runtime.capacity() as usize;
        let threads = crate::policy::handler_threads(capacity as u32, self.threads)
            .map_err(|e| WorkerError::InvalidOptions(e.to_string()))?;
        let chunk = crate::policy::chunk_size(capacity as u32, threads);
        let handlers = Arc::new(self.handlers);
        let pool = (0..threads)
            .map(|i| {
                let runtime = Arc::clone(&runtime);
                let handlers = Arc::clone(&handlers);
                let spawner = tokio.as_ref().map(|t| t.handle().clone());
                std::thread::Builder::new()
                    .name(format!("tasker-worker-{i}"))
                    .spawn(move || pump(&runtime, &handlers, spawner.as_ref(), chunk))
                    .map_err(|e| WorkerError::Setup(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunningWorker {
            runtime,
            pool,
            tokio,
        })
    }
}

fn pump(
    runtime: &Arc<WorkerRuntime>,
    handlers: &HashMap<String, Handler>,
    spawner: Option<&tokio::runtime::Handle>,
    chunk: usize,
) {
    let worker_id = runtime.worker_id().to_string();
    let mut done = Vec::with_capacity(chunk);
    while let Ok(steps) = runtime.next_steps(chunk, None) {
        // Results of quick handlers go back together, so one message answers
        // many steps; a slow handler flushes what is done before it.
        let mut flushed_at = Instant::now();
        let mut clock = WallClock::at(flushed_at);
        for step in steps {
            // One clock read serves the flush check and the handler's run
            // time: reads cost tens of nanoseconds on VMs, a step's tenth.
            let started = Instant::now();
            if !done.is_empty() && started.duration_since(flushed_at) >= FLUSH_AFTER {
                runtime.complete_many(std::mem::take(&mut done));
                flushed_at = started;
                clock = WallClock::at(started);
            }
            match handlers.get(&step.handler_class) {
                Some(Handler::Sync(f)) => {
                    let outcome = catch_unwind(AssertUnwindSafe(|| f(&step)));
                    let ended = Instant::now();
                    let took = ended.duration_since(started);
                    done.push(to_result(
                        &step,
                        outcome,
                        &worker_id,
                        took,
                        clock.wall(ended),
                    ));
                }
                Some(Handler::Async(f)) => {
                    let spawner = spawner.expect("async handlers have a runtime");
                    let future = f(step.clone());
                    let runtime = Arc::clone(runtime);
                    let worker_id = worker_id.clone();
                    spawner.spawn(async move {
                        let started = Instant::now();
                        let outcome = tokio::spawn(future).await.map_err(|e| {
                            if e.is_panic() {
                                e.into_panic()
                            } else {
                                Box::new("cancelled") as Box<dyn std::any::Any + Send>
                            }
                        });
                        let took = started.elapsed();
                        runtime.complete(to_result(&step, outcome, &worker_id, took, Utc::now()));
                    });
                }
                None => {
                    let error = StepExecutionError::new(
                        error_types::UNKNOWN_HANDLER,
                        format!("this worker has no handler {:?}", step.handler_class),
                        false,
                    );
                    done.push(StepExecutionResult::failed(
                        step.step_ref(),
                        StepStatus::Failed,
                        error,
                        &worker_id,
                        0,
                    ));
                }
            }
        }
        runtime.complete_many(std::mem::take(&mut done));
    }
}

/// Longest a finished result waits for its chunk-mates.
const FLUSH_AFTER: Duration = Duration::from_millis(2);

/// Wall-clock times for a run of steps, read from the monotonic clock
/// that times them anyway: one `Utc::now` per run, where each result read
/// its own (a clock read costs a tenth of a quick step on a VM). A run is
/// short (it is anchored again at every flush), so a wall-clock
/// adjustment during it shows at the next one.
pub(crate) struct WallClock {
    wall: DateTime<Utc>,
    at: Instant,
}

impl WallClock {
    /// Anchored at `at`, which is now or a moment ago.
    pub(crate) fn at(at: Instant) -> Self {
        Self {
            wall: Utc::now() - TimeDelta::from_std(at.elapsed()).unwrap_or_default(),
            at,
        }
    }

    /// The wall-clock time of `instant`, no earlier than the anchor.
    pub(crate) fn wall(&self, instant: Instant) -> DateTime<Utc> {
        TimeDelta::from_std(instant.saturating_duration_since(self.at))
            .ok()
            .and_then(|since| self.wall.checked_add_signed(since))
            .unwrap_or(self.wall)
    }
}

pub(crate) fn to_result(
    step: &StepExecutionRequest,
    outcome: Result<HandlerResult, Box<dyn std::any::Any + Send>>,
    worker_id: &str,
    took: Duration,
    completed_at: DateTime<Utc>,
) -> StepExecutionResult {
    let elapsed = took.as_millis() as u64;
    match outcome {
        Ok(Ok(output)) => StepExecutionResult::completed_at(
            step.step_ref(),
            output,
            worker_id,
            elapsed,
            completed_at,
        ),
        Ok(Err(e)) => StepExecutionResult::failed(
            step.step_ref(),
            StepStatus::Failed,
            StepExecutionError {
                message: e.message,
                error_type: e.error_type,
                retryable: e.retryable,
                backtrace: e.backtrace,
            },
            worker_id,
            elapsed,
        ),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".into());
            StepExecutionResult::failed(
                step.step_ref(),
                StepStatus::Failed,
                StepExecutionError::new(error_types::PANIC, message, false),
                worker_id,
                elapsed,
            )
        }
    }
}

/// A Rust worker that is serving.
pub struct RunningWorker {
    runtime: Arc<WorkerRuntime>,
    pool: Vec<JoinHandle<()>>,
    tokio: Option<tokio::runtime::Runtime>,
}

impl RunningWorker {
    /// The id announced to the orchestrator.
    pub fn worker_id(&self) -> &str {
        self.runtime.worker_id()
    }

    /// The underlying runtime.
    pub fn runtime(&self) -> &WorkerRuntime {
        &self.runtime
    }

    /// Begins a graceful stop (see [`WorkerRuntime::stop`]).
    pub fn stop(&self) {
        self.runtime.stop();
    }

    /// Serves until SIGINT (Ctrl-C) or SIGTERM, then drains as
    /// [`join`](Self::join) does, within the config's
    /// `shutdown_timeout_ms`; true if everything finished in time. Fails
    /// with [`WorkerError::Refused`] as soon as the orchestrator refuses
    /// the connection. For a
    /// worker that is its own program. Must not be called inside a tokio
    /// runtime.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), tasker_worker::WorkerError> {
    /// let worker = tasker_worker::Worker::new(tasker_config::TaskerConfig::from_env().unwrap())
    ///     .handler("noop", |_| Ok(serde_json::Value::Null))
    ///     .spawn()?;
    /// worker.serve_until_signal()?;
    /// # Ok(()) }
    /// ```
    pub fn serve_until_signal(self) -> Result<bool, WorkerError> {
        use tokio::signal::unix::{signal, SignalKind};
        if tokio::runtime::Handle::try_current().is_ok() {
            // tokio's own panic ("Cannot start a runtime from within a
            // runtime") named neither this call nor what to do instead.
            return Err(WorkerError::Setup(
                "serve_until_signal blocks its thread and cannot run inside a tokio runtime: \
                 call it from a plain main, or wait for the signal yourself (tokio::signal) \
                 and call stop(), then join() inside spawn_blocking"
                    .into(),
            ));
        }
        let setup = |e: std::io::Error| WorkerError::Setup(format!("signal handling: {e}"));
        let signals = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(setup)?;
        let runtime = Arc::clone(&self.runtime);
        let signalled = signals.block_on(async {
            let mut term = signal(SignalKind::terminate()).map_err(setup)?;
            // A runtime refused by the orchestrator stops by itself; without
            // this, its program would wait for a signal that never comes.
            let closed =
                tokio::task::spawn_blocking(
                    move || {
                        while !runtime.join(Duration::from_secs(3_600)) {}
                    },
                );
            tokio::select! {
                _ = tokio::signal::ctrl_c() => Ok(true),
                _ = term.recv() => Ok(true),
                _ = closed => Ok::<_, WorkerError>(false),
            }
        });
        // The blocking wait may still run; it ends when the runtime closes.
        signals.shutdown_background();
        if !signalled? {
            if let Some(failure) = self.runtime.failure() {
                return Err(failure);
            }
        }
        tracing::info!(worker_id = self.worker_id(), "draining");
        let timeout = self.runtime.shutdown_timeout();
        Ok(self.join(timeout))
    }

    /// Stops (if not yet) and waits up to `timeout` for the running steps
    /// and the goodbye; true if everything finished in time. Handler threads
    /// still running after that are left to end on their own.
    ///
    /// It blocks: in async code call it inside `spawn_blocking`. With the
    /// orchestrator gone (an executor in this process shut down first), a
    /// result it holds has nowhere to go, and it waits for one to come back
    /// until `timeout` (or `shutdown_timeout_ms`) and returns false: stop
    /// and join a worker before the executor it serves. Dropped without
    /// `join`, a worker stops as `stop` does, in the background, with
    /// nothing waiting for it (a process that exits first cuts it short).
    pub fn join(mut self, timeout: Duration) -> bool {
        self.runtime.stop();
        let deadline = Instant::now() + timeout;
        // With nothing in hand, every pool thread is past its last handler
        // and leaving; otherwise a handler outlived the deadline and its
        // thread is left to end on its own.
        let all_done = self.runtime.join(timeout) && self.runtime.in_hand() == 0;
        for thread in self.pool.drain(..) {
            if all_done {
                let _ = thread.join();
            }
        }
        if let Some(tokio) = self.tokio.take() {
            // Blocking on a runtime's shutdown is not allowed inside another
            // runtime; the in-flight tasks are done by now anyway.
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio.shutdown_background();
            } else {
                tokio.shutdown_timeout(deadline.saturating_duration_since(Instant::now()));
            }
        }
        all_done
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.runtime.stop();
        if let Some(tokio) = self.tokio.take() {
            tokio.shutdown_background();
        }
    }
}
