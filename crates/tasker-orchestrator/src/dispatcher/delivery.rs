//! Sending work: the schedule's deliveries taken off the queues and sent,
//! split when too large for a message (§6.2, §10).

use super::*;

impl Dispatcher {
    pub(super) fn dispatch(&mut self) {
        self.dispatch_needed = false;
        if self.steps.queued() == 0 {
            return;
        }
        let candidates: Vec<schedule::Candidate> = self
            .registry
            .iter()
            .filter(|(_, c)| c.takes_work() && !c.unresponsive() && c.free_slots() > 0)
            .map(|(conn, c)| schedule::Candidate {
                conn,
                capacity: c.capacity,
                in_flight: c.in_flight(),
                handlers: Arc::clone(&c.handlers),
                room: c.room(),
                first: c.next_handler,
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
            if self.deliver(delivery.conn, picked) {
                if let Some(c) = self.registry.get_mut(delivery.conn) {
                    c.next_handler = delivery.next_first;
                }
            } else {
                refused.insert(delivery.conn);
            }
        }
    }

    /// Takes a planned delivery's steps off their queues, round robin:
    /// one step of each handler in turn while they last, so a delivery
    /// that mixes handlers interleaves them.
    pub(super) fn pick(&mut self, delivery: &schedule::Delivery) -> Vec<StepRef> {
        let mut picked = Vec::with_capacity(delivery.len());
        if let [handler] = &delivery.handlers[..] {
            // The usual case: one handler, taken in one go.
            self.steps
                .pick(handler, delivery.per_handler[0], &mut picked);
            return picked;
        }
        let mut left = delivery.per_handler.clone();
        loop {
            let mut progressed = false;
            for (i, handler) in delivery.handlers.iter().enumerate() {
                if left[i] == 0 {
                    continue;
                }
                if self.steps.pick(handler, 1, &mut picked) == 1 {
                    left[i] -= 1;
                    progressed = true;
                } else {
                    left[i] = 0;
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
    pub(super) fn deliver(&mut self, conn: ConnId, mut picked: Vec<StepRef>) -> bool {
        let Some(routing_id) = self.registry.get(conn).map(|c| c.routing_id.clone()) else {
            self.steps.unpick(&picked);
            return false;
        };
        self.delivery_seq += 1;
        let entries: Vec<&steps::StepEntry> = picked
            .iter()
            .map(|s| {
                self.steps
                    .get(s.step_id)
                    .expect("picked steps are in flight")
            })
            .collect();
        let batch_id = format!("{}:{}", entries[0].sink.batch_id, self.delivery_seq);
        // Steps were encoded when submitted: the body is their bytes joined,
        // and its size is known before it is built.
        let size = raw::request_envelope_len(&batch_id)
            + entries
                .iter()
                .map(|e| e.step.json().len() + 1)
                .sum::<usize>()
            - 1;
        if size > self.config.max_message_bytes {
            drop(entries);
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
        let [header, body] = raw::encode_steps(&batch_id, entries.iter().map(|e| &e.step));
        let sent = self
            .socket
            .send_multipart([routing_id, header, body], zmq::DONTWAIT)
            .map_err(SendError::Zmq);
        match sent {
            Ok(()) => {
                let n = picked.len() as u64;
                self.steps.dispatched(
                    &picked,
                    conn,
                    Instant::now(),
                    self.channels.recorder.as_mut(),
                );
                if let Some(c) = self.registry.get_mut(conn) {
                    tracing::debug!(worker_id = %codec::quoted(&c.worker_id, 64), %batch_id, steps = n, "delivered");
                    if let Some(limits) = c.limits.as_deref_mut() {
                        for step in &picked {
                            if let Some(entry) = self.steps.get(step.step_id) {
                                limits.occupy(*step, &entry.handler);
                            }
                        }
                    }
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
}
