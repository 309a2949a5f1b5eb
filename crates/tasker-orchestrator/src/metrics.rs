use std::sync::atomic::{AtomicU64, Ordering};

/// Counters the I/O thread updates and anyone can read.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub submitted: AtomicU64,
    pub dispatched: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub timed_out: AtomicU64,
    pub worker_lost: AtomicU64,
    pub cancelled: AtomicU64,
    pub redelivered: AtomicU64,
    pub late_results_dropped: AtomicU64,
    pub duplicate_results_dropped: AtomicU64,
    pub malformed_messages: AtomicU64,
    pub unheld_results_dropped: AtomicU64,
    pub foreign_results_dropped: AtomicU64,
    pub invalid_results: AtomicU64,
    pub hellos_refused: AtomicU64,
    pub workers_connected: AtomicU64,
    pub workers_lost: AtomicU64,
    pub reclaimed: AtomicU64,
    pub keys_refused: AtomicU64,
    pub handshakes_failed: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            submitted: get(&self.submitted),
            dispatched: get(&self.dispatched),
            completed: get(&self.completed),
            failed: get(&self.failed),
            timed_out: get(&self.timed_out),
            worker_lost: get(&self.worker_lost),
            cancelled: get(&self.cancelled),
            redelivered: get(&self.redelivered),
            late_results_dropped: get(&self.late_results_dropped),
            duplicate_results_dropped: get(&self.duplicate_results_dropped),
            malformed_messages: get(&self.malformed_messages),
            unheld_results_dropped: get(&self.unheld_results_dropped),
            foreign_results_dropped: get(&self.foreign_results_dropped),
            invalid_results: get(&self.invalid_results),
            hellos_refused: get(&self.hellos_refused),
            workers_connected: get(&self.workers_connected),
            workers_lost: get(&self.workers_lost),
            reclaimed: get(&self.reclaimed),
            keys_refused: get(&self.keys_refused),
            handshakes_failed: get(&self.handshakes_failed),
        }
    }
}

/// The executor's counters at one moment.
///
/// `completed + failed + timed_out + cancelled` counts final results;
/// `worker_lost` is the part of `failed` due to lost workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Steps accepted by `submit`.
    pub submitted: u64,
    /// Step deliveries to workers (a redelivered step counts again).
    pub dispatched: u64,
    /// Steps that ended completed.
    pub completed: u64,
    /// Steps that ended failed (handler errors, lost workers, no worker).
    pub failed: u64,
    /// Steps that ended timed out.
    pub timed_out: u64,
    /// Steps failed because their worker died or left.
    pub worker_lost: u64,
    /// Steps abandoned at shutdown.
    pub cancelled: u64,
    /// Steps delivered again after a worker gave them back unstarted or could
    /// not be reached.
    pub redelivered: u64,
    /// Results that arrived after their step had ended (timed out, worker
    /// declared lost) and were discarded.
    pub late_results_dropped: u64,
    /// Results for steps that already had a result, or that were never in
    /// flight, discarded.
    pub duplicate_results_dropped: u64,
    /// Messages refused by the decoder (bad frames, version, JSON, size...).
    pub malformed_messages: u64,
    /// Results discarded because the connection they came on does not
    /// hold that step attempt (another does, it is queued, or the
    /// connection never said hello).
    pub unheld_results_dropped: u64,
    /// Results of steps delivered by another (earlier) orchestrator,
    /// discarded; their slots were freed.
    pub foreign_results_dropped: u64,
    /// Results refused one by one (output too deep to parse, lone
    /// surrogate, a status a worker may not report...); a step so answered
    /// ends `InvalidResult`.
    pub invalid_results: u64,
    /// Hellos refused (worker id in use, registry full, invalid).
    pub hellos_refused: u64,
    /// Workers registered now.
    pub workers_connected: u64,
    /// Workers declared dead by heartbeat expiry.
    pub workers_lost: u64,
    /// Steps dispatched by an earlier run of this orchestrator (see
    /// [`ZmqPubSubExecutor::resume`](crate::ZmqPubSubExecutor::resume))
    /// that a worker reclaimed.
    pub reclaimed: u64,
    /// Connections refused because their CURVE public key is not in
    /// `curve_authorized_keys_dir`.
    pub keys_refused: u64,
    /// Connections whose handshake failed: refused keys, plaintext against
    /// CURVE or the reverse, a wrong server key.
    pub handshakes_failed: u64,
}
