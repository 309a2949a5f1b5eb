//! Receiving a message's frames without copying them out of libzmq.

use std::ops::{Deref, DerefMut};

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

impl Frame {
    /// The name the ZAP handler admitted the sender's CURVE key under (the
    /// message's `User-Id` property), if the connection was authenticated.
    pub fn user_id(&mut self) -> Option<String> {
        self.0
            .gets("User-Id")
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
    }
}

/// The most frames of one message [`recv_frames`] keeps: a protocol
/// message has two, three on a ROUTER (the routing id first).
///
/// The rest are read and freed one at a time, only counted. libzmq bounds
/// each frame's size (`ZMQ_MAXMSGSIZE`) but not how many frames a message
/// has: a peer could send one message of millions of empty frames, two
/// bytes each on the wire and 64 in memory, and this process would hold
/// every one of them a second time after libzmq.
pub const MAX_FRAMES_KEPT: usize = 8;

/// A message's frames as received: the first [`MAX_FRAMES_KEPT`] of them,
/// and how many it had.
pub struct Frames {
    kept: Vec<Frame>,
    count: usize,
}

impl Frames {
    /// How many frames the message had, those not kept included.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether every frame was kept.
    pub fn is_whole(&self) -> bool {
        self.count == self.kept.len()
    }

    /// The frames kept.
    pub fn into_vec(self) -> Vec<Frame> {
        self.kept
    }
}

impl Deref for Frames {
    type Target = [Frame];

    fn deref(&self) -> &[Frame] {
        &self.kept
    }
}

impl DerefMut for Frames {
    fn deref_mut(&mut self) -> &mut [Frame] {
        &mut self.kept
    }
}

/// The frames of the next message, as `recv_multipart` with `flags`
/// (`zmq::DONTWAIT`: `EAGAIN` when none is waiting), at most
/// [`MAX_FRAMES_KEPT`] of them kept.
///
/// ```
/// let context = zmq::Context::new();
/// let (push, pull) = (context.socket(zmq::PUSH)?, context.socket(zmq::PULL)?);
/// pull.bind("inproc://frames")?;
/// push.connect("inproc://frames")?;
/// push.send_multipart([&b"head"[..], b"body"], 0)?;
/// let frames = tasker_transport::recv_frames(&pull, 0)?;
/// assert_eq!(frames.iter().map(|f| &f[..]).collect::<Vec<_>>(), [b"head", b"body"]);
/// assert!(frames.is_whole());
/// # Ok::<(), zmq::Error>(())
/// ```
pub fn recv_frames(socket: &zmq::Socket, flags: i32) -> zmq::Result<Frames> {
    let mut kept = Vec::with_capacity(3);
    let mut count = 0;
    let mut spare = None;
    loop {
        // Past the limit, each frame goes into the same message, freed by
        // the next receive.
        let mut frame = spare.take().unwrap_or_else(zmq::Message::new);
        // A message's frames arrive together: once its first is here, so
        // are the rest.
        socket.recv(&mut frame, flags)?;
        count += 1;
        let more = frame.get_more();
        if kept.len() < MAX_FRAMES_KEPT {
            kept.push(Frame(frame));
        } else {
            spare = Some(frame);
        }
        if !more {
            return Ok(Frames { kept, count });
        }
    }
}
