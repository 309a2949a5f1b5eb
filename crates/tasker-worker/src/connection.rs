//! The worker runtime's connection: owns the `DEALER` socket, speaks the
//! protocol, and moves steps and results between the socket and the queues
//! of [`crate::runtime`]. Its own I/O thread runs it ([`Connection::run`]),
//! or a host's event loop does ([`Connection::drive`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tasker_protocol::raw::{self, EncodedResult, RawOrchestratorMessage};
use tasker_protocol::{
    codec, error_types, DecodeError, Goodbye, Heartbeat, OrchestratorMessage, ProtocolError,
    ProtocolErrorCode, StepExecutionError, StepExecutionResult, StepRef, StepStatus, WorkerDrain,
    WorkerHello, WorkerMessage,
};
use tasker_transport::{earliest, poll_timeout, send_message};

use crate::runtime::{Received, RuntimeState, Shared};
use crate::WorkerError;

/// Most results per outgoing message; messages are split further by size
/// (see `flush_results`).
const RESULTS_PER_MESSAGE: usize = 512;

/// A decoded message from the orchestrator: typed, or a batch whose steps
/// are kept as JSON text.
enum Inbound {
    Message(OrchestratorMessage),
    RawBatch(raw::RawStepBatch),
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    // Field order matters: sockets close before the context.
    socket: Option<zmq::Socket>,
    context: zmq::Context,
    welcomed: bool,
    last_heard: Instant,
    next_heartbeat: Instant,
    heartbeat_interval: Duration,
    expiry: Duration,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    drain_sent: bool,
    drain_deadline: Option<Instant>,
    /// Delivery ids by step, so responses can name the batch they answer.
    batch_of: std::collections::HashMap<StepRef, Arc<str>>,
    /// Largest body the orchestrator accepts (from its welcome).
    peer_max_bytes: usize,
    /// Sockets opened so far, so a host watching `fd` can tell a new socket
    /// whose descriptor has an old number.
    sockets_opened: u64,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>) -> Result<Self, WorkerError> {
        let config = &shared.config;
        let heartbeat_interval = config.heartbeat_interval();
        let expiry = config.peer_expiry();
        let backoff = Duration::from_millis(config.reconnect_initial_ms);
        let mut connection = Self {
            context: zmq::Context::new(),
            socket: None,
            welcomed: false,
            last_heard: Instant::now(),
            next_heartbeat: Instant::now() + heartbeat_interval,
            heartbeat_interval,
            expiry,
            backoff,
            reconnect_at: None,
            drain_sent: false,
            drain_deadline: None,
            batch_of: Default::default(),
            peer_max_bytes: config.max_message_bytes,
            sockets_opened: 0,
            shared,
        };
        connection.connect()?;
        Ok(connection)
    }

    fn connect(&mut self) -> Result<(), WorkerError> {
        let config = &self.shared.config;
        let setup = |e: zmq::Error| WorkerError::Setup(format!("{}: {e}", config.endpoint));
        let socket = self.context.socket(zmq::DEALER).map_err(setup)?;
        tasker_transport::configure_socket(&socket, config).map_err(setup)?;
        socket.connect(&config.endpoint).map_err(setup)?;
        self.socket = Some(socket);
        self.sockets_opened += 1;
        self.welcomed = false;
        self.last_heard = Instant::now();
        self.shared.set_state(if self.stopping() {
            RuntimeState::Draining
        } else {
            RuntimeState::Connecting
        });
        tracing::debug!(worker_id = %self.shared.worker_id, endpoint = %config.endpoint, "connecting");
        self.send_hello();
        Ok(())
    }

    /// Sends on the current connection; false when there is none or
    /// ZeroMQ refused the message.
    fn send(&mut self, message: &WorkerMessage) -> bool {
        let Some(socket) = &self.socket else {
            return false;
        };
        match send_message(socket, None, message) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, message = message.type_name(), "send failed");
                false
            }
        }
    }

    fn send_hello(&mut self) {
        let in_progress: Vec<StepRef> = {
            let inbox = self.shared.inbox.lock().expect("inbox lock");
            inbox
                .in_hand
                .iter()
                .copied()
                .chain(inbox.steps.iter().map(|s| s.step_ref()))
                .collect()
        };
        let hello = WorkerHello {
            worker_id: self.shared.worker_id.clone(),
            handlers: self.shared.handlers.clone(),
            capacity: self.shared.capacity,
            in_progress,
            language: Some(self.shared.language.clone()),
            pid: Some(std::process::id()),
        };
        self.send(&WorkerMessage::Hello(hello));
        if self.drain_sent {
            // A hello registers a worker as taking work: say again that we
            // do not.
            self.send(&WorkerMessage::Drain(WorkerDrain::default()));
        }
        self.next_heartbeat = Instant::now() + self.heartbeat_interval;
    }

    fn stopping(&self) -> bool {
        self.shared.inbox.lock().expect("inbox lock").stopping
    }

    /// The I/O thread's loop: wait for the socket, the doorbell or the next
    /// deadline, then take a turn, until the connection is done.
    pub(crate) fn run(mut self) {
        loop {
            let wake_at = self.next_wake();
            let (socket_ready, bell_rang) = {
                let mut items = Vec::with_capacity(2);
                items.push(zmq::PollItem::from_fd(
                    self.shared.doorbell.fd(),
                    zmq::POLLIN,
                ));
                if let Some(socket) = &self.socket {
                    items.push(socket.as_poll_item(zmq::POLLIN));
                }
                match zmq::poll(&mut items, poll_timeout(wake_at)) {
                    Ok(_) => (
                        items.get(1).is_some_and(|i| i.is_readable()),
                        items[0].is_readable(),
                    ),
                    Err(zmq::Error::EINTR) => (false, false),
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; worker I/O thread stops");
                        break;
                    }
                }
            };
            if bell_rang {
                self.shared.doorbell.drain();
            }
            if self.turn(socket_ready) {
                return;
            }
        }
        self.close();
    }

    /// Does everything that is due: takes in what the socket holds (when
    /// `socket_ready`), sends results and drain notices, reconnects, beats.
    /// True once the connection is done and closed.
    fn turn(&mut self, socket_ready: bool) -> bool {
        if socket_ready {
            self.receive_all();
        }
        self.flush_results();
        self.flush_drain();
        let now = Instant::now();
        if let Some(at) = self.reconnect_at {
            // A stop must not wait out the backoff: reconnect now, so
            // the drain and goodbye go out at once.
            if now >= at || self.stopping() {
                self.reconnect_at = None;
                if let Err(e) = self.connect() {
                    tracing::error!(error = %e, "reconnect failed");
                    self.schedule_reconnect();
                }
            }
        } else if self.socket.is_some() {
            if now.duration_since(self.last_heard) > self.expiry {
                tracing::warn!(
                    worker_id = %self.shared.worker_id,
                    "orchestrator silent for {:?}; reconnecting",
                    self.expiry
                );
                self.disconnect();
                self.schedule_reconnect();
            } else if now >= self.next_heartbeat {
                self.send(&WorkerMessage::Heartbeat(Heartbeat {}));
                self.next_heartbeat = now + self.heartbeat_interval;
            }
        }
        if self.drained(now) {
            self.close();
            return true;
        }
        false
    }

    /// Takes turns until the socket has nothing more to read, for a host
    /// that watches the socket's [`fd`](Self::fd) itself: that descriptor
    /// only signals changes, and a send can take the signal of a message
    /// that came in meanwhile. Returns when to be called again at the
    /// latest, or `None` once the connection is done.
    pub(crate) fn drive(&mut self) -> Option<Option<Instant>> {
        loop {
            if self.turn(true) {
                return None;
            }
            let more = self.socket.as_ref().is_some_and(|s| {
                s.get_events()
                    .is_ok_and(|events| events.contains(zmq::POLLIN))
            });
            if !more {
                return Some(self.next_wake());
            }
        }
    }

    /// The descriptor that signals activity of the current socket (ZeroMQ's
    /// `ZMQ_FD`); it changes on reconnect, and there is none while waiting
    /// to reconnect.
    pub(crate) fn fd(&self) -> Option<crate::runtime::SocketFd> {
        let fd = self.socket.as_ref()?.get_fd().ok()?;
        Some(crate::runtime::SocketFd {
            fd,
            socket: self.sockets_opened,
        })
    }

    fn close(&mut self) {
        self.shared.set_state(RuntimeState::Stopped);
        {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            inbox.closed = true;
            self.shared.steps_ready.notify_all();
        }
        self.shared.wake_host();
        tracing::debug!(worker_id = %self.shared.worker_id, "worker connection closed");
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut at = self.reconnect_at;
        if self.socket.is_some() {
            at = earliest(at, Some(self.next_heartbeat));
            at = earliest(
                at,
                Some(self.last_heard + self.expiry + Duration::from_millis(1)),
            );
        }
        earliest(at, self.drain_deadline)
    }

    fn disconnect(&mut self) {
        if let Some(socket) = self.socket.take() {
            // Whatever is still queued is moot: the peer is gone.
            let _ = socket.set_linger(0);
        }
        self.welcomed = false;
        self.shared.set_state(if self.stopping() {
            RuntimeState::Draining
        } else {
            RuntimeState::Connecting
        });
    }

    fn schedule_reconnect(&mut self) {
        self.reconnect_at = Some(Instant::now() + self.backoff);
        let max = Duration::from_millis(self.shared.config.reconnect_max_ms);
        self.backoff = (self.backoff * 2).min(max);
    }

    fn receive_all(&mut self) {
        loop {
            let Some(socket) = &self.socket else {
                return;
            };
            let frames = match socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) => return,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    return;
                }
            };
            self.last_heard = Instant::now();
            match self.decode(&frames) {
                Ok(Inbound::Message(message)) => self.handle(message),
                Ok(Inbound::RawBatch(batch)) => {
                    let steps = batch.steps.into_iter().map(Received::Raw).collect();
                    self.receive_steps(&batch.batch_id, steps);
                }
                Err(error) => {
                    tracing::warn!(%error, "malformed message from orchestrator");
                    let reply = WorkerMessage::ProtocolError(ProtocolError {
                        code: error.code(),
                        message: error.to_string(),
                    });
                    self.send(&reply);
                }
            }
        }
    }

    fn handle(&mut self, message: OrchestratorMessage) {
        match message {
            OrchestratorMessage::Welcome(welcome) => {
                self.welcomed = true;
                self.backoff = Duration::from_millis(self.shared.config.reconnect_initial_ms);
                // The orchestrator's timing rules, so both sides agree on death.
                // Clamped so that absurd values cannot overflow our clocks.
                let interval_ms = welcome.heartbeat_interval_ms.clamp(1, 3_600_000);
                self.heartbeat_interval = Duration::from_millis(interval_ms);
                self.expiry = self.heartbeat_interval * welcome.liveness.clamp(1, 1_000);
                self.peer_max_bytes = usize::try_from(welcome.max_message_bytes)
                    .unwrap_or(usize::MAX)
                    .max(1024);
                // A shorter interval takes effect now, not after the beat
                // scheduled under our own (longer) one: by then the
                // orchestrator may have declared us dead.
                self.next_heartbeat = self
                    .next_heartbeat
                    .min(Instant::now() + self.heartbeat_interval);
                if !self.stopping() {
                    self.shared.set_state(RuntimeState::Connected);
                }
                tracing::info!(worker_id = %self.shared.worker_id, "registered with orchestrator");
            }
            OrchestratorMessage::StepBatchRequest(batch) => {
                let steps = batch.steps.into_iter().map(Received::Typed).collect();
                self.receive_steps(&batch.batch_id, steps);
            }
            OrchestratorMessage::Heartbeat(_) => {}
            OrchestratorMessage::Goodbye(goodbye) => {
                tracing::info!(reason = %goodbye.reason, "orchestrator said goodbye; will reconnect");
                self.disconnect();
                self.schedule_reconnect();
            }
            OrchestratorMessage::ProtocolError(error) => {
                if error.code == ProtocolErrorCode::UnknownWorker {
                    tracing::info!("orchestrator does not know this worker; saying hello again");
                    self.send_hello();
                } else {
                    tracing::warn!(code = ?error.code, message = %error.message, "orchestrator refused a message");
                }
            }
        }
    }

    /// Decodes a message: typed in one pass, unless the host takes steps
    /// as JSON text or the typed decode cannot build a step of an otherwise
    /// valid batch (then that step fails alone, as `InvalidStep`, when
    /// pulled).
    fn decode(&self, frames: &[Vec<u8>]) -> Result<Inbound, DecodeError> {
        let max = self.shared.config.max_message_bytes;
        if !self.shared.raw_steps {
            let error = match codec::decode::<OrchestratorMessage>(frames, max) {
                Ok(message) => return Ok(Inbound::Message(message)),
                Err(error) => error,
            };
            // Only worth a second look if the raw check takes it.
            return match raw::decode_for_worker(frames, max) {
                Ok(RawOrchestratorMessage::StepBatch(batch)) => Ok(Inbound::RawBatch(batch)),
                _ => Err(error),
            };
        }
        Ok(match raw::decode_for_worker(frames, max)? {
            RawOrchestratorMessage::StepBatch(batch) => Inbound::RawBatch(batch),
            RawOrchestratorMessage::Control(message) => Inbound::Message(message),
        })
    }

    fn receive_steps(&mut self, batch_id: &str, steps: Vec<Received>) {
        {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            if inbox.stopping {
                inbox.returned.extend(steps.iter().map(|s| s.step_ref()));
                return;
            }
            let shared_id: Arc<str> = batch_id.into();
            for step in &steps {
                self.batch_of
                    .insert(step.step_ref(), Arc::clone(&shared_id));
            }
            tracing::debug!(batch_id, steps = steps.len(), "steps received");
            inbox.steps.extend(steps);
            self.shared.steps_ready.notify_all();
        }
        self.shared.wake_host();
    }

    fn flush_results(&mut self) {
        if self.socket.is_none() {
            // Keep them for the next connection.
            return;
        }
        let mut results: VecDeque<EncodedResult> =
            std::mem::take(&mut *self.shared.outbox.lock().expect("outbox lock")).into();
        // As many results per message as fit what the orchestrator accepts
        // (it would refuse the whole message, and every step in it would
        // time out), in order.
        while let Some(first) = results.front() {
            let batch_id = self
                .batch_of
                .get(&first.step_ref())
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            let mut size = raw::response_envelope_len(&batch_id) + first.json().len();
            if size > self.peer_max_bytes {
                let result = results.pop_front().expect("front exists");
                let failed = self.too_large(&result, size);
                self.send_results(&batch_id, vec![failed]);
                continue;
            }
            let mut n = 1;
            while let Some(next) = results.get(n) {
                let grown = size + 1 + next.json().len();
                if n == RESULTS_PER_MESSAGE || grown > self.peer_max_bytes {
                    break;
                }
                size = grown;
                n += 1;
            }
            let chunk: Vec<EncodedResult> = results.drain(..n).collect();
            self.send_results(&batch_id, chunk);
        }
    }

    fn send_results(&mut self, batch_id: &str, results: Vec<EncodedResult>) {
        for result in &results {
            self.batch_of.remove(&result.step_ref());
        }
        let frames = raw::encode_results(batch_id, &results);
        if let Some(socket) = &self.socket {
            if let Err(e) = socket.send_multipart(frames, zmq::DONTWAIT) {
                tracing::warn!(error = %e, "sending results failed");
            }
        }
    }

    /// What to report for a result that alone exceeds the orchestrator's
    /// message limit: the step failed, for good (the same output would be as
    /// large next time).
    fn too_large(&self, result: &EncodedResult, size: usize) -> EncodedResult {
        tracing::warn!(
            step_id = result.step_ref().step_id,
            size,
            max = self.peer_max_bytes,
            "result too large for the orchestrator; reporting it failed"
        );
        EncodedResult::new(&StepExecutionResult::failed(
            result.step_ref(),
            StepStatus::Failed,
            StepExecutionError::new(
                error_types::OUTPUT_TOO_LARGE,
                format!(
                    "the step's result is {size} bytes of JSON; the orchestrator accepts at most {} (max_message_bytes)",
                    self.peer_max_bytes
                ),
                false,
            ),
            &self.shared.worker_id,
            result.execution_time_ms(),
        ))
    }

    fn flush_drain(&mut self) {
        if self.socket.is_none() {
            return;
        }
        let (stopping, returned) = {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            (inbox.stopping, std::mem::take(&mut inbox.returned))
        };
        if !stopping {
            return;
        }
        if !self.drain_sent || !returned.is_empty() {
            for step in &returned {
                self.batch_of.remove(step);
            }
            self.send(&WorkerMessage::Drain(WorkerDrain { returned }));
            if !self.drain_sent {
                self.drain_sent = true;
                self.drain_deadline = Some(Instant::now() + self.shared.config.shutdown_timeout());
                self.shared.set_state(RuntimeState::Draining);
                tracing::info!(worker_id = %self.shared.worker_id, "draining");
            }
        }
    }

    /// True once stopping and every step in hand is answered (or the drain
    /// deadline passed); says goodbye on the way out.
    fn drained(&mut self, now: Instant) -> bool {
        if !self.drain_sent {
            return false;
        }
        let in_hand = self.shared.inbox.lock().expect("inbox lock").in_hand.len();
        let outbox_empty = self.shared.outbox.lock().expect("outbox lock").is_empty();
        let timed_out = self.drain_deadline.is_some_and(|d| now >= d);
        if (in_hand > 0 || !outbox_empty) && !timed_out {
            return false;
        }
        if timed_out && in_hand > 0 {
            tracing::warn!(
                in_hand,
                "drain deadline passed; leaving with steps unanswered"
            );
        }
        self.send(&WorkerMessage::Goodbye(Goodbye {
            reason: "worker stopping".into(),
        }));
        true
    }
}
