//! How results travel from the I/O thread to a batch's handle: a shared
//! buffer the I/O thread appends to once per turn, and a waker it calls
//! only when the handle has what it waits for. A handle collecting a
//! thousand results is woken once, not once per turn that ended some of
//! them: on a small machine each wake-up of the caller's thread costs more
//! than the results it carries.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use tasker_protocol::StepExecutionResult;

#[derive(Default)]
struct State {
    arrived: Vec<StepExecutionResult>,
    /// How many results the waiting handle needs before it can go on.
    wanted: usize,
    waker: Option<Waker>,
    /// The I/O thread let go of the batch: nothing more will come.
    closed: bool,
}

type Shared = Arc<Mutex<State>>;

/// The I/O thread's end; dropped (with the last step of its batch), it
/// closes the stream.
pub(crate) struct ResultSink(Shared);

/// The handle's end.
#[derive(Debug)]
pub(crate) struct ResultStream(Shared);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("arrived", &self.arrived.len())
            .field("wanted", &self.wanted)
            .field("closed", &self.closed)
            .finish()
    }
}

/// A connected sink and stream.
pub(crate) fn channel() -> (ResultSink, ResultStream) {
    let shared = Shared::default();
    (ResultSink(Arc::clone(&shared)), ResultStream(shared))
}

impl ResultSink {
    /// Adds results; wakes the handle if it now has what it waits for.
    pub fn send(&self, mut results: Vec<StepExecutionResult>) {
        let waker = {
            let mut state = self.0.lock().expect("result sink lock");
            if state.arrived.is_empty() {
                std::mem::swap(&mut state.arrived, &mut results);
            } else {
                state.arrived.append(&mut results);
            }
            if state.arrived.len() >= state.wanted {
                state.waker.take()
            } else {
                None
            }
        };
        // Woken outside the lock, so the handle never waits on it.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl Drop for ResultSink {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.lock().expect("result sink lock");
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl ResultStream {
    /// Waits until at least `wanted` results have arrived, or no more will
    /// (then fewer), and takes them all.
    pub async fn take(&mut self, wanted: usize) -> Vec<StepExecutionResult> {
        poll_fn(|cx| {
            let mut state = self.0.lock().expect("result sink lock");
            if state.arrived.len() >= wanted.max(1) || state.closed {
                state.wanted = 0;
                state.waker = None;
                return Poll::Ready(std::mem::take(&mut state.arrived));
            }
            state.wanted = wanted;
            match &state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => state.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// A stream that already holds `results` and expects no more.
    pub fn ready(results: Vec<StepExecutionResult>) -> Self {
        Self(Arc::new(Mutex::new(State {
            arrived: results,
            closed: true,
            ..State::default()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tasker_protocol::{StepRef, StepStatus};

    fn result(id: i64) -> StepExecutionResult {
        StepExecutionResult::completed(
            StepRef {
                step_id: id,
                attempt: 1,
            },
            serde_json::Value::Null,
            "w",
            0,
        )
    }

    #[tokio::test]
    async fn a_handle_waiting_for_several_results_wakes_once_they_are_all_in() {
        let (sink, mut stream) = channel();
        let waiter = tokio::spawn(async move { stream.take(3).await });
        sink.send(vec![result(1)]);
        sink.send(vec![result(2)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "woken with 2 of the 3 it waits for");
        sink.send(vec![result(3)]);
        let got = waiter.await.unwrap();
        assert_eq!(got.iter().map(|r| r.step_id).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_dropped_sink_ends_the_wait_with_what_arrived() {
        let (sink, mut stream) = channel();
        sink.send(vec![result(1)]);
        let waiter = tokio::spawn(async move { stream.take(5).await });
        drop(sink);
        let got = waiter.await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].status, StepStatus::Completed);
    }
}
