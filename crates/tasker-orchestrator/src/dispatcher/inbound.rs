//! Reading: every message a worker sends is decoded here and handed to
//! the part that deals with it; malformed ones get their reply here.

use super::*;
use tasker_protocol::DecodeError;

impl Dispatcher {
    /// Handles up to [`RECV_BURST`] messages; true if it stopped at the
    /// burst limit with more possibly waiting.
    pub(super) fn receive_burst(&mut self) -> bool {
        if self.input_held {
            return false;
        }
        let more = self.receive_some();
        self.read_at = Instant::now();
        more
    }

    fn receive_some(&mut self) -> bool {
        for _ in 0..RECV_BURST {
            match recv_frames(&self.socket, zmq::DONTWAIT) {
                Ok(mut frames) => {
                    let count = frames.count();
                    let Some((routing_id, body)) = frames.split_first_mut() else {
                        continue;
                    };
                    // The frames after the routing id, those not kept too.
                    self.handle_frames(routing_id.as_ref().to_vec(), body, count - 1);
                }
                Err(zmq::Error::EAGAIN) => return false,
                Err(zmq::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "receive failed");
                    return false;
                }
            }
        }
        true
    }

    /// Handles one message: `frames` after the routing id, of `count` in
    /// all (more when some were not kept).
    pub(super) fn handle_frames(
        &mut self,
        routing_id: RoutingId,
        frames: &mut [Frame],
        count: usize,
    ) {
        let now = Instant::now();
        if self.quarantine.holds(&routing_id, now) {
            // Not even a sign of life: a worker flooding garbage is not
            // kept alive by it. Counted, unread, among the malformed (the
            // count stopped at the 200 that quarantined it).
            Metrics::add(&self.channels.metrics.malformed_messages, 1);
            return;
        }
        let conn = self.registry.id_of(&routing_id);
        // Any message is a sign of life, a malformed one included.
        if let Some(c) = conn.and_then(|id| self.registry.get_mut(id)) {
            c.last_seen = now;
        }
        let decoded = if count == frames.len() {
            codec::decode_from_worker(frames, self.config.max_message_bytes)
        } else {
            Err(DecodeError::FrameCount(count))
        };
        let message = match decoded {
            Ok(message) => message,
            Err(error) => {
                Metrics::add(&self.channels.metrics.malformed_messages, 1);
                // Said whatever the peer's warnings used up: its refusals
                // before the quarantine take them all, and the one line
                // that says why it is not heard from was held back. Once
                // per quarantine, so at most one line per 200 messages.
                if self.quarantine.strike(&routing_id, now) {
                    tracing::warn!(
                        peer = %hex(&routing_id),
                        quarantine_s = quarantine::QUARANTINE.as_secs(),
                        "a peer sends malformed messages too fast: what it sends is dropped unread for a while"
                    );
                }
                if self.warnings.allow(&routing_id) {
                    // The error quotes the peer's input.
                    let error = codec::quoted(&error.to_string(), 300);
                    tracing::warn!(peer = %hex(&routing_id), %error, "malformed message refused");
                }
                // An error is never answered, however malformed (SPEC §5
                // rule 13), or two peers could trade them without end.
                let an_error = matches!(
                    &error,
                    DecodeError::Invalid { message_type, .. } if message_type == "protocol_error"
                );
                if !an_error {
                    self.reply_error(&routing_id, error.code(), error.to_string());
                }
                return;
            }
        };
        match message {
            FromWorker::Results(batch) => match conn {
                Some(conn) => self.on_results(conn, &routing_id, batch),
                None => {
                    // Never accepted from a connection without a hello
                    // (anyone can connect); kept for its hello if they
                    // answer steps in flight (see `unclaimed`).
                    let now = Instant::now();
                    if batch.orchestrator_id != self.orchestrator_id {
                        let n = batch.results.len() as u64;
                        Metrics::add(&self.channels.metrics.foreign_results_dropped, n);
                        self.reply_unknown(&routing_id);
                        return;
                    }
                    let (in_flight, mut unwanted): (Vec<_>, Vec<_>) =
                        batch.results.into_iter().partition(|result| {
                            let step = result.step_ref();
                            self.steps
                                .get(step.step_id)
                                .is_some_and(|e| e.step_ref() == step)
                        });
                    let bytes = frames.iter().map(|f| f.len()).sum();
                    unwanted.extend(self.unclaimed.keep(&routing_id, in_flight, bytes, now));
                    for result in unwanted {
                        self.count_unwanted(None, &result);
                    }
                    self.reply_unknown(&routing_id);
                }
            },
            FromWorker::Message(WorkerMessage::Hello(hello)) => {
                // Looked up for hellos only: a property costs an allocation.
                let key = match &self.zap {
                    Some(_) => frames.last_mut().and_then(Frame::user_id),
                    None => None,
                };
                self.on_hello(routing_id, conn, hello, key)
            }
            FromWorker::Message(WorkerMessage::Heartbeat(_)) => {
                if conn.is_none() {
                    self.reply_unknown(&routing_id);
                }
            }
            FromWorker::Message(WorkerMessage::Drain(drain)) => {
                if let Some(conn) = conn {
                    self.on_drain(conn, drain.returned);
                }
            }
            FromWorker::Message(WorkerMessage::Goodbye(goodbye)) => {
                if let Some(conn) = conn {
                    if self.comings_and_goings.allow_conn(conn) {
                        tracing::info!(
                            peer = %hex(&routing_id),
                            reason = %codec::quoted(&goodbye.reason, 200),
                            "worker said goodbye"
                        );
                    }
                    self.on_goodbye(conn, goodbye.unanswered);
                }
            }
            FromWorker::Message(WorkerMessage::ProtocolError(error)) => {
                if self.warnings.allow(&routing_id) {
                    tracing::warn!(
                        peer = %hex(&routing_id),
                        code = ?error.code,
                        reason = %codec::quoted(&error.message, 200),
                        "worker refused a message"
                    );
                }
            }
            FromWorker::Message(WorkerMessage::StepBatchResponse(_)) => {
                unreachable!("decode_from_worker gives results as FromWorker::Results")
            }
        }
    }

    pub(super) fn reply_unknown(&mut self, routing_id: &[u8]) {
        self.reply_error(
            routing_id,
            ProtocolErrorCode::UnknownWorker,
            "no hello on this connection (or declared dead): send hello".into(),
        );
    }

    /// Replies go to the sender only; one it cannot take any more (gone,
    /// or not reading) is not worth a warning per message.
    pub(super) fn reply_error(
        &mut self,
        routing_id: &[u8],
        code: ProtocolErrorCode,
        message: String,
    ) {
        self.channels.metrics.protocol_error(code);
        let reply = OrchestratorMessage::ProtocolError(ProtocolError { code, message });
        if let Err(e) = send_message(&self.socket, Some(routing_id), &reply) {
            tracing::debug!(peer = %hex(routing_id), error = %e, "protocol error reply not sent");
        }
    }
}
