//! Ending steps: the one final result of each step attempt, the
//! orchestrator's own verdicts, and deadlines; and stopping, by shutdown or
//! by fault, which ends whatever is left.

use super::*;

use crate::admission::NEAR_NAMES_LOOKED_AT;

/// How long the socket stays open after the goodbyes of a shutdown (see
/// `linger_for_goodbyes`): a worker's I/O thread reads within a few
/// milliseconds, a worker written in a host language within its poll.
const GOODBYE_GRACE: Duration = Duration::from_millis(100);

impl Dispatcher {
    pub(super) fn finish(&mut self, step_id: StepId, result: StepExecutionResult, how: Ended) {
        if let Some(entry) = self.steps.finish(step_id, how) {
            self.ended(entry, result, how);
        }
    }

    /// A step just taken out of the table ends with `result`: counted, and
    /// queued for its batch's handle.
    pub(super) fn ended(&mut self, entry: StepEntry, result: StepExecutionResult, how: Ended) {
        let metrics = &self.channels.metrics;
        let counter = match result.status {
            StepStatus::Completed => &metrics.completed,
            StepStatus::Failed => &metrics.failed,
            StepStatus::TimedOut => &metrics.timed_out,
            StepStatus::Cancelled => &metrics.cancelled,
        };
        Metrics::add(counter, 1);
        if let Some(recorder) = &mut self.channels.recorder {
            let run_ms = result.metadata.execution_time_ms;
            match (result.status, &result.error) {
                (StepStatus::Completed, _) => recorder.completed(&entry.handler, run_ms),
                (StepStatus::Failed, error) => recorder.failed(
                    &entry.handler,
                    error.as_ref().map_or("", |e| e.error_type.as_str()),
                    // The orchestrator's own verdicts ran no handler.
                    (how == Ended::ByWorker).then_some(run_ms),
                ),
                (StepStatus::TimedOut, _) => recorder.timed_out(&entry.handler),
                (StepStatus::Cancelled, _) => {}
            }
        }
        self.permits_freed += 1;
        match self.ended.last_mut() {
            Some((sink, results)) if Arc::ptr_eq(sink, &entry.sink) => results.push(result),
            _ => self.ended.push((entry.sink, vec![result])),
        }
    }

    /// Gives the results ended since the last call to their batches, and
    /// their queue permits back, once the turn's metrics are flushed: at
    /// the end of every turn, and before the loop reports a stop.
    pub(super) fn hand_over_results(&mut self) {
        if let Some(recorder) = &mut self.channels.recorder {
            recorder.flush();
        }
        if self.permits_freed > 0 {
            self.channels.permits.add_permits(self.permits_freed);
            self.permits_freed = 0;
        }
        for (sink, results) in self.ended.drain(..) {
            // A dropped handle just means nobody is listening any more.
            sink.results.send(results);
        }
    }

    /// Ends a step with the orchestrator's own verdict: a timeout, a lost
    /// worker, a refused result, a step too large to send, a shutdown.
    pub(super) fn fail(&mut self, step_id: StepId, status: StepStatus, error: StepExecutionError) {
        let Some(entry) = self.steps.get(step_id) else {
            return;
        };
        let elapsed = match entry.state {
            StepState::Queued | StepState::Orphaned => 0,
            StepState::Dispatched(_) => entry.timeout_ms,
        };
        let result =
            StepExecutionResult::failed(entry.step_ref(), status, error, ORCHESTRATOR_ID, elapsed);
        self.finish(step_id, result, Ended::ByOrchestrator);
    }

    /// Ends each of `steps` still waiting in a queue: its task was
    /// cancelled, and without this it would wait for a worker until its
    /// timeout (`NoWorkerForHandler`), holding the cancel up that long.
    /// `suspending` (a stop): one of an earlier run that no worker has
    /// reclaimed yet will be abandoned at the end of its grace, not lost.
    pub(super) fn withdraw(&mut self, steps: &[StepRef], suspending: bool) {
        for step in steps {
            let state = self
                .steps
                .get(step.step_id)
                .filter(|entry| entry.step_ref() == *step)
                .map(|entry| entry.state);
            if suspending && state == Some(StepState::Orphaned) {
                self.suspended_orphans.insert(step.step_id);
            }
            if state == Some(StepState::Queued) {
                self.fail(
                    step.step_id,
                    StepStatus::Cancelled,
                    StepExecutionError::new(
                        error_types::WITHDRAWN,
                        "the task was cancelled or stopped before a worker took the step",
                        true,
                    ),
                );
            }
        }
    }

