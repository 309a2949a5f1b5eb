//! The public handle of the executor; the work happens in [`crate::dispatcher`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use foldhash::HashSetExt;
use tasker_config::{SubmitPolicy, TaskerConfig};
use tasker_protocol::{
    codec, StepBatchRequest, StepExecutionResult, StepId, StepRef, MAX_TIMEOUT_MS,
};
use tasker_transport::curve::ServerCurve;
use tasker_transport::monitor::HandshakeMonitor;
use tasker_transport::Doorbell;
use tokio::sync::{oneshot, watch, Semaphore};
use tracing::Instrument;

use crate::admission::Admission;
use crate::dispatcher::{Channels, Command, Dispatcher, NewStep, Sockets, Zap};
use crate::integration::BoxFuture;
use crate::metrics::Metrics;
use crate::metrics::Recorder;
use crate::sink::ResultStream;
use crate::{
    ExecutorError, ExecutorMetrics, FrameworkIntegration, Load, MetricsSnapshot, ShutdownReport,
    WorkerInfo,
};

/// The ZeroMQ step executor: binds a `ROUTER` socket, registers the workers
/// that say hello, and hands them steps within their capacity.
///
/// All socket work happens on one I/O thread that sleeps in `poll(2)`;
/// this handle only sends it commands, so it is cheap to share (`Arc`) and
/// usable from any tokio task. See the crate docs for the guarantees.
pub struct ZmqPubSubExecutor {
    endpoint: String,
    config: TaskerConfig,
    /// Weak: the I/O thread owns the context, and a handle kept alive must
    /// not keep it from ending (its end flushes the goodbyes).
    context: Weak<zmq::Context>,
    commands: mpsc::Sender<Command>,
    doorbell: Arc<Doorbell>,
    metrics: Arc<Metrics>,
    prometheus: ExecutorMetrics,
    permits: Arc<Semaphore>,
    workers: watch::Receiver<usize>,
    admission: Admission,
    closed: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ZmqPubSubExecutor {
    /// Binds `config.endpoint` and starts the I/O thread.
    ///
    /// A `tcp://127.0.0.1:0` endpoint binds an ephemeral port; read the real
    /// one back with [`endpoint`](Self::endpoint).
    pub fn start(config: &TaskerConfig) -> Result<Self, ExecutorError> {
        Self::start_as(config, uuid::Uuid::new_v4().simple().to_string())
    }

    /// [`start`](Self::start), under an `orchestrator_id` kept from an
    /// earlier run, so that workers still holding that run's steps can
    /// answer them after a restart (see [`resume`](Self::resume)).
    ///
    /// Only for callers whose step ids are never reused across runs (ids
    /// from a store): the id is what tells a worker's result for an old
    /// step from one for a new step with the same id.
    pub fn start_as(
        config: &TaskerConfig,
        orchestrator_id: impl Into<String>,
    ) -> Result<Self, ExecutorError> {
        Self::start_inner(config, orchestrator_id.into(), false)
    }

    /// [`start_as`](Self::start_as), reading nothing from workers until
    /// [`release_input`](Self::release_input): a restarted orchestrator
    /// first hands back what its earlier run left out
    /// ([`resume`](Self::resume)), so that a worker's answer to one of
    /// those steps, arriving at once, finds it.
    pub fn start_held(
        config: &TaskerConfig,
        orchestrator_id: impl Into<String>,
    ) -> Result<Self, ExecutorError> {
        Self::start_inner(config, orchestrator_id.into(), true)
    }

    /// Starts reading from workers after [`start_held`](Self::start_held).
    pub fn release_input(&self) {
        let _ = self.send(Command::ReleaseInput);
    }

    fn start_inner(
        config: &TaskerConfig,
        orchestrator_id: String,
        input_held: bool,
    ) -> Result<Self, ExecutorError> {
        config.validate()?;
        let curve = ServerCurve::from_config(config)?;
        let context = Arc::new(zmq::Context::new());
        let setup = |e: zmq::Error| ExecutorError::Setup(e.to_string());
        let socket = context.socket(zmq::ROUTER).map_err(setup)?;
        let bind_error = |source| ExecutorError::Bind {
            endpoint: config.endpoint.clone(),
            source,
        };
        tasker_transport::configure_socket(&socket, config).map_err(bind_error)?;
        // Per connection. A worker reading its messages never has more
        // than its deliveries (bounded by its credit) and a few beats
        // waiting; one that never reads had every reply to it kept, up to
        // `send_hwm` (100,000 by default: about 30 MB a connection, and
        // 100 such connections held 3 GB).
        socket
            .set_sndhwm(config.send_hwm.min(ROUTER_SEND_HWM))
            .map_err(bind_error)?;
        // Per connection too. A worker has a few result messages on their
        // way at most (its credit bounds them); one sending valid bodies of
        // the largest size faster than they are parsed had up to
        // `recv_hwm` of them kept (100,000 by default: 9.6 GB in a minute
        // from one peer). A full pipe leaves the rest in the sender's own
        // queue: a worker's send waits, nothing is lost.
        socket
            .set_rcvhwm(router_receive_hwm(config))
            .map_err(bind_error)?;
        // Both before the bind: no connection may get in unasked or unseen.
        let zap = match &curve {
            Some(curve) => {
                curve.apply(&socket)?;
                Some(Zap::bind(&context, curve.authorized_keys_dir.clone()).map_err(setup)?)
            }
            None => None,
        };
        let handshakes = HandshakeMonitor::attach(&context, &socket).map_err(setup)?;
        // Without it a ROUTER drops messages to vanished peers silently; with
        // it the send fails and we know the step never left.
        socket.set_router_mandatory(true).map_err(bind_error)?;
        if ipc_in_use(&config.endpoint) {
            return Err(bind_error(zmq::Error::EADDRINUSE));
        }
        socket.bind(&config.endpoint).map_err(bind_error)?;
        let endpoint = socket
            .get_last_endpoint()
            .map_err(bind_error)?
            .unwrap_or_else(|_| config.endpoint.clone());

        let doorbell = Arc::new(Doorbell::new().map_err(|e| ExecutorError::Setup(e.to_string()))?);
        let metrics = Arc::new(Metrics::default());
        let prometheus = ExecutorMetrics::new(Arc::clone(&metrics));
        let permits = Arc::new(Semaphore::new(config.queue_bound));
        let (commands_tx, commands_rx) = mpsc::channel();
        let (workers_tx, workers_rx) = watch::channel(0usize);
        let admission = Admission::default();

        let channels = Channels {
            doorbell: Arc::clone(&doorbell),
            commands: commands_rx,
            metrics: Arc::clone(&metrics),
            recorder: config.metrics.then(|| Recorder::new(&prometheus)),
            permits: Arc::clone(&permits),
            workers_count: workers_tx,
            admission: admission.clone(),
        };
        let weak_context = Arc::downgrade(&context);
        let dispatcher = Dispatcher::new(
            config.clone(),
            orchestrator_id,
            Sockets {
                socket,
                handshakes,
                zap,
                context,
            },
            channels,
            input_held,
        );
        let thread = std::thread::Builder::new()
            .name("tasker-orchestrator-io".into())
            .spawn(move || dispatcher.run())
            .map_err(|e| ExecutorError::Setup(e.to_string()))?;
        match &curve {
            Some(curve) => tracing::info!(
                %endpoint,
                public_key = %curve.keys.public(),
                authorized_keys_dir = %curve.authorized_keys_dir.display(),
                "orchestrator listening with CURVE"
            ),
            None => tracing::info!(%endpoint, "orchestrator listening"),
        }
        Ok(Self {
            endpoint,
            config: config.clone(),
            context: weak_context,
            commands: commands_tx,
            doorbell,
            metrics,
            prometheus,
            permits,
            workers: workers_rx,
            admission,
            closed: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The endpoint actually bound (with the real port of `tcp://...:0`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The executor's ZeroMQ context, for a worker in the same process to
    /// share (`tasker_worker::Worker::zmq_context`); `None` once the
    /// executor has stopped.
    ///
    /// With its own context each end has a ZeroMQ I/O thread of its own,
    /// and every message crosses between the two; sharing one, as the
    /// ZeroMQ guide advises (one context per process), one I/O thread
    /// carries both ends of the TCP connection. `tasker bench` measured a
    /// single step's round trip about a sixth shorter that way. The
    /// context ends when its last socket closes, whichever side that is.
    ///
    /// ```no_run
    /// # fn f(config: &tasker_config::TaskerConfig) -> Result<(), Box<dyn std::error::Error>> {
    /// let executor = tasker_orchestrator::ZmqPubSubExecutor::start(config)?;
    /// let context: zmq::Context = executor.zmq_context().expect("just started");
    /// // Worker::new(worker_config).zmq_context(context) ... .spawn()
    /// # Ok(()) }
    /// ```
    pub fn zmq_context(&self) -> Option<zmq::Context> {
        self.context.upgrade().map(|context| (*context).clone())
    }

    /// The line for this executor's queue, per handler: a caller that
    /// commits each dispatch to a store takes a [`Permit`](crate::Permit)
    /// per step first, so that its backlog waits in the store rather than
    /// here (see [`Admission`]).
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The configuration in force.
    pub fn config(&self) -> &TaskerConfig {
        &self.config
    }

    /// The counters now.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Its Prometheus metrics, to register in a registry an endpoint
    /// serves. The per-handler ones stay empty when the `metrics` setting
    /// is off.
    pub fn prometheus(&self) -> &ExecutorMetrics {
        &self.prometheus
    }

    fn send(&self, command: Command) -> Result<(), ExecutorError> {
        self.commands
            .send(command)
            .map_err(|_| ExecutorError::ShutDown)?;
        self.doorbell.ring();
        Ok(())
    }

    /// Ends these step attempts at once, `cancelled` with error type
    /// `Withdrawn`, where they still wait in the orchestrator's queue (their
    /// task was cancelled); those out at workers carry on to their result.
    /// Each ended one gets its result on its batch handle as usual.
    pub fn withdraw(&self, steps: Vec<StepRef>) {
        if !steps.is_empty() {
            let _ = self.send(Command::Withdraw {
                steps,
                suspending: false,
            });
        }
    }

    /// As [`withdraw`](Self::withdraw), for a task a stop suspends: also,
    /// each of these attempts that an earlier run dispatched and no worker
    /// has reclaimed yet ends `cancelled` (`Abandoned`) when its grace
    /// ends, not `WorkerLost`, so the next start waits for its worker
    /// again. A result that comes within the grace is taken as usual.
    pub fn suspend(&self, steps: Vec<StepRef>) {
        if !steps.is_empty() {
            let _ = self.send(Command::Withdraw {
                steps,
                suspending: true,
            });
        }
    }

    /// Submits a batch and returns a handle streaming each step's result.
    ///
    /// Waits for room in the queue (or fails with
    /// [`ExecutorError::QueueFull`], per `submit_policy`). Steps whose
    /// `timeout_ms` is 0 get `default_step_timeout_ms`.
    pub async fn submit(&self, batch: StepBatchRequest) -> Result<BatchHandle, ExecutorError> {
        let span = submit_span(&batch);
        self.submit_inner(batch, None).instrument(span).await
    }

    /// Hands back steps that an earlier run under the same
    /// `orchestrator_id` ([`start_as`](Self::start_as)) dispatched and never
    /// saw answered, each with the attempt it was dispatched as.
    ///
    /// Nothing is sent: a worker that still holds one names it in its hello
    /// or answers it, and that result is the step's result. A step nobody
    /// reclaims within `grace` ends `failed` with `WorkerLost` (retryable),
    /// so the caller can dispatch a new attempt. `grace` should cover a
    /// worker noticing the restart: twice the peer expiry is plenty.
    pub async fn resume(
        &self,
        batch: StepBatchRequest,
        grace: Duration,
    ) -> Result<BatchHandle, ExecutorError> {
        self.submit_inner(batch, Some(grace)).await
    }

    async fn submit_inner(
        &self,
        batch: StepBatchRequest,
        resume: Option<Duration>,
    ) -> Result<BatchHandle, ExecutorError> {
        let (handle, accepted) = self.send_batch(batch, resume).await?;
        accepted.await.map_err(|_| ExecutorError::ShutDown)??;
        Ok(handle)
    }

    /// Hands a batch to the I/O thread: its handle, and the I/O thread's
    /// answer, whether it took the batch. A refused batch's handle ends
    /// with no results.
    async fn send_batch(
        &self,
        batch: StepBatchRequest,
        resume: Option<Duration>,
    ) -> Result<(BatchHandle, oneshot::Receiver<Result<(), ExecutorError>>), ExecutorError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ExecutorError::ShutDown);
        }
        validate_batch(&batch)?;
        let n = batch.steps.len();
        let bound = self.config.queue_bound;
        if n > bound {
            return Err(ExecutorError::BatchTooLarge {
                requested: n,
                bound,
            });
        }
        let permits = match self.config.submit_policy {
            SubmitPolicy::Wait => Arc::clone(&self.permits)
                .acquire_many_owned(n as u32)
                .await
                .map_err(|_| ExecutorError::ShutDown)?,
            SubmitPolicy::Reject => Arc::clone(&self.permits)
                .try_acquire_many_owned(n as u32)
                .map_err(|_| ExecutorError::QueueFull {
                    queued: bound.saturating_sub(self.permits.available_permits()),
                    bound,
                    requested: n,
                })?,
        };
        // The dispatcher gives the permits back one by one as steps end.
        permits.forget();

        let order: Vec<StepId> = batch.steps.iter().map(|s| s.step_id).collect();
        let batch_id = batch.batch_id;
        // Encoded here, on the submitting thread, once for every delivery
        // of the step: the I/O thread only joins the bytes.
        let steps = NewStep::batch(batch.steps, self.config.default_step_timeout_ms);
        let (results_tx, results_rx) = crate::sink::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
        self.send(match resume {
            None => Command::Submit {
                batch_id: batch_id.clone(),
                steps,
                results: results_tx,
                reply: reply_tx,
            },
            Some(grace) => Command::Resume {
                batch_id: batch_id.clone(),
                steps,
                grace,
                results: results_tx,
                reply: reply_tx,
            },
        })?;
        let handle = BatchHandle {
            batch_id,
            order,
            results: results_rx,
            arrived: VecDeque::new(),
            received: 0,
        };
        Ok((handle, reply_rx))
    }

    /// Submits a batch and waits for every result, in batch order.
    ///
    /// Fails as [`submit`](Self::submit) does when the batch is refused.
    pub async fn execute_step_batch(
        &self,
        batch: StepBatchRequest,
    ) -> Result<Vec<StepExecutionResult>, ExecutorError> {
        // The I/O thread's answer is read only if results are missing: a
        // refused batch's results end empty, and the refusal is the
        // answer. Waiting for it first, as `submit` must, woke this task
        // once more per batch, and on a small machine the woken caller
        // took the I/O thread's CPU before that thread had sent the step
        // (`tasker bench --latency-only`: the I/O thread was preempted
        // about twice per round trip, not once).
        let span = submit_span(&batch);
        let (handle, accepted) = self.send_batch(batch, None).instrument(span).await?;
        let expected = handle.len();
        let results = handle.collect().await;
        if results.len() < expected {
            accepted.await.map_err(|_| ExecutorError::ShutDown)??;
        }
        Ok(results)
    }

    /// The workers registered now.
    pub async fn workers(&self) -> Vec<WorkerInfo> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Workers { reply: tx }).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The `worker_id` of the worker each of `steps` is out at now, in the
    /// same order: `None` for an attempt waiting in the queue for a worker,
    /// waiting to be reclaimed after a restart, or not in flight here. What
    /// `tasker serve` shows for a running step.
    pub async fn holders(&self, steps: Vec<StepRef>) -> Vec<Option<String>> {
        let n = steps.len();
        let (tx, rx) = oneshot::channel();
        if steps.is_empty() || self.send(Command::Holders { steps, reply: tx }).is_err() {
            return vec![None; n];
        }
        rx.await.unwrap_or_else(|_| vec![None; n])
    }

    /// Steps queued and out at workers, and the workers, now: what the
    /// gauges of `/metrics` show.
    pub async fn load(&self) -> Load {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::Load { reply: tx }).is_err() {
            return Load::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Waits until at least `n` workers are registered; false on timeout.
    pub async fn wait_for_workers(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.workers.clone();
        tokio::time::timeout(timeout, rx.wait_for(|count| *count >= n))
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false)
    }

    /// Makes the I/O thread stop as it does when its socket fails, so that
    /// callers can test what they see then: every step in flight ends
    /// `cancelled` with `ExecutorStopped`, later submits fail.
    #[doc(hidden)]
    pub fn inject_fault(&self) {
        let _ = self.send(Command::InjectFault);
    }

    /// Stops accepting batches, waits up to `timeout` for the steps in
    /// flight, cancels what is left (each such step ends `cancelled`), says
    /// goodbye to the workers and closes the socket. When it returns, the
    /// endpoint is free to bind again, even while a worker given
    /// [`zmq_context`](Self::zmq_context) keeps that context alive.
    ///
    /// Calling it again returns an empty report.
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        if self.closed.swap(true, Ordering::AcqRel) {
            return ShutdownReport::default();
        }
        let (tx, rx) = oneshot::channel();
        let report = match self.send(Command::Shutdown {
            deadline: Instant::now() + timeout,
            reply: Some(tx),
        }) {
            Ok(()) => rx.await.unwrap_or_default(),
            Err(_) => ShutdownReport::default(),
        };
        // Closing can linger briefly; keep it off the async worker threads.
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        report
    }
}

