//! The host-facing half of the worker runtime: the step inbox, the result
//! outbox and the lifecycle. The socket half lives in [`crate::connection`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tasker_config::TaskerConfig;
use tasker_protocol::raw::{EncodedResult, RawStep};
use tasker_protocol::{
    error_types, StepExecutionError, StepExecutionRequest, StepExecutionResult, StepRef,
    StepStatus, MAX_JSON_DEPTH,
};
use tasker_transport::Doorbell;

use crate::connection::Connection;
use crate::inline::InlineHandlers;
use crate::output::{check_output, serialization_failure};
use crate::shared::{Inbox, Received, RuntimeState, Shared};
use crate::WorkerError;

/// What a worker announces and how it connects. Made with
/// [`new`](Self::new), then fields set: new fields may be added without
/// breaking anyone.
///
/// ```
/// use tasker_worker::WorkerOptions;
///
/// let mut options = WorkerOptions::new(Default::default(), vec!["echo".into()]);
/// options.capacity = Some(4);
/// options.language = "python".into();
/// // At most 2 steps of `echo` at once on this worker (enforced by the
/// // orchestrator, SPEC §6.2); the rest of the capacity serves the others.
/// options.handler_limits.insert("echo".into(), 2);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Endpoint, timings and limits (`endpoint`, `heartbeat_interval_ms`,
    /// `reconnect_*`, `shutdown_timeout_ms`, ...).
    pub config: TaskerConfig,
    /// Stable id; a fresh one (`<language>-<pid>-<random>`) when `None`.
    pub worker_id: Option<String>,
    /// Handler names served; at least one.
    pub handlers: Vec<String>,
    /// Unfinished steps held at most; `config.worker_capacity` when `None`.
    pub capacity: Option<u32>,
    /// Per-handler concurrency limits: handler name → most steps of that
    /// handler held at once (sent as the hello's `handler_limits`; the
    /// orchestrator never has more out here). Each name must be one of
    /// `handlers`, each limit at least 1; a limit at least the capacity
    /// limits nothing. Empty by default: no handler is limited.
    pub handler_limits: BTreeMap<String, u32>,
    /// Language announced in the hello (`rust`, `python`, ...).
    pub language: String,
    /// See [`crate::event_loop::keep_raw_steps`].
    pub(crate) raw_steps: bool,
    /// Handlers the I/O thread runs itself (see
    /// [`HandlerOptions::inline`](crate::HandlerOptions::inline)).
    pub(crate) inline: Option<Arc<InlineHandlers>>,
    /// See [`Worker::zmq_context`](crate::Worker::zmq_context).
    pub(crate) context: Option<SharedContext>,
}

/// A ZeroMQ context given to the worker (it has no `Debug` of its own).
#[derive(Clone)]
pub(crate) struct SharedContext(pub zmq::Context);

impl std::fmt::Debug for SharedContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedContext")
    }
}

impl WorkerOptions {
    /// Options for these handlers with the config's capacity.
    pub fn new(config: TaskerConfig, handlers: Vec<String>) -> Self {
        Self {
            config,
            worker_id: None,
            handlers,
            capacity: None,
            handler_limits: BTreeMap::new(),
            language: "rust".into(),
            raw_steps: false,
            inline: None,
            context: None,
        }
    }
}

/// The worker runtime: one connection to the orchestrator, driven by its own
/// I/O thread, and the queues between it and the host.
///
/// Every method is safe to call from any thread. The blocking ones
/// ([`next_steps`](Self::next_steps), [`join`](Self::join)) hold no lock
/// that another method needs, so a binding can release its interpreter lock
/// around them, and [`wake`](Self::wake) interrupts them.
pub struct WorkerRuntime {
    pub(crate) shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for WorkerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRuntime")
            .field("worker_id", &self.shared.worker_id)
            .field("state", &self.state())
            .finish()
    }
}

impl WorkerRuntime {
    /// Validates the options, creates the socket and starts connecting.
    pub fn start(options: WorkerOptions) -> Result<Self, WorkerError> {
        let (runtime, connection) = Self::prepare(options, false)?;
        let thread = std::thread::Builder::new()
            .name("tasker-worker-io".into())
            .spawn(move || connection.run())
            .map_err(|e| WorkerError::Setup(e.to_string()))?;
        *runtime.thread.lock().expect("thread lock") = Some(thread);
        Ok(runtime)
    }

