//! What the executor tells its caller about workers and shutdown.

use tasker_protocol::StepRef;

/// A registered worker, as the orchestrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The id the worker announced.
    pub worker_id: String,
    /// The handlers it serves (shared with the registry: a worker may
    /// announce a thousand long names, and every report would copy them).
    pub handlers: std::sync::Arc<[String]>,
    /// Its declared capacity.
    pub capacity: u32,
    /// Unfinished steps it holds now (including timed-out ones still
    /// running there, and steps of an earlier orchestrator).
    pub in_flight: usize,
    /// Whether it asked for no more work.
    pub draining: bool,
    /// The language it announced.
    pub language: Option<String>,
    /// Its process id, if announced.
    pub pid: Option<u32>,
    /// How long ago the orchestrator last heard from it (any message).
    pub last_heard: std::time::Duration,
}

/// How loaded the executor is now: what its gauges show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Load {
    /// Steps submitted and not yet at a worker.
    pub queued: u64,
    /// Steps sent to workers and not ended yet (a step that timed out
    /// where it still runs has ended; so has one a hello listed that this
    /// orchestrator never sent).
    pub in_flight: u64,
    /// The workers registered now.
    pub workers: Vec<WorkerInfo>,
}

impl Load {
    /// Steps the workers could take now: each one's free capacity, summed
    /// over those not draining.
    pub fn credit(&self) -> u64 {
        self.workers
            .iter()
            .filter(|w| !w.draining)
            .map(|w| u64::from(w.capacity).saturating_sub(w.in_flight as u64))
            .sum()
    }
}

/// What [`ZmqPubSubExecutor::shutdown`](crate::ZmqPubSubExecutor::shutdown) did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Steps that ended while the shutdown waited.
    pub finished_during_shutdown: u64,
    /// Steps still unfinished at the deadline; each ended `cancelled` with
    /// error type `Abandoned`.
    pub abandoned: Vec<StepRef>,
    /// Workers connected when the socket closed; each was sent a goodbye.
    pub workers_at_close: usize,
}