    pub(super) fn expire_steps(&mut self, now: Instant) {
        if self.steps.next_deadline().is_some_and(|at| at <= now) {
            // A result already queued beats the deadline it raced.
            while self.receive_burst() {}
        }
        while let Some(step_id) = self.steps.pop_expired(now) {
            let Some(entry) = self.steps.get(step_id) else {
                continue;
            };
            let timeout_ms = entry.timeout_ms;
            match entry.state {
                StepState::Queued => {
                    let handler = entry.handler.clone();
                    // Whether a connection taking work serves it, and
                    // whether one taking none (draining, gone) does.
                    let (mut served, mut idle) = (false, false);
                    for (_, c) in self.registry.iter() {
                        if c.handlers.iter().any(|h| **h == *handler) {
                            if c.takes_work() {
                                served = true;
                            } else {
                                idle = true;
                            }
                        }
                    }
                    let (status, error) = if served {
                        (
                            StepStatus::TimedOut,
                            StepExecutionError::new(
                                error_types::SCHEDULE_TIMEOUT,
                                format!(
                                    "no worker serving {handler:?} had room within {timeout_ms} ms"
                                ),
                                true,
                            ),
                        )
                    } else {
                        // Served only by connections taking no work: say
                        // so, rather than suggest the very name that failed.
                        // Otherwise a typo in a workflow or a worker's list
                        // shows here first: name what is served that comes
                        // close (from a bounded number of names: this runs
                        // on the I/O thread).
                        let near = if idle {
                            "; the workers serving it are draining or gone".to_string()
                        } else {
                            tasker_config::closest(
                                self.registry
                                    .iter()
                                    .flat_map(|(_, c)| c.handlers.iter().map(|h| &**h))
                                    .take(NEAR_NAMES_LOOKED_AT),
                                &handler,
                            )
                            .map(|near| format!("; did you mean {near:?}?"))
                            .unwrap_or_default()
                        };
                        (
                            StepStatus::Failed,
                            StepExecutionError::new(
                                error_types::NO_WORKER_FOR_HANDLER,
                                format!("no connected worker serves handler {handler:?} (waited {timeout_ms} ms){near}"),
                                true,
                            ),
                        )
                    };
                    self.fail(step_id, status, error);
                }
                StepState::Orphaned
                    if self.shutdown.is_some() || self.suspended_orphans.remove(&step_id) =>
                {
                    // Stopping is no verdict on the step: a store keeps it
                    // running and the next start waits for its worker
                    // again, as after a crash. `WorkerLost` here cost an
                    // attempt whose worker, frozen or cut off for a few
                    // seconds, still held its result (a task of one try
                    // failed with its handler's result on the way).
                    let step = entry.step_ref();
                    if let Some(shutdown) = &mut self.shutdown {
                        shutdown.abandoned.push(step);
                    }
                    self.fail(
                        step_id,
                        StepStatus::Cancelled,
                        StepExecutionError::new(
                            error_types::ABANDONED,
                            "orchestrator shut down before a worker reclaimed the step",
                            true,
                        ),
                    );
                }
                StepState::Orphaned => {
                    tracing::info!(
                        step_id,
                        "no worker reclaimed a step dispatched before the restart"
                    );
                    Metrics::add(&self.channels.metrics.worker_lost, 1);
                    self.fail(
                        step_id,
                        StepStatus::Failed,
                        StepExecutionError::new(
                            error_types::WORKER_LOST,
                            "the orchestrator restarted while the step was dispatched (queued in it, or out at a worker), and no worker reclaimed it in time",
                            true,
                        ),
                    );
                }
                StepState::Dispatched(conn) => {
                    // The result is the orchestrator's (SPEC §6.4.7), so the
                    // message names the worker that held the step: nothing
                    // else recorded did, and a worker that hangs for good
                    // never sends the late result that would.
                    let held_by = self
                        .registry
                        .get(conn)
                        .map(|c| format!(" from worker {}", codec::quoted(&c.worker_id, 64)))
                        .unwrap_or_default();
                    tracing::info!(step_id, timeout_ms, "step timed out");
                    // Its slot is no room now (see `publish_capacity`).
                    self.capacity_changed = true;
                    if let Some(c) = self.registry.get_mut(conn) {
                        c.timed_out_unanswered = c.timed_out_unanswered.saturating_add(1);
                        if c.timed_out_unanswered == UNANSWERED_TIMEOUTS
                            && self.comings_and_goings.allow_conn(conn)
                        {
                            tracing::warn!(
                                worker_id = %codec::quoted(&c.worker_id, 64),
                                "{UNANSWERED_TIMEOUTS} steps timed out at this worker without a result from it in between: it is sent no new steps until a result comes from it"
                            );
                        }
                    }
                    // The slot stays occupied: the handler is still running.
                    self.fail(
                        step_id,
                        StepStatus::TimedOut,
                        StepExecutionError::new(
                            error_types::TIMED_OUT,
                            format!("no result within timeout_ms = {timeout_ms}{held_by}"),
                            true,
                        ),
                    );
                }
            }
        }
    }