impl Drop for ZmqPubSubExecutor {
    fn drop(&mut self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            let _ = self.send(Command::Shutdown {
                deadline: Instant::now(),
                reply: None,
            });
        }
    }
}

impl FrameworkIntegration for ZmqPubSubExecutor {
    fn framework_name(&self) -> &'static str {
        "zeromq"
    }

    fn submit(&self, batch: StepBatchRequest) -> BoxFuture<'_, Result<BatchHandle, ExecutorError>> {
        Box::pin(ZmqPubSubExecutor::submit(self, batch))
    }

    fn resume(
        &self,
        batch: StepBatchRequest,
        grace: Duration,
    ) -> BoxFuture<'_, Result<BatchHandle, ExecutorError>> {
        Box::pin(ZmqPubSubExecutor::resume(self, batch, grace))
    }

    fn withdraw(&self, steps: Vec<StepRef>) {
        ZmqPubSubExecutor::withdraw(self, steps)
    }

    fn suspend(&self, steps: Vec<StepRef>) {
        ZmqPubSubExecutor::suspend(self, steps)
    }

    fn admission(&self) -> Option<&Admission> {
        Some(&self.admission)
    }

    fn execute_step_batch(
        &self,
        batch: StepBatchRequest,
    ) -> BoxFuture<'_, Result<Vec<StepExecutionResult>, ExecutorError>> {
        Box::pin(ZmqPubSubExecutor::execute_step_batch(self, batch))
    }
}

