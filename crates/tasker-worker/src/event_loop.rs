//! What a host with an event loop of its own needs, and a Rust worker does
//! not: the Node SDK runs the runtime on Node's loop, takes steps as JSON
//! text for V8 to parse, and hands back results whose output is JSON text
//! already. A Rust user of [`WorkerRuntime`] never needs this module.
//!
//! * [`start`] runs the connection without an I/O thread; the host calls
//!   [`Driver::drive`] when [`Driver::fd`] is readable, when the time it
//!   returned comes, and after it completes steps or stops;
//! * [`keep_raw_steps`] has steps kept as the JSON text they came in, only
//!   checked and located in their message ([`tasker_protocol::raw`]);
//! * [`EventLoopHost`] adds to [`WorkerRuntime`] a waker for new steps, the
//!   raw pull and the encoded completion.

use std::time::{Duration, Instant};

use tasker_protocol::raw::{EncodedResult, RawStep};

use crate::connection::Connection;
use crate::output::{check_result_json, serialization_failure};
use crate::shared::Received;
use crate::{WorkerError, WorkerOptions, WorkerRuntime};

pub use crate::shared::SocketFd;

/// Like [`WorkerRuntime::start`], without an I/O thread: the host runs the
/// connection from its own event loop with the returned [`Driver`]. It must
/// call [`Driver::drive`] when the driver's [`fd`](Driver::fd) is readable,
/// when the time `drive` returned comes, and after
/// [`complete_encoded`](EventLoopHost::complete_encoded),
/// [`complete_many`](WorkerRuntime::complete_many) or
/// [`stop`](WorkerRuntime::stop). In exchange, steps and results do not
/// pass through another thread.
pub fn start(options: WorkerOptions) -> Result<(WorkerRuntime, Driver), WorkerError> {
    let (runtime, connection) = WorkerRuntime::prepare(options, true)?;
    Ok((
        runtime,
        Driver {
            connection,
            closed: false,
        },
    ))
}

/// Keeps steps as JSON text for a host that pulls them with
/// [`EventLoopHost::next_raw_steps`]: the I/O thread only checks each
/// batch, and [`WorkerRuntime::next_steps`] decodes on the caller's thread.
/// Otherwise the I/O thread decodes each batch in one pass.
pub fn keep_raw_steps(options: &mut WorkerOptions) {
    options.raw_steps = true;
}

/// The runtime's methods for event-loop hosts.
pub trait EventLoopHost {
    /// Sets a function the I/O thread calls each time steps arrive, and once
    /// when the runtime has closed (state [`RuntimeState::Stopped`](crate::RuntimeState::Stopped)), so a
    /// host that cannot block a thread in [`next_steps`](WorkerRuntime::next_steps)
    /// can pull with a zero timeout instead. It runs on the I/O thread with
    /// no lock held: it must not block, and may call any method but the
    /// blocking ones with a nonzero timeout. Steps that arrived before it
    /// was set are the caller's to pull. Only the first call has effect;
    /// false for the others.
    fn set_waker(&self, waker: impl Fn() + Send + Sync + 'static) -> bool;

    /// Like [`next_steps`](WorkerRuntime::next_steps), with each step as the JSON
    /// text the orchestrator sent, checked as strictly as `next_steps`
    /// decodes it, for hosts that parse JSON themselves (best with
    /// [`keep_raw_steps`], else each step is encoded again).
    fn next_raw_steps(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<RawStep>, WorkerError>;

    /// Hands back results already encoded, e.g. made with
    /// [`EncodedResult::completed`] from output that is JSON text already.
    /// Each is checked here, on the caller's thread, in one pass over its
    /// text: an output nested deeper than
    /// [`max_json_depth`](WorkerRuntime::max_json_depth), or any string holding a
    /// lone UTF-16 surrogate escape (`"\udce9"`, as JavaScript's
    /// `JSON.stringify` writes for a string cut mid-character), is not sent:
    /// the step is reported failed as [`error_types::SERIALIZATION_ERROR`](tasker_protocol::error_types::SERIALIZATION_ERROR),
    /// not retryable.
    fn complete_encoded(&self, results: Vec<EncodedResult>);
}

impl EventLoopHost for WorkerRuntime {
    fn set_waker(&self, waker: impl Fn() + Send + Sync + 'static) -> bool {
        self.shared.waker.set(Box::new(waker)).is_ok()
    }

    fn next_raw_steps(
        &self,
        max: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<RawStep>, WorkerError> {
        Ok(self
            .pull(max, timeout)?
            .into_iter()
            .map(|step| match step {
                Received::Raw(raw) => raw,
                Received::Typed(step) => RawStep::from_request(&step),
            })
            .collect())
    }

    fn complete_encoded(&self, mut results: Vec<EncodedResult>) {
        let max_depth = self.max_json_depth();
        for result in &mut results {
            if let Err(problem) = check_result_json(result.json(), max_depth) {
                tracing::warn!(step_id = result.step_ref().step_id, %problem, "output cannot be sent; reporting the step failed");
                let failure = serialization_failure(
                    result.step_ref(),
                    &problem,
                    self.worker_id(),
                    result.execution_time_ms(),
                );
                crate::runtime::log_failure(&failure);
                *result = EncodedResult::new(&failure);
            }
        }
        self.hand_over(results);
    }
}

/// The connection of a runtime started with [`start`], run by the host's
/// event loop.
///
/// Dropping it closes the socket, which may wait up to `linger_ms` for the
/// last messages to go out: drop it off the event loop's thread.
pub struct Driver {
    connection: Connection,
    closed: bool,
}

/// What [`Driver::drive`] leaves to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Call again when the fd is readable, or at `wake_at` at the latest.
    Running {
        /// The next deadline (heartbeat, expiry, reconnect, drain).
        wake_at: Option<Instant>,
    },
    /// The connection is done (drained, goodbye sent): the runtime is
    /// [`RuntimeState::Stopped`](crate::RuntimeState::Stopped).
    Closed,
}

impl Driver {
    /// The descriptor to watch for readability: ZeroMQ's signal of the
    /// current socket. It changes when the runtime reconnects; `None`
    /// while it waits to. It signals changes, not data: drive after each.
    pub fn fd(&self) -> Option<SocketFd> {
        if self.closed {
            return None;
        }
        self.connection.fd()
    }

    /// Does everything due: receives (the waker is called for new steps),
    /// sends results and drain notices, beats, reconnects, says goodbye.
    /// Never blocks.
    pub fn drive(&mut self) -> Drive {
        if self.closed {
            return Drive::Closed;
        }
        match self.connection.drive() {
            Some(wake_at) => Drive::Running { wake_at },
            None => {
                self.closed = true;
                Drive::Closed
            }
        }
    }
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver").field("fd", &self.fd()).finish()
    }
}
