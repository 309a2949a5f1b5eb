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
//!
//! The loop's own work is split by job: [`inbound`] reads and decodes,
//! [`hello`] registers, [`results`] takes what workers report, [`delivery`]
//! sends work, [`liveness`] beats and judges silence, [`ending`] gives each
//! step its one final result and stops.

mod delivery;
mod ending;
mod hello;
mod inbound;
mod limiter;
mod liveness;
mod quarantine;
mod registry;
mod results;
mod schedule;
mod steps;
mod unclaimed;
mod zap;

use std::collections::HashSet;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tasker_config::TaskerConfig;
use tasker_protocol::codec::{self, FromWorker, RefusedResult, ResultBatch};
use tasker_protocol::{
    error_types, raw, Goodbye, Heartbeat, HeldStep, OrchestratorMessage, ProtocolError,
    ProtocolErrorCode, StepExecutionError, StepExecutionResult, StepId, StepRef, StepStatus,
    Welcome, WorkerHello, WorkerMessage, MAX_JSON_DEPTH,
};
use tasker_transport::monitor::{release_endpoint, HandshakeMonitor};
use tasker_transport::{
    earliest, poll_timeout, recv_frames, send_message, wait, Doorbell, Frame, SendError, Waitable,
};
use tokio::sync::{oneshot, watch, Semaphore};

use crate::admission::{Admission, ConnRoom};
use crate::metrics::{Metrics, Recorder};
use crate::report::{Load, ShutdownReport, WorkerInfo};
use crate::ExecutorError;
use limiter::Limiter;
use quarantine::Quarantine;
use registry::{ConnId, Registry, RoutingId, StepSet, UNANSWERED_TIMEOUTS};
pub(crate) use steps::NewStep;
use steps::{BatchSink, Ended, StepEntry, StepState, StepTable};
use unclaimed::Unclaimed;
pub(crate) use zap::Zap;

/// Results produced by the orchestrator itself carry this worker id.
const ORCHESTRATOR_ID: &str = "orchestrator";
/// Most inbound messages handled before timers and dispatch get a turn.
const RECV_BURST: usize = 4_096;
/// After a stall, how long to keep reading while more input arrives before
/// judging anyone: ZeroMQ's own I/O thread was stopped too and needs a
/// moment to move what the kernel buffered into the socket's queues.
const CATCH_UP_QUIET: Duration = Duration::from_millis(20);
/// How recently the socket must have been read for a heartbeat tick to
/// judge silent workers on what is queued now, without a catch-up: no stall
/// can have hidden their input in so short a time.
const READ_RECENTLY: Duration = Duration::from_millis(50);
/// How long closing waits for ZeroMQ to close the listener: it takes
/// microseconds unless the context's I/O thread is stuck.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// Least time between two counts of what each handler's workers hold.
const CAPACITY_EVERY: Duration = Duration::from_millis(50);

/// Where a batch's results go: several at a time, as they end in one turn.
pub(crate) type ResultsSender = crate::sink::ResultSink;

pub(crate) enum Command {
    Submit {
        batch_id: String,
        steps: Vec<NewStep>,
        results: ResultsSender,
        reply: oneshot::Sender<Result<(), ExecutorError>>,
    },
    /// Steps an earlier run of this orchestrator dispatched, waiting for
    /// the workers that hold them (see `StepState::Orphaned`).
    Resume {
        batch_id: String,
        steps: Vec<NewStep>,
        grace: Duration,
        results: ResultsSender,
        reply: oneshot::Sender<Result<(), ExecutorError>>,
    },
    Workers {
        reply: oneshot::Sender<Vec<WorkerInfo>>,
    },
    Load {
        reply: oneshot::Sender<Load>,
    },
    /// The worker each step attempt is out at (see `ZmqPubSubExecutor::holders`).
    Holders {
        steps: Vec<StepRef>,
        reply: oneshot::Sender<Vec<Option<String>>>,
    },
    Shutdown {
        deadline: Instant,
        reply: Option<oneshot::Sender<ShutdownReport>>,
    },
    /// Ends these step attempts `cancelled` (`Withdrawn`) if they are still
    /// queued; one out at a worker, or already ended, is left alone. With
    /// `suspending`, one of an earlier run not reclaimed yet ends
    /// `Abandoned` rather than lost when its grace ends.
    Withdraw {
        steps: Vec<StepRef>,
        suspending: bool,
    },
    /// Start reading the socket (see `input_held`).
    ReleaseInput,
    /// Makes the I/O loop fail as it does when polling its socket fails, so
    /// that path can be tested.
    InjectFault,
}

