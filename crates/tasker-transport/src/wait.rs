//! One wait of an I/O thread: until a socket or a doorbell may be ready, or
//! a deadline. `zmq::poll` does the same job, at about three times the
//! system calls.
//!
//! `zmq_poll` first polls every descriptor without waiting, then asks each
//! ZeroMQ socket for `ZMQ_EVENTS`, and when nothing is ready does both
//! again around the real wait: two `poll` calls, and a `poll` inside each
//! `ZMQ_EVENTS` of an idle socket, for every wait. Traced at one step per
//! round trip, the orchestrator's I/O thread made fifteen `poll` calls per
//! step and the worker's ten; on a virtual machine each costs a microsecond
//! or more. [`wait`] asks each socket once, then makes one `poll`.
//!
//! Why one `ZMQ_EVENTS` is enough: reading it makes the socket process
//! every command queued for it, after which its `ZMQ_FD` turns readable on
//! the next command (a message arriving, room to send). So a socket that
//! reports nothing ready cannot become ready without its descriptor saying
//! so, and a command landing between the two calls leaves the descriptor
//! readable for the `poll`. Asking is still needed every time: sending, or
//! a fresh pipe whose reader has not looked yet, can leave a message
//! waiting with the descriptor quiet.

use std::io;
use std::os::unix::io::RawFd;

/// The most items one wait takes (socket, doorbell, handshake monitor and
/// ZAP handler are the most any I/O thread has).
pub const MAX_ITEMS: usize = 4;

/// What an I/O thread waits on.
#[derive(Clone, Copy)]
pub enum Waitable<'a> {
    /// A ZeroMQ socket, for `events` (`POLLIN`, `POLLOUT` or both); with
    /// no events it is left out of the wait altogether.
    Socket(&'a zmq::Socket, zmq::PollEvents),
    /// A plain descriptor, for reading (a [`Doorbell`](crate::Doorbell)).
    Fd(RawFd),
}

