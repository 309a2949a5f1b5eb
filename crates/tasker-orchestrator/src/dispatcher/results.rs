//! What workers report: results, refused results, drains and goodbyes,
//! each taken only from the connection that holds the step (§6.3, §6.4).

use super::*;

impl Dispatcher {
    pub(super) fn on_results(&mut self, conn: ConnId, routing_id: &[u8], batch: ResultBatch) {
        let metrics = Arc::clone(&self.channels.metrics);
        if batch.orchestrator_id != self.orchestrator_id {
            // Steps of an earlier orchestrator: nobody here wants their
            // results, but the slots they held are free now.
            let n = (batch.results.len() + batch.refused.len()) as u64;
            Metrics::add(&metrics.foreign_results_dropped, n);
            if self.warnings.allow_conn(conn) {
                let worker_id = self
                    .registry
                    .get(conn)
                    .map(|c| codec::quoted(&c.worker_id, 64))
                    .unwrap_or_default();
                tracing::info!(
                    results = n,
                    orchestrator_id = %codec::quoted(&batch.orchestrator_id, 40),
                    %worker_id,
                    "results for another orchestrator dropped; the slots they held are free"
                );
            }
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
        let (holder, handlers) = match self.registry.get(conn) {
            Some(c) => (Some(Arc::clone(&c.worker_id)), Arc::clone(&c.handlers)),
            None => (None, Arc::from(Vec::new())),
        };
        for mut result in batch.results {
            let step = result.step_ref();
            self.free_slot(conn, step);
            match self.steps.take_answered(step, conn, &handlers) {
                Some(answered) => {
                    if let Some(holder) = holder.as_deref() {
                        credit(&mut result, holder);
                    }
                    if answered.adopted {
                        // Dispatched before a restart, answered now.
                        Metrics::add(&metrics.reclaimed, 1);
                    }
                    tracing::debug!(step_id = step.step_id, status = ?result.status, "step result");
                    self.ended(answered.entry, result, Ended::ByWorker);
                }
                None => self.count_unwanted(Some(conn), &result),
            }
        }
        if let Some(refusal) = refusal {
            self.on_refused_results(conn, routing_id, &batch.refused, refusal);
        }
        self.registry.drop_if_spent(conn);
    }

    /// A result that took no effect: say why in the counters, and in the
    /// log within the peers' rate limit (a peer resending 20,000 results
    /// wrote 20,000 lines), naming the worker that sent it: the one
    /// registered on `conn`, else (no hello there, e.g. a worker declared
    /// dead) the one the result itself names.
    pub(super) fn count_unwanted(&mut self, conn: Option<ConnId>, result: &StepExecutionResult) {
        let step = result.step_ref();
        let metrics = &self.channels.metrics;
        let in_flight = self
            .steps
            .get(step.step_id)
            .is_some_and(|e| e.step_ref() == step);
        // In flight, but not out at this connection under this attempt:
        // another connection holds it, or it waits in the queue, or this
        // connection never said hello. Not this connection's to answer.
        let (counter, why) = if in_flight {
            (
                &metrics.unheld_results_dropped,
                "result for a step this connection does not hold dropped",
            )
        } else if self.steps.ended_by_orchestrator(step) {
            (&metrics.late_results_dropped, "late result dropped")
        } else {
            // Answered already, or never sent here: a step table that
            // forgets ended steps cannot tell which.
            (
                &metrics.duplicate_results_dropped,
                "duplicate or unknown result dropped",
            )
        };
        Metrics::add(counter, 1);
        if !self.warnings.allow_conn(conn.unwrap_or(0)) {
            return;
        }
        let worker_id = match conn.and_then(|conn| self.registry.get(conn)) {
            Some(c) => codec::quoted(&c.worker_id, 64),
            None => codec::quoted(&result.metadata.worker_id, 64),
        };
        if in_flight {
            tracing::warn!(step_id = step.step_id, attempt = step.attempt, %worker_id, "{why}");
        } else {
            tracing::info!(step_id = step.step_id, attempt = step.attempt, %worker_id, "{why}");
        }
    }

    /// Results refused one by one: each step this connection holds ends
    /// `InvalidResult` (no attempt of the same handler is likely to do
    /// better), and the worker is told which.
    pub(super) fn on_refused_results(
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
            // The reason quotes the peer's input.
            let reason = codec::quoted(&refusal.message, 300);
            tracing::warn!(peer = %hex(routing_id), %reason, "results refused");
        }
        self.reply_error(routing_id, refusal.code, refusal.message);
    }