/// The ZeroMQ sockets the I/O thread owns, with their context.
pub(crate) struct Sockets {
    pub socket: zmq::Socket,
    /// How each connection's handshake ended.
    pub handshakes: HandshakeMonitor,
    /// Present when CURVE is on.
    pub zap: Option<Zap>,
    /// Shared with a worker in this process if it asks
    /// (`ZmqPubSubExecutor::zmq_context`); the handle keeps only a weak
    /// reference, so the context ends with the last socket, as before.
    pub context: Arc<zmq::Context>,
}

/// What the I/O thread shares with the executor handle.
pub(crate) struct Channels {
    pub doorbell: Arc<Doorbell>,
    pub commands: mpsc::Receiver<Command>,
    pub metrics: Arc<Metrics>,
    /// Per-handler Prometheus metrics, when `metrics` is on.
    pub recorder: Option<Recorder>,
    pub permits: Arc<Semaphore>,
    pub workers_count: watch::Sender<usize>,
    pub admission: Admission,
}

struct Shutdown {
    deadline: Instant,
    reply: Option<oneshot::Sender<ShutdownReport>>,
    finished_before: u64,
    /// Steps of an earlier run no worker reclaimed before their grace
    /// ended, abandoned rather than lost since the stop began.
    abandoned: Vec<StepRef>,
}

pub(crate) struct Dispatcher {
    config: TaskerConfig,
    /// Sent in every welcome and echoed in results, so a result is never
    /// taken for a step of another orchestrator that reused its step id:
    /// new each start, unless a store keeps it (and never reuses step ids).
    orchestrator_id: String,
    // Field order matters: the sockets must close before the context.
    socket: zmq::Socket,
    handshakes: HandshakeMonitor,
    zap: Option<Zap>,
    _context: Arc<zmq::Context>,
    channels: Channels,

    steps: StepTable,
    /// Results ended this turn, by sink, and the queue permits they free:
    /// handed over once at the end of the turn, so a consumer is woken
    /// once per turn rather than once per step.
    ended: Vec<(Arc<BatchSink>, Vec<StepExecutionResult>)>,
    permits_freed: usize,
    registry: Registry,
    unclaimed: Unclaimed,
    warnings: Limiter,
    /// For the lines that say a worker registered, reconnected, drained,
    /// left or was declared dead.
    comings_and_goings: Limiter,
    quarantine: Quarantine,
    next_heartbeat: Instant,
    last_turn: Instant,
    /// When the socket was last read to its end (or to a burst's end), or
    /// polled and found empty.
    read_at: Instant,
    delivery_seq: u64,
    dispatch_needed: bool,
    /// Workers came, went or started draining since the admission was
    /// last told what they hold.
    capacity_changed: bool,
    capacity_published: Instant,
    /// Slots held by steps that timed out where they run, at the last count.
    stale_slots: usize,
    /// Least time between two counts (see `publish_capacity`).
    capacity_every: Duration,
    shutdown: Option<Shutdown>,
    /// Steps of an earlier run, not reclaimed yet, whose task was suspended
    /// by a stop: abandoned, not lost, when their grace ends.
    suspended_orphans: HashSet<StepId>,
    /// Nothing is read from the socket yet: a restarted orchestrator first
    /// learns which steps its earlier run left out, or a worker's answer
    /// to one, arriving first, would be taken for a stray result.
    input_held: bool,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        // Before the fields go: see `HandshakeMonitor::stop`.
        self.handshakes.stop(&mut self.socket);
        // A context shared with a worker outlives the socket, and with it
        // the listener: the port would still be taken when `shutdown`
        // returns, and the next start on it would fail.
        if let Ok(Ok(endpoint)) = self.socket.get_last_endpoint() {
            if !release_endpoint(&self._context, &mut self.socket, &endpoint, RELEASE_WAIT) {
                tracing::debug!(%endpoint, "the endpoint was not seen released");
            }
        }
    }
}

