//! Who may connect: the ZAP handler (ZeroMQ RFC 27) that libzmq asks
//! about every CURVE client, and the log of handshakes that failed.
//!
//! libzmq sends each request on `inproc://zeromq.zap.01` of the socket's
//! context and holds the connection until the answer: 200 admits the
//! client under the name of its key file, anything else closes the
//! connection before a single message passes. A refused key is logged
//! once (a client that retries forever must not fill the log).

use std::collections::HashSet;
use std::path::PathBuf;

use tasker_transport::curve::{AuthorizedKeys, PublicKey};
use tasker_transport::monitor::{Handshake, HandshakeEvent};

use super::limiter::Limiter;
use crate::metrics::Metrics;

/// The address libzmq sends ZAP requests to (RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// Refused keys remembered so as to log each once; beyond, refusals are
/// only counted.
const LOGGED_KEYS_CAP: usize = 10_000;

pub(crate) struct Zap {
    socket: zmq::Socket,
    keys: AuthorizedKeys,
    logged: HashSet<PublicKey>,
}

impl Zap {
    /// Binds the handler in `context`; must happen before the socket it
    /// serves binds, or the first clients would be let in unasked.
    pub fn bind(context: &zmq::Context, dir: PathBuf) -> zmq::Result<Self> {
        let socket = context.socket(zmq::REP)?;
        socket.set_linger(0)?;
        socket.bind(ZAP_ENDPOINT)?;
        Ok(Self {
            socket,
            keys: AuthorizedKeys::new(dir),
            logged: HashSet::new(),
        })
    }

    pub fn waitable(&self) -> tasker_transport::Waitable<'_> {
        tasker_transport::Waitable::Socket(&self.socket, zmq::POLLIN)
    }

    /// Answers every request waiting; never blocks.
    pub fn serve(&mut self, metrics: &Metrics, limiter: &mut Limiter) {
        while let Ok(request) = self.socket.recv_multipart(zmq::DONTWAIT) {
            let reply = self.decide(&request, metrics, limiter);
            // A REP socket must answer before it can read the next request.
            if let Err(e) = self.socket.send_multipart(reply, 0) {
                tracing::error!(error = %e, "cannot answer a ZAP request");
            }
        }
    }

    /// The reply to one request: `[version, request_id, status, text,
    /// user_id, metadata]`.
    fn decide(
        &mut self,
        request: &[Vec<u8>],
        metrics: &Metrics,
        limiter: &mut Limiter,
    ) -> [Vec<u8>; 6] {
        let request_id = request.get(1).cloned().unwrap_or_default();
        let reply = |status: &str, text: &str, user: &str| {
            [
                b"1.0".to_vec(),
                request_id.clone(),
                status.as_bytes().to_vec(),
                text.as_bytes().to_vec(),
                user.as_bytes().to_vec(),
                Vec::new(),
            ]
        };
        // [version, request_id, domain, address, identity, mechanism, key]
        let well_formed = request.len() == 7
            && request[0] == b"1.0"
            && request[5] == b"CURVE"
            && request[6].len() == 32;
        if !well_formed {
            return reply("500", "unexpected ZAP request", "");
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&request[6]);
        let key = PublicKey::from_bytes(key);
        if let Some(name) = self.keys.lookup(&key) {
            let name = name.to_string();
            tracing::debug!(key = %key, name = %name, "admitted a worker key");
            return reply("200", "OK", &name);
        }
        Metrics::add(&metrics.keys_refused, 1);
        // Once per key, and within the warning budget: a client minting a
        // new key per connection must not write a line per connection.
        let address = String::from_utf8_lossy(&request[3]);
        if self.logged.len() < LOGGED_KEYS_CAP
            && self.logged.insert(key)
            && limiter.allow(address.as_bytes())
        {
            tracing::warn!(
                key = %key,
                address = %tasker_protocol::codec::truncate(&address, 64),
                "refused a worker: its CURVE public key is not in curve_authorized_keys_dir"
            );
        }
        reply("400", "key not authorized", "")
    }
}

/// Logs a failed handshake seen by the orchestrator's socket monitor, and
/// counts it. Refused keys are logged by the ZAP handler instead, and a
/// peer that merely went away is not news.
pub(crate) fn log_handshake(
    event: &HandshakeEvent,
    curve_on: bool,
    limiter: &mut Limiter,
    metrics: &Metrics,
) {
    if !event.outcome.failed() {
        return;
    }
    Metrics::add(&metrics.handshakes_failed, 1);
    let why = match event.outcome {
        Handshake::MechanismMismatch if curve_on => {
            "a client connected without CURVE; this orchestrator requires it (the worker needs \
             curve_server_public_key_file and curve_secret_key_file)"
        }
        Handshake::MechanismMismatch => {
            "a client connected with CURVE; this orchestrator does not use it (it has no \
             curve_authorized_keys_dir)"
        }
        Handshake::Cryptographic => {
            "a CURVE handshake did not decrypt: the client's curve_server_public_key_file is \
             not this orchestrator's public key, or the client sent a public key without its \
             secret key"
        }
        Handshake::Protocol(_) => "a client broke the handshake protocol",
        Handshake::Refused { .. } | Handshake::Closed | Handshake::Succeeded => return,
    };
    // The monitor names the orchestrator's own endpoint, not the peer's
    // address (a refused key's address comes from ZAP, above): the limit is
    // per endpoint.
    if limiter.allow(event.endpoint.as_bytes()) {
        tracing::warn!(
            endpoint = %tasker_protocol::codec::truncate(&event.endpoint, 64),
            outcome = ?event.outcome,
            "refused a connection: {why}"
        );
    }
}