    pub(super) fn shutdown_complete(&mut self, now: Instant) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        if !self.steps.is_empty() && now < shutdown.deadline {
            return false;
        }
        let mut abandoned = self.end_all(
            StepStatus::Cancelled,
            error_types::ABANDONED,
            "orchestrator shut down before the step finished",
        );
        if let Some(shutdown) = &mut self.shutdown {
            abandoned.append(&mut shutdown.abandoned);
            abandoned.sort();
        }
        self.hand_over_results();
        let goodbye = OrchestratorMessage::Goodbye(Goodbye::new("orchestrator shutting down"));
        let peers: Vec<RoutingId> = self
            .registry
            .iter()
            .filter(|(_, c)| !c.retired)
            .map(|(_, c)| c.routing_id.clone())
            .collect();
        for routing_id in &peers {
            let _ = send_message(&self.socket, Some(routing_id), &goodbye);
        }
        if !peers.is_empty() {
            self.linger_for_goodbyes();
        }
        let shutdown = self.shutdown.take().expect("checked above");
        let report = ShutdownReport {
            finished_during_shutdown: self.finished_total()
                - shutdown.finished_before
                - abandoned.len() as u64,
            abandoned,
            workers_at_close: peers.len(),
        };
        tracing::info!(abandoned = report.abandoned.len(), "orchestrator stopped");
        self.channels.permits.close();
        if let Some(reply) = shutdown.reply {
            let _ = reply.send(report);
        }
        true
    }

    /// Keeps the socket open for [`GOODBYE_GRACE`] after the goodbyes,
    /// reading and dropping what comes, so the workers read them before
    /// their connections close. A worker's DEALER has `ZMQ_IMMEDIATE`
    /// (SPEC §5 rule 1), and libzmq then drops what such a socket has not
    /// read yet when its connection closes: a goodbye followed at once by
    /// the close was lost in 2 to 4 stops of 10, and those workers learnt
    /// of the stop only from silence or from the next orchestrator's
    /// `unknown_worker`.
    fn linger_for_goodbyes(&mut self) {
        let until = Instant::now() + GOODBYE_GRACE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self
                .socket
                .poll(zmq::POLLIN, left.as_millis().max(1) as i64)
            {
                Ok(n) if n > 0 => {
                    while Instant::now() < until
                        && tasker_transport::recv_frames(&self.socket, zmq::DONTWAIT).is_ok()
                    {
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Ends every step in flight with the orchestrator's verdict; returns
    /// them, sorted.
    pub(super) fn end_all(
        &mut self,
        status: StepStatus,
        error_type: &str,
        message: &str,
    ) -> Vec<StepRef> {
        let mut ended = self.steps.step_refs();
        ended.sort();
        for step in &ended {
            self.fail(
                step.step_id,
                status,
                StepExecutionError::new(error_type, message, true),
            );
        }
        ended
    }

    /// The loop cannot go on: every step in flight gets its one final
    /// result now (`ExecutorStopped`), waiting and later submits fail, and
    /// a pending shutdown gets its report.
    pub(super) fn stop_on_fault(&mut self, fault: &str) {
        tracing::error!(%fault, "orchestrator I/O thread stops");
        let ended = self.end_all(
            StepStatus::Cancelled,
            error_types::EXECUTOR_STOPPED,
            &format!("the executor stopped before the step finished: {fault}"),
        );
        self.hand_over_results();
        self.channels.permits.close();
        if let Some(shutdown) = self.shutdown.take() {
            if let Some(reply) = shutdown.reply {
                let _ = reply.send(ShutdownReport {
                    finished_during_shutdown: 0,
                    abandoned: ended,
                    workers_at_close: 0,
                });
            }
        }
        // Submits queued behind the fault get ShutDown when their reply
        // sender drops with the channel.
        while let Ok(command) = self.channels.commands.try_recv() {
            match command {
                Command::Submit { reply, .. } | Command::Resume { reply, .. } => {
                    let _ = reply.send(Err(ExecutorError::ShutDown));
                }
                Command::Shutdown {
                    reply: Some(reply), ..
                } => {
                    let _ = reply.send(ShutdownReport::default());
                }
                _ => {}
            }
        }
    }
}
