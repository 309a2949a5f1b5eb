//! The API's HTTP/1.1 listener: each connection served by hyper with the
//! limits `axum::serve` leaves off, and all of them closed within a bound
//! when the server stops.
//!
//! `axum::serve` gives hyper no timer, so hyper's own 30-second limit on
//! reading a request's head never ran: one client that sent half a request
//! held its connection for good, and `with_graceful_shutdown` waited for
//! it, so `tasker serve` never exited after SIGTERM.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::slots::{Slot, Slots};

/// How long clients get: see [`Limits::SERVE`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest a client may take to send a request's head, counted from
    /// when the connection is ready for it: so it is also how long an idle
    /// keep-alive connection stays open.
    pub head: Duration,
    /// After the server is closed, how long requests still in progress have
    /// to finish before their connections are dropped.
    pub close_grace: Duration,
    /// Most connections open at once (see [`crate::slots`]).
    pub connections: usize,
}

impl Limits {
    /// `tasker serve`'s: hyper's own default for the head; five seconds of
    /// grace, as long-polls end when the service stops; a quarter of the
    /// open-files limit for connections.
    pub fn serve() -> Limits {
        Limits {
            head: Duration::from_secs(30),
            close_grace: Duration::from_secs(5),
            connections: crate::slots::default_max(),
        }
    }
}

/// Least time between two warnings that the connections are all in use.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Pause after an accept fails for want of resources (descriptors, memory),
/// rather than retrying at once, which would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` until `closed` completes; then stops
/// accepting, lets requests in progress finish for up to
/// `limits.close_grace` and drops what is left.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    closed: impl std::future::Future<Output = ()>,
) {
    let (closing, _) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut slots = Slots::new(limits.connections);
    // Each connection task's slot, so that one that panicked gives its
    // slot back too (its task returns no value to say which).
    let mut slot_of: std::collections::HashMap<tokio::task::Id, u64> = Default::default();
    let mut refused = 0u64;
    let mut warned: Option<Instant> = None;
    let mut warned_pushed_out = 0u64;
    let mut failed_accepts = 0u64;
    let mut accept_warned: Option<Instant> = None;
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let admitted = slots.admit();
                    // Said at most every ten seconds: under a flood of
                    // connections, a line per connection would be a flood too.
                    let pushed_out = slots.pushed_out_total();
                    if (admitted.is_none() || pushed_out > warned_pushed_out)
                        && warned.map_or(true, |at| at.elapsed() >= FULL_WARNING_EVERY)
                    {
                        tracing::warn!(
                            max = slots.max(),
                            idle_closed = pushed_out,
                            refused = refused + u64::from(admitted.is_none()),
                            "the API's connections are at their bound: the longest idle is \
                             closed for each new one, and a new one is closed when all are in \
                             a request (clients connecting without sending requests?)"
                        );
                        warned = Some(Instant::now());
                        warned_pushed_out = pushed_out;
                    }
                    let Some((id, slot)) = admitted else {
                        refused += 1;
                        drop(stream);
                        continue;
                    };
                    let served = connection(stream, app.clone(), limits.head, closing.subscribe(), slot);
                    let task = connections.spawn(served);
                    slot_of.insert(task.id(), id);
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // Out of descriptors, this repeats every backoff for as
                    // long as it lasts: said at most every ten seconds.
                    failed_accepts += 1;
                    if accept_warned.map_or(true, |at| at.elapsed() >= FULL_WARNING_EVERY) {
                        tracing::warn!(
                            error = %e,
                            failed = failed_accepts,
                            "accepting an API connection failed (said again at most every 10 s)"
                        );
                        accept_warned = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaps ended connections, so the set holds only open ones.
            Some(ended) = connections.join_next_with_id(), if !connections.is_empty() => {
                let task = match ended {
                    Ok((task, ())) => task,
                    Err(e) => e.id(),
                };
                if let Some(id) = slot_of.remove(&task) {
                    slots.release(id);
                }
            }
        }
    }
    drop(listener);
    closing.send_replace(true);
    let grace = tokio::time::sleep(limits.close_grace);
    tokio::pin!(grace);
    while !connections.is_empty() {
        tokio::select! {
            _ = connections.join_next() => {}
            () = &mut grace => {
                tracing::info!(
                    connections = connections.len(),
                    "API connections still open after the grace period are dropped"
                );
                connections.shutdown().await;
            }
        }
    }
}

/// Errors of one connection that went away before it was accepted: the
/// listener itself is fine.
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    )
}

async fn connection(
    stream: TcpStream,
    app: Router,
    head_timeout: Duration,
    mut closing: watch::Receiver<bool>,
    slot: Arc<Slot>,
) {
    // Responses are whole JSON bodies: waiting to fill a segment only
    // delays them.
    let _ = stream.set_nodelay(true);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let service = Counted {
        app: TowerToHyperService::new(app),
        slot: Arc::clone(&slot),
    };
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "API connection ended with an error");
                }
                return;
            }
            () = slot.pushed_out() => {
                tracing::debug!("an idle API connection closed to make room for a new one");
                return;
            }
            _ = closing.wait_for(|closing| *closing), if !asked_to_close => {
                // Ends the connection after the request in progress, or at
                // once if it is between requests.
                conn.as_mut().graceful_shutdown();
                asked_to_close = true;
            }
        }
    }
}