impl Dispatcher {
    pub(crate) fn new(
        config: TaskerConfig,
        orchestrator_id: String,
        sockets: Sockets,
        channels: Channels,
        input_held: bool,
    ) -> Self {
        let now = Instant::now();
        Self {
            input_held,
            orchestrator_id,
            next_heartbeat: now + config.heartbeat_interval(),
            registry: Registry::new(
                config.max_workers,
                config
                    .max_message_bytes
                    .saturating_mul(registry::HELLO_BYTES_PER_MESSAGE),
            ),
            unclaimed: Unclaimed::new(config.max_message_bytes),
            config,
            socket: sockets.socket,
            handshakes: sockets.handshakes,
            zap: sockets.zap,
            _context: sockets.context,
            channels,
            steps: StepTable::default(),
            ended: Vec::new(),
            permits_freed: 0,
            warnings: Limiter::warnings(),
            comings_and_goings: Limiter::comings_and_goings(),
            quarantine: Quarantine::default(),
            last_turn: now,
            read_at: now,
            delivery_seq: 0,
            dispatch_needed: false,
            capacity_changed: false,
            // The first workers are counted at once.
            capacity_published: now.checked_sub(CAPACITY_EVERY).unwrap_or(now),
            stale_slots: 0,
            capacity_every: CAPACITY_EVERY,
            shutdown: None,
            suspended_orphans: HashSet::new(),
        }
    }