/// Waits until one of `items` may be ready, or `timeout_ms` passes (`-1`:
/// no deadline; see [`poll_timeout`](crate::poll_timeout)). Returns, per
/// item, whether it may be ready.
///
/// "May": a socket is reported when its descriptor woke the wait, which can
/// be for a command that brings no message; the caller reads with
/// `DONTWAIT` and takes `EAGAIN` as nothing. An interrupted wait (`EINTR`)
/// returns only the sockets found ready before it.
///
/// ```
/// use tasker_transport::{wait, Doorbell, Waitable};
///
/// let context = zmq::Context::new();
/// let socket = context.socket(zmq::PULL).unwrap();
/// socket.bind("inproc://wait-doc").unwrap();
/// let bell = Doorbell::new().unwrap();
/// bell.ring();
/// let items = [Waitable::Socket(&socket, zmq::POLLIN), Waitable::Fd(bell.fd())];
/// let ready = wait(&items, 1_000).unwrap();
/// assert_eq!(&ready[..2], &[false, true]);
/// ```
pub fn wait(items: &[Waitable<'_>], timeout_ms: i64) -> io::Result<[bool; MAX_ITEMS]> {
    assert!(items.len() <= MAX_ITEMS, "at most {MAX_ITEMS} items");
    let mut ready = [false; MAX_ITEMS];
    let mut fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; MAX_ITEMS];
    let mut any = false;
    for (i, item) in items.iter().enumerate() {
        let fd = match *item {
            Waitable::Socket(_, events) if events.is_empty() => -1,
            Waitable::Socket(socket, events) => {
                if socket
                    .get_events()
                    .map_err(io::Error::other)?
                    .intersects(events)
                {
                    ready[i] = true;
                    any = true;
                }
                socket.get_fd().map_err(io::Error::other)?
            }
            Waitable::Fd(fd) => fd,
        };
        // A socket's descriptor signals by turning readable, whatever the
        // events wanted; a negative descriptor is skipped by `poll`.
        fds[i] = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
    }
    // Still polled when a socket is ready, without waiting: the other
    // items must not starve behind a socket that stays busy.
    let timeout = if any {
        0
    } else {
        timeout_ms.clamp(-1, libc::c_int::MAX as i64) as libc::c_int
    };
    // SAFETY: `fds` is a live, initialised array of `pollfd` and
    // `items.len() <= MAX_ITEMS` is its length or less; `poll` writes only
    // the `revents` fields of those entries, and only during the call.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), items.len() as libc::nfds_t, timeout) };
    if rc < 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::Interrupted {
            return Ok(ready);
        }
        return Err(error);
    }
    for (i, fd) in fds.iter().take(items.len()).enumerate() {
        if fd.revents != 0 {
            ready[i] = true;
        }
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Doorbell;
    use std::time::{Duration, Instant};

    fn pair(context: &zmq::Context, name: &str) -> (zmq::Socket, zmq::Socket) {
        let pull = context.socket(zmq::PULL).unwrap();
        pull.bind(&format!("inproc://{name}")).unwrap();
        let push = context.socket(zmq::PUSH).unwrap();
        push.connect(&format!("inproc://{name}")).unwrap();
        (pull, push)
    }

    /// Whether the socket, then the doorbell, may be ready.
    fn socket_and_bell(socket: &zmq::Socket, bell: &Doorbell, timeout_ms: i64) -> [bool; 2] {
        let items = [
            Waitable::Socket(socket, zmq::POLLIN),
            Waitable::Fd(bell.fd()),
        ];
        let ready = wait(&items, timeout_ms).unwrap();
        [ready[0], ready[1]]
    }

    #[test]
    fn a_message_sent_before_the_wait_is_seen_without_waiting() {
        let context = zmq::Context::new();
        let (pull, push) = pair(&context, "before");
        push.send("x", 0).unwrap();
        let started = Instant::now();
        let ready = wait(&[Waitable::Socket(&pull, zmq::POLLIN)], 5_000).unwrap();
        assert!(ready[0]);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(pull.recv_bytes(zmq::DONTWAIT).unwrap(), b"x");
    }

    #[test]
    fn a_message_sent_during_the_wait_ends_it() {
        let context = zmq::Context::new();
        let (pull, push) = pair(&context, "during");
        // Drained first, so the socket is idle and the wait must block.
        assert!(pull.recv_bytes(zmq::DONTWAIT).is_err());
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            push.send("y", 0).unwrap();
            push
        });
        let started = Instant::now();
        let mut got = None;
        // A wake-up can come for a command before the message: read with
        // DONTWAIT and wait again, as the I/O threads do.
        while got.is_none() && started.elapsed() < Duration::from_secs(5) {
            let ready = wait(&[Waitable::Socket(&pull, zmq::POLLIN)], 5_000).unwrap();
            if ready[0] {
                got = pull.recv_bytes(zmq::DONTWAIT).ok();
            }
        }
        assert_eq!(got.as_deref(), Some(&b"y"[..]));
        assert!(started.elapsed() >= Duration::from_millis(90));
        drop(sender.join().unwrap());
    }

    #[test]
    fn nothing_ready_waits_out_the_timeout() {
        let context = zmq::Context::new();
        let (pull, _push) = pair(&context, "idle");
        let bell = Doorbell::new().unwrap();
        let started = Instant::now();
        assert_eq!(socket_and_bell(&pull, &bell, 150), [false, false]);
        assert!(started.elapsed() >= Duration::from_millis(140));
    }

    /// The rule the I/O threads live by: read until `EAGAIN`, send, then
    /// wait. A send can take the signal of a message that arrived
    /// meanwhile; a wait that missed it would run out its timeout with the
    /// message waiting. Thousands of round trips over TCP, both ends
    /// waiting this way, and no wait may run out.
    #[test]
    fn no_wait_runs_out_while_a_message_waits_in_a_ping_pong_over_tcp() {
        const TRIPS: usize = 3_000;
        const PATIENCE_MS: i64 = 5_000;
        let context = zmq::Context::new();
        let router = context.socket(zmq::ROUTER).unwrap();
        router.bind("tcp://127.0.0.1:0").unwrap();
        let endpoint = router.get_last_endpoint().unwrap().unwrap();
        let dealer = context.socket(zmq::DEALER).unwrap();
        dealer.connect(&endpoint).unwrap();
        // The ROUTER learns the DEALER's routing id from its first message.
        dealer.send("hello", 0).unwrap();
        let peer = router.recv_multipart(0).unwrap().remove(0);
        let echo = std::thread::spawn(move || {
            let mut answered = 0;
            while answered < TRIPS {
                let ready = wait(&[Waitable::Socket(&dealer, zmq::POLLIN)], PATIENCE_MS).unwrap();
                assert!(ready[0], "the echo's wait ran out after {answered} answers");
                while let Ok(frames) = dealer.recv_multipart(zmq::DONTWAIT) {
                    dealer.send_multipart(frames, zmq::DONTWAIT).unwrap();
                    answered += 1;
                }
            }
        });
        for trip in 0..TRIPS {
            router
                .send_multipart([&peer[..], &trip.to_be_bytes()[..]], zmq::DONTWAIT)
                .unwrap();
            let reply = loop {
                let ready = wait(&[Waitable::Socket(&router, zmq::POLLIN)], PATIENCE_MS).unwrap();
                assert!(ready[0], "the caller's wait ran out at trip {trip}");
                if let Ok(frames) = router.recv_multipart(zmq::DONTWAIT) {
                    break frames;
                }
            };
            assert_eq!(reply[1], trip.to_be_bytes());
        }
        echo.join().unwrap();
    }

    #[test]
    fn a_socket_waited_on_for_no_events_never_wakes_the_wait() {
        let context = zmq::Context::new();
        let (pull, push) = pair(&context, "held");
        push.send("z", 0).unwrap();
        let ready = wait(&[Waitable::Socket(&pull, zmq::PollEvents::empty())], 100).unwrap();
        assert!(!ready[0], "input held: the message waits");
        assert_eq!(pull.recv_bytes(zmq::DONTWAIT).unwrap(), b"z");
    }

    #[test]
    fn a_doorbell_rung_many_times_wakes_once_and_is_quiet_once_drained() {
        let bell = Doorbell::new().unwrap();
        for _ in 0..1_000 {
            bell.ring();
        }
        assert!(wait(&[Waitable::Fd(bell.fd())], 1_000).unwrap()[0]);
        bell.drain();
        assert!(
            !wait(&[Waitable::Fd(bell.fd())], 50).unwrap()[0],
            "drained, it stays quiet"
        );
        // A ring after the drain must write again: a flag left set would
        // silence the doorbell for good.
        bell.ring();
        assert!(wait(&[Waitable::Fd(bell.fd())], 1_000).unwrap()[0]);
    }

    #[test]
    fn a_doorbell_rung_from_another_thread_ends_a_wait() {
        let bell = std::sync::Arc::new(Doorbell::new().unwrap());
        let ringer = std::sync::Arc::clone(&bell);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            ringer.ring();
        });
        assert!(wait(&[Waitable::Fd(bell.fd())], 5_000).unwrap()[0]);
        thread.join().unwrap();
    }

    #[test]
    fn a_busy_socket_does_not_hide_a_rung_doorbell() {
        let context = zmq::Context::new();
        let (pull, push) = pair(&context, "busy");
        push.send("w", 0).unwrap();
        let bell = Doorbell::new().unwrap();
        bell.ring();
        assert_eq!(socket_and_bell(&pull, &bell, 5_000), [true, true]);
    }
}
