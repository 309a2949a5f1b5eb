//! Liveness: heartbeats out, silent connections removed, retired ones
//! settled, unreachable ones noticed (§7).

use super::*;

/// How long a connection has been registered for its death to be said
/// whatever the rate limit of comings and goings.
const SERVED_A_WHILE: Duration = Duration::from_secs(60);

impl Dispatcher {
    pub(super) fn heartbeat_tick(&mut self, now: Instant) {
        let interval = self.config.heartbeat_interval();
        while self.next_heartbeat <= now {
            self.next_heartbeat += interval;
        }
        // Retries deliveries refused earlier by a full pipe.
        self.dispatch_needed = true;
        self.quarantine.expire(now);
        // Slots of timed-out steps free up when their late results come:
        // counted again at each tick while any are held.
        if self.stale_slots > 0 {
            self.capacity_changed = true;
        }
        let expiry = self.config.peer_expiry();
        if !self.registry.silent(now, expiry).is_empty() {
            if now.saturating_duration_since(self.read_at) > READ_RECENTLY {
                // Judge only after reading what is already queued: a stall
                // of this process (stopped, starved) between the last read
                // and now leaves heartbeats and results waiting here.
                self.catch_up();
            } else {
                // Read moments ago, so nothing of theirs waits but what
                // came since. Not a catch-up: it reads until the input
                // pauses, and with any peer sending every few milliseconds
                // it read a whole heartbeat interval at each tick, nothing
                // dispatched meanwhile (peers going silent one a tick held
                // every step for up to a second).
                self.receive_burst();
            }
        }
        let now = Instant::now();
        let heartbeat = OrchestratorMessage::Heartbeat(Heartbeat {});
        // A retired connection gets its heartbeat first, before silence is
        // judged: that send is how its end is noticed (EHOSTUNREACH), and
        // one its worker closed since the last tick would otherwise be
        // judged while still taken for open.
        self.send_heartbeats(&heartbeat, |c| c.retired);
        // Before silence is judged: a retired connection that is gone holds
        // only steps its worker never received, and a stall of this process
        // (two SIGSTOPs in a row, in the soak) can carry it past expiry
        // before any tick found it settled; judged first, those steps
        // would fail `WorkerLost` against a worker that lost nothing.
        self.settle_retired(now);
        for conn in self.registry.silent(now, expiry) {
            Metrics::add(&self.channels.metrics.workers_lost, 1);
            if let Some(c) = self.registry.get(conn) {
                // Said whatever the rate limit: peers saying hello and
                // going a hundred a second used it up, and the death of a
                // worker that held work or had served for a while went
                // unsaid. Neither can be had in bulk.
                let holds_work = c.occupied.iter().any(|s| self.steps.held_by(*s, conn));
                let served = now.saturating_duration_since(c.registered_at) >= SERVED_A_WHILE;
                if holds_work || served || self.comings_and_goings.allow_conn(conn) {
                    tracing::warn!(
                        worker_id = %codec::quoted(&c.worker_id, 64),
                        retired = c.retired,
                        "worker silent for {expiry:?}: declared dead"
                    );
                }
            }
            self.remove_worker(conn, "no heartbeat");
        }
        let expired = self.unclaimed.expire(now, expiry);
        Metrics::add(
            &self.channels.metrics.unheld_results_dropped,
            expired as u64,
        );
        self.send_heartbeats(&heartbeat, |c| !c.retired);
        self.channels.admission.warn_unserved_past_grace(now);
    }

