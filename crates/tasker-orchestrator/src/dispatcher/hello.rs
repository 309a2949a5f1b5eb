//! Registration: a hello registers its connection, re-registers it, takes
//! over a reconnecting worker's old connection, or is refused (§6.6).

use std::collections::BTreeMap;

use super::*;

impl Dispatcher {
    pub(super) fn on_hello(
        &mut self,
        routing_id: RoutingId,
        conn: Option<ConnId>,
        hello: WorkerHello,
        key: Option<String>,
    ) {
        let (mine, foreign) = self.split_held(hello.in_progress);
        let reclaimed: Vec<StepRef> = mine
            .iter()
            .copied()
            .filter(|step| self.steps.is_orphan_for(*step, &hello.handlers))
            .collect();
        let announced = hello.handler_limits;
        let mut registration = registry::Hello {
            worker_id: hello.worker_id,
            handlers: hello.handlers,
            capacity: hello.capacity,
            mine,
            foreign,
            language: hello.language,
            pid: hello.pid,
            incarnation: hello.incarnation,
            key,
            limits: None,
        };
        let conn = match conn {
            Some(conn) => {
                // Steps of this orchestrator it holds on this connection
                // are counted here already, and it was sent no others: of
                // the rest only those it adopts now are its to hold (a
                // peer repeating hellos of invented steps took slots and
                // memory without bound).
                registration
                    .mine
                    .retain(|step| self.steps.is_orphan_for(*step, &registration.handlers));
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
                if !self
                    .registry
                    .has_room_for(registration.weight(), Some(conn))
                {
                    return self.refuse_for_hello_bytes(&routing_id);
                }
                if !announced.is_empty() {
                    // What it holds already counts, and what it lists.
                    let held = current.occupied.iter().chain(&registration.mine).copied();
                    registration.limits = self.limits_for(
                        &announced,
                        registration.capacity,
                        held,
                        current.limits.as_deref(),
                    );
                }
                self.registry.reregister(conn, registration);
                self.adopt_all(conn, &reclaimed);
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
                    // With CURVE a worker's steps pass only to a connection
                    // of the key it said hello with: another admitted key
                    // naming the id of a worker that just died took over
                    // its steps and answered them as that worker.
                    let old_key = self.registry.get(holder).and_then(|c| c.key.as_deref());
                    if old_key != registration.key.as_deref() {
                        let message = format!(
                            "worker_id {:?} is held by a connection of another CURVE key until \
                             that connection is removed (its liveness expiry)",
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
                if !self.registry.has_room_for(registration.weight(), None) {
                    return self.refuse_for_hello_bytes(&routing_id);
                }
                // A step out at another worker's connection is not this
                // worker's, whatever its hello says: counted, it took one
                // of its slots for good (no result of it comes here).
                registration.mine.retain(|step| {
                    self.steps
                        .holder_of(*step)
                        .map_or(true, |at| Some(at) == holder)
                });
                if !announced.is_empty() {
                    // The steps it lists count, whichever connection
                    // holds them now.
                    let known = holder
                        .and_then(|old| self.registry.get(old))
                        .and_then(|c| c.limits.as_deref());
                    registration.limits = self.limits_for(
                        &announced,
                        registration.capacity,
                        registration.mine.iter().copied(),
                        known,
                    );
                }
                let claimed = holder.map(|_| registration.mine.clone());
                let conn = self
                    .registry
                    .register(routing_id.clone(), registration, Instant::now());
                if let (Some(old), Some(claimed)) = (holder, claimed) {
                    self.take_over(old, conn, &claimed);
                }
                self.adopt_all(conn, &reclaimed);
                self.claim_unclaimed(&routing_id, conn, holder);
                conn
            }
        };
        if self.comings_and_goings.allow_conn(conn) {
            let c = self.registry.get(conn).expect("just registered");
            tracing::info!(
                worker_id = %codec::quoted(&c.worker_id, 64),
                // The routing id the refusals and drops of this peer name.
                peer = %hex(&routing_id),
                handlers = c.handlers.len(),
                capacity = c.capacity,
                language = c.language.as_deref().map(|l| codec::truncate(l, 32)).unwrap_or_default(),
                key = c.key.as_deref().map(|k| codec::truncate(k, 64)).unwrap_or_default(),
                "worker registered"
            );
        }
        self.send_welcome(conn, &routing_id);
    }

    /// Refuses a hello the registry has no bytes left for.
    fn refuse_for_hello_bytes(&mut self, routing_id: &[u8]) {
        let message = format!(
            "the orchestrator's registered hellos hold their most ({} MiB of names and held \
             steps, for {} workers); try again later",
            self.registry.max_bytes() >> 20,
            self.registry.workers()
        );
        self.refuse_hello(routing_id, ProtocolErrorCode::RegistryFull, message);
    }

    /// Steps an earlier run of this orchestrator dispatched, named by a
    /// worker as held: they are this connection's now (its hello put them
    /// among its occupied slots already).
    pub(super) fn adopt_all(&mut self, conn: ConnId, steps: &[StepRef]) {
        let Some(handlers) = self.registry.get(conn).map(|c| Arc::clone(&c.handlers)) else {
            return;
        };
        let now = Instant::now();
        let adopted = steps
            .iter()
            .filter(|step| self.steps.adopt(**step, conn, &handlers, now))
            .count();
        if adopted > 0 {
            Metrics::add(&self.channels.metrics.reclaimed, adopted as u64);
            tracing::info!(
                adopted,
                "worker reclaimed steps dispatched before the restart"
            );
        }
    }

    /// The per-handler limits a hello announced (`None` when none is
    /// below its capacity), with the steps its connection will hold counted
    /// against them: each under its handler, as the step table knows it or,
    /// for a step already ended there (timed out, still running), as
    /// `known` (the connection that held it) counted it; a step neither
    /// knows counts against every limit.
    fn limits_for(
        &self,
        announced: &BTreeMap<String, u32>,
        capacity: u32,
        held: impl Iterator<Item = StepRef>,
        known: Option<&registry::Limits>,
    ) -> Option<Box<registry::Limits>> {
        let mut limits = registry::Limits::new(announced, capacity)?;
        for step in held {
            let handler = self
                .steps
                .get(step.step_id)
                .filter(|e| e.step_ref() == step)
                .map(|e| &*e.handler)
                .or_else(|| known.and_then(|k| k.handler_of(&step)));
            match handler {
                Some(handler) => limits.occupy(step, handler),
                None => limits.occupy_unplaced(step),
            }
        }
        Some(limits)
    }

    pub(super) fn send_welcome(&mut self, conn: ConnId, routing_id: &[u8]) {
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

    pub(super) fn refuse_hello(
        &mut self,
        routing_id: &[u8],
        code: ProtocolErrorCode,
        message: String,
    ) {
        Metrics::add(&self.channels.metrics.hellos_refused, 1);
        if self.warnings.allow(routing_id) {
            tracing::warn!(peer = %hex(routing_id), ?code, %message, "hello refused");
        }
        self.reply_error(routing_id, code, message);
    }

    /// A hello's `in_progress`, split into this orchestrator's steps and
    /// other orchestrators'.
    pub(super) fn split_held(&self, held: Vec<HeldStep>) -> (StepSet, HashSet<HeldStep>) {
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
    pub(super) fn still_alive(&mut self, conn: ConnId) -> bool {
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
    pub(super) fn take_over(&mut self, old: ConnId, new: ConnId, claimed: &StepSet) {
        let incarnation = self.registry.get(new).and_then(|c| c.incarnation.clone());
        let Some(c) = self.registry.get_mut(old) else {
            return;
        };
        c.replaced = incarnation.is_none() || c.incarnation != incarnation;
        let mut moved = 0;
        for step in claimed {
            // Claimed slots are the new connection's now, held or not.
            c.release(step);
            if self.steps.move_to(*step, old, new) {
                moved += 1;
            }
        }
        if self.comings_and_goings.allow_conn(old) {
            let what = if c.replaced {
                "worker restarted; its old connection is retired, and the steps it left there end WorkerLost once it is gone"
            } else {
                "worker reconnected; its old connection is retired"
            };
            tracing::info!(
                worker_id = %codec::quoted(&c.worker_id, 64),
                moved,
                left = c.occupied.len(),
                "{what}"
            );
        }
        self.registry.retire(old);
    }

    /// Results this connection sent before its hello: answers of its
    /// worker's old connection's steps count as answers from it now; the
    /// rest take no effect.
    pub(super) fn claim_unclaimed(&mut self, routing_id: &[u8], conn: ConnId, old: Option<ConnId>) {
        let handlers = self
            .registry
            .get(conn)
            .map_or_else(|| Arc::from(Vec::new()), |c| Arc::clone(&c.handlers));
        for result in self.unclaimed.take(routing_id) {
            let step = result.step_ref();
            if self.steps.adopt(step, conn, &handlers, Instant::now()) {
                Metrics::add(&self.channels.metrics.reclaimed, 1);
                if let Some(c) = self.registry.get_mut(conn) {
                    c.occupied.insert(step);
                }
            }
            if let Some(old) = old {
                if self.steps.move_to(step, old, conn) {
                    if let Some(c) = self.registry.get_mut(old) {
                        c.release(&step);
                    }
                    if let Some(c) = self.registry.get_mut(conn) {
                        c.occupied.insert(step);
                    }
                }
            }
            if self.steps.held_by(step, conn) {
                self.free_slot(conn, step);
                let mut result = result;
                if let Some(c) = self.registry.get(conn) {
                    super::results::credit(&mut result, &c.worker_id);
                }
                self.finish(step.step_id, result, Ended::ByWorker);
            } else {
                self.count_unwanted(Some(conn), &result);
            }
        }
        if let Some(old) = old {
            self.registry.drop_if_spent(old);
        }
    }
}
