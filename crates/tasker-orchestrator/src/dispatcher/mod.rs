//! The orchestrator's I/O thread. It owns the `ROUTER` socket and moves
//! bytes; what they mean is decided by three parts it calls, each testable
//! alone:
//!
//! * [`steps`]: the table of steps in flight, their queues and deadlines;
//! * [`registry`]: the connections that said hello, bound to their worker
//!   ids, with the slots each holds;
//! * [`schedule`]: a pure function from free credit and queue lengths to
//!   deliveries.
//!
//! Being the only thread that touches that state is what makes "exactly one
//! final result per step attempt" need no locks.

mod limiter;
mod registry;
mod schedule;
mod steps;

use std::collections::HashSet;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tasker_config::TaskerConfig;
use tasker_protocol::codec::{self, FromWorker, RefusedResult, ResultBatch};
use tasker_protocol::{
    error_types, Goodbye, Heartbeat, HeldStep, OrchestratorMessage, ProtocolError,
    ProtocolErrorCode, StepBatchRequest, StepExecutionError, StepExecutionRequest,
    StepExecutionResult, StepId, StepRef, StepStatus, Welcome, WorkerHello, WorkerMessage,
    MAX_JSON_DEPTH, PROTOCOL_VERSION,
};
use tasker_transport::{earliest, poll_timeout, send_message, Doorbell, SendError};
use tokio::sync::{mpsc as tokio_mpsc, oneshot, watch, Semaphore};

use crate::metrics::Metrics;
use crate::report::{ShutdownReport, WorkerInfo};
use crate::ExecutorError;
use limiter::Limiter;
use registry::{ConnId, Registry, RoutingId};
use steps::{BatchSink, Ended, StepState, StepTable};

/// Results produced by the orchestrator itself carry this worker id.
const ORCHESTRATOR_ID: &str = "orchestrator";
/// Most inbound messages handled before timers and dispatch get a turn.
const RECV_BURST: usize = 4_096;
/// After a stall, how long to keep reading while more input arrives before
/// judging anyone: ZeroMQ's own I/O thread was stopped too and needs a
/// moment to move what the kernel buffered into the socket's queues.
const CATCH_UP_QUIET: Duration = Duration::from_millis(20);

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
    /// Makes the I/O loop fail as it does when polling its socket fails, so
    /// that path can be tested.
    InjectFault,
}

/// What the I/O thread shares with the executor handle.
pub(crate) struct Channels {
    pub doorbell: Arc<Doorbell>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: Arc<Metrics>,
    pub permits: Arc<Semaphore>,
    pub workers_count: watch::Sender<usize>,
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
    /// New each time an orchestrator starts; sent in every welcome and
    /// echoed in results, so a result is never taken for a step of another
    /// orchestrator that reused its step id.
    orchestrator_id: String,
    // Field order matters: the socket must close before the context.
    socket: zmq::Socket,
    _context: zmq::Context,
    channels: Channels,

    steps: StepTable,
    registry: Registry,
    warnings: Limiter,
    next_heartbeat: Instant,
    last_turn: Instant,
    delivery_seq: u64,
    dispatch_needed: bool,
    shutdown: Option<Shutdown>,
}

impl Dispatcher {
    pub(crate) fn new(
        config: TaskerConfig,
        context: zmq::Context,
        socket: zmq::Socket,
        channels: Channels,
    ) -> Self {
        let now = Instant::now();
        Self {
            orchestrator_id: uuid::Uuid::new_v4().simple().to_string(),
            next_heartbeat: now + config.heartbeat_interval(),
            registry: Registry::new(config.max_workers),
            config,
            socket,
            _context: context,
            channels,
            steps: StepTable::default(),
            warnings: Limiter::default(),
            last_turn: now,
            delivery_seq: 0,
            dispatch_needed: false,
            shutdown: None,
        }
    }