    pub(crate) fn prepare(
        options: WorkerOptions,
        driven: bool,
    ) -> Result<(Self, Connection), WorkerError> {
        options
            .config
            .validate()
            .map_err(|e| WorkerError::InvalidOptions(e.to_string()))?;
        if options.handlers.is_empty() {
            return Err(WorkerError::InvalidOptions("no handlers registered".into()));
        }
        if let Some(h) = options.handlers.iter().find(|h| h.is_empty()) {
            return Err(WorkerError::InvalidOptions(format!(
                "empty handler name {h:?}"
            )));
        }
        // The orchestrator refuses a hello past these (SPEC §4.2): say so
        // here, before a worker connects only to be refused again and again.
        tasker_protocol::check_hello_names(
            options.worker_id.as_deref().unwrap_or_default(),
            &options.handlers,
            Some(options.language.as_str()),
        )
        .map_err(WorkerError::InvalidOptions)?;
        if options.worker_id.as_deref() == Some("") {
            return Err(WorkerError::InvalidOptions("worker_id is empty".into()));
        }
        let capacity = options.capacity.unwrap_or(options.config.worker_capacity);
        if capacity == 0 {
            return Err(WorkerError::InvalidOptions(
                "capacity must be at least 1".into(),
            ));
        }
        for (handler, limit) in &options.handler_limits {
            if !options.handlers.contains(handler) {
                return Err(WorkerError::InvalidOptions(format!(
                    "handler {handler:?}: concurrency limit given for a handler not registered"
                )));
            }
            if *limit == 0 {
                return Err(WorkerError::InvalidOptions(format!(
                    "handler {handler:?}: concurrency must be at least 1"
                )));
            }
        }
        let worker_id = options.worker_id.unwrap_or_else(|| {
            let uuid = uuid::Uuid::new_v4().simple().to_string();
            format!("{}-{}-{}", options.language, std::process::id(), &uuid[..8])
        });
        let shared = Arc::new(Shared {
            worker_id,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            handlers: options.handlers,
            capacity,
            handler_limits: options.handler_limits,
            language: options.language,
            config: options.config,
            inbox: Mutex::new(Inbox::default()),
            steps_ready: Condvar::new(),
            closed: Condvar::new(),
            outbox: Mutex::new(Vec::new()),
            doorbell: Doorbell::new().map_err(|e| WorkerError::Setup(e.to_string()))?,
            state: AtomicU8::new(RuntimeState::Connecting as u8),
            max_json_depth: AtomicU32::new(MAX_JSON_DEPTH),
            waker: OnceLock::new(),
            raw_steps: options.raw_steps,
            inline: options.inline,
            driven,
        });
        let context = options
            .context
            .map_or_else(zmq::Context::new, |shared| shared.0);
        let connection = Connection::new(Arc::clone(&shared), context)?;
        let runtime = Self {
            shared,
            thread: Mutex::new(None),
        };
        Ok((runtime, connection))
    }

    /// The id announced to the orchestrator.
    pub fn worker_id(&self) -> &str {
        &self.shared.worker_id
    }

    /// The declared capacity.
    pub fn capacity(&self) -> u32 {
        self.shared.capacity
    }

    /// The handlers announced.
    pub fn handlers(&self) -> &[String] {
        &self.shared.handlers
    }

    /// The per-handler concurrency limits announced.
    pub fn handler_limits(&self) -> &BTreeMap<String, u32> {
        &self.shared.handler_limits
    }

    /// Where the runtime is in its life.
    pub fn state(&self) -> RuntimeState {
        RuntimeState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// Waits for up to `max` steps.
    ///
    /// Returns as soon as at least one step is there; an empty vector when
    /// `timeout` passes or [`wake`](Self::wake) is called first; and
    /// [`WorkerError::Stopped`] once the runtime is stopping and holds no
    /// more undelivered steps. `None` waits without limit.
    ///
    /// A step this process cannot build although its message is valid
    /// (a JSON value nested deeper than `serde_json` builds values) is not
    /// returned: it is reported failed as [`error_types::INVALID_STEP`], for
    /// good, and the rest of its batch is served.
    pub fn next_steps(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<StepExecutionRequest>, WorkerError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let received = self.pull(max, left)?;
            if received.is_empty() {
                return Ok(Vec::new());
            }
            let mut steps = Vec::with_capacity(received.len());
            let mut invalid = Vec::new();
            for step in received {
                match step {
                    Received::Typed(step) => steps.push(step),
                    Received::Raw(raw) => match raw.decode() {
                        Ok(step) => steps.push(step),
                        Err(e) => invalid.push(invalid_step(&raw, &e, self.worker_id())),
                    },
                }
            }
            self.complete_many(invalid);
            if !steps.is_empty() {
                return Ok(steps);
            }
        }
    }

