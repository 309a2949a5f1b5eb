//! The worker runtime's connection: owns the `DEALER` socket, speaks the
//! protocol, and moves steps and results between the socket and the queues
//! of [`crate::runtime`]. Its own I/O thread runs it ([`Connection::run`]),
//! or a host's event loop does ([`Connection::drive`]).
//!
//! What it keeps of each step (SPEC §5): every step received is tagged
//! with the `orchestrator_id` of the welcome of the connection it came on,
//! and stays *held* until its result is sent or it is returned in a drain.
//! Every hello lists what is held (`in_progress`), results go out only on
//! a welcomed connection, one message per orchestrator they answer, and a
//! results message ZeroMQ refuses for now (high-water mark) is kept and
//! sent when the socket takes it.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tasker_protocol::raw::{self, EncodedResult, RawOrchestratorMessage};
use tasker_protocol::{
    codec, error_types, DecodeError, Goodbye, Heartbeat, HeldStep, OrchestratorMessage,
    ProtocolErrorCode, StepExecutionError, StepExecutionResult, StepRef, StepStatus, WorkerDrain,
    WorkerHello, WorkerMessage,
};
use tasker_transport::curve::ClientCurve;
use tasker_transport::monitor::{Handshake, HandshakeMonitor};
use tasker_transport::{earliest, poll_timeout, send_message, wait, Waitable};

use crate::handler::WallClock;
use crate::inline::InlineHandler;
use crate::output::DEPTH_CAP;
use crate::runtime::encode_checked;
use crate::shared::{Received, RuntimeState, Shared, SocketFd};
use crate::WorkerError;

/// Most results per outgoing message; messages are split further by size
/// and by the orchestrator they answer (see `send_results`).
const RESULTS_PER_MESSAGE: usize = 512;
/// Handshakes in a row the orchestrator may close without a word before
/// the worker gives up: one is a restart, five are a configuration that
/// can never work (CURVE on one side only, a wrong server key).
const HANDSHAKES_CLOSED_LIMIT: u32 = 5;
/// Longest the results of inline handlers wait for their batch-mates.
const INLINE_FLUSH: Duration = Duration::from_millis(2);
/// Inline steps read (from one message or several) that are run and
/// answered at once, before the next message is read, rather than at the
/// end of the turn.
///
/// The failure this prevents: two batches read in one turn went back as
/// one message, and the orchestrator's window of two batches collapsed into
/// stop-and-wait. It got no credit back until the worker had run both, so
/// it sent the next two together, and the worker sat idle while they
/// crossed the wire (in `tasker bench` at batch 100 it cost up to a third
/// of the throughput). Fewer steps wait for the turn's end: an answer of
/// their own would cost more (a message, a wake-up of the orchestrator)
/// than the credit it returns early is worth.
const ANSWER_APART: usize = 16;

/// A decoded message from the orchestrator: typed, or a batch whose steps
/// are kept as JSON text.
enum Inbound {
    Message(OrchestratorMessage),
    RawBatch(raw::RawStepBatch),
}

/// Where a held step came from: the delivery its result names, and the
/// orchestrator whose welcome it arrived under.
#[derive(Clone)]
struct Delivery {
    batch_id: Arc<str>,
    orchestrator_id: Arc<str>,
}

impl Delivery {
    fn held(&self, step: StepRef) -> HeldStep {
        HeldStep {
            step_id: step.step_id,
            attempt: step.attempt,
            orchestrator_id: self.orchestrator_id.to_string(),
        }
    }
}

/// Results sent on the current socket lately, oldest first: those of the
/// last two expiry periods, at most `capacity` of them (an orchestrator
/// sends no more steps than the worker's capacity before it has read their
/// results, so no more can be unread) and at most [`RECENT_BYTES`].
#[derive(Default)]
struct Recent {
    sent: VecDeque<(Instant, EncodedResult, Delivery)>,
    bytes: usize,
}

/// Most bytes of results [`Recent`] keeps.
const RECENT_BYTES: usize = 64 << 20;

impl Recent {
    /// Keeps `sent`, sent at `now`, and lets go of what is older than
    /// `window` or past the bounds.
    fn keep(
        &mut self,
        sent: impl Iterator<Item = (EncodedResult, Delivery)>,
        now: Instant,
        window: Duration,
        capacity: usize,
    ) {
        for (result, from) in sent {
            self.bytes += result.json().len();
            self.sent.push_back((now, result, from));
        }
        while let Some((at, result, _)) = self.sent.front() {
            let stale = now.saturating_duration_since(*at) > window;
            if !stale && self.sent.len() <= capacity && self.bytes <= RECENT_BYTES {
                break;
            }
            self.bytes -= result.json().len();
            self.sent.pop_front();
        }
    }

    /// The latest `room` kept, oldest first, leaving it empty.
    fn take(&mut self, room: usize) -> (Vec<EncodedResult>, Vec<Delivery>) {
        self.bytes = 0;
        let skip = self.sent.len().saturating_sub(room);
        self.sent
            .drain(..)
            .skip(skip)
            .map(|(_, result, from)| (result, from))
            .unzip()
    }
}

/// Least time between two warnings that the orchestrator refused a hello.
const REFUSAL_WARNING_EVERY: Duration = Duration::from_secs(60);

