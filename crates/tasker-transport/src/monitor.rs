//! How each connection's ZMTP handshake ended, from ZeroMQ's socket
//! monitor: the only place a refused CURVE handshake shows at all. Without
//! it, a worker whose key is not admitted (or that speaks plaintext to a
//! CURVE orchestrator) would see nothing but silence, and wait forever.
//!
//! The same monitor tells when a listener is closed: [`release_endpoint`]
//! frees a bound port before the socket's context ends.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const EVENT_CLOSED: u16 = 0x0080;
const EVENT_HANDSHAKE_FAILED_NO_DETAIL: u16 = 0x0800;
const EVENT_HANDSHAKE_SUCCEEDED: u16 = 0x1000;
const EVENT_HANDSHAKE_FAILED_PROTOCOL: u16 = 0x2000;
const EVENT_HANDSHAKE_FAILED_AUTH: u16 = 0x4000;
const PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: u32 = 0x1100_0001;
const PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: u32 = 0x1100_0002;

/// How one connection's handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Both sides agreed; messages may flow.
    Succeeded,
    /// The server's ZAP handler refused the client (its CURVE key is not
    /// admitted); `status` is the ZAP status code (400 for "not allowed").
    Refused {
        /// The ZAP status code.
        status: u32,
    },
    /// One side speaks CURVE and the other plaintext.
    MechanismMismatch,
    /// A CURVE box did not open: the client holds a server key that is not
    /// the server's, or the bytes were tampered with.
    Cryptographic,
    /// Another ZMTP protocol error (its `ZMQ_PROTOCOL_ERROR_*` code).
    Protocol(u32),
    /// The peer closed the connection during the handshake without saying
    /// why: it refused our mechanism or our keys, or went away.
    Closed,
}

impl Handshake {
    /// Whether this is a failure.
    pub fn failed(&self) -> bool {
        *self != Handshake::Succeeded
    }
}

/// A handshake outcome and the endpoint it happened on, as ZeroMQ's
/// monitor names it: the socket's own endpoint on a bound socket (the
/// monitor's events carry no remote address there), the endpoint dialled on
/// a connected one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeEvent {
    /// How it ended.
    pub outcome: Handshake,
    /// The endpoint.
    pub endpoint: String,
}

/// Watches one socket's handshakes; read it with [`drain`](Self::drain)
/// when its [`waitable`](Self::waitable) is ready (or on any turn).
pub struct HandshakeMonitor {
    socket: zmq::Socket,
    /// Read until empty at least once: from then on its descriptor alone
    /// says when events arrive (see `waitable`).
    drained: Cell<bool>,
}

impl HandshakeMonitor {
    /// Starts monitoring `socket`, which must live in `context`. Call before
    /// it binds or connects, so no handshake goes unseen.
    pub fn attach(context: &zmq::Context, socket: &zmq::Socket) -> zmq::Result<Self> {
        let events = EVENT_HANDSHAKE_FAILED_NO_DETAIL
            | EVENT_HANDSHAKE_SUCCEEDED
            | EVENT_HANDSHAKE_FAILED_PROTOCOL
            | EVENT_HANDSHAKE_FAILED_AUTH;
        let monitor = monitor_reader(context, socket, events)?;
        Ok(Self {
            socket: monitor,
            drained: Cell::new(false),
        })
    }

    /// For [`wait`](crate::wait): ready when events are waiting.
    ///
    /// Only [`drain`](Self::drain) reads this socket, always until it is
    /// empty, and nothing writes to it; after such a read any new event
    /// turns its descriptor readable, so the descriptor alone is waited on
    /// and the wait saves asking the socket (a system call). Before the
    /// first drain that does not hold: a fresh pipe does not signal its
    /// reader until the reader has once found it empty.
    pub fn waitable(&self) -> crate::Waitable<'_> {
        match self.socket.get_fd() {
            Ok(fd) if self.drained.get() => crate::Waitable::Fd(fd),
            _ => crate::Waitable::Socket(&self.socket, zmq::POLLIN),
        }
    }

    /// Stops monitoring `socket`. Call it before `socket` closes (and
    /// before this monitor is dropped): libzmq sends each event with a
    /// blocking send, so a socket still monitored after its reader is gone
    /// (a closed socket lingers to flush) would block its context's I/O
    /// thread at its next handshake, for good, and with it every socket of
    /// that context.
    pub fn stop(&self, socket: &mut zmq::Socket) {
        stop_monitoring(socket);
    }

    /// Every event waiting now; never blocks.
    pub fn drain(&self) -> Vec<HandshakeEvent> {
        let mut events = Vec::new();
        let ended = loop {
            match self.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => events.extend(parse(&frames)),
                Err(e) => break e,
            }
        };
        // Stopped early (interrupted), the descriptor cannot be trusted
        // until the next drain that empties the socket.
        self.drained.set(ended == zmq::Error::EAGAIN);
        events
    }
}