    pub(crate) fn pull(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Received>, WorkerError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let max = max.max(1);
        let mut inbox = self.shared.inbox.lock().expect("inbox lock");
        let wakes_at_entry = inbox.wakes;
        loop {
            if !inbox.steps.is_empty() {
                let n = max.min(inbox.steps.len());
                let steps: Vec<Received> = inbox.steps.drain(..n).collect();
                for step in &steps {
                    inbox.in_hand.insert(step.step_ref());
                }
                if !inbox.steps.is_empty() {
                    // More than this puller takes: pass them on.
                    self.shared.steps_ready.notify_one();
                }
                return Ok(steps);
            }
            if let Some(failure) = &inbox.failure {
                return Err(failure.clone());
            }
            if inbox.stopping || inbox.closed {
                return Err(WorkerError::Stopped);
            }
            if inbox.wakes != wakes_at_entry {
                return Ok(Vec::new());
            }
            inbox = match deadline {
                None => self.shared.steps_ready.wait(inbox).expect("inbox lock"),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Vec::new());
                    }
                    self.shared
                        .steps_ready
                        .wait_timeout(inbox, left)
                        .expect("inbox lock")
                        .0
                }
            };
        }
    }

    /// Makes every blocked [`next_steps`](Self::next_steps) return now
    /// (with no steps). Bindings call it from their interrupt handlers.
    pub fn wake(&self) {
        let mut inbox = self.shared.inbox.lock().expect("inbox lock");
        inbox.wakes += 1;
        self.shared.steps_ready.notify_all();
        self.shared.closed.notify_all();
    }

    /// Hands back the result of a pulled step; any thread.
    pub fn complete(&self, result: StepExecutionResult) {
        self.complete_many(vec![result]);
    }

    /// Hands back several results at once. They are checked and encoded
    /// here, on the caller's thread: an output nested deeper than the
    /// orchestrator accepts ([`max_json_depth`](Self::max_json_depth)) is
    /// not sent; its step is reported failed as
    /// [`error_types::SERIALIZATION_ERROR`], not retryable.
    pub fn complete_many(&self, results: Vec<StepExecutionResult>) {
        let max_depth = self.max_json_depth();
        self.hand_over(
            results
                .iter()
                .map(|result| encode_checked(result, max_depth))
                .collect(),
        );
    }

    /// Deepest nesting of arrays and objects a step's output may have, as
    /// the orchestrator's last welcome said (`max_json_depth`;
    /// [`MAX_JSON_DEPTH`] before any welcome). A host that converts
    /// outputs itself can stop there.
    pub fn max_json_depth(&self) -> u32 {
        self.shared.max_json_depth.load(Ordering::Acquire)
    }

    /// Queues checked results for the connection to send.
    pub(crate) fn hand_over(&self, results: Vec<EncodedResult>) {
        if results.is_empty() {
            return;
        }
        let steps: Vec<StepRef> = results.iter().map(EncodedResult::step_ref).collect();
        // Into the outbox before out of hand: a drain that checks both never
        // sees a result in neither (and leaves without it).
        self.shared
            .outbox
            .lock()
            .expect("outbox lock")
            .extend(results);
        {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            for step in &steps {
                inbox.in_hand.remove(step);
            }
        }
        if !self.shared.driven {
            self.shared.doorbell.ring();
        }
    }

    /// Why the runtime stopped by itself, if it did: the orchestrator
    /// refused the connection ([`WorkerError::Refused`]). Blocked and later
    /// [`next_steps`](Self::next_steps) calls return the same error.
    pub fn failure(&self) -> Option<WorkerError> {
        self.shared
            .inbox
            .lock()
            .expect("inbox lock")
            .failure
            .clone()
    }

    /// How long a stop waits for steps in hand (`shutdown_timeout_ms`).
    pub fn shutdown_timeout(&self) -> Duration {
        self.shared.config.shutdown_timeout()
    }

    /// Steps pulled and not completed yet.
    pub fn in_hand(&self) -> usize {
        self.shared.inbox.lock().expect("inbox lock").in_hand.len()
    }

    /// Begins a graceful stop: no new work is taken, steps received but not
    /// pulled are given back to the orchestrator, blocked pulls return
    /// [`WorkerError::Stopped`]; the connection stays up until the steps in
    /// hand are completed (or `shutdown_timeout_ms` passes), then says
    /// goodbye. Idempotent.
    pub fn stop(&self) {
        {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            if inbox.stopping {
                return;
            }
            inbox.stopping = true;
            let unstarted: Vec<StepRef> = inbox.steps.drain(..).map(|s| s.step_ref()).collect();
            inbox.returned.extend(unstarted);
            self.shared.steps_ready.notify_all();
        }
        if !self.shared.driven {
            self.shared.doorbell.ring();
        }
    }

    /// Waits up to `timeout` for the I/O thread to finish (after
    /// [`stop`](Self::stop)); true if it did.
    pub fn join(&self, timeout: Duration) -> bool {
        let inbox = self.shared.inbox.lock().expect("inbox lock");
        let wakes = inbox.wakes;
        // The I/O thread notifies when it closes; wake() also ends the wait,
        // so a binding can check its signals.
        let (inbox, _) = self
            .shared
            .closed
            .wait_timeout_while(inbox, timeout, |i| !i.closed && i.wakes == wakes)
            .expect("inbox lock");
        let closed = inbox.closed;
        drop(inbox);
        if closed {
            // Closing is the thread's last act; this join is brief.
            if let Some(handle) = self.thread.lock().expect("thread lock").take() {
                let _ = handle.join();
            }
        }
        closed
    }
}

