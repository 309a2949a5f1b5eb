//! The orchestrator's I/O thread: owns the `ROUTER` socket, the worker
//! registry and the table of steps in flight, and is the only place where a
//! step's fate is decided, so "exactly one final result" needs no locks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tasker_config::TaskerConfig;
use tasker_protocol::{
    codec, error_types, Goodbye, Heartbeat, OrchestratorMessage, ProtocolError, ProtocolErrorCode,
    StepBatchRequest, StepExecutionError, StepExecutionRequest, StepExecutionResult, StepId,
    StepRef, StepStatus, Welcome, WorkerHello, WorkerMessage, PROTOCOL_VERSION,
};
use tasker_transport::{earliest, poll_timeout, send_message, Doorbell, SendError};
use tokio::sync::{mpsc as tokio_mpsc, oneshot, watch, Semaphore};

use crate::executor::{ShutdownReport, WorkerInfo};
use crate::metrics::Metrics;
use crate::ExecutorError;

/// Results produced by the orchestrator itself carry this worker id.
const ORCHESTRATOR_ID: &str = "orchestrator";
/// How many ended steps are remembered to tell late results from duplicates.
const FINISHED_MEMORY: usize = 100_000;
/// Most inbound messages handled before timers and dispatch get a turn.
const RECV_BURST: usize = 4_096;

type RoutingId = Vec<u8>;

pub(crate) enum Command {
    Submit {
        batch: StepBatchRequest,
        results: tokio_mpsc::UnboundedSender<StepExecutionResult>,
        reply: oneshot::Sender<Result<(), ExecutorError>>,
    },
    Workers {
        reply: oneshot::Sender<Vec<WorkerInfo>>,
    },
    Shutdown {
        deadline: Instant,
        reply: Option<oneshot::Sender<ShutdownReport>>,
    },
}

struct BatchSink {
    batch_id: String,
    results: tokio_mpsc::UnboundedSender<StepExecutionResult>,
}

enum StepState {
    Queued,
    Dispatched { routing_id: RoutingId },
}

struct StepEntry {
    request: StepExecutionRequest,
    sink: Arc<BatchSink>,
    state: StepState,
    /// Bumped on every state change; a deadline of an older epoch is stale.
    epoch: u64,
}

impl StepEntry {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request.metadata.timeout_ms)
    }

    fn is_attempt(&self, step_ref: StepRef) -> bool {
        self.request.metadata.attempt == step_ref.attempt
    }
}

struct WorkerEntry {
    worker_id: String,
    handlers: Arc<[String]>,
    capacity: u32,
    /// Step attempts the worker holds unfinished, including ones the
    /// orchestrator has already ended (timed out): they still run there.
    occupied: HashSet<StepRef>,
    last_seen: Instant,
    draining: bool,
    language: Option<String>,
    pid: Option<u32>,
}

impl WorkerEntry {
    fn free_slots(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.occupied.len())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    ByWorker,
    ByOrchestrator,
}

/// Remembers recently ended step attempts, bounded.
#[derive(Default)]
struct Finished {
    ended: HashMap<StepRef, Ended>,
    order: VecDeque<StepRef>,
}

impl Finished {
    fn record(&mut self, step: StepRef, how: Ended) {
        if self.ended.insert(step, how).is_none() {
            self.order.push_back(step);
        }
        while self.order.len() > FINISHED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }
}

struct Shutdown {
    deadline: Instant,
    reply: Option<oneshot::Sender<ShutdownReport>>,
    finished_before: u64,
}

/// `StepBatchRequest` serialised from borrowed steps: the table keeps the
/// owned requests for redelivery, and cloning them per delivery would cost
/// more than the JSON itself. A test checks it matches the owned type.
#[derive(Serialize)]
#[serde(tag = "type", rename = "step_batch_request")]
pub(crate) struct StepBatchRequestRef<'a> {
    pub batch_id: &'a str,
    pub protocol_version: &'a str,
    pub steps: Vec<&'a StepExecutionRequest>,
}

pub(crate) struct Dispatcher {
    config: TaskerConfig,
    // Field order matters: the socket must close before the context.
    socket: zmq::Socket,
    _context: zmq::Context,
    doorbell: Arc<Doorbell>,
    commands: mpsc::Receiver<Command>,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    workers_count: watch::Sender<usize>,