/// Whether an `ipc://` endpoint's socket file has a listener. libzmq
/// unlinks the file and binds anew, so a second executor on one path took
/// every new connection from the first without a word; a file nobody
/// listens on (left by a process that died) is free to take.
fn ipc_in_use(endpoint: &str) -> bool {
    match endpoint.strip_prefix("ipc://") {
        // `@name` is Linux's abstract namespace: a bind there fails by itself.
        Some(path) if !path.starts_with('@') && path != "*" => {
            std::os::unix::net::UnixStream::connect(path).is_ok()
        }
        _ => false,
    }
}

fn submit_span(batch: &StepBatchRequest) -> tracing::Span {
    tracing::debug_span!("submit", batch_id = %batch.batch_id, steps = batch.steps.len())
}

/// Most messages waiting to go out to one connection of the orchestrator's
/// ROUTER (see `start`).
const ROUTER_SEND_HWM: i32 = 4_096;

/// Most bytes of messages waiting to be read from one connection of the
/// orchestrator's ROUTER, as a count of messages of `max_message_bytes`
/// (see `start`).
const ROUTER_RECEIVE_BYTES: usize = 256 << 20;

/// The receive high-water mark of each connection of the ROUTER: at most
/// `recv_hwm` (0, ZeroMQ's "no limit", sets none), and at most
/// [`ROUTER_RECEIVE_BYTES`] of the largest messages, but never under 16
/// messages.
fn router_receive_hwm(config: &TaskerConfig) -> i32 {
    let by_bytes = (ROUTER_RECEIVE_BYTES / config.max_message_bytes.max(1)).max(16);
    let by_bytes = i32::try_from(by_bytes).unwrap_or(i32::MAX);
    match config.recv_hwm {
        0 => by_bytes,
        configured => configured.min(by_bytes),
    }
}