    /// Sends `heartbeat` to every connection not known gone that `which`
    /// picks.
    fn send_heartbeats(
        &mut self,
        heartbeat: &OrchestratorMessage,
        which: impl Fn(&registry::Conn) -> bool,
    ) {
        let peers: Vec<(ConnId, RoutingId)> = self
            .registry
            .iter()
            .filter(|(_, c)| !c.gone && which(c))
            .map(|(id, c)| (id, c.routing_id.clone()))
            .collect();
        for (conn, routing_id) in peers {
            if let Err(e) = send_message(&self.socket, Some(&routing_id), heartbeat) {
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
    /// a connection the worker has already closed.) Not so when the hello
    /// came from another run of the worker (`replaced`): a process killed
    /// and started again under its `worker_id` within expiry lists nothing,
    /// and its steps, started by the dead one, ran twice as one attempt.
    pub(super) fn settle_retired(&mut self, now: Instant) {
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
            if self.registry.get(conn).is_some_and(|c| c.replaced) {
                self.remove_worker(conn, "its process was replaced");
                continue;
            }
            let Some(c) = self.registry.remove(conn) else {
                continue;
            };
            let never_received: Vec<StepRef> = c
                .occupied
                .iter()
                .copied()
                .filter(|step| self.steps.held_by(*step, conn))
                .collect();
            let redelivered = self.deliver_again(never_received);
            if redelivered > 0 {
                tracing::info!(
                    worker_id = %codec::quoted(&c.worker_id, 64),
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
    pub(super) fn unreachable(&mut self, conn: ConnId, error: &SendError) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        match error {
            SendError::Zmq(zmq::Error::EHOSTUNREACH) => {
                if !c.gone {
                    c.gone = true;
                    if self.comings_and_goings.allow_conn(conn) {
                        tracing::info!(
                            worker_id = %codec::quoted(&c.worker_id, 64),
                            "worker connection closed; it gets no more work"
                        );
                    }
                    self.dispatch_needed = true;
                }
            }
            SendError::Zmq(zmq::Error::EAGAIN) => {
                tracing::debug!(worker_id = %codec::quoted(&c.worker_id, 64), "worker pipe full");
            }
            other => tracing::error!(error = %other, "cannot send to worker"),
        }
    }

    /// Forgets a connection; every step it held that is still in flight
    /// ends failed with a retryable `WorkerLost` (it may have started).
    pub(super) fn remove_worker(&mut self, conn: ConnId, why: &str) {
        let Some(c) = self.registry.remove(conn) else {
            return;
        };
        // Counted before the steps end: whoever their results wake must see
        // the worker gone.
        self.publish_worker_count();
        self.dispatch_needed = true;
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
    }

    pub(super) fn publish_worker_count(&mut self) {
        let n = self.registry.workers();
        self.channels
            .metrics
            .workers_connected
            .store(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.channels.workers_count.send_replace(n);
        self.capacity_changed = true;
    }

    /// Tells the admission what each connection taking work can hold
    /// now, at most once per [`CAPACITY_EVERY`], or less often when a
    /// count takes long: the admission indexes every handler of every
    /// connection, and one connection alternating drain and hello among
    /// 2,000 of 1,024 handlers each made the count take a core. The pause
    /// after a count is twenty times what it took, so counting uses at
    /// most a twentieth of the I/O thread.
    pub(super) fn publish_capacity(&mut self, now: Instant) {
        if !(self.capacity_changed && now >= self.capacity_published + self.capacity_every) {
            return;
        }
        self.capacity_changed = false;
        self.capacity_published = now;
        let counting = Instant::now();
        let mut stale_total = 0;
        let rooms = self
            .registry
            .iter()
            .filter(|(_, c)| c.takes_work())
            .map(|(conn, c)| {
                // A slot still held by a step that timed out there is no
                // room: counted as room, it let steps queue behind a hung
                // handler until they timed out without running.
                let stale = c
                    .occupied
                    .iter()
                    .filter(|step| !self.steps.held_by(**step, conn))
                    .count();
                stale_total += stale;
                // One at which steps timed out unanswered is sent nothing
                // (`Conn::unresponsive`): it serves its handlers with no
                // room, so their steps wait for it or another, rather than
                // count as served by nobody.
                let capacity = if c.unresponsive() {
                    0
                } else {
                    u64::from(c.capacity).saturating_sub(stale as u64)
                };
                ConnRoom {
                    id: conn,
                    capacity,
                    handlers: Arc::clone(&c.handlers),
                    limits: c
                        .limits
                        .as_deref()
                        .map(|l| {
                            l.limited()
                                .map(|(h, n)| (h.to_string(), u64::from(n)))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        self.stale_slots = stale_total;
        self.channels.admission.set_rooms(rooms);
        self.capacity_every = CAPACITY_EVERY.max(counting.elapsed() * 20);
    }

    /// When the next [`publish_capacity`](Self::publish_capacity) is due, if one is.
    pub(super) fn capacity_due(&self) -> Option<Instant> {
        self.capacity_changed
            .then_some(self.capacity_published + self.capacity_every)
    }
}