    steps: HashMap<StepId, StepEntry>,
    queues: HashMap<String, VecDeque<StepRef>>,
    queued: usize,
    deadlines: BinaryHeap<Reverse<(Instant, StepId, u64)>>,
    next_epoch: u64,
    finished: Finished,

    workers: HashMap<RoutingId, WorkerEntry>,
    by_worker_id: HashMap<String, RoutingId>,
    next_heartbeat: Instant,
    delivery_seq: u64,
    dispatch_needed: bool,
    shutdown: Option<Shutdown>,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: TaskerConfig,
        context: zmq::Context,
        socket: zmq::Socket,
        doorbell: Arc<Doorbell>,
        commands: mpsc::Receiver<Command>,
        metrics: Arc<Metrics>,
        permits: Arc<Semaphore>,
        workers_count: watch::Sender<usize>,
    ) -> Self {
        let next_heartbeat = Instant::now() + config.heartbeat_interval();
        Self {
            config,
            socket,
            _context: context,
            doorbell,
            commands,
            metrics,
            permits,
            workers_count,
            steps: HashMap::new(),
            queues: HashMap::new(),
            queued: 0,
            deadlines: BinaryHeap::new(),
            next_epoch: 0,
            finished: Finished::default(),
            workers: HashMap::new(),
            by_worker_id: HashMap::new(),
            next_heartbeat,
            delivery_seq: 0,
            dispatch_needed: false,
            shutdown: None,
        }
    }

    pub(crate) fn run(mut self) {
        loop {
            let wake_at = earliest(
                Some(self.next_heartbeat),
                self.deadlines.peek().map(|Reverse((at, _, _))| *at),
            );
            let wake_at = earliest(wake_at, self.shutdown.as_ref().map(|s| s.deadline));
            let (socket_ready, bell_rang) = {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.doorbell.fd(), zmq::POLLIN),
                ];
                match zmq::poll(&mut items, poll_timeout(wake_at)) {
                    Ok(_) => (items[0].is_readable(), items[1].is_readable()),
                    Err(zmq::Error::EINTR) => (false, false),
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; orchestrator I/O thread stops");
                        break;
                    }
                }
            };
            if bell_rang {
                self.doorbell.drain();
            }
            // Commands are cheap to check and the doorbell may have been
            // drained by an earlier pass, so look every time.
            if self.handle_commands().is_break() {
                break;
            }
            if socket_ready {
                self.receive_burst();
            }
            let now = Instant::now();
            self.expire_steps(now);
            if now >= self.next_heartbeat {
                self.heartbeat_tick(now);
            }
            if self.dispatch_needed {
                self.dispatch();
            }
            if self.shutdown_complete(Instant::now()) {
                break;
            }
        }
        tracing::debug!("orchestrator I/O thread exits");
    }

    // ----- commands -------------------------------------------------------

    fn handle_commands(&mut self) -> std::ops::ControlFlow<()> {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Submit {
                    batch,
                    results,
                    reply,
                }) => {
                    let outcome = self.accept_batch(batch, results);
                    let _ = reply.send(outcome);
                }
                Ok(Command::Workers { reply }) => {
                    let _ = reply.send(self.worker_infos());
                }
                Ok(Command::Shutdown { deadline, reply }) => {
                    if self.shutdown.is_none() {
                        tracing::info!(in_flight = self.steps.len(), "orchestrator shutting down");
                        self.shutdown = Some(Shutdown {
                            deadline,
                            reply,
                            finished_before: self.finished_total(),
                        });
                    }
                }
                Err(mpsc::TryRecvError::Empty) => return std::ops::ControlFlow::Continue(()),
                Err(mpsc::TryRecvError::Disconnected) => {
                    // The handle is gone without a shutdown: stop now.
                    if self.shutdown.is_none() {
                        self.shutdown = Some(Shutdown {
                            deadline: Instant::now(),
                            reply: None,
                            finished_before: self.finished_total(),
                        });
                    }
                    return std::ops::ControlFlow::Continue(());
                }
            }
        }
    }

    fn accept_batch(
        &mut self,
        batch: StepBatchRequest,
        results: tokio_mpsc::UnboundedSender<StepExecutionResult>,
    ) -> Result<(), ExecutorError> {
        let n = batch.steps.len();
        let refuse = |this: &Self, e| {
            this.permits.add_permits(n);
            Err(e)
        };
        if self.shutdown.is_some() {
            return refuse(self, ExecutorError::ShutDown);
        }
        if let Some(step) = batch
            .steps
            .iter()
            .find(|s| self.steps.contains_key(&s.step_id))
        {
            return refuse(
                self,
                ExecutorError::DuplicateStep {
                    step_id: step.step_id,
                },
            );
        }
        let sink = Arc::new(BatchSink {
            batch_id: batch.batch_id,
            results,
        });
        let now = Instant::now();
        let default_timeout = self.config.default_step_timeout_ms;
        for mut request in batch.steps {
            if request.metadata.timeout_ms == 0 {
                request.metadata.timeout_ms = default_timeout;
            }
            let step_ref = request.step_ref();
            self.steps.insert(
                step_ref.step_id,
                StepEntry {
                    request,
                    sink: Arc::clone(&sink),
                    state: StepState::Queued,
                    epoch: 0,
                },
            );
            self.queued += 1;
            self.arm_deadline(step_ref.step_id, now);
            self.push_queue(step_ref, false);
        }
        Metrics::add(&self.metrics.submitted, n as u64);
        tracing::debug!(batch_id = %sink.batch_id, steps = n, "batch accepted");
        self.dispatch_needed = true;
        Ok(())
    }

    /// Starts a new deadline for the step's current state, `timeout_ms`
    /// from `from`; any earlier deadline of the step becomes stale.
    fn arm_deadline(&mut self, step_id: StepId, from: Instant) {
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        if let Some(entry) = self.steps.get_mut(&step_id) {
            entry.epoch = epoch;
            self.deadlines
                .push(Reverse((from + entry.timeout(), step_id, epoch)));
        }
    }

    /// Puts a queued step in its handler's queue (at the front for steps
    /// that waited already).
    fn push_queue(&mut self, step_ref: StepRef, front: bool) {
        let Some(entry) = self.steps.get(&step_ref.step_id) else {
            return;
        };
        let queue = match self.queues.get_mut(&entry.request.handler_class) {
            Some(queue) => queue,
            None => self
                .queues
                .entry(entry.request.handler_class.clone())
                .or_default(),
        };
        if front {
            queue.push_front(step_ref);
        } else {
            queue.push_back(step_ref);
        }
    }

    /// Whether this attempt of the step is out at this connection.
    fn held_by(&self, step_ref: StepRef, routing_id: &[u8]) -> bool {
        self.steps.get(&step_ref.step_id).is_some_and(|e| {
            e.is_attempt(step_ref)
                && matches!(&e.state, StepState::Dispatched { routing_id: r } if r.as_slice() == routing_id)
        })
    }

    fn finished_total(&self) -> u64 {
        let m = self.metrics.snapshot();
        m.completed + m.failed + m.timed_out + m.cancelled
    }

    fn worker_infos(&self) -> Vec<WorkerInfo> {
        let mut infos: Vec<WorkerInfo> = self
            .workers
            .values()
            .map(|w| WorkerInfo {
                worker_id: w.worker_id.clone(),
                handlers: w.handlers.to_vec(),
                capacity: w.capacity,
                in_flight: w.occupied.len(),
                draining: w.draining,
                language: w.language.clone(),
                pid: w.pid,
            })
            .collect();
        infos.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        infos
    }

    // ----- inbound --------------------------------------------------------

    fn receive_burst(&mut self) {
        for _ in 0..RECV_BURST {
            match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(mut frames) => {
                    if frames.is_empty() {
                        continue;
                    }
                    let routing_id = frames.remove(0);
                    self.handle_frames(routing_id, frames);
                }
                Err(zmq::Error::EAGAIN) => return,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    return;
                }
            }
        }
    }

    fn handle_frames(&mut self, routing_id: RoutingId, frames: Vec<Vec<u8>>) {
        let message: WorkerMessage = match codec::decode(&frames, self.config.max_message_bytes) {
            Ok(message) => message,
            Err(error) => {
                Metrics::add(&self.metrics.malformed_messages, 1);
                tracing::warn!(peer = %hex(&routing_id), %error, "malformed message refused");
                self.reply_error(&routing_id, error.code(), error.to_string());
                // A malformed message is still a sign of life.
                if let Some(worker) = self.workers.get_mut(&routing_id) {
                    worker.last_seen = Instant::now();
                }
                return;
            }
        };
        let known = match self.workers.get_mut(&routing_id) {
            Some(worker) => {
                worker.last_seen = Instant::now();
                true
            }
            None => false,
        };
        match message {
            WorkerMessage::Hello(hello) => self.on_hello(routing_id, hello),
            WorkerMessage::Heartbeat(_) => {
                if !known {
                    self.reply_unknown(&routing_id);
                }
            }
            WorkerMessage::StepBatchResponse(response) => {
                for result in response.results {
                    self.on_result(&routing_id, result);
                }
                if !known {
                    self.reply_unknown(&routing_id);
                }
            }
            WorkerMessage::Drain(drain) => {
                if known {
                    self.on_drain(&routing_id, drain.returned);
                }
            }
            WorkerMessage::Goodbye(goodbye) => {
                if known {
                    tracing::info!(peer = %hex(&routing_id), reason = %goodbye.reason, "worker said goodbye");
                    self.remove_worker(&routing_id, "worker left");
                }
            }
            WorkerMessage::ProtocolError(error) => {
                tracing::warn!(peer = %hex(&routing_id), code = ?error.code, message = %error.message, "worker refused a message");
            }
        }
    }

    fn reply_unknown(&mut self, routing_id: &[u8]) {
        self.reply_error(
            routing_id,
            ProtocolErrorCode::UnknownWorker,
            "no hello on this connection (or declared dead): send hello".into(),
        );
    }

    fn reply_error(&mut self, routing_id: &[u8], code: ProtocolErrorCode, message: String) {
        let reply = OrchestratorMessage::ProtocolError(ProtocolError { code, message });
        if let Err(e) = send_message(&self.socket, Some(routing_id), &reply) {
            tracing::debug!(peer = %hex(routing_id), error = %e, "protocol error reply not sent");
        }
    }

    fn on_hello(&mut self, routing_id: RoutingId, hello: WorkerHello) {
        let in_progress: HashSet<StepRef> = hello.in_progress.iter().copied().collect();
        // The same worker on an older connection: it reconnected. Steps it
        // still holds move to the new connection; the rest it no longer has.
        if let Some(old) = self.by_worker_id.get(&hello.worker_id).cloned() {
            if old != routing_id {
                self.migrate_steps(&old, &routing_id, &in_progress);
                self.remove_worker(&old, "worker reconnected");
            }
        }
        // Steps announced as in progress count against capacity until their
        // results arrive, whatever the orchestrator decided about them.
        let mut occupied = in_progress;
        if let Some(existing) = self.workers.get(&routing_id) {
            occupied.extend(existing.occupied.iter().copied());
        }
        tracing::info!(
            worker_id = %hello.worker_id,
            handlers = ?hello.handlers,
            capacity = hello.capacity,
            language = hello.language.as_deref().unwrap_or("?"),
            "worker registered"
        );
        self.by_worker_id
            .insert(hello.worker_id.clone(), routing_id.clone());
        self.workers.insert(
            routing_id.clone(),
            WorkerEntry {
                worker_id: hello.worker_id,
                handlers: hello.handlers.into(),
                capacity: hello.capacity,
                occupied,
                last_seen: Instant::now(),
                draining: false,
                language: hello.language,
                pid: hello.pid,
            },
        );
        let welcome = OrchestratorMessage::Welcome(Welcome {
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            liveness: self.config.liveness,
            max_message_bytes: self.config.max_message_bytes as u64,
        });
        if let Err(e) = send_message(&self.socket, Some(&routing_id), &welcome) {
            tracing::warn!(error = %e, "welcome not sent");
        }
        self.publish_worker_count();
        self.dispatch_needed = true;
    }

    fn migrate_steps(&mut self, old: &[u8], new: &[u8], held: &HashSet<StepRef>) {
        for step_ref in held {
            if self.held_by(*step_ref, old) {
                if let Some(entry) = self.steps.get_mut(&step_ref.step_id) {
                    entry.state = StepState::Dispatched {
                        routing_id: new.to_vec(),
                    };
                }
            }
        }
        if let Some(worker) = self.workers.get_mut(old) {
            worker.occupied.retain(|s| !held.contains(s));
        }
    }

    fn on_result(&mut self, from: &[u8], result: StepExecutionResult) {
        let step_ref = result.step_ref();
        let holder = match self.by_worker_id.get(&result.metadata.worker_id) {
            Some(id) if !self.workers.contains_key(from) => id.as_slice(),
            _ => from,
        };
        if let Some(worker) = self.workers.get_mut(holder) {
            if worker.occupied.remove(&step_ref) {
                self.dispatch_needed = true;
            }
        }
        let current = self
            .steps
            .get(&step_ref.step_id)
            .is_some_and(|e| e.is_attempt(step_ref));
        if current {
            tracing::debug!(step_id = step_ref.step_id, status = ?result.status, "step result");
            self.finish(step_ref.step_id, result, Ended::ByWorker);
        } else {
            match self.finished.ended.get(&step_ref) {
                Some(Ended::ByOrchestrator) => {
                    Metrics::add(&self.metrics.late_results_dropped, 1);
                    tracing::info!(
                        step_id = step_ref.step_id,
                        attempt = step_ref.attempt,
                        "late result dropped"
                    );
                }
                _ => {
                    Metrics::add(&self.metrics.duplicate_results_dropped, 1);
                    tracing::info!(
                        step_id = step_ref.step_id,
                        attempt = step_ref.attempt,
                        "duplicate result dropped"
                    );
                }
            }
        }
    }

    fn on_drain(&mut self, routing_id: &[u8], returned: Vec<StepRef>) {
        let Some(worker) = self.workers.get_mut(routing_id) else {
            return;
        };
        worker.draining = true;
        tracing::info!(worker_id = %worker.worker_id, returned = returned.len(), "worker draining");
        for step_ref in &returned {
            worker.occupied.remove(step_ref);
        }
        let now = Instant::now();
        for step_ref in returned {
            if !self.held_by(step_ref, routing_id) {
                continue;
            }
            // Given back unstarted: safe to deliver elsewhere, with a fresh
            // schedule-to-start deadline.
            if let Some(entry) = self.steps.get_mut(&step_ref.step_id) {
                entry.state = StepState::Queued;
            }
            self.queued += 1;
            self.arm_deadline(step_ref.step_id, now);
            self.push_queue(step_ref, true);
            Metrics::add(&self.metrics.redelivered, 1);
        }
        self.dispatch_needed = true;
    }

    // ----- ending steps ---------------------------------------------------

    fn finish(&mut self, step_id: StepId, result: StepExecutionResult, how: Ended) {
        let Some(entry) = self.steps.remove(&step_id) else {
            return;
        };
        if matches!(entry.state, StepState::Queued) {
            // Its queue slot is skipped lazily when popped.
            self.queued -= 1;
        }
        let counter = match result.status {
            StepStatus::Completed => &self.metrics.completed,
            StepStatus::Failed => &self.metrics.failed,
            StepStatus::TimedOut => &self.metrics.timed_out,
            StepStatus::Cancelled => &self.metrics.cancelled,
        };
        Metrics::add(counter, 1);
        self.finished.record(entry.request.step_ref(), how);
        self.permits.add_permits(1);
        // A dropped handle just means nobody is listening any more.
        let _ = entry.sink.results.send(result);
    }

    /// Ends a step with the orchestrator's own verdict: a timeout, a lost
    /// worker, a step too large to send, a shutdown.
    fn fail(&mut self, step_id: StepId, status: StepStatus, error: StepExecutionError) {
        let Some(entry) = self.steps.get(&step_id) else {
            return;
        };
        let elapsed = match entry.state {
            StepState::Queued => 0,
            StepState::Dispatched { .. } => entry.request.metadata.timeout_ms,
        };
        let result = StepExecutionResult::failed(
            entry.request.step_ref(),
            status,
            error,
            ORCHESTRATOR_ID,
            elapsed,
        );
        self.finish(step_id, result, Ended::ByOrchestrator);
    }

    fn expire_steps(&mut self, now: Instant) {
        while let Some(Reverse((at, step_id, epoch))) = self.deadlines.peek().copied() {
            if at > now {
                return;
            }
            self.deadlines.pop();
            let Some(entry) = self.steps.get(&step_id) else {
                continue;
            };
            if entry.epoch != epoch {
                continue;
            }
            let timeout_ms = entry.request.metadata.timeout_ms;
            match &entry.state {
                StepState::Queued => {
                    let handler = entry.request.handler_class.clone();
                    let served = self
                        .workers
                        .values()
                        .any(|w| !w.draining && w.handlers.contains(&handler));
                    if served {
                        self.fail(
                            step_id,
                            StepStatus::TimedOut,
                            StepExecutionError::new(
                                error_types::SCHEDULE_TIMEOUT,
                                format!(
                                    "no worker serving {handler:?} had room within {timeout_ms} ms"
                                ),
                                true,
                            ),
                        );
                    } else {
                        let message = format!(
                            "no connected worker serves handler {handler:?} (waited {timeout_ms} ms)"
                        );
                        self.fail(
                            step_id,
                            StepStatus::Failed,
                            StepExecutionError::new(
                                error_types::NO_WORKER_FOR_HANDLER,
                                message,
                                true,
                            ),
                        );
                    }
                }
                StepState::Dispatched { .. } => {
                    tracing::info!(step_id, timeout_ms, "step timed out");
                    // The slot stays occupied: the handler is still running.
                    self.fail(
                        step_id,
                        StepStatus::TimedOut,
                        StepExecutionError::new(
                            error_types::TIMED_OUT,
                            format!("no result within timeout_ms = {timeout_ms}"),
                            true,
                        ),
                    );
                }
            }
        }
    }

    // ----- liveness -------------------------------------------------------

    fn heartbeat_tick(&mut self, now: Instant) {
        let interval = self.config.heartbeat_interval();
        while self.next_heartbeat <= now {
            self.next_heartbeat += interval;
        }
        // Retries deliveries refused earlier by a full pipe.
        self.dispatch_needed = true;
        let expiry = self.config.peer_expiry();
        let dead: Vec<RoutingId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > expiry)
            .map(|(id, _)| id.clone())
            .collect();
        for routing_id in dead {
            Metrics::add(&self.metrics.workers_lost, 1);
            tracing::warn!(peer = %hex(&routing_id), "worker silent for {:?}: declared dead", expiry);
            self.remove_worker(&routing_id, "no heartbeat");
        }
        let heartbeat = OrchestratorMessage::Heartbeat(Heartbeat {});
        for routing_id in self.workers.keys() {
            // A vanished connection is left to the liveness rule: the worker
            // may be reconnecting and its hello will claim its steps.
            let _ = send_message(&self.socket, Some(routing_id), &heartbeat);
        }
    }

    /// Forgets a worker; every step it held that is still in flight ends
    /// failed with a retryable `WorkerLost` (it may have started).
    fn remove_worker(&mut self, routing_id: &[u8], why: &str) {
        let Some(worker) = self.workers.remove(routing_id) else {
            return;
        };
        if self.by_worker_id.get(&worker.worker_id).map(Vec::as_slice) == Some(routing_id) {
            self.by_worker_id.remove(&worker.worker_id);
        }
        for step_ref in &worker.occupied {
            if self.held_by(*step_ref, routing_id) {
                Metrics::add(&self.metrics.worker_lost, 1);
                self.fail(
                    step_ref.step_id,
                    StepStatus::Failed,
                    StepExecutionError::new(
                        error_types::WORKER_LOST,
                        format!(
                            "worker {} was lost ({why}) while holding the step",
                            worker.worker_id
                        ),
                        true,
                    ),
                );
            }
        }
        self.publish_worker_count();
        self.dispatch_needed = true;
    }

    fn publish_worker_count(&mut self) {
        let n = self.workers.len();
        self.metrics
            .workers_connected
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.workers_count.send_replace(n);
    }

    // ----- dispatch -------------------------------------------------------

    fn dispatch(&mut self) {
        self.dispatch_needed = false;
        if self.queued == 0 || self.workers.is_empty() {
            return;
        }
        // Least-loaded first: each worker is filled in turn, starting with
        // the emptiest.
        let mut candidates: Vec<(usize, RoutingId)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.draining && w.free_slots() > 0)
            .map(|(id, w)| (w.occupied.len(), id.clone()))
            .collect();
        candidates.sort();
        let batch_size = self.config.batch_size;
        for (_, routing_id) in candidates {
            loop {
                if self.queued == 0 {
                    return;
                }
                let Some(worker) = self.workers.get(&routing_id) else {
                    break;
                };
                let free = worker.free_slots();
                let take = free.min(batch_size);
                // Nagle for steps: a trickle of freed slots would turn one
                // batch into many one-step messages. Wait for half the
                // worker's capacity to free up unless it is idle.
                let threshold = batch_size
                    .min(self.queued)
                    .min((worker.capacity as usize).div_ceil(2))
                    .max(1);
                if take == 0 || (free < threshold && !worker.occupied.is_empty()) {
                    break;
                }
                let handlers = Arc::clone(&worker.handlers);
                let picked = self.pick_steps(&handlers, take);
                if picked.is_empty() {
                    break;
                }
                let full = picked.len() == take;
                if !self.deliver(&routing_id, picked) || !full {
                    break;
                }
            }
        }
    }

    /// Takes up to `take` queued steps for these handlers, round robin.
    fn pick_steps(&mut self, handlers: &[String], take: usize) -> Vec<StepRef> {
        let mut picked = Vec::with_capacity(take);
        let mut exhausted = 0;
        while picked.len() < take && exhausted < handlers.len() {
            exhausted = 0;
            for handler in handlers {
                if picked.len() == take {
                    break;
                }
                let Some(queue) = self.queues.get_mut(handler) else {
                    exhausted += 1;
                    continue;
                };
                // Skip entries of steps that ended while queued.
                let mut got = None;
                while let Some(step_ref) = queue.pop_front() {
                    let live = self.steps.get(&step_ref.step_id).is_some_and(|e| {
                        e.is_attempt(step_ref) && matches!(e.state, StepState::Queued)
                    });
                    if live {
                        got = Some(step_ref);
                        break;
                    }
                }
                if queue.is_empty() {
                    self.queues.remove(handler);
                }
                match got {
                    Some(step_ref) => picked.push(step_ref),
                    None => exhausted += 1,
                }
            }
        }
        picked
    }

    /// Sends the picked steps to one worker; false if that worker cannot
    /// take more now (the steps are queued again, at the front).
    ///
    /// A delivery whose body would exceed `max_message_bytes` (which every
    /// worker accepts, SPEC §10) goes out in halves; a step too large to go
    /// out at all fails for good rather than waiting for its timeout.
    fn deliver(&mut self, routing_id: &RoutingId, mut picked: Vec<StepRef>) -> bool {
        self.delivery_seq += 1;
        let first = &self.steps[&picked[0].step_id];
        let batch_id = format!("{}:{}", first.sink.batch_id, self.delivery_seq);
        let encoded = {
            let message = StepBatchRequestRef {
                batch_id: &batch_id,
                protocol_version: PROTOCOL_VERSION,
                steps: picked
                    .iter()
                    .map(|s| &self.steps[&s.step_id].request)
                    .collect(),
            };
            codec::encode(&message)
        };
        let sent = match encoded {
            Ok([_, ref body]) if body.len() > self.config.max_message_bytes => {
                let size = body.len();
                if picked.len() > 1 {
                    let second = picked.split_off(picked.len() / 2);
                    if !self.deliver(routing_id, picked) {
                        for step_ref in second.iter().rev() {
                            self.push_queue(*step_ref, true);
                        }
                        return false;
                    }
                    return self.deliver(routing_id, second);
                }
                let step_id = picked[0].step_id;
                tracing::warn!(step_id, size, "step too large to send; failing it");
                let message = format!(
                    "the step is {size} bytes of JSON; messages may hold at most {} (max_message_bytes)",
                    self.config.max_message_bytes
                );
                // Not retryable: no attempt of it can get through.
                let error = StepExecutionError::new(error_types::STEP_TOO_LARGE, message, false);
                self.fail(step_id, StepStatus::Failed, error);
                return true;
            }
            Ok([header, body]) => self
                .socket
                .send_multipart([routing_id.to_vec(), header, body], zmq::DONTWAIT)
                .map_err(SendError::Zmq),
            Err(e) => Err(SendError::Encode(e.to_string())),
        };
        match sent {
            Ok(()) => {
                let now = Instant::now();
                let n = picked.len();
                for step_ref in &picked {
                    if let Some(entry) = self.steps.get_mut(&step_ref.step_id) {
                        entry.state = StepState::Dispatched {
                            routing_id: routing_id.clone(),
                        };
                    }
                    self.arm_deadline(step_ref.step_id, now);
                }
                self.queued -= n;
                if let Some(worker) = self.workers.get_mut(routing_id) {
                    worker.occupied.extend(picked.iter().copied());
                    tracing::debug!(worker_id = %worker.worker_id, %batch_id, steps = n, "delivered");
                }
                Metrics::add(&self.metrics.dispatched, n as u64);
                true
            }
            Err(error) => {
                for step_ref in picked.iter().rev() {
                    self.push_queue(*step_ref, true);
                }
                match error {
                    SendError::Zmq(zmq::Error::EHOSTUNREACH) => {
                        // Never left. Stop using this connection; the worker's
                        // hello on a new one, or the liveness rule, settles
                        // the steps it already holds.
                        if let Some(worker) = self.workers.get_mut(routing_id) {
                            worker.draining = true;
                        }
                    }
                    SendError::Zmq(zmq::Error::EAGAIN) => {
                        tracing::debug!(peer = %hex(routing_id), "worker pipe full; will retry");
                    }
                    other => {
                        tracing::error!(error = %other, %batch_id, "cannot send step batch");
                    }
                }
                false
            }
        }
    }

    // ----- shutdown -------------------------------------------------------

    fn shutdown_complete(&mut self, now: Instant) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        if !self.steps.is_empty() && now < shutdown.deadline {
            return false;
        }
        let mut abandoned: Vec<StepRef> =
            self.steps.values().map(|e| e.request.step_ref()).collect();
        abandoned.sort();
        for step_ref in &abandoned {
            self.fail(
                step_ref.step_id,
                StepStatus::Cancelled,
                StepExecutionError::new(
                    error_types::ABANDONED,
                    "orchestrator shut down before the step finished",
                    true,
                ),
            );
        }
        let goodbye = OrchestratorMessage::Goodbye(Goodbye {
            reason: "orchestrator shutting down".into(),
        });
        let peers: Vec<RoutingId> = self.workers.keys().cloned().collect();
        for routing_id in &peers {
            let _ = send_message(&self.socket, Some(routing_id), &goodbye);
        }
        let shutdown = self.shutdown.take().expect("checked above");
        let report = ShutdownReport {
            finished_during_shutdown: self.finished_total()
                - shutdown.finished_before
                - abandoned.len() as u64,
            abandoned,
            workers_at_close: peers.len(),
        };
        tracing::info!(abandoned = report.abandoned.len(), "orchestrator stopped");
        self.permits.close();
        if let Some(reply) = shutdown.reply {
            let _ = reply.send(report);
        }
        true
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_batch_serialises_like_the_owned_message() {
        let steps = vec![
            StepExecutionRequest::new(1, 7, "a", "echo", 100),
            StepExecutionRequest::new(2, 7, "b", "echo", 100),
        ];
        let owned =
            OrchestratorMessage::StepBatchRequest(StepBatchRequest::new("b:1", steps.clone()));
        let borrowed = StepBatchRequestRef {
            batch_id: "b:1",
            protocol_version: PROTOCOL_VERSION,
            steps: steps.iter().collect(),
        };
        assert_eq!(
            serde_json::to_value(&owned).unwrap(),
            serde_json::to_value(&borrowed).unwrap()
        );
    }
}