    pub(super) fn free_slot(&mut self, conn: ConnId, step: StepRef) {
        if let Some(c) = self.registry.get_mut(conn) {
            if c.release(&step) {
                self.dispatch_needed = true;
                let was_unresponsive = c.unresponsive();
                c.timed_out_unanswered = 0;
                if was_unresponsive {
                    self.capacity_changed = true;
                    if self.comings_and_goings.allow_conn(conn) {
                        tracing::info!(
                            worker_id = %codec::quoted(&c.worker_id, 64),
                            "a result came from a worker that had let a step time out: it is sent steps again"
                        );
                    }
                }
            }
        }
    }

    pub(super) fn on_drain(&mut self, conn: ConnId, returned: Vec<HeldStep>) {
        let Some(c) = self.registry.get_mut(conn) else {
            return;
        };
        c.draining = true;
        let mut given_back = Vec::new();
        for held in returned {
            if held.orchestrator_id != self.orchestrator_id {
                c.foreign.remove(&held);
                continue;
            }
            let step = held.step_ref();
            c.release(&step);
            // Given back unstarted: safe to deliver elsewhere, with a fresh
            // schedule-to-start deadline.
            if self.steps.held_by(step, conn) {
                given_back.push(step);
            }
        }
        // Said once per connection: a peer repeating drains (or cycling
        // drain and hello) wrote a line per message (5,000 in 1.5 s). The
        // count is of the steps it held: a drain may list any.
        if !c.drain_logged && self.comings_and_goings.allow_conn(conn) {
            c.drain_logged = true;
            tracing::info!(
                worker_id = %codec::quoted(&c.worker_id, 64),
                returned = given_back.len(),
                "worker draining"
            );
        } else {
            tracing::debug!(returned = given_back.len(), "drain repeated");
        }
        self.deliver_again(given_back);
        self.registry.drop_if_spent(conn);
        self.publish_worker_count();
        self.dispatch_needed = true;
    }

    /// A worker leaves. It lists what it received and leaves unanswered:
    /// those may be running and end `WorkerLost`. Any other step this
    /// connection holds was still on its way when the worker said goodbye
    /// (a drain races the deliveries already sent) and never reached a
    /// handler: it is delivered again.
    pub(super) fn on_goodbye(&mut self, conn: ConnId, unanswered: Vec<HeldStep>) {
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
        self.deliver_again(never_received);
        self.remove_worker(conn, "worker left");
    }

    /// Steps that provably never reached a handler go back to the front of
    /// their queues, same attempt (SPEC §6.3.1); one given back
    /// [`MOST_RETURNS`](super::steps::MOST_RETURNS) times already ends
    /// `ScheduleTimeout` instead. Returns how many were queued again.
    pub(super) fn deliver_again(&mut self, steps: Vec<StepRef>) -> u64 {
        let given_back = steps.len();
        let too_often = self.steps.requeue_all(steps, Instant::now());
        let redelivered = (given_back - too_often.len()) as u64;
        Metrics::add(&self.channels.metrics.redelivered, redelivered);
        for step in too_often {
            self.fail(
                step.step_id,
                StepStatus::TimedOut,
                StepExecutionError::new(
                    error_types::SCHEDULE_TIMEOUT,
                    format!(
                        "given back undone by workers {} times; not delivered again",
                        super::steps::MOST_RETURNS
                    ),
                    true,
                ),
            );
        }
        redelivered
    }
}

/// Credits `result` to `worker_id`, the worker its connection registered
/// as, whatever its metadata says: a holder naming another live worker
/// there had the API credit that one with its step.
pub(super) fn credit(result: &mut StepExecutionResult, worker_id: &str) {
    if result.metadata.worker_id != worker_id {
        result.metadata.worker_id = worker_id.to_string();
    }
}
