//! ZeroMQ plumbing shared by the orchestrator and the worker runtime.
//!
//! Both sides run one I/O thread that owns its socket (ZeroMQ sockets are not
//! thread-safe) and sleeps in [`wait`]. Other threads talk to it through
//! queues and wake it with a [`Doorbell`]; nothing ever busy-polls.

pub mod curve;
mod frames;
pub mod monitor;
mod wait;

pub use frames::{recv_frames, Frame, Frames, MAX_FRAMES_KEPT};
pub use wait::{wait, Waitable, MAX_ITEMS};

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use tasker_config::TaskerConfig;
use tasker_protocol::codec;

/// Wakes an I/O thread blocked in [`wait`], from any thread.
///
/// `ring` writes to a descriptor unless a ring is already pending; the I/O
/// thread polls it and `drain`s it. On Linux that is an eventfd, a counter
/// the kernel keeps without a buffer; elsewhere a Unix socket pair, whose
/// every ring allocates and queues a socket buffer.
#[derive(Debug)]
pub struct Doorbell {
    tx: File,
    rx: File,
    pending: AtomicBool,
}

/// The doorbell's two ends (one descriptor twice, for an eventfd).
#[cfg(target_os = "linux")]
fn bell_pair() -> std::io::Result<(File, File)> {
    use std::os::unix::io::FromRawFd;
    // SAFETY: `eventfd` takes no pointers; it returns a new descriptor, or
    // -1 with errno set.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was created just above and nothing else owns it.
    let rx = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok((rx.try_clone()?, rx))
}

/// The doorbell's two ends.
#[cfg(not(target_os = "linux"))]
fn bell_pair() -> std::io::Result<(File, File)> {
    let (tx, rx) = std::os::unix::net::UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    Ok((File::from(OwnedFd::from(tx)), File::from(OwnedFd::from(rx))))
}

impl Doorbell {
    /// A new doorbell.
    pub fn new() -> std::io::Result<Self> {
        let (tx, rx) = bell_pair()?;
        Ok(Self {
            tx,
            rx,
            pending: AtomicBool::new(false),
        })
    }

    /// Wakes the I/O thread; cheap when it is already awake.
    pub fn ring(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // An eventfd takes exactly eight bytes, a socket any; a full
            // socket buffer means a wake-up is pending anyway.
            let _ = (&self.tx).write(&1u64.to_ne_bytes());
        }
    }

    /// The descriptor to poll for readability.
    pub fn fd(&self) -> RawFd {
        self.rx.as_raw_fd()
    }

    /// Clears pending rings; call before looking at the queues.
    ///
    /// Reads first, then clears the flag: a ring that lands in between
    /// writes nothing, but its data is in the queues the caller is about to
    /// read. The other order could swallow the byte of a ring whose flag
    /// stays set, and no later ring would ever write again.
    pub fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = (&self.rx).read(&mut buf) {
            if n < buf.len() {
                break;
            }
        }
        self.pending.store(false, Ordering::Release);
    }
}

/// Applies the configured high-water marks, linger and message-size guard.
pub fn configure_socket(socket: &zmq::Socket, config: &TaskerConfig) -> zmq::Result<()> {
    socket.set_sndhwm(config.send_hwm)?;
    socket.set_rcvhwm(config.recv_hwm)?;
    socket.set_linger(config.linger_ms)?;
    // The application checks max_message_bytes and answers with a protocol
    // error; this guard only stops a peer from making us allocate without
    // bound, so it sits well above the configured limit.
    let guard = (config.max_message_bytes as i64)
        .saturating_mul(4)
        .saturating_add(64 * 1024);
    socket.set_maxmsgsize(guard)?;
    Ok(())
}

/// Encodes `message` and sends it, prefixed by `routing_id` when given.
pub fn send_message<M: Serialize>(
    socket: &zmq::Socket,
    routing_id: Option<&[u8]>,
    message: &M,
) -> Result<(), SendError> {
    let [header, body] = codec::encode(message).map_err(|e| SendError::Encode(e.to_string()))?;
    let result = match routing_id {
        Some(id) => socket.send_multipart([id.to_vec(), header, body], zmq::DONTWAIT),
        None => socket.send_multipart([header, body], zmq::DONTWAIT),
    };
    result.map_err(SendError::Zmq)
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The message could not be serialised.
    #[error("cannot encode message: {0}")]
    Encode(String),
    /// ZeroMQ refused it (`EHOSTUNREACH`: peer gone; `EAGAIN`: high-water mark).
    #[error("zeromq send failed: {0}")]
    Zmq(zmq::Error),
}

/// Milliseconds until `deadline` for [`wait`] (or `zmq::poll`), or -1 for none.
pub fn poll_timeout(deadline: Option<Instant>) -> i64 {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            // Round up so we never wake a hair early and spin.
            (left.as_micros().div_ceil(1000)).min(i64::MAX as u128) as i64
        }
    }
}

/// The earlier of two optional instants.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