/// The API's service, marking its connection's slot busy while a request
/// is in progress (see [`crate::slots`]).
struct Counted {
    app: TowerToHyperService<Router>,
    slot: Arc<Slot>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Counted {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let busy = self.slot.enter();
        let answer = self.app.call(request);
        Box::pin(async move {
            let answer = answer.await;
            drop(busy);
            answer
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const QUICK: Limits = Limits {
        head: Duration::from_millis(300),
        close_grace: Duration::from_millis(300),
        connections: 1024,
    };

    fn app() -> Router {
        Router::new()
            .route("/", axum::routing::get(|| async { "hello" }))
            .route(
                "/slow/{ms}",
                axum::routing::get(
                    |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        "slow"
                    },
                ),
            )
    }

    /// A server on a loopback port with `limits`, and the sender that
    /// closes it.
    async fn start(
        limits: Limits,
    ) -> (
        std::net::SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app(), limits, async move {
            let _ = closed.await;
        }));
        (addr, close, server)
    }

    /// Everything the server sends until it closes the connection, or
    /// `None` if it is still open after `within`.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
        let mut got = Vec::new();
        tokio::time::timeout(within, stream.read_to_end(&mut got))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn a_half_sent_request_is_cut_off_after_the_head_timeout() {
        let (addr, _close, _server) = start(QUICK).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let got = read_to_close(&mut half, Duration::from_secs(5)).await;
        assert!(got.is_some(), "still open 5 s after a 300 ms head timeout");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_head_timeout() {
        let (addr, _close, _server) = start(QUICK).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_to_close(&mut idle, Duration::from_secs(5))
            .await
            .expect("closed after the first response");
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
        assert!(got.ends_with("hello"), "{got}");
    }

    #[tokio::test]
    async fn closing_lets_a_request_in_progress_finish_within_the_grace() {
        let limits = Limits {
            close_grace: Duration::from_secs(5),
            ..QUICK
        };
        let (addr, close, server) = start(limits).await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow/300 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        close.send(()).unwrap();
        let got = read_to_close(&mut slow, Duration::from_secs(5))
            .await
            .expect("closed once answered");
        assert!(got.ends_with("slow"), "answered before closing: {got}");
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("serve returns once its last request is answered")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }

    #[tokio::test]
    async fn closing_drops_what_outlasts_the_grace_and_a_half_sent_request() {
        let limits = Limits {
            head: Duration::from_secs(60),
            ..QUICK
        };
        let (addr, close, server) = start(limits).await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow/60000 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = Instant::now();
        close.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("serve returns after its 300 ms grace")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        for stream in [&mut half, &mut slow] {
            let got = read_to_close(stream, Duration::from_secs(1)).await;
            assert_eq!(got.as_deref(), Some(""), "dropped without an answer");
        }
    }

    /// A new connection's `GET /` is answered.
    async fn assert_answered(addr: std::net::SocketAddr) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_to_close(&mut stream, Duration::from_secs(5))
            .await
            .expect("answered");
        assert!(got.ends_with("hello"), "{got}");
    }

    #[tokio::test]
    async fn at_the_connection_bound_a_silent_connection_makes_room_for_a_request() {
        let limits = Limits {
            head: Duration::from_secs(60),
            connections: 3,
            ..QUICK
        };
        let (addr, _close, _server) = start(limits).await;
        // Three clients that connect and say nothing hold every slot.
        let mut silent = Vec::new();
        for _ in 0..3 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            silent.push(stream);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_answered(addr).await;
        // The one silent the longest was closed for it; the others wait on.
        let oldest = read_to_close(&mut silent[0], Duration::from_secs(1)).await;
        assert_eq!(oldest.as_deref(), Some(""), "closed without an answer");
        for stream in &mut silent[1..] {
            assert!(read_to_close(stream, Duration::from_millis(200))
                .await
                .is_none());
        }
    }

    #[tokio::test]
    async fn when_every_connection_is_in_a_request_a_new_one_is_closed_and_they_finish() {
        let limits = Limits {
            connections: 2,
            ..QUICK
        };
        let (addr, _close, _server) = start(limits).await;
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET /slow/800 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            slow.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut late = TcpStream::connect(addr).await.unwrap();
        let _ = late.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut got = Vec::new();
        let closed = tokio::time::timeout(Duration::from_millis(500), late.read_to_end(&mut got))
            .await
            .expect("closed at once, not left waiting");
        assert!(closed.is_err() || got.is_empty(), "{got:?}");
        for stream in &mut slow {
            let got = read_to_close(stream, Duration::from_secs(5))
                .await
                .expect("answered");
            assert!(got.ends_with("slow"), "{got}");
        }
        // Their slots are free again.
        assert_answered(addr).await;
    }
}
