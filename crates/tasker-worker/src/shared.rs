//! State the runtime's two halves share: the host-facing half
//! ([`crate::runtime`]) and the socket half ([`crate::connection`]) each
//! use it, and neither uses the other's insides.

use std::collections::{BTreeMap, VecDeque};

use foldhash::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use tasker_config::TaskerConfig;
use tasker_protocol::raw::{EncodedResult, RawStep};
use tasker_protocol::{StepExecutionRequest, StepRef};
use tasker_transport::Doorbell;

use crate::inline::InlineHandlers;

/// Where a runtime is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeState {
    /// Hello sent, no welcome yet (also while reconnecting).
    Connecting,
    /// Welcomed by the orchestrator.
    Connected,
    /// Stopping: takes no new work, waits for running steps.
    Draining,
    /// The I/O thread has ended.
    Stopped,
}

impl RuntimeState {
    /// The lower-case name hosts show: `connecting`, `connected`,
    /// `draining` or `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeState::Connecting => "connecting",
            RuntimeState::Connected => "connected",
            RuntimeState::Draining => "draining",
            RuntimeState::Stopped => "stopped",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => RuntimeState::Connecting,
            1 => RuntimeState::Connected,
            2 => RuntimeState::Draining,
            _ => RuntimeState::Stopped,
        }
    }
}

/// A received step: decoded by the I/O thread, or checked and kept as JSON
/// text (see [`crate::event_loop::keep_raw_steps`]).
pub(crate) enum Received {
    Typed(StepExecutionRequest),
    Raw(RawStep),
}

impl Received {
    pub fn step_ref(&self) -> StepRef {
        match self {
            Received::Typed(step) => step.step_ref(),
            Received::Raw(step) => step.step_ref(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Inbox {
    /// Received and not pulled yet.
    pub steps: VecDeque<Received>,
    /// Pulled by the host and not completed yet.
    pub in_hand: HashSet<StepRef>,
    pub stopping: bool,
    pub closed: bool,
    /// Why the connection ended on its own, if it did (see
    /// [`WorkerError::Refused`](crate::WorkerError::Refused)).
    pub failure: Option<crate::WorkerError>,
    pub wakes: u64,
    /// Steps the host will never see, to give back in a drain message.
    pub returned: Vec<StepRef>,
}

pub(crate) struct Shared {
    pub worker_id: String,
    /// This run's `incarnation` (SPEC §6.6): drawn when the runtime is
    /// made, the same in each of its hellos, so the orchestrator can tell
    /// its reconnections from a new process under the same `worker_id`.
    pub incarnation: String,
    pub handlers: Vec<String>,
    pub capacity: u32,
    /// Per-handler concurrency limits announced in the hello.
    pub handler_limits: BTreeMap<String, u32>,
    pub language: String,
    pub config: TaskerConfig,
    pub inbox: Mutex<Inbox>,
    /// Pullers wait here, and only pullers: a delivery wakes one, and a
    /// puller that leaves steps behind wakes the next (with `notify_all`
    /// every batch woke every idle handler thread, and most went back to
    /// sleep with nothing). A waiter of any other kind could take that one
    /// wake-up and leave the steps waiting.
    pub steps_ready: Condvar,
    /// [`WorkerRuntime::join`](crate::WorkerRuntime::join) waits here, for
    /// the close or a `wake`. It had shared `steps_ready`, and the thread
    /// that waits for a worker's end (the CLI's, each SDK's main thread)
    /// was woken by every batch of steps for nothing.
    pub closed: Condvar,
    /// Results encoded by the threads that completed them; the I/O thread
    /// only frames them.
    pub outbox: Mutex<Vec<EncodedResult>>,
    pub doorbell: Doorbell,
    pub state: AtomicU8,
    /// Deepest nesting an output may have: the welcome's `max_json_depth`
    /// ([`MAX_JSON_DEPTH`] before any welcome).
    pub max_json_depth: AtomicU32,
    pub waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// See [`crate::event_loop::keep_raw_steps`].
    pub raw_steps: bool,
    /// Handlers whose steps the I/O thread runs itself, if any.
    pub inline: Option<Arc<InlineHandlers>>,
    /// Run by the host's [`crate::event_loop::Driver`]: no I/O thread
    /// listens to the doorbell.
    pub driven: bool,
}

impl Shared {
    pub fn set_state(&self, state: RuntimeState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Tells a host that set a waker that steps arrived or the runtime
    /// closed. Called with no lock held: the waker pulls.
    pub fn wake_host(&self) {
        if let Some(waker) = self.waker.get() {
            waker();
        }
    }
}

/// The descriptor of a driven connection's current socket
/// ([`crate::event_loop::Driver::fd`]).
///
/// ZeroMQ closes it with its socket, so a watcher should watch a duplicate
/// (`dup`) it owns: a closed descriptor's number may be reused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFd {
    /// The descriptor, owned by ZeroMQ.
    pub fd: std::os::fd::RawFd,
    /// Which socket it belongs to: a new value for each new socket.
    pub socket: u64,
}