fn validate_batch(batch: &StepBatchRequest) -> Result<(), ExecutorError> {
    let invalid = |reason: String| ExecutorError::InvalidBatch {
        batch_id: batch.batch_id.clone(),
        reason,
    };
    codec::check_version(&batch.protocol_version).map_err(|e| invalid(e.to_string()))?;
    if batch.steps.is_empty() {
        return Err(invalid("the batch has no steps".into()));
    }
    let mut seen = foldhash::HashSet::with_capacity(batch.steps.len());
    for step in &batch.steps {
        if !seen.insert(step.step_id) {
            return Err(invalid(format!("step id {} appears twice", step.step_id)));
        }
        if step.handler_class.is_empty() {
            return Err(invalid(format!(
                "step {} has an empty handler_class",
                step.step_id
            )));
        }
        if step.metadata.timeout_ms > MAX_TIMEOUT_MS {
            return Err(invalid(format!(
                "step {} has timeout_ms {} above the maximum {MAX_TIMEOUT_MS} (30 days)",
                step.step_id, step.metadata.timeout_ms
            )));
        }
        if step.metadata.attempt == 0 {
            return Err(invalid(format!(
                "step {} has attempt 0; attempts start at 1",
                step.step_id
            )));
        }
    }
    Ok(())
}

/// The results of one submitted batch, as they arrive.
///
/// ```no_run
/// # async fn f(executor: tasker_orchestrator::ZmqPubSubExecutor, batch: tasker_protocol::StepBatchRequest) {
/// let mut handle = executor.submit(batch).await.unwrap();
/// while let Some(result) = handle.next().await {
///     println!("step {} ended {:?}", result.step_id, result.status);
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct BatchHandle {
    batch_id: String,
    order: Vec<StepId>,
    /// Results arrive several at a time: those ended in one turn of the
    /// I/O thread.
    results: ResultStream,
    arrived: VecDeque<StepExecutionResult>,
    received: usize,
}

