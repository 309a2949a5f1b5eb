//! Receiving a message's frames without copying them out of libzmq.

use std::ops::Deref;

/// A frame as received, in libzmq's own buffer. Copied out, as
/// `zmq::Socket::recv_multipart` does, a message of a hundred steps or
/// results cost one more large allocation, copy and free, and the free
/// made glibc consolidate its free lists.
pub struct Frame(zmq::Message);

impl Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The frames of the next message, as `recv_multipart` with `flags`
/// (`zmq::DONTWAIT`: `EAGAIN` when none is waiting).
///
/// ```
/// let context = zmq::Context::new();
/// let (push, pull) = (context.socket(zmq::PUSH)?, context.socket(zmq::PULL)?);
/// pull.bind("inproc://frames")?;
/// push.connect("inproc://frames")?;
/// push.send_multipart([&b"head"[..], b"body"], 0)?;
/// let frames = tasker_transport::recv_frames(&pull, 0)?;
/// assert_eq!(frames.iter().map(|f| &f[..]).collect::<Vec<_>>(), [b"head", b"body"]);
/// # Ok::<(), zmq::Error>(())
/// ```
pub fn recv_frames(socket: &zmq::Socket, flags: i32) -> zmq::Result<Vec<Frame>> {
    let mut frames = Vec::with_capacity(3);
    loop {
        let mut frame = zmq::Message::new();
        // A message's frames arrive together: once its first is here, so
        // are the rest.
        socket.recv(&mut frame, flags)?;
        let more = frame.get_more();
        frames.push(Frame(frame));
        if !more {
            return Ok(frames);
        }
    }
}