/// Has `socket` report `events` (a `ZMQ_EVENT_*` mask) to a new PAIR
/// socket, returned, in `context`; any monitor it had before is stopped.
fn monitor_reader(
    context: &zmq::Context,
    socket: &zmq::Socket,
    events: u16,
) -> zmq::Result<zmq::Socket> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let address = format!(
        "inproc://tasker-monitor-{}",
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    socket.monitor(&address, i32::from(events))?;
    let reader = context.socket(zmq::PAIR)?;
    reader.set_linger(0)?;
    // ZeroMQ drops events while nothing is connected: connect at once.
    reader.connect(&address)?;
    Ok(reader)
}

/// See [`HandshakeMonitor::stop`].
fn stop_monitoring(socket: &mut zmq::Socket) {
    // SAFETY: `socket` is a live socket (the `zmq::Socket` owns it and
    // is borrowed mutably here, so no other thread uses it); a null
    // endpoint is libzmq's documented way to stop monitoring, and it
    // only closes libzmq's own end of the monitor pipe.
    let rc = unsafe { zmq_sys::zmq_socket_monitor(socket.as_mut_ptr(), std::ptr::null(), 0) };
    if rc != 0 {
        tracing::debug!("stopping a socket monitor failed");
    }
}

/// Unbinds `socket` from `endpoint` (as `get_last_endpoint` names it) and
/// waits, at most `timeout`, until ZeroMQ has closed the listening
/// descriptor: true once it has. Replaces the socket's monitor, if any.
///
/// Closing a socket does not free its port: its context's I/O thread
/// closes the listener later, and only terminating the context waits for
/// that. A context that outlives the socket (shared with a worker in the
/// same process) leaves the port taken after the socket is gone, and an
/// orchestrator started again on it at once fails with "Address already in
/// use".
///
/// ```
/// use std::time::Duration;
///
/// let context = zmq::Context::new();
/// let mut router = context.socket(zmq::ROUTER).unwrap();
/// router.bind("tcp://127.0.0.1:0").unwrap();
/// let endpoint = router.get_last_endpoint().unwrap().unwrap();
/// let released = tasker_transport::monitor::release_endpoint(
///     &context, &mut router, &endpoint, Duration::from_secs(1));
/// assert!(released);
/// // The context lives on, and the port is free already.
/// std::net::TcpListener::bind(endpoint.trim_start_matches("tcp://")).unwrap();
/// ```
pub fn release_endpoint(
    context: &zmq::Context,
    socket: &mut zmq::Socket,
    endpoint: &str,
    timeout: Duration,
) -> bool {
    let reader = match monitor_reader(context, socket, EVENT_CLOSED) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::debug!(error = %e, "cannot watch the endpoint's release");
            let _ = socket.unbind(endpoint);
            return false;
        }
    };
    let released = socket.unbind(endpoint).is_ok() && {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // Rounded up: a wait of 0 ms would spin through the last one.
            let wait_ms = left.as_micros().div_ceil(1000) as i64;
            // The only event asked for is the listener's close.
            match reader.poll(zmq::POLLIN, wait_ms) {
                Ok(n) if n > 0 => break reader.recv_multipart(zmq::DONTWAIT).is_ok(),
                Ok(_) if !left.is_zero() => continue,
                _ => break false,
            }
        }
    };
    // Before `reader` goes: see `HandshakeMonitor::stop`.
    stop_monitoring(socket);
    released
}

fn parse(frames: &[Vec<u8>]) -> Option<HandshakeEvent> {
    let head = frames.first()?;
    if head.len() < 6 {
        return None;
    }
    let event = u16::from_ne_bytes([head[0], head[1]]);
    let value = u32::from_ne_bytes([head[2], head[3], head[4], head[5]]);
    let outcome = match event {
        EVENT_HANDSHAKE_SUCCEEDED => Handshake::Succeeded,
        EVENT_HANDSHAKE_FAILED_AUTH => Handshake::Refused { status: value },
        EVENT_HANDSHAKE_FAILED_PROTOCOL => match value {
            PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH => Handshake::MechanismMismatch,
            PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC => Handshake::Cryptographic,
            code => Handshake::Protocol(code),
        },
        EVENT_HANDSHAKE_FAILED_NO_DETAIL => Handshake::Closed,
        _ => return None,
    };
    let endpoint = frames
        .get(1)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .unwrap_or_default();
    Some(HandshakeEvent { outcome, endpoint })
}