pub(crate) struct Connection {
    shared: Arc<Shared>,
    // Field order matters: sockets close before the context.
    socket: Option<zmq::Socket>,
    /// How the current socket's handshakes end.
    handshakes: Option<HandshakeMonitor>,
    context: zmq::Context,
    curve: Option<ClientCurve>,
    /// Handshakes closed by the orchestrator since the last one that
    /// succeeded.
    handshakes_closed: u32,
    /// The current connection's hello was answered by a welcome (and not
    /// since refused or forgotten): results may go out.
    welcomed: bool,
    /// The `orchestrator_id` of the last welcome on the current socket.
    orchestrator_id: Option<Arc<str>>,
    last_heard: Instant,
    next_heartbeat: Instant,
    heartbeat_interval: Duration,
    expiry: Duration,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    /// When to say hello again on this socket, after the orchestrator
    /// refused the last one (`worker_id_in_use`, `registry_full`).
    hello_at: Option<Instant>,
    /// Hellos refused since the last welcome, and when that was last said
    /// as a warning (a worker whose id is taken tries every few seconds
    /// for as long as it runs: a warning each time filled its log).
    refusals: u32,
    refusal_warned: Option<Instant>,
    /// The last hello found no connection to go out on (the socket is
    /// `ZMQ_IMMEDIATE`): it goes as soon as one is up.
    hello_unsent: bool,
    drain_sent: bool,
    drain_deadline: Option<Instant>,
    /// Every step received and neither answered nor returned, except those
    /// in `deferred`: where it came from. A step leaves when its result is
    /// taken from the outbox (into `unsent`) or it is returned.
    held: HashMap<StepRef, Delivery>,
    /// Steps received while the same `(step_id, attempt)` of another
    /// orchestrator is held: the host sees a step by that pair only, so
    /// each waits until the one before it is answered.
    deferred: VecDeque<(Received, Delivery)>,
    /// Steps to give back in the next drain (received while stopping).
    to_return: Vec<HeldStep>,
    /// Held steps of inline handlers received this turn, to run on this
    /// thread before the turn sends results (see [`crate::inline`]).
    inline_steps: Vec<(InlineHandler, Received)>,
    /// Results taken from the outbox and not sent yet, in order, with
    /// where each step came from (`unsent_from`, same indices).
    unsent: VecDeque<EncodedResult>,
    unsent_from: VecDeque<Delivery>,
    /// Results sent on the current socket lately (see [`Recent`]): held
    /// again when it closes.
    recent: Recent,
    /// How many of the first in `unsent` were held again that way: most
    /// reached the orchestrator, so a stop does not wait to send them.
    sent_before: usize,
    /// A results or drain message was refused by ZeroMQ (high-water mark)
    /// this turn: wait until the socket can take one (`POLLOUT`).
    send_blocked: bool,
    /// When to try a refused send again at the latest, should no
    /// `POLLOUT` wake us (a host's event loop sees only readability).
    retry_at: Option<Instant>,
    /// When the loop meant to take its next turn. A turn far later than
    /// that means this process was held up (stopped, starved): the delay
    /// is no evidence that the orchestrator went silent.
    planned_wake: Option<Instant>,
    /// Results and drain messages sent so far (to tell whether a turn
    /// progressed).
    sends_done: u64,
    /// Largest body the orchestrator accepts (from its welcome).
    peer_max_bytes: usize,
    /// Sockets opened so far, so a host watching `fd` can tell a new socket
    /// whose descriptor has an old number.
    sockets_opened: u64,
    /// Whether the log has said, since the last welcome, that no
    /// orchestrator answers: said once (at info, or as a warning when a
    /// connection was lost), then only at debug level.
    waiting_said: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Before the fields go: see `HandshakeMonitor::stop`.
        if let (Some(socket), Some(handshakes)) = (self.socket.as_mut(), self.handshakes.as_ref()) {
            handshakes.stop(socket);
        }
    }
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>, context: zmq::Context) -> Result<Self, WorkerError> {
        let config = &shared.config;
        let heartbeat_interval = config.heartbeat_interval();
        let expiry = config.peer_expiry();
        let backoff = Duration::from_millis(config.reconnect_initial_ms);
        let curve = ClientCurve::from_config(config)
            .map_err(|e| WorkerError::InvalidOptions(e.to_string()))?;
        let mut connection = Self {
            context,
            socket: None,
            handshakes: None,
            curve,
            handshakes_closed: 0,
            welcomed: false,
            orchestrator_id: None,
            last_heard: Instant::now(),
            next_heartbeat: Instant::now() + heartbeat_interval,
            heartbeat_interval,
            expiry,
            backoff,
            reconnect_at: None,
            hello_at: None,
            refusals: 0,
            refusal_warned: None,
            hello_unsent: false,
            drain_sent: false,
            drain_deadline: None,
            held: HashMap::new(),
            deferred: VecDeque::new(),
            to_return: Vec::new(),
            inline_steps: Vec::new(),
            unsent: VecDeque::new(),
            unsent_from: VecDeque::new(),
            recent: Recent::default(),
            sent_before: 0,
            send_blocked: false,
            retry_at: None,
            planned_wake: None,
            sends_done: 0,
            peer_max_bytes: config.max_message_bytes,
            sockets_opened: 0,
            waiting_said: false,
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
        if let Some(curve) = &self.curve {
            curve
                .apply(&socket)
                .map_err(|e| WorkerError::Setup(e.to_string()))?;
        }
        // Messages go only onto a connection that is up, never into a queue
        // waiting for one. The failure this prevents: an orchestrator
        // killed and started again after this worker gave it up. Results
        // sent meanwhile sat in the old socket's queue, died with it, and
        // were counted as answered, so the next hello did not list their
        // steps and the restarted orchestrator ran them again. Refused
        // here instead (`EAGAIN`), they stay in `unsent`, the hello lists
        // them, and they go out after the welcome.
        socket.set_immediate(true).map_err(setup)?;
        let handshakes = HandshakeMonitor::attach(&self.context, &socket).map_err(setup)?;
        socket.connect(&config.endpoint).map_err(setup)?;
        self.socket = Some(socket);
        self.handshakes = Some(handshakes);
        self.sockets_opened += 1;
        tracing::debug!(worker_id = %self.shared.worker_id, endpoint = %config.endpoint, "connecting");
        self.forget_peer();
        self.last_heard = Instant::now();
        self.send_hello();
        Ok(())
    }

    /// What the last socket knew of its orchestrator no longer holds.
    fn forget_peer(&mut self) {
        self.welcomed = false;
        self.orchestrator_id = None;
        self.hello_at = None;
        self.hello_unsent = false;
        self.send_blocked = false;
        self.retry_at = None;
        self.set_unregistered_state();
    }

    fn set_unregistered_state(&self) {
        self.shared.set_state(if self.stopping() {
            RuntimeState::Draining
        } else {
            RuntimeState::Connecting
        });
    }

    /// Sends on the current connection; false when there is none or
    /// ZeroMQ refused the message.
    fn send(&mut self, message: &WorkerMessage) -> bool {
        let Some(socket) = &self.socket else {
            return false;
        };
        match send_message(socket, None, message) {
            Ok(()) => true,
            // No connection up (the socket is `ZMQ_IMMEDIATE`), or the
            // high-water mark: the caller keeps what matters.
            Err(tasker_transport::SendError::Zmq(zmq::Error::EAGAIN)) => {
                tracing::debug!(
                    kind = message.type_name(),
                    "not sent now: no connection up yet, or its queue is full"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, kind = message.type_name(), "send failed");
                false
            }
        }
    }

    /// Every step received and not answered (result sent) nor returned:
    /// waiting to be pulled, running, waiting behind another attempt of the
    /// same pair, or answered by a result not sent yet.
    fn in_progress(&self) -> Vec<HeldStep> {
        let mut steps: Vec<HeldStep> = self
            .held
            .iter()
            .map(|(step, from)| from.held(*step))
            .chain(
                self.deferred
                    .iter()
                    .map(|(step, from)| from.held(step.step_ref())),
            )
            .chain(
                self.unsent
                    .iter()
                    .zip(&self.unsent_from)
                    .map(|(result, from)| from.held(result.step_ref())),
            )
            .chain(self.to_return.iter().cloned())
            .collect();
        steps.sort_unstable();
        steps
    }

    fn send_hello(&mut self) {
        let hello = WorkerHello {
            worker_id: self.shared.worker_id.clone(),
            handlers: self.shared.handlers.clone(),
            capacity: self.shared.capacity,
            in_progress: self.in_progress(),
            handler_limits: self.shared.handler_limits.clone(),
            language: Some(self.shared.language.clone()),
            pid: Some(std::process::id()),
            incarnation: Some(self.shared.incarnation.clone()),
        };
        let now = Instant::now();
        self.hello_unsent = !self.send(&WorkerMessage::Hello(hello));
        if self.hello_unsent {
            // Again when the socket can take it (a connection came up),
            // on this socket, with what is held then.
            self.wait_for_room();
            return;
        }
        if self.drain_sent {
            // A hello registers a worker as taking work: say again that we
            // do not.
            self.send(&WorkerMessage::Drain(WorkerDrain::default()));
        }
        self.next_heartbeat = now + self.heartbeat_interval;
    }

    fn stopping(&self) -> bool {
        self.shared.inbox.lock().expect("inbox lock").stopping
    }

    /// The I/O thread's loop: wait for the socket (readable, or writable
    /// while a send waits for room), the doorbell or the next deadline,
    /// then take a turn, until the connection is done.
    pub(crate) fn run(mut self) {
        loop {
            let wake_at = self.next_wake();
            self.planned_wake = planned(wake_at);
            let (bell_rang, handshakes_due) = {
                let mut items = [Waitable::Fd(self.shared.doorbell.fd()); 3];
                let mut n = 1;
                let mut monitor = None;
                if let Some(handshakes) = &self.handshakes {
                    items[n] = handshakes.waitable();
                    monitor = Some(n);
                    n += 1;
                }
                if let Some(socket) = &self.socket {
                    let events = if self.send_blocked {
                        zmq::POLLIN | zmq::POLLOUT
                    } else {
                        zmq::POLLIN
                    };
                    items[n] = Waitable::Socket(socket, events);
                    n += 1;
                }
                match wait(&items[..n], poll_timeout(wake_at)) {
                    Ok(ready) => (ready[0], monitor.is_some_and(|i| ready[i])),
                    Err(e) => {
                        tracing::error!(error = %e, "poll failed; worker I/O thread stops");
                        break;
                    }
                }
            };
            if bell_rang {
                self.shared.doorbell.drain();
            }
            if self.turn(handshakes_due) {
                return;
            }
        }
        self.close();
    }

    /// Does everything that is due: takes in whatever the socket holds,
    /// then sends results and drain notices, reconnects, beats. The
    /// orchestrator's silence is judged only after reading, and not at all
    /// in a turn that came late. True once the connection is done and
    /// closed.
    ///
    /// `handshakes_due`: the handshake monitor may hold events (its
    /// descriptor woke the wait); reading it costs a system call, so it is
    /// read only then.
    fn turn(&mut self, handshakes_due: bool) -> bool {
        let lateness = self
            .planned_wake
            .take()
            .map(|planned| Instant::now().saturating_duration_since(planned))
            .unwrap_or_default();
        let late = lateness > self.heartbeat_interval;
        if lateness > self.expiry && self.socket.is_some() {
            // Said as a warning: the orchestrator heard nothing meanwhile
            // and has likely declared this worker dead, failing every step
            // it held. On Node the cause is a handler that kept the
            // JavaScript thread busy (the chaos test's 20 s CPU loop lost
            // an unrelated step and logged nothing).
            let let_go = self.let_go_of_unstarted();
            tracing::warn!(
                worker_id = %self.shared.worker_id,
                late_ms = lateness.as_millis() as u64,
                expiry_ms = self.expiry.as_millis() as u64,
                unstarted_let_go = let_go,
                "this worker could not beat for longer than the heartbeat expiry (its thread was busy or the process stopped); the orchestrator has likely declared it dead and ended the steps it held: reconnecting, without starting those not started yet"
            );
            // Read, what came meanwhile would start steps the orchestrator
            // has likely ended and given to another worker. Closed unread,
            // an orchestrator that has not ended them gives them again once
            // the hello leaves them out (SPEC §6.3 rule 1c).
            self.disconnect(true);
            self.reconnect_at = Some(Instant::now());
        }
        if let Some(failure) = handshakes_due.then(|| self.check_handshakes()).flatten() {
            self.fail(failure);
            return true;
        }
        self.receive_all();
        if late && self.socket.is_some() {
            // Held up ourselves: what the orchestrator sent meanwhile may
            // not even have reached the socket yet. Start counting again.
            tracing::debug!(
                worker_id = %self.shared.worker_id,
                "turn ran late; the delay is not counted as orchestrator silence"
            );
            self.last_heard = self.last_heard.max(Instant::now());
        }
        self.send_blocked = false;
        self.retry_at = None;
        if self.hello_unsent && self.socket.is_some() {
            self.send_hello();
        }
        self.answer();
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
            if let Some(at) = self.hello_at {
                // Refused: the orchestrator expects nothing from us until
                // the next hello, and sends us nothing (no heartbeats to
                // judge it by, and a heartbeat of ours would only earn an
                // `unknown_worker`).
                if now >= at {
                    self.hello_at = None;
                    self.last_heard = now;
                    self.send_hello();
                }
            } else if now.duration_since(self.last_heard) > self.expiry {
                self.log_silence();
                self.disconnect(true);
                self.schedule_reconnect();
            } else if now >= self.next_heartbeat {
                self.send(&WorkerMessage::Heartbeat(Heartbeat {}));
                self.next_heartbeat = now + self.heartbeat_interval;
                // An idle worker lets go of what it sent long ago too.
                let capacity = self.shared.capacity as usize;
                self.recent
                    .keep(std::iter::empty(), now, 2 * self.expiry, capacity);
            }
        }
        if self.drained(now) {
            self.close();
            return true;
        }
        false
    }

    /// Says that no orchestrator answered for `expiry`: once as a warning
    /// when one was registered (the connection is lost), once at info when
    /// none was yet (waiting for one), and at debug level after that, so a
    /// worker left waiting does not fill its log.
    fn log_silence(&mut self) {
        let endpoint = &self.shared.config.endpoint;
        let worker_id = &self.shared.worker_id;
        if self.welcomed {
            tracing::warn!(
                %worker_id,
                "lost the orchestrator at {endpoint}: silent for {:?}; reconnecting",
                self.expiry
            );
        } else if !self.waiting_said {
            tracing::info!(%worker_id, "waiting for an orchestrator at {endpoint}");
        } else {
            tracing::debug!(
                %worker_id,
                "still no orchestrator at {endpoint} after {:?}; reconnecting",
                self.expiry
            );
        }
        self.waiting_said = true;
    }

    /// Takes turns until the socket has nothing more to read (or, while a
    /// send waits for room, nothing more to take), for a host that watches
    /// the socket's [`fd`](Self::fd) itself: that descriptor only signals
    /// changes, and a send can take the signal of a message that came in
    /// meanwhile. Returns when to be called again at the latest, or `None`
    /// once the connection is done.
    pub(crate) fn drive(&mut self) -> Option<Option<Instant>> {
        loop {
            let sent_before = self.sends_done;
            // The host watches the socket's descriptor only, not the
            // monitor's: look at the handshakes every turn.
            if self.turn(true) {
                return None;
            }
            let events = self
                .socket
                .as_ref()
                .and_then(|s| s.get_events().ok())
                .unwrap_or(zmq::PollEvents::empty());
            let more = events.contains(zmq::POLLIN)
                || (self.send_blocked
                    && events.contains(zmq::POLLOUT)
                    && self.sends_done > sent_before);
            if !more {
                let wake_at = self.next_wake();
                self.planned_wake = planned(wake_at);
                return Some(wake_at);
            }
        }
    }

    /// The descriptor that signals activity of the current socket (ZeroMQ's
    /// `ZMQ_FD`); it changes on reconnect, and there is none while waiting
    /// to reconnect.
    pub(crate) fn fd(&self) -> Option<SocketFd> {
        let fd = self.socket.as_ref()?.get_fd().ok()?;
        Some(SocketFd {
            fd,
            socket: self.sockets_opened,
        })
    }

    /// Reads how the socket's handshakes ended: the failure to stop with,
    /// when the orchestrator refuses this worker in a way no retry mends.
    fn check_handshakes(&mut self) -> Option<WorkerError> {
        let events = self.handshakes.as_ref()?.drain();
        let endpoint = &self.shared.config.endpoint;
        let server_key_file = &self.shared.config.curve_server_public_key_file;
        for event in events {
            let why = match event.outcome {
                Handshake::Succeeded => {
                    self.handshakes_closed = 0;
                    continue;
                }
                Handshake::Refused { status } => {
                    let key = self.curve.as_ref().map(|c| c.keys.public().to_string());
                    format!(
                        "the orchestrator at {endpoint} refused this worker's CURVE key {} \
                         (ZAP status {status}): add its public key file (NAME.pub) to the \
                         orchestrator's curve_authorized_keys_dir",
                        key.unwrap_or_default()
                    )
                }
                Handshake::MechanismMismatch if self.curve.is_some() => format!(
                    "the orchestrator at {endpoint} does not use CURVE, but this worker has \
                     curve_server_public_key_file set: turn CURVE on at the orchestrator \
                     (curve_authorized_keys_dir) or off here"
                ),
                Handshake::MechanismMismatch => format!(
                    "the orchestrator at {endpoint} requires CURVE: set \
                     curve_server_public_key_file (its public key) and curve_secret_key_file \
                     (this worker's secret key, from `tasker keygen NAME`)"
                ),
                Handshake::Cryptographic => format!(
                    "the CURVE handshake with {endpoint} failed: {server_key_file} \
                     (curve_server_public_key_file) is not the orchestrator's public key"
                ),
                Handshake::Closed | Handshake::Protocol(_) => {
                    self.handshakes_closed += 1;
                    if self.handshakes_closed < HANDSHAKES_CLOSED_LIMIT {
                        continue;
                    }
                    if self.curve.is_some() {
                        format!(
                            "the orchestrator at {endpoint} closed {HANDSHAKES_CLOSED_LIMIT} \
                             CURVE handshakes in a row: either it does not use CURVE, or \
                             {server_key_file} (curve_server_public_key_file) is not its \
                             public key"
                        )
                    } else {
                        // A CURVE orchestrator and an HTTP server (the
                        // API port beside the ZeroMQ one) look alike here.
                        format!(
                            "the orchestrator at {endpoint} closed {HANDSHAKES_CLOSED_LIMIT} \
                             handshakes in a row: either it requires CURVE (set \
                             curve_server_public_key_file and curve_secret_key_file), or what \
                             listens there is not a tasker orchestrator (`tasker serve` prints \
                             its ZeroMQ endpoint as `zeromq tcp://...`, beside its HTTP `api`)"
                        )
                    }
                }
            };
            return Some(WorkerError::Refused(why));
        }
        None
    }

    /// Stops for good: no retry can mend `failure`. Steps held go unanswered
    /// (the orchestrator counts them lost and runs them again elsewhere).
    fn fail(&mut self, failure: WorkerError) {
        tracing::error!(worker_id = %self.shared.worker_id, error = %failure, "worker stops");
        self.shared.inbox.lock().expect("inbox lock").failure = Some(failure);
        self.disconnect(false);
        self.close();
    }

    fn close(&mut self) {
        self.shared.set_state(RuntimeState::Stopped);
        {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            inbox.closed = true;
            self.shared.steps_ready.notify_all();
            self.shared.closed.notify_all();
        }
        self.shared.wake_host();
        tracing::debug!(worker_id = %self.shared.worker_id, "worker connection closed");
    }

    fn next_wake(&self) -> Option<Instant> {
        let mut at = earliest(self.reconnect_at, self.hello_at);
        if self.socket.is_some() && self.hello_at.is_none() {
            at = earliest(at, Some(self.next_heartbeat));
            at = earliest(
                at,
                Some(self.last_heard + self.expiry + Duration::from_millis(1)),
            );
        }
        at = earliest(at, self.retry_at);
        earliest(at, self.drain_deadline)
    }

    /// Lets go of the steps received and not handed to a handler yet, so
    /// that no hello lists them and none starts; how many. After a pause
    /// past expiry the orchestrator has likely ended them `WorkerLost` and
    /// run them again elsewhere: started on resuming, they ran after their
    /// step, or their whole task, had ended (the chaos run with Python
    /// workers: 14 such runs, 5 in tasks that had already failed).
    fn let_go_of_unstarted(&mut self) -> usize {
        let unstarted: Vec<StepRef> = {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            inbox.steps.drain(..).map(|step| step.step_ref()).collect()
        };
        for step in &unstarted {
            self.held.remove(step);
        }
        let waiting = self.deferred.len();
        self.deferred.clear();
        unstarted.len() + waiting
    }

    /// Closes the socket. `flush`: the peer may only be held up (it went
    /// silent), so what is still queued for it (results already counted as
    /// sent) may go out on the old connection for `linger_ms`, where it
    /// still holds those steps; otherwise (it said goodbye) it is dropped.
    fn disconnect(&mut self, flush: bool) {
        if let Some(mut socket) = self.socket.take() {
            if let Some(handshakes) = self.handshakes.take() {
                handshakes.stop(&mut socket);
            }
            let linger = if flush {
                self.shared.config.linger_ms
            } else {
                0
            };
            let _ = socket.set_linger(linger);
        }
        self.hold_recent_again();
        self.forget_peer();
    }

    /// Counts the results sent lately as not sent: the next hello lists
    /// them and they go out again after its welcome (SPEC §5 rule 18).
    ///
    /// What ZeroMQ took lately may still have been in its queue when the
    /// socket closed, or when the connection under it was replaced (the
    /// orchestrator answers `unknown_worker`): the queue goes with it.
    /// Counted as sent, those steps were in no hello, and the orchestrator
    /// took them for never received and ran them again as the same attempt,
    /// or ended them `WorkerLost` (a worker that resumed from a pause wrote
    /// its results to the connection of an orchestrator that had stopped
    /// meanwhile; results queued behind large ones while the orchestrator
    /// was stopped). An answer the orchestrator already has it drops. The
    /// hello lists at most the capacity: the latest sent fill the room.
    fn hold_recent_again(&mut self) {
        let room = (self.shared.capacity as usize).saturating_sub(self.in_progress().len());
        let (results, from) = self.recent.take(room);
        if !results.is_empty() {
            tracing::debug!(
                results = results.len(),
                "results sent lately go out again after the welcome"
            );
        }
        self.sent_before += results.len();
        for (result, from) in results.into_iter().zip(from).rev() {
            self.unsent.push_front(result);
            self.unsent_from.push_front(from);
        }
    }

    fn schedule_reconnect(&mut self) {
        self.reconnect_at = Some(Instant::now() + self.backoff);
        self.grow_backoff();
    }

    fn grow_backoff(&mut self) {
        let max = Duration::from_millis(self.shared.config.reconnect_max_ms);
        self.backoff = (self.backoff * 2).min(max);
    }

    fn receive_all(&mut self) {
        loop {
            let Some(socket) = &self.socket else {
                return;
            };
            let frames = match tasker_transport::recv_frames(socket, zmq::DONTWAIT) {
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
                    let reply = WorkerMessage::ProtocolError(tasker_protocol::ProtocolError {
                        code: error.code(),
                        message: error.to_string(),
                    });
                    self.send(&reply);
                }
            }
            // See `ANSWER_APART`.
            if self.inline_steps.len() >= ANSWER_APART {
                self.answer();
            }
        }
    }

    fn handle(&mut self, message: OrchestratorMessage) {
        match message {
            OrchestratorMessage::Welcome(welcome) => {
                // The answer to a second hello said for a second
                // `unknown_worker` in a row (rule 12): said once is enough.
                let again = self.welcomed
                    && self.orchestrator_id.as_deref() == Some(welcome.orchestrator_id.as_str());
                self.welcomed = true;
                self.hello_at = None;
                self.refusals = 0;
                self.refusal_warned = None;
                self.orchestrator_id = Some(welcome.orchestrator_id.as_str().into());
                self.backoff = Duration::from_millis(self.shared.config.reconnect_initial_ms);
                // The orchestrator's timing rules, so both sides agree on death.
                // Clamped so that absurd values cannot overflow our clocks.
                let interval_ms = welcome.heartbeat_interval_ms.clamp(1, 3_600_000);
                self.heartbeat_interval = Duration::from_millis(interval_ms);
                self.expiry = self.heartbeat_interval * welcome.liveness.clamp(1, 1_000);
                self.peer_max_bytes = usize::try_from(welcome.max_message_bytes)
                    .unwrap_or(usize::MAX)
                    .max(1024);
                self.shared
                    .max_json_depth
                    .store(welcome.max_json_depth.min(DEPTH_CAP), Ordering::Release);
                // A shorter interval takes effect now, not after the beat
                // scheduled under our own (longer) one: by then the
                // orchestrator may have declared us dead.
                self.next_heartbeat = self
                    .next_heartbeat
                    .min(Instant::now() + self.heartbeat_interval);
                if !self.stopping() {
                    self.shared.set_state(RuntimeState::Connected);
                }
                self.waiting_said = false;
                if again {
                    tracing::debug!(orchestrator_id = %welcome.orchestrator_id, "welcomed again");
                } else {
                    tracing::info!(
                        worker_id = %self.shared.worker_id,
                        endpoint = %self.shared.config.endpoint,
                        handlers = %self.shared.handlers.join(","),
                        orchestrator_id = %welcome.orchestrator_id,
                        "registered with orchestrator"
                    );
                }
            }
            OrchestratorMessage::StepBatchRequest(batch) => {
                let steps = batch.steps.into_iter().map(Received::Typed).collect();
                self.receive_steps(&batch.batch_id, steps);
            }
            OrchestratorMessage::Heartbeat(_) => {}
            OrchestratorMessage::Goodbye(goodbye) => {
                tracing::info!(reason = %goodbye.reason, "orchestrator said goodbye; will reconnect");
                self.disconnect(false);
                self.schedule_reconnect();
            }
            OrchestratorMessage::ProtocolError(error) => match error.code {
                // Never answered: a reply to a protocol error could loop.
                ProtocolErrorCode::UnknownWorker => {
                    if self.hello_at.is_some() {
                        // A hello is due after the backoff already.
                        return;
                    }
                    // One comes for each message sent before the hello was
                    // read (a heartbeat, results), each answered with a
                    // hello: the log says the first.
                    if self.welcomed {
                        tracing::info!(
                            "orchestrator does not know this worker; saying hello again"
                        );
                    } else {
                        tracing::debug!(
                            "unknown_worker again before the welcome; saying hello again"
                        );
                    }
                    // It takes no results from us until it welcomes us again.
                    self.welcomed = false;
                    self.hold_recent_again();
                    self.set_unregistered_state();
                    self.send_hello();
                }
                ProtocolErrorCode::WorkerIdInUse | ProtocolErrorCode::RegistryFull => {
                    self.refusals += 1;
                    let due = self
                        .refusal_warned
                        .map_or(true, |at| at.elapsed() >= REFUSAL_WARNING_EVERY);
                    if due {
                        tracing::warn!(
                            worker_id = %self.shared.worker_id,
                            code = ?error.code,
                            reason = %codec::truncate(&error.message, 200),
                            refusals = self.refusals,
                            "orchestrator refused the hello; saying hello again in {:?} \
                             (said again at most once a minute while it refuses)",
                            self.backoff
                        );
                        self.refusal_warned = Some(Instant::now());
                    } else {
                        tracing::debug!(
                            code = ?error.code,
                            refusals = self.refusals,
                            "orchestrator refused the hello again"
                        );
                    }
                    self.welcomed = false;
                    self.set_unregistered_state();
                    self.hello_at = Some(Instant::now() + self.backoff);
                    self.grow_backoff();
                }
                _ => {
                    tracing::warn!(
                        code = ?error.code,
                        reason = %codec::truncate(&error.message, 200),
                        "orchestrator refused a message"
                    );
                }
            },
        }
    }

    /// Decodes a message: typed in one pass, unless the host takes steps
    /// as JSON text or the typed decode cannot build a step of an otherwise
    /// valid batch (then that step fails alone, as `InvalidStep`, when
    /// pulled).
    fn decode(&self, frames: &tasker_transport::Frames) -> Result<Inbound, DecodeError> {
        if !frames.is_whole() {
            return Err(DecodeError::FrameCount(frames.count()));
        }
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
        let Some(orchestrator_id) = self.orchestrator_id.clone() else {
            // Steps come only after a welcome; without one they answer no
            // orchestrator we could name.
            tracing::warn!(
                batch_id = %codec::truncate(batch_id, 64),
                steps = steps.len(),
                "steps received before any welcome on this connection; ignored"
            );
            return;
        };
        let from = Delivery {
            batch_id: batch_id.into(),
            orchestrator_id,
        };
        let count = steps.len();
        let delivered = {
            let mut inbox = self.shared.inbox.lock().expect("inbox lock");
            let mut delivered = false;
            for step in steps {
                let key = step.step_ref();
                match self.held.get(&key) {
                    Some(held) if held.orchestrator_id == from.orchestrator_id => {
                        // Delivered twice by the same orchestrator: the one
                        // result answers both (and it may have started, so
                        // it is never returned).
                        tracing::warn!(
                            step_id = key.step_id,
                            attempt = key.attempt,
                            "step attempt delivered again while held; ignored"
                        );
                    }
                    _ if inbox.stopping => self.to_return.push(from.held(key)),
                    None => {
                        self.held.insert(key, from.clone());
                        match self
                            .shared
                            .inline
                            .as_ref()
                            .and_then(|i| i.handler_of(&step))
                        {
                            Some(handler) => self.inline_steps.push((handler, step)),
                            None => {
                                inbox.steps.push_back(step);
                                delivered = true;
                            }
                        }
                    }
                    Some(_) => {
                        tracing::info!(
                            step_id = key.step_id,
                            attempt = key.attempt,
                            "an earlier orchestrator's step with the same id and attempt is still held; this one waits for it"
                        );
                        self.deferred.push_back((step, from.clone()));
                    }
                }
            }
            if delivered {
                self.shared.steps_ready.notify_one();
            }
            delivered
        };
        tracing::debug!(batch_id, steps = count, "steps received");
        if delivered {
            self.shared.wake_host();
        }
    }

    /// Runs the inline steps read so far and sends what results are done,
    /// the handler threads' included.
    fn answer(&mut self) {
        self.run_inline();
        self.take_results();
        self.send_results();
    }

    /// Runs the steps of inline handlers received this turn, here, and
    /// queues their results to go out with the turn's others. A long run
    /// sends what is done every [`INLINE_FLUSH`], as a handler thread
    /// would.
    fn run_inline(&mut self) {
        if self.inline_steps.is_empty() {
            return;
        }
        let Some(inline) = self.shared.inline.clone() else {
            return;
        };
        let max_depth = self.shared.max_json_depth.load(Ordering::Acquire);
        let mut done = Vec::with_capacity(self.inline_steps.len());
        let mut flushed_at = Instant::now();
        let mut started = flushed_at;
        let mut clock = WallClock::at(flushed_at);
        for (handler, step) in std::mem::take(&mut self.inline_steps) {
            let (result, ended) =
                inline.run(handler, step, &self.shared.worker_id, started, &clock);
            started = ended;
            done.push(encode_checked(&result, max_depth));
            if ended.duration_since(flushed_at) >= INLINE_FLUSH {
                self.shared
                    .outbox
                    .lock()
                    .expect("outbox lock")
                    .append(&mut done);
                self.take_results();
                self.send_results();
                flushed_at = Instant::now();
                started = flushed_at;
                clock = WallClock::at(flushed_at);
            }
        }
        // The turn takes and sends these next, with the handler threads'.
        self.shared
            .outbox
            .lock()
            .expect("outbox lock")
            .append(&mut done);
    }

    /// Moves the results completed by the host into `unsent`, each tagged
    /// with where its step came from; a step waiting behind the one just
    /// answered is handed to the host.
    fn take_results(&mut self) {
        let done = std::mem::take(&mut *self.shared.outbox.lock().expect("outbox lock"));
        let mut released = false;
        for result in done {
            let step = result.step_ref();
            let Some(from) = self.held.remove(&step) else {
                tracing::warn!(
                    step_id = step.step_id,
                    attempt = step.attempt,
                    "result for a step this worker does not hold (answered twice?); dropped"
                );
                continue;
            };
            self.unsent.push_back(result);
            self.unsent_from.push_back(from);
            if let Some(at) = self.deferred.iter().position(|(s, _)| s.step_ref() == step) {
                let (next, from) = self.deferred.remove(at).expect("position exists");
                self.held.insert(step, from);
                let mut inbox = self.shared.inbox.lock().expect("inbox lock");
                if inbox.stopping {
                    inbox.returned.push(step);
                } else {
                    inbox.steps.push_back(next);
                    self.shared.steps_ready.notify_one();
                    released = true;
                }
            }
        }
        if released {
            self.shared.wake_host();
        }
    }

    /// Sends what results it can, in order: only on a welcomed connection,
    /// as many per message as fit what the orchestrator accepts (it would
    /// refuse a larger message whole), one orchestrator's per message.
    /// What ZeroMQ refuses stays for a later turn.
    fn send_results(&mut self) {
        if !self.welcomed || self.socket.is_none() {
            // Kept for the welcome.
            return;
        }
        while !self.unsent.is_empty() {
            let from = self.unsent_from[0].clone();
            let envelope = raw::response_envelope_len(&from.batch_id, &from.orchestrator_id);
            let alone = envelope + self.unsent[0].json().len();
            if alone > self.peer_max_bytes {
                let failed = self.too_large(&self.unsent[0], alone);
                self.unsent[0] = failed;
            }
            let mut size = envelope + self.unsent[0].json().len();
            let mut n = 1;
            while n < self.unsent.len() && n < RESULTS_PER_MESSAGE {
                if self.unsent_from[n].orchestrator_id != from.orchestrator_id {
                    break;
                }
                let grown = size + 1 + self.unsent[n].json().len();
                if grown > self.peer_max_bytes {
                    break;
                }
                size = grown;
                n += 1;
            }
            let frames = raw::encode_results(
                &from.batch_id,
                &from.orchestrator_id,
                &self.unsent.make_contiguous()[..n],
            );
            let socket = self.socket.as_ref().expect("checked above");
            match socket.send_multipart(frames, zmq::DONTWAIT) {
                Ok(()) => {
                    let now = Instant::now();
                    self.sent_before = self.sent_before.saturating_sub(n);
                    let sent = self.unsent.drain(..n).zip(self.unsent_from.drain(..n));
                    let capacity = self.shared.capacity as usize;
                    self.recent.keep(sent, now, 2 * self.expiry, capacity);
                    self.sends_done += 1;
                }
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    // EAGAIN: the high-water mark. Kept, in order, for when
                    // the socket takes messages again.
                    tracing::debug!(error = %e, unsent = self.unsent.len(), "results not sent yet");
                    self.wait_for_room();
                    return;
                }
            }
        }
    }

    /// A send was refused for now: poll for room, and try again by the
    /// next heartbeat interval at the latest.
    fn wait_for_room(&mut self) {
        self.send_blocked = true;
        self.retry_at = Some(Instant::now() + self.heartbeat_interval);
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
        let mut given_back = std::mem::take(&mut self.to_return);
        for step in returned {
            if let Some(from) = self.held.remove(&step) {
                given_back.push(from.held(step));
            }
        }
        given_back.extend(
            self.deferred
                .drain(..)
                .map(|(step, from)| from.held(step.step_ref())),
        );
        if self.drain_sent && given_back.is_empty() {
            return;
        }
        let drain = WorkerMessage::Drain(WorkerDrain {
            returned: given_back,
        });
        // The stop's clock starts at the first try: with no connection up
        // (no orchestrator to tell) the stop still ends by the deadline.
        if self.drain_deadline.is_none() {
            self.drain_deadline = Some(Instant::now() + self.shared.config.shutdown_timeout());
        }
        if !self.send(&drain) {
            // Kept for the next try (still ours: a hello meanwhile lists
            // them).
            if let WorkerMessage::Drain(drain) = drain {
                self.to_return = drain.returned;
            }
            self.wait_for_room();
            return;
        }
        self.sends_done += 1;
        if !self.drain_sent {
            self.drain_sent = true;
            self.shared.set_state(RuntimeState::Draining);
            tracing::info!(worker_id = %self.shared.worker_id, "draining");
        }
    }

    /// True once stopping and every step in hand is answered and its result
    /// sent (or the drain deadline passed); says goodbye on the way out.
    fn drained(&mut self, now: Instant) -> bool {
        if !self.drain_sent && self.drain_deadline.is_none() {
            // Not stopping.
            return false;
        }
        let in_hand = self.shared.inbox.lock().expect("inbox lock").in_hand.len();
        // Results held again after a reconnect most likely reached the
        // orchestrator already: a stop does not wait for a welcome to send
        // them again (the goodbye lists their steps as unanswered).
        let unsent = self.unsent.len() - self.sent_before.min(self.unsent.len())
            + self.shared.outbox.lock().expect("outbox lock").len();
        let timed_out = self.drain_deadline.is_some_and(|d| now >= d);
        if (in_hand > 0 || unsent > 0 || !self.to_return.is_empty()) && !timed_out {
            return false;
        }
        if timed_out && (in_hand > 0 || unsent > 0) {
            tracing::warn!(
                in_hand,
                unsent,
                "drain deadline passed; leaving with steps unanswered"
            );
        }
        // What is still held was received and may be running: the
        // orchestrator must not deliver it again. The rest of what it sent
        // never arrived here, and it may.
        let goodbye = Goodbye {
            reason: "worker stopping".into(),
            unanswered: self.in_progress(),
        };
        self.send(&WorkerMessage::Goodbye(goodbye));
        true
    }
}

/// When the coming turn is due: `wake_at`, or now when that has passed. A
/// deadline already behind us (a heartbeat due while the hello waited for a
/// connection that never came up) is not lateness: measured from it, a
/// worker waiting out its reconnect backoff warned that it "could not beat"
/// for 5 s, as if its thread had been busy.
fn planned(wake_at: Option<Instant>) -> Option<Instant> {
    wake_at.map(|at| at.max(Instant::now()))
}