    pub(crate) fn run(mut self) {
        let stopped = loop {
            let wake_at = earliest(Some(self.next_heartbeat), self.steps.next_deadline());
            let wake_at = earliest(wake_at, self.shutdown.as_ref().map(|s| s.deadline));
            let (socket_ready, bell_rang) = {
                let mut items = [
                    self.socket.as_poll_item(zmq::POLLIN),
                    zmq::PollItem::from_fd(self.channels.doorbell.fd(), zmq::POLLIN),
                ];
                match zmq::poll(&mut items, poll_timeout(wake_at)) {
                    Ok(_) => (items[0].is_readable(), items[1].is_readable()),
                    Err(zmq::Error::EINTR) => (false, false),
                    Err(e) => break Some(format!("polling the socket failed: {e}")),
                }
            };
            if bell_rang {
                self.channels.doorbell.drain();
            }
            // Commands are cheap to check and the doorbell may have been
            // drained by an earlier pass, so look every time.
            match self.handle_commands() {
                Ok(()) => {}
                Err(fault) => break Some(fault),
            }
            let stalled = self.stalled(Instant::now(), wake_at);
            if stalled {
                self.catch_up();
            } else if socket_ready {
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
            self.warnings.flush();
            self.last_turn = Instant::now();
            if self.shutdown_complete(self.last_turn) {
                break None;
            }
        };
        if let Some(fault) = stopped {
            self.stop_on_fault(&fault);
        }
        tracing::debug!("orchestrator I/O thread exits");
    }

    /// Whether this turn comes much later than the loop asked to wake: the
    /// process was stopped (SIGSTOP, a debugger) or starved. Then the
    /// workers' silence meanwhile was ours, not theirs.
    fn stalled(&mut self, now: Instant, wake_at: Option<Instant>) -> bool {
        let planned = wake_at.unwrap_or(now).max(self.last_turn);
        let late = now.saturating_duration_since(planned);
        if late <= self.config.heartbeat_interval() {
            return false;
        }
        tracing::warn!(
            stalled_ms = late.as_millis() as u64,
            "orchestrator was not running; reading queued input before judging workers"
        );
        self.registry.forgive(late);
        true
    }

    /// Reads everything queued, and what keeps arriving for a short quiet
    /// period, so results and heartbeats sent during a stall are counted
    /// before any worker is judged silent or any step late. Bounded by one
    /// heartbeat interval.
    fn catch_up(&mut self) {
        let until = Instant::now() + self.config.heartbeat_interval();
        loop {
            while self.receive_burst() {}
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let wait = left.min(CATCH_UP_QUIET);
            match self.socket.poll(zmq::POLLIN, wait.as_millis() as i64) {
                Ok(n) if n > 0 => continue,
                _ => return,
            }
        }
    }

    // ----- commands -------------------------------------------------------

    /// Err: a fault was injected (tests of the fatal path).
    fn handle_commands(&mut self) -> Result<(), String> {
        loop {
            match self.channels.commands.try_recv() {
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
                Ok(Command::Shutdown { deadline, reply }) => self.begin_shutdown(deadline, reply),
                Ok(Command::InjectFault) => return Err("fault injected".into()),
                Err(mpsc::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::TryRecvError::Disconnected) => {
                    // The handle is gone without a shutdown: stop now.
                    self.begin_shutdown(Instant::now(), None);
                    return Ok(());
                }
            }
        }
    }

    fn begin_shutdown(
        &mut self,
        deadline: Instant,
        reply: Option<oneshot::Sender<ShutdownReport>>,
    ) {
        if self.shutdown.is_none() {
            tracing::info!(in_flight = self.steps.len(), "orchestrator shutting down");
            self.shutdown = Some(Shutdown {
                deadline,
                reply,
                finished_before: self.finished_total(),
            });
        }
    }

    fn accept_batch(
        &mut self,
        batch: StepBatchRequest,
        results: tokio_mpsc::UnboundedSender<StepExecutionResult>,
    ) -> Result<(), ExecutorError> {
        let n = batch.steps.len();
        let refuse = |this: &Self, e| {
            this.channels.permits.add_permits(n);
            Err(e)
        };
        if self.shutdown.is_some() {
            return refuse(self, ExecutorError::ShutDown);
        }
        if let Some(step) = batch.steps.iter().find(|s| self.steps.contains(s.step_id)) {
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
            self.steps.insert(request, Arc::clone(&sink), now);
        }
        Metrics::add(&self.channels.metrics.submitted, n as u64);
        tracing::debug!(batch_id = %sink.batch_id, steps = n, "batch accepted");
        self.dispatch_needed = true;
        Ok(())
    }

    fn finished_total(&self) -> u64 {
        let m = self.channels.metrics.snapshot();
        m.completed + m.failed + m.timed_out + m.cancelled
    }

    fn worker_infos(&self) -> Vec<WorkerInfo> {
        let mut infos: Vec<WorkerInfo> = self
            .registry
            .iter()
            .filter(|(_, c)| !c.retired)
            .map(|(_, c)| WorkerInfo {
                worker_id: c.worker_id.to_string(),
                handlers: c.handlers.to_vec(),
                capacity: c.capacity,
                in_flight: c.in_flight(),
                draining: c.draining,
                language: c.language.clone(),
                pid: c.pid,
            })
            .collect();
        infos.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        infos
    }

    // ----- inbound --------------------------------------------------------

    /// Handles up to [`RECV_BURST`] messages; true if it stopped at the
    /// burst limit with more possibly waiting.
    fn receive_burst(&mut self) -> bool {
        for _ in 0..RECV_BURST {
            match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(mut frames) => {
                    if frames.is_empty() {
                        continue;
                    }
                    let routing_id = frames.remove(0);
                    self.handle_frames(routing_id, frames);
                }
                Err(zmq::Error::EAGAIN) => return false,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    return false;
                }
            }
        }
        true
    }

    fn handle_frames(&mut self, routing_id: RoutingId, frames: Vec<Vec<u8>>) {
        let conn = self.registry.id_of(&routing_id);
        // Any message is a sign of life, a malformed one included.
        if let Some(c) = conn.and_then(|id| self.registry.get_mut(id)) {
            c.last_seen = Instant::now();
        }
        let message = match codec::decode_from_worker(&frames, self.config.max_message_bytes) {
            Ok(message) => message,
            Err(error) => {
                Metrics::add(&self.channels.metrics.malformed_messages, 1);
                if self.warnings.allow(&routing_id) {
                    tracing::warn!(peer = %hex(&routing_id), %error, "malformed message refused");
                }
                self.reply_error(&routing_id, error.code(), error.to_string());
                return;
            }
        };
        match message {
            FromWorker::Results(batch) => match conn {
                Some(conn) => self.on_results(conn, &routing_id, batch),
                None => {
                    // Never accepted from a connection without a hello:
                    // anyone can connect.
                    for result in &batch.results {
                        self.count_unwanted(None, result.step_ref());
                    }
                    self.reply_unknown(&routing_id);
                }
            },
            FromWorker::Message(WorkerMessage::Hello(hello)) => {
                self.on_hello(routing_id, conn, hello)
            }
            FromWorker::Message(WorkerMessage::Heartbeat(_)) => {
                if conn.is_none() {
                    self.reply_unknown(&routing_id);
                }
            }
            FromWorker::Message(WorkerMessage::Drain(drain)) => {
                if let Some(conn) = conn {
                    self.on_drain(conn, drain.returned);
                }
            }
            FromWorker::Message(WorkerMessage::Goodbye(goodbye)) => {
                if let Some(conn) = conn {
                    tracing::info!(
                        peer = %hex(&routing_id),
                        reason = %codec::truncate(&goodbye.reason, 200),
                        "worker said goodbye"
                    );
                    self.on_goodbye(conn, goodbye.unanswered);
                }
            }
            FromWorker::Message(WorkerMessage::ProtocolError(error)) => {
                if self.warnings.allow(&routing_id) {
                    tracing::warn!(
                        peer = %hex(&routing_id),
                        code = ?error.code,
                        message = %codec::truncate(&error.message, 200),
                        "worker refused a message"
                    );
                }
            }
            FromWorker::Message(WorkerMessage::StepBatchResponse(_)) => {
                unreachable!("decode_from_worker gives results as FromWorker::Results")
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

    /// Replies go to the sender only; one it cannot take any more (gone,
    /// or not reading) is not worth a warning per message.
    fn reply_error(&mut self, routing_id: &[u8], code: ProtocolErrorCode, message: String) {
        let reply = OrchestratorMessage::ProtocolError(ProtocolError { code, message });
        if let Err(e) = send_message(&self.socket, Some(routing_id), &reply) {
            tracing::debug!(peer = %hex(routing_id), error = %e, "protocol error reply not sent");
        }
    }

    fn on_hello(&mut self, routing_id: RoutingId, conn: Option<ConnId>, hello: WorkerHello) {
        let (mine, foreign) = self.split_held(hello.in_progress);
        let registration = registry::Hello {
            worker_id: hello.worker_id,
            handlers: hello.handlers,
            capacity: hello.capacity,
            mine,
            foreign,
            language: hello.language,
            pid: hello.pid,
        };
        let conn = match conn {
            Some(conn) => {
                let current = self.registry.get(conn).expect("id from the registry");
                if *current.worker_id != *registration.worker_id {
                    let message = format!(
                        "invalid hello message: this connection is registered as worker {:?}; a connection keeps its worker_id",
                        codec::truncate(&current.worker_id, 64)
                    );
                    return self.refuse_hello(
                        &routing_id,
                        ProtocolErrorCode::InvalidMessage,
                        message,
                    );
                }
                if current.retired {
                    let message =
                        "worker_id in use: a newer connection speaks for this worker".into();
                    return self.refuse_hello(
                        &routing_id,
                        ProtocolErrorCode::WorkerIdInUse,
                        message,
                    );
                }
                self.registry.reregister(conn, registration);
                // Not logged at info: a peer repeating hellos must not
                // write a line per message.
                tracing::debug!(peer = %hex(&routing_id), "worker registered again");
                self.send_welcome(conn, &routing_id);
                return;
            }
            None => {
                let holder = self.registry.holder(&registration.worker_id);
                if let Some(holder) = holder {
                    if self.still_alive(holder) {
                        let message = format!(
                            "worker_id {:?} is in use by a live connection",
                            codec::truncate(&registration.worker_id, 64)
                        );
                        return self.refuse_hello(
                            &routing_id,
                            ProtocolErrorCode::WorkerIdInUse,
                            message,
                        );
                    }
                } else if self.registry.is_full() {
                    // A reconnecting worker replaces its entry, so only a
                    // new worker can be refused for room.
                    let message = format!(
                        "the orchestrator holds its most workers ({}); try again later",
                        self.config.max_workers
                    );
                    return self.refuse_hello(
                        &routing_id,
                        ProtocolErrorCode::RegistryFull,
                        message,
                    );
                }
                let claimed = holder.map(|_| registration.mine.clone());
                let conn = self
                    .registry
                    .register(routing_id.clone(), registration, Instant::now());
                if let (Some(old), Some(claimed)) = (holder, claimed) {
                    self.take_over(old, conn, &claimed);
                }
                conn
            }
        };
        let c = self.registry.get(conn).expect("just registered");
        tracing::info!(
            worker_id = %codec::truncate(&c.worker_id, 64),
            handlers = c.handlers.len(),
            capacity = c.capacity,
            language = c.language.as_deref().map(|l| codec::truncate(l, 32)).unwrap_or_default(),
            "worker registered"
        );
        self.send_welcome(conn, &routing_id);
    }

    fn send_welcome(&mut self, conn: ConnId, routing_id: &[u8]) {
        self.publish_worker_count();
        self.dispatch_needed = true;
        if self.registry.get(conn).is_some_and(|c| c.gone) {
            return;
        }
        let welcome = OrchestratorMessage::Welcome(Welcome {
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            liveness: self.config.liveness,
            max_message_bytes: self.config.max_message_bytes as u64,
            orchestrator_id: self.orchestrator_id.clone(),
            max_json_depth: MAX_JSON_DEPTH,
        });
        if let Err(e) = send_message(&self.socket, Some(routing_id), &welcome) {
            self.unreachable(conn, &e);
        }
    }

    fn refuse_hello(&mut self, routing_id: &[u8], code: ProtocolErrorCode, message: String) {
        Metrics::add(&self.channels.metrics.hellos_refused, 1);
        if self.warnings.allow(routing_id) {
            tracing::warn!(peer = %hex(routing_id), ?code, %message, "hello refused");
        }
        self.reply_error(routing_id, code, message);
    }

    /// A hello's `in_progress`, split into this orchestrator's steps and
    /// other orchestrators'.
    fn split_held(&self, held: Vec<HeldStep>) -> (HashSet<StepRef>, HashSet<HeldStep>) {
        let (mine, foreign): (Vec<HeldStep>, Vec<HeldStep>) = held
            .into_iter()
            .partition(|h| h.orchestrator_id == self.orchestrator_id);
        (
            mine.iter().map(HeldStep::step_ref).collect(),
            foreign.into_iter().collect(),
        )
    }

    /// Whether a worker's registered connection still works: heard within
    /// expiry, and ZeroMQ still has a pipe to it (a heartbeat goes out).
    fn still_alive(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.registry.get(conn) else {
            return false;
        };
        if c.gone
            || Instant::now().saturating_duration_since(c.last_seen) > self.config.peer_expiry()
        {
            return false;
        }
        let heartbeat = OrchestratorMessage::Heartbeat(Heartbeat {});
        match send_message(&self.socket, Some(&c.routing_id), &heartbeat) {
            Ok(()) => true,
            Err(SendError::Zmq(zmq::Error::EAGAIN)) => true,
            Err(e) => {
                self.unreachable(conn, &e);
                false
            }
        }
    }

    /// The worker of `old` said hello on `new`: the steps it lists move
    /// with it; `old` is retired and keeps the rest until their results
    /// come in on it or its liveness runs out. Results the worker sent on
    /// `old` just before it reconnected may still be queued behind this
    /// hello; this is what keeps them from being lost.
    fn take_over(&mut self, old: ConnId, new: ConnId, claimed: &HashSet<StepRef>) {
        let Some(c) = self.registry.get_mut(old) else {
            return;
        };
        let mut moved = 0;
        for step in claimed {
            // Claimed slots are the new connection's now, held or not.
            c.occupied.remove(step);
            if self.steps.move_to(*step, old, new) {
                moved += 1;
            }
        }
        tracing::info!(
            worker_id = %codec::truncate(&c.worker_id, 64),
            moved,
            left = c.occupied.len(),
            "worker reconnected; its old connection is retired"
        );
        self.registry.retire(old);
    }

    fn on_results(&mut self, conn: ConnId, routing_id: &[u8], batch: ResultBatch) {
        let metrics = Arc::clone(&self.channels.metrics);
        if batch.orchestrator_id != self.orchestrator_id {
            // Steps of an earlier orchestrator: nobody here wants their
            // results, but the slots they held are free now.
            let n = (batch.results.len() + batch.refused.len()) as u64;
            Metrics::add(&metrics.foreign_results_dropped, n);
            if let Some(c) = self.registry.get_mut(conn) {
                let steps = batch
                    .results
                    .iter()
                    .map(StepExecutionResult::step_ref)
                    .chain(batch.refused.iter().filter_map(|r| r.step));
                for step in steps {
                    let held = HeldStep {
                        step_id: step.step_id,
                        attempt: step.attempt,
                        orchestrator_id: batch.orchestrator_id.clone(),
                    };
                    if c.foreign.remove(&held) {
                        self.dispatch_needed = true;
                    }
                }
            }
            self.registry.drop_if_spent(conn);
            return;
        }
        let refusal = batch.refusal();
        for result in batch.results {
            let step = result.step_ref();
            self.free_slot(conn, step);
            if self.steps.held_by(step, conn) {
                tracing::debug!(step_id = step.step_id, status = ?result.status, "step result");
                self.finish(step.step_id, result, Ended::ByWorker);
            } else {
                self.count_unwanted(Some(conn), step);
            }
        }
        if let Some(refusal) = refusal {
            self.on_refused_results(conn, routing_id, &batch.refused, refusal);
        }
        self.registry.drop_if_spent(conn);
    }

    /// A result that took no effect: say why in the counters.
    fn count_unwanted(&mut self, conn: Option<ConnId>, step: StepRef) {
        let metrics = &self.channels.metrics;
        let in_flight = self
            .steps
            .get(step.step_id)
            .is_some_and(|e| e.request.metadata.attempt == step.attempt);
        if in_flight {
            // In flight, but not out at this connection under this
            // attempt: another connection holds it, or it waits in the
            // queue, or this connection never said hello. Not this
            // connection's to answer.
            Metrics::add(&metrics.unheld_results_dropped, 1);
            if self.warnings.allow_conn(conn.unwrap_or(0)) {
                tracing::warn!(
                    step_id = step.step_id,
                    attempt = step.attempt,
                    "result for a step this connection does not hold dropped"
                );
            }
            return;
        }
        match self.steps.ended(step) {
            Some(Ended::ByOrchestrator) => {
                Metrics::add(&metrics.late_results_dropped, 1);
                tracing::info!(
                    step_id = step.step_id,
                    attempt = step.attempt,
                    "late result dropped"
                );
            }
            _ => {
                Metrics::add(&metrics.duplicate_results_dropped, 1);
                tracing::info!(
                    step_id = step.step_id,
                    attempt = step.attempt,
                    "duplicate result dropped"
                );
            }
        }
    }

    /// Results refused one by one: each step this connection holds ends
    /// `InvalidResult` (no attempt of the same handler is likely to do
    /// better), and the worker is told which.
    fn on_refused_results(
        &mut self,
        conn: ConnId,
        routing_id: &[u8],
        refused: &[RefusedResult],
        refusal: ProtocolError,
    ) {
        Metrics::add(&self.channels.metrics.invalid_results, refused.len() as u64);
        for bad in refused {
            let Some(step) = bad.step else { continue };
            self.free_slot(conn, step);
            if self.steps.held_by(step, conn) {
                let error = StepExecutionError::new(
                    error_types::INVALID_RESULT,
                    format!("the worker's result was refused: {}", bad.reason),
                    false,
                );
                self.fail(step.step_id, StepStatus::Failed, error);
            }
        }
        if self.warnings.allow(routing_id) {
            tracing::warn!(peer = %hex(routing_id), message = %refusal.message, "results refused");
        }
        self.reply_error(routing_id, refusal.code, refusal.message);
    }

    fn free_slot(&mut self, conn: ConnId, step: StepRef) {
        if let Some(c) = self.registry.get_mut(conn) {
            if c.occupied.remove(&step) {
                self.dispatch_needed = true;
            }
        }
    }

    fn on_drain(&mut self, conn: ConnId, returned: Vec<HeldStep>) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        c.draining = true;
        tracing::info!(
            worker_id = %codec::truncate(&c.worker_id, 64),
            returned = returned.len(),
            "worker draining"
        );
        let mut given_back = Vec::new();
        for held in returned {
            if held.orchestrator_id != self.orchestrator_id {
                c.foreign.remove(&held);
                continue;
            }
            let step = held.step_ref();
            c.occupied.remove(&step);
            // Given back unstarted: safe to deliver elsewhere, with a fresh
            // schedule-to-start deadline.
            if self.steps.held_by(step, conn) {
                given_back.push(step);
            }
        }
        Metrics::add(&self.channels.metrics.redelivered, given_back.len() as u64);
        self.steps.requeue_all(given_back, Instant::now());
        self.registry.drop_if_spent(conn);
        self.publish_worker_count();
        self.dispatch_needed = true;
    }

    /// A worker leaves. It lists what it received and leaves unanswered:
    /// those may be running and end `WorkerLost`. Any other step this
    /// connection holds was still on its way when the worker said goodbye
    /// (a drain races the deliveries already sent) and never reached a
    /// handler: it is delivered again.
    fn on_goodbye(&mut self, conn: ConnId, unanswered: Vec<HeldStep>) {
        let unanswered: HashSet<StepRef> = unanswered
            .iter()
            .filter(|h| h.orchestrator_id == self.orchestrator_id)
            .map(HeldStep::step_ref)
            .collect();
        let mut never_received = Vec::new();
        if let Some(c) = self.registry.get_mut(conn) {
            c.occupied.retain(|step| {
                let resend = !unanswered.contains(step) && self.steps.held_by(*step, conn);
                if resend {
                    never_received.push(*step);
                }
                !resend
            });
        }
        let redelivered = never_received.len() as u64;
        self.steps.requeue_all(never_received, Instant::now());
        Metrics::add(&self.channels.metrics.redelivered, redelivered);
        self.remove_worker(conn, "worker left");
    }

    // ----- ending steps ---------------------------------------------------

    fn finish(&mut self, step_id: StepId, result: StepExecutionResult, how: Ended) {
        let Some(entry) = self.steps.finish(step_id, how) else {
            return;
        };
        let metrics = &self.channels.metrics;
        let counter = match result.status {
            StepStatus::Completed => &metrics.completed,
            StepStatus::Failed => &metrics.failed,
            StepStatus::TimedOut => &metrics.timed_out,
            StepStatus::Cancelled => &metrics.cancelled,
        };
        Metrics::add(counter, 1);
        self.channels.permits.add_permits(1);
        // A dropped handle just means nobody is listening any more.
        let _ = entry.sink.results.send(result);
    }

    /// Ends a step with the orchestrator's own verdict: a timeout, a lost
    /// worker, a refused result, a step too large to send, a shutdown.
    fn fail(&mut self, step_id: StepId, status: StepStatus, error: StepExecutionError) {
        let Some(entry) = self.steps.get(step_id) else {
            return;
        };
        let elapsed = match entry.state {
            StepState::Queued => 0,
            StepState::Dispatched(_) => entry.request.metadata.timeout_ms,
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
        if self.steps.next_deadline().is_some_and(|at| at <= now) {
            // A result already queued beats the deadline it raced.
            while self.receive_burst() {}
        }
        while let Some(step_id) = self.steps.pop_expired(now) {
            let Some(entry) = self.steps.get(step_id) else {
                continue;
            };
            let timeout_ms = entry.request.metadata.timeout_ms;
            match entry.state {
                StepState::Queued => {
                    let handler = entry.request.handler_class.clone();
                    let served = self
                        .registry
                        .iter()
                        .any(|(_, c)| c.takes_work() && c.handlers.contains(&handler));
                    let (status, error) = if served {
                        (
                            StepStatus::TimedOut,
                            StepExecutionError::new(
                                error_types::SCHEDULE_TIMEOUT,
                                format!(
                                    "no worker serving {handler:?} had room within {timeout_ms} ms"
                                ),
                                true,
                            ),
                        )
                    } else {
                        (
                            StepStatus::Failed,
                            StepExecutionError::new(
                                error_types::NO_WORKER_FOR_HANDLER,
                                format!("no connected worker serves handler {handler:?} (waited {timeout_ms} ms)"),
                                true,
                            ),
                        )
                    };
                    self.fail(step_id, status, error);
                }
                StepState::Dispatched(_) => {
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
        if !self.registry.silent(now, expiry).is_empty() {
            // Judge only after reading what is already queued: a stall of
            // this process (stopped, starved) that the loop did not notice
            // leaves heartbeats and results waiting here.
            self.catch_up();
        }
        let now = Instant::now();
        for conn in self.registry.silent(now, expiry) {
            Metrics::add(&self.channels.metrics.workers_lost, 1);
            if let Some(c) = self.registry.get(conn) {
                tracing::warn!(
                    worker_id = %codec::truncate(&c.worker_id, 64),
                    retired = c.retired,
                    "worker silent for {expiry:?}: declared dead"
                );
            }
            self.remove_worker(conn, "no heartbeat");
        }
        self.settle_retired(now);
        let heartbeat = OrchestratorMessage::Heartbeat(Heartbeat {});
        let peers: Vec<(ConnId, RoutingId)> = self
            .registry
            .iter()
            .filter(|(_, c)| !c.gone)
            .map(|(id, c)| (id, c.routing_id.clone()))
            .collect();
        for (conn, routing_id) in peers {
            // A retired connection is sent one too: that is how its end
            // is noticed (EHOSTUNREACH).
            if let Err(e) = send_message(&self.socket, Some(&routing_id), &heartbeat) {
                // A vanished connection is left to the liveness rule: the
                // worker may be reconnecting and its hello will claim its
                // steps.
                self.unreachable(conn, &e);
            }
        }
    }

    /// A retired connection whose pipe is gone and whose queued input has
    /// been read (nothing came for an interval) can hold only steps its
    /// worker never received: the worker's hello on its new connection
    /// listed every step it received and has not answered, and answers
    /// sent on the old connection have come in. Those steps are delivered
    /// again, same attempt, instead of failing `WorkerLost` at expiry. (A
    /// delivery still inside this process when it was stopped goes out on
    /// a connection the worker has already closed.)
    fn settle_retired(&mut self, now: Instant) {
        let interval = self.config.heartbeat_interval();
        let settled: Vec<ConnId> = self
            .registry
            .iter()
            .filter(|(_, c)| {
                c.retired && c.gone && now.saturating_duration_since(c.last_seen) >= interval
            })
            .map(|(id, _)| id)
            .collect();
        for conn in settled {
            let Some(c) = self.registry.remove(conn) else {
                continue;
            };
            let never_received: Vec<StepRef> = c
                .occupied
                .iter()
                .copied()
                .filter(|step| self.steps.held_by(*step, conn))
                .collect();
            let redelivered = never_received.len() as u64;
            self.steps.requeue_all(never_received, now);
            if redelivered > 0 {
                Metrics::add(&self.channels.metrics.redelivered, redelivered);
                tracing::info!(
                    worker_id = %codec::truncate(&c.worker_id, 64),
                    redelivered,
                    "steps its worker never received are delivered again"
                );
                self.dispatch_needed = true;
            }
        }
    }

    /// A send to a registered connection failed. `EHOSTUNREACH`: ZeroMQ
    /// has no pipe to it any more (the peer closed, though what it sent may
    /// still be queued for us to read); it gets nothing more, and one line
    /// in the log, however many messages it left queued. `EAGAIN`: its pipe
    /// is full; try later.
    fn unreachable(&mut self, conn: ConnId, error: &SendError) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        match error {
            SendError::Zmq(zmq::Error::EHOSTUNREACH) => {
                if !c.gone {
                    c.gone = true;
                    tracing::info!(
                        worker_id = %codec::truncate(&c.worker_id, 64),
                        "worker connection closed; it gets no more work"
                    );
                    self.dispatch_needed = true;
                }
            }
            SendError::Zmq(zmq::Error::EAGAIN) => {
                tracing::debug!(worker_id = %codec::truncate(&c.worker_id, 64), "worker pipe full");
            }
            other => tracing::error!(error = %other, "cannot send to worker"),
        }
    }

    /// Forgets a connection; every step it held that is still in flight
    /// ends failed with a retryable `WorkerLost` (it may have started).
    fn remove_worker(&mut self, conn: ConnId, why: &str) {
        let Some(c) = self.registry.remove(conn) else {
            return;
        };
        for step in &c.occupied {
            if self.steps.held_by(*step, conn) {
                Metrics::add(&self.channels.metrics.worker_lost, 1);
                self.fail(
                    step.step_id,
                    StepStatus::Failed,
                    StepExecutionError::new(
                        error_types::WORKER_LOST,
                        format!(
                            "worker {} was lost ({why}) while holding the step",
                            codec::truncate(&c.worker_id, 64)
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
        let n = self.registry.workers();
        self.channels
            .metrics
            .workers_connected
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.channels.workers_count.send_replace(n);
    }

    // ----- dispatch -------------------------------------------------------

    fn dispatch(&mut self) {
        self.dispatch_needed = false;
        if self.steps.queued() == 0 {
            return;
        }
        let candidates: Vec<schedule::Candidate> = self
            .registry
            .iter()
            .filter(|(_, c)| c.takes_work() && c.free_slots() > 0)
            .map(|(conn, c)| schedule::Candidate {
                conn,
                capacity: c.capacity,
                in_flight: c.in_flight(),
                handlers: Arc::clone(&c.handlers),
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let plan = schedule::plan(
            &candidates,
            self.steps.queued_by_handler(),
            self.config.batch_size,
        );
        let mut refused: HashSet<ConnId> = HashSet::new();
        for delivery in plan {
            if refused.contains(&delivery.conn) {
                continue;
            }
            let picked = self.pick(&delivery);
            if picked.is_empty() {
                continue;
            }
            if !self.deliver(delivery.conn, picked) {
                refused.insert(delivery.conn);
            }
        }
    }

    /// Takes a planned delivery's steps off their queues, round robin.
    fn pick(&mut self, delivery: &schedule::Delivery) -> Vec<StepRef> {
        let mut left = delivery.per_handler.clone();
        let mut picked = Vec::with_capacity(delivery.len());
        loop {
            let mut progressed = false;
            for (i, handler) in delivery.handlers.iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                match self.steps.pick(handler) {
                    Some(step) => {
                        picked.push(step);
                        left[i] -= 1;
                        progressed = true;
                    }
                    None => left[i] = 0,
                }
            }
            if !progressed {
                return picked;
            }
        }
    }

    /// Sends picked steps to one connection; false if it cannot take more
    /// now (the steps go back to the front of their queues).
    ///
    /// A delivery whose body would exceed `max_message_bytes` (which every
    /// worker accepts, SPEC §10) goes out in halves; a step too large to go
    /// out at all fails for good rather than waiting for its timeout.
    fn deliver(&mut self, conn: ConnId, mut picked: Vec<StepRef>) -> bool {
        let Some(routing_id) = self.registry.get(conn).map(|c| c.routing_id.clone()) else {
            self.steps.unpick(&picked);
            return false;
        };
        self.delivery_seq += 1;
        let first = self
            .steps
            .get(picked[0].step_id)
            .expect("picked steps are in flight");
        let batch_id = format!("{}:{}", first.sink.batch_id, self.delivery_seq);
        let encoded = {
            let message = StepBatchRequestRef {
                batch_id: &batch_id,
                protocol_version: PROTOCOL_VERSION,
                steps: picked
                    .iter()
                    .map(|s| {
                        &self
                            .steps
                            .get(s.step_id)
                            .expect("picked steps are in flight")
                            .request
                    })
                    .collect(),
            };
            codec::encode(&message)
        };
        let sent = match encoded {
            Ok([_, ref body]) if body.len() > self.config.max_message_bytes => {
                let size = body.len();
                if picked.len() > 1 {
                    let second = picked.split_off(picked.len() / 2);
                    if !self.deliver(conn, picked) {
                        self.steps.unpick(&second);
                        return false;
                    }
                    return self.deliver(conn, second);
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
                .send_multipart([routing_id, header, body], zmq::DONTWAIT)
                .map_err(SendError::Zmq),
            Err(e) => Err(SendError::Encode(e.to_string())),
        };
        match sent {
            Ok(()) => {
                let n = picked.len() as u64;
                self.steps.dispatched(&picked, conn, Instant::now());
                if let Some(c) = self.registry.get_mut(conn) {
                    tracing::debug!(worker_id = %c.worker_id, %batch_id, steps = n, "delivered");
                    c.occupied.extend(picked);
                }
                Metrics::add(&self.channels.metrics.dispatched, n);
                true
            }
            Err(error) => {
                // Never left: back to the front, to be sent elsewhere or
                // later.
                self.steps.unpick(&picked);
                self.unreachable(conn, &error);
                false
            }
        }
    }

    // ----- stopping -------------------------------------------------------

    fn shutdown_complete(&mut self, now: Instant) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        if !self.steps.is_empty() && now < shutdown.deadline {
            return false;
        }
        let abandoned = self.end_all(
            StepStatus::Cancelled,
            error_types::ABANDONED,
            "orchestrator shut down before the step finished",
        );
        let goodbye = OrchestratorMessage::Goodbye(Goodbye::new("orchestrator shutting down"));
        let peers: Vec<RoutingId> = self
            .registry
            .iter()
            .filter(|(_, c)| !c.retired)
            .map(|(_, c)| c.routing_id.clone())
            .collect();
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
        self.channels.permits.close();
        if let Some(reply) = shutdown.reply {
            let _ = reply.send(report);
        }
        true
    }

    /// Ends every step in flight with the orchestrator's verdict; returns
    /// them, sorted.
    fn end_all(&mut self, status: StepStatus, error_type: &str, message: &str) -> Vec<StepRef> {
        let mut ended = self.steps.step_refs();
        ended.sort();
        for step in &ended {
            self.fail(
                step.step_id,
                status,
                StepExecutionError::new(error_type, message, true),
            );
        }
        ended
    }

    /// The loop cannot go on: every step in flight gets its one final
    /// result now (`ExecutorStopped`), waiting and later submits fail, and
    /// a pending shutdown gets its report.
    fn stop_on_fault(&mut self, fault: &str) {
        tracing::error!(%fault, "orchestrator I/O thread stops");
        let ended = self.end_all(
            StepStatus::Cancelled,
            error_types::EXECUTOR_STOPPED,
            &format!("the executor stopped before the step finished: {fault}"),
        );
        self.channels.permits.close();
        if let Some(shutdown) = self.shutdown.take() {
            if let Some(reply) = shutdown.reply {
                let _ = reply.send(ShutdownReport {
                    finished_during_shutdown: 0,
                    abandoned: ended,
                    workers_at_close: 0,
                });
            }
        }
        // Submits queued behind the fault get ShutDown when their reply
        // sender drops with the channel.
        while let Ok(command) = self.channels.commands.try_recv() {
            match command {
                Command::Submit { reply, .. } => {
                    let _ = reply.send(Err(ExecutorError::ShutDown));
                }
                Command::Shutdown {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(ShutdownReport::default());
                }
                _ => {}
            }
        }
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
