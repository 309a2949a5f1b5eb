//! Reading the rest of a request's body before an answer that did not
//! need it: a refusal decided from the head alone (a 401, 404, 405, 415, a
//! bad query).
//!
//! hyper closes a connection whose request body was left unread. A client
//! that sends its body right after the head is then still writing when the
//! connection goes, sees a broken pipe or a reset instead of the answer,
//! and reports a server it could not reach: a submit with a wrong token
//! said "the task may or may not have been created" (nothing was) and hid
//! the 401, 8 times in 10 with a 900 KB body.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::extract::{declared_length, BODY_TIMEOUT, MAX_DRAINED_BYTES};

/// Serves `request`, then reads what is left of its body, up to
/// [`MAX_DRAINED_BYTES`] and until [`BODY_TIMEOUT`] after it began, so
/// that the answer reaches the client and its connection stays open.
///
/// Not for a client that sent `Expect: 100-continue`: it sends no body
/// until told to, and an early answer is what it waits for. A body
/// declared larger than the bound is not waited for either; its
/// connection is closed as before.
pub(crate) async fn drain_unread_body(request: Request, next: Next) -> Response {
    let started = Instant::now();
    if request.headers().contains_key(header::EXPECT)
        || declared_length(request.headers()).is_some_and(|n| n > MAX_DRAINED_BYTES as u64)
        || request.body().is_end_stream()
    {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let shared = Arc::new(Mutex::new(Read { body, bytes: 0 }));
    let watched = Body::new(Watched(Arc::clone(&shared)));
    let response = next.run(Request::from_parts(parts, watched)).await;
    // The handler's side is dropped with its request; if something still
    // holds it, the body is not this function's to read.
    let Ok(body) = Arc::try_unwrap(shared) else {
        return response;
    };
    let read = body.into_inner().unwrap_or_else(PoisonError::into_inner);
    if !read.body.is_end_stream() && read.bytes < MAX_DRAINED_BYTES {
        let left = BODY_TIMEOUT.saturating_sub(started.elapsed());
        let budget = MAX_DRAINED_BYTES - read.bytes;
        let _ = tokio::time::timeout(left, discard(read.body, budget)).await;
    }
    response
}

/// Reads `body` to its end, or past `budget` bytes, or to an error,
/// keeping none of it.
async fn discard(body: Body, budget: usize) {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        seen = seen.saturating_add(chunk.len());
        if seen > budget {
            return;
        }
    }
}

/// A request's body and how much of it the handler read.
struct Read {
    body: Body,
    bytes: usize,
}

/// The request's body as the handler reads it, left behind for
/// [`drain_unread_body`] when the handler is done.
struct Watched(Arc<Mutex<Read>>);

impl Watched {
    fn read(&self) -> std::sync::MutexGuard<'_, Read> {
        // Only this request's two ends take the lock, one after the other;
        // a panic while polling leaves the body as hyper left it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut read = self.read();
        let polled = Pin::new(&mut read.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                read.bytes = read.bytes.saturating_add(data.len());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.read().body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.read().body.size_hint()
    }
}