impl BatchHandle {
    /// A handle whose results are known already, for integrations that
    /// answer without a dispatcher (see [`FrameworkIntegration::resume`]).
    pub fn ready(batch_id: impl Into<String>, results: Vec<StepExecutionResult>) -> Self {
        Self {
            batch_id: batch_id.into(),
            order: results.iter().map(|r| r.step_id).collect(),
            results: ResultStream::ready(results),
            arrived: VecDeque::new(),
            received: 0,
        }
    }

    /// The batch's id.
    pub fn batch_id(&self) -> &str {
        &self.batch_id
    }

    /// Steps in the batch.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the batch had no steps (never, for an accepted batch).
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Results not received yet.
    pub fn remaining(&self) -> usize {
        self.order.len() - self.received
    }

    /// The next result to arrive, or `None` once every step has one.
    pub async fn next(&mut self) -> Option<StepExecutionResult> {
        if self.received == self.order.len() {
            return None;
        }
        if self.arrived.is_empty() {
            self.arrived = self.results.take(1).await.into();
        }
        let result = self.arrived.pop_front()?;
        self.received += 1;
        Some(result)
    }

    /// Waits for every result and returns them in the batch's step order.
    pub async fn collect(mut self) -> Vec<StepExecutionResult> {
        let total = self.remaining();
        let mut all: Vec<StepExecutionResult> = self.arrived.drain(..).collect();
        while all.len() < total {
            // Woken once they are all in, not as each turn ends a few.
            let more = self.results.take(total - all.len()).await;
            if more.is_empty() {
                break;
            }
            // Usually the batch's results come in one take: kept as they
            // came, not copied once more into an empty vector (a thousand
            // results are some 200 KB; the copy was 4% of a submitting
            // thread's time in `tasker bench`).
            if all.is_empty() {
                all = more;
            } else {
                all.extend(more);
            }
        }
        // One worker answers in the order it was sent, so the results
        // usually are in the batch's order already: then no result moves.
        if all.len() == self.order.len()
            && all.iter().zip(&self.order).all(|(r, id)| r.step_id == *id)
        {
            return all;
        }
        let position: foldhash::HashMap<StepId, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i))
            .collect();
        let mut slots: Vec<Option<StepExecutionResult>> = Vec::new();
        slots.resize_with(self.order.len(), || None);
        for result in all {
            if let Some(&i) = position.get(&result.step_id) {
                slots[i] = Some(result);
            }
        }
        slots.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One peer sending valid 16 MiB results faster than they were parsed
    /// had up to `recv_hwm` (100,000) of them kept: 9.6 GB in a minute.
    #[test]
    fn a_connection_queues_at_most_256_mib_of_the_largest_messages_for_reading() {
        let with = |recv_hwm: i32, max_message_bytes: usize| {
            router_receive_hwm(&TaskerConfig {
                recv_hwm,
                max_message_bytes,
                ..TaskerConfig::default()
            })
        };
        let defaults = TaskerConfig::default();
        assert_eq!(with(defaults.recv_hwm, defaults.max_message_bytes), 16);
        assert_eq!(with(100_000, 1 << 20), 256);
        assert_eq!(with(100_000, 1 << 30), 16, "never under 16");
        assert_eq!(with(8, 1 << 20), 8, "a lower recv_hwm holds");
        assert_eq!(
            with(0, 1 << 20),
            256,
            "0 is no limit in ZeroMQ: the bound holds"
        );
    }
}