impl Drop for WorkerRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The failure reported for a step whose message was valid but which this
/// process cannot build (see [`WorkerRuntime::next_steps`]).
pub(crate) fn invalid_step(
    step: &RawStep,
    error: &serde_json::Error,
    worker_id: &str,
) -> StepExecutionResult {
    tracing::error!(step_id = step.step_ref().step_id, %error, "cannot decode step");
    StepExecutionResult::failed(
        step.step_ref(),
        StepStatus::Failed,
        StepExecutionError::new(
            error_types::INVALID_STEP,
            format!("the worker cannot decode the step: {error}"),
            false,
        ),
        worker_id,
        0,
    )
}

/// Says a step's failure in the worker's own log, at `info`: a handler's
/// bug showed only in the orchestrator's log and through its API, where a
/// developer debugging the handler looks last. The error's first line
/// only, quoted (a handler's message may hold anything).
pub fn log_failure(result: &StepExecutionResult) {
    let Some(error) = &result.error else {
        return;
    };
    let first = error.message.lines().next().unwrap_or_default();
    tracing::info!(
        step_id = result.step_id,
        attempt = result.metadata.attempt,
        error_type = %tasker_protocol::codec::quoted(&error.error_type, 80),
        error = %tasker_protocol::codec::quoted(first, 200),
        retryable = error.retryable,
        "step failed"
    );
}

/// A result encoded for the wire, or, when its output is nested deeper
/// than `max_depth`, the failure reported in its place (see
/// [`WorkerRuntime::complete_many`]).
pub(crate) fn encode_checked(result: &StepExecutionResult, max_depth: u32) -> EncodedResult {
    // Every typed result passes here on its way out, a host's and an
    // inline handler's alike: the one place its failure is said.
    log_failure(result);
    if let Some(output) = &result.output {
        if let Err(problem) = check_output(output, max_depth) {
            tracing::warn!(step_id = result.step_id, %problem, "output cannot be sent; reporting the step failed");
            let failure = serialization_failure(
                result.step_ref(),
                &problem,
                &result.metadata.worker_id,
                result.metadata.execution_time_ms,
            );
            log_failure(&failure);
            return EncodedResult::new(&failure);
        }
    }
    EncodedResult::new(result)
}