    pub(crate) fn run(mut self) {
        let stopped = loop {
            let wake_at = earliest(Some(self.next_heartbeat), self.steps.next_deadline());
            let wake_at = earliest(wake_at, self.shutdown.as_ref().map(|s| s.deadline));
            let wake_at = earliest(wake_at, self.capacity_due());
            let (socket_ready, bell_rang, handshakes, zap_asks) = {
                let events = if self.input_held {
                    zmq::PollEvents::empty()
                } else {
                    zmq::POLLIN
                };
                let zap = self.zap.as_ref().map(Zap::waitable);
                let items = [
                    Waitable::Socket(&self.socket, events),
                    Waitable::Fd(self.channels.doorbell.fd()),
                    self.handshakes.waitable(),
                    zap.unwrap_or(Waitable::Fd(-1)),
                ];
                let polled = if zap.is_some() { 4 } else { 3 };
                match wait(&items[..polled], poll_timeout(wake_at)) {
                    Ok(ready) => (ready[0], ready[1], ready[2], ready[3]),
                    Err(e) => break Some(format!("polling the socket failed: {e}")),
                }
            };
            if !socket_ready && !self.input_held {
                self.read_at = Instant::now();
            }
            if bell_rang {
                self.channels.doorbell.drain();
            }
            // Answered even while input is held: a worker waiting in its
            // handshake would otherwise wait for nothing.
            if zap_asks {
                if let Some(zap) = &mut self.zap {
                    zap.serve(&self.channels.metrics, &mut self.warnings);
                }
            }
            if handshakes {
                for event in self.handshakes.drain() {
                    zap::log_handshake(
                        &event,
                        self.zap.is_some(),
                        &mut self.warnings,
                        &self.channels.metrics,
                    );
                }
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
            self.publish_capacity(now);
            self.hand_over_results();
            self.warnings.flush();
            self.comings_and_goings.flush();
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
        self.steps.forgive(late);
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
                    batch_id,
                    steps,
                    results,
                    reply,
                }) => {
                    let outcome = self.accept_batch(batch_id, steps, results);
                    let _ = reply.send(outcome);
                }
                Ok(Command::Resume {
                    batch_id,
                    steps,
                    grace,
                    results,
                    reply,
                }) => {
                    let outcome = self.accept_orphans(batch_id, steps, grace, results);
                    let _ = reply.send(outcome);
                }
                Ok(Command::Workers { reply }) => {
                    let _ = reply.send(self.worker_infos());
                }
                Ok(Command::Load { reply }) => {
                    let workers = self.worker_infos();
                    let _ = reply.send(Load {
                        queued: self.steps.queued() as u64,
                        // From the step table, not the workers' slots: a
                        // hello's `in_progress` may list invented steps,
                        // and 300 peers listing 5,000 each read 1.5 million.
                        in_flight: self.steps.len().saturating_sub(self.steps.queued()) as u64,
                        workers,
                    });
                }
                Ok(Command::Holders { steps, reply }) => {
                    let holders = steps
                        .into_iter()
                        .map(|step| {
                            let conn = self.steps.holder_of(step)?;
                            Some(self.registry.get(conn)?.worker_id.to_string())
                        })
                        .collect();
                    let _ = reply.send(holders);
                }
                Ok(Command::Shutdown { deadline, reply }) => self.begin_shutdown(deadline, reply),
                Ok(Command::Withdraw { steps, suspending }) => self.withdraw(&steps, suspending),
                Ok(Command::ReleaseInput) => {
                    self.input_held = false;
                    // Time spent held was ours, not the workers'.
                    self.last_turn = Instant::now();
                }
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
                abandoned: Vec::new(),
            });
        }
    }

    /// Refuses a batch whose steps are still in flight, or that came
    /// after the shutdown began; gives its queue permits back when it does.
    fn refuse_batch(&self, steps: &[NewStep]) -> Result<(), ExecutorError> {
        let refusal = if self.shutdown.is_some() {
            Some(ExecutorError::ShutDown)
        } else {
            steps.iter().find_map(|s| {
                let step = s.step.step_ref();
                if self.steps.contains(step.step_id) {
                    Some(ExecutorError::DuplicateStep {
                        step_id: step.step_id,
                    })
                } else if self.steps.ended_by_orchestrator(step) {
                    Some(ExecutorError::AttemptEnded {
                        step_id: step.step_id,
                        attempt: step.attempt,
                    })
                } else {
                    None
                }
            })
        };
        match refusal {
            Some(e) => {
                self.channels.permits.add_permits(steps.len());
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn accept_batch(
        &mut self,
        batch_id: String,
        steps: Vec<NewStep>,
        results: ResultsSender,
    ) -> Result<(), ExecutorError> {
        self.refuse_batch(&steps)?;
        let n = steps.len();
        let sink = Arc::new(BatchSink { batch_id, results });
        let now = Instant::now();
        self.steps.reserve(n);
        for step in steps {
            self.steps.insert(step, Arc::clone(&sink), now);
        }
        Metrics::add(&self.channels.metrics.submitted, n as u64);
        tracing::debug!(batch_id = %sink.batch_id, steps = n, "batch accepted");
        self.dispatch_needed = true;
        Ok(())
    }

    fn accept_orphans(
        &mut self,
        batch_id: String,
        steps: Vec<NewStep>,
        grace: Duration,
        results: ResultsSender,
    ) -> Result<(), ExecutorError> {
        self.refuse_batch(&steps)?;
        let n = steps.len();
        let sink = Arc::new(BatchSink { batch_id, results });
        let now = Instant::now();
        self.steps.reserve(n);
        for step in steps {
            self.steps
                .insert_orphan(step, Arc::clone(&sink), grace, now);
        }
        Metrics::add(&self.channels.metrics.submitted, n as u64);
        tracing::info!(
            steps = n,
            grace_ms = grace.as_millis() as u64,
            "waiting for workers to reclaim steps dispatched before the restart"
        );
        Ok(())
    }

    fn finished_total(&self) -> u64 {
        let m = self.channels.metrics.snapshot();
        m.completed + m.failed + m.timed_out + m.cancelled
    }

    fn worker_infos(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let mut infos: Vec<WorkerInfo> = self
            .registry
            .iter()
            .filter(|(_, c)| !c.retired)
            .map(|(_, c)| WorkerInfo {
                worker_id: c.worker_id.to_string(),
                handlers: Arc::clone(&c.handlers),
                capacity: c.capacity,
                in_flight: c.in_flight(),
                draining: c.draining,
                language: c.language.clone(),
                pid: c.pid,
                last_heard: now.saturating_duration_since(c.last_seen),
            })
            .collect();
        infos.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        infos
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
