//! How many steps of each handler a durable caller lets into the executor
//! at once.
//!
//! A store commits a step's dispatch before the step enters the
//! executor's queue, so after a crash it cannot tell a step no worker saw
//! from one a worker held and lost: both cost an attempt, and a step
//! allowed one failed `WorkerLost` without having run. With every step of
//! a backlog queued here, a `kill -9` cost all of them that. A caller that
//! takes a [`Permit`] per step before committing its dispatch keeps the
//! backlog in its store instead; only about as many steps of a handler as
//! its workers can hold, twice over (one set running, one waiting to
//! follow at once), are queued here.
//!
//! The I/O thread tells the admission what each handler's workers can hold
//! whenever workers come and go; permits come back as results do.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::oneshot;

/// Steps of a handler admitted while no connected worker serves it: they
/// wait here for the first worker, or end `NoWorkerForHandler` at their
/// timeout as any queued step does, while the rest wait in the store.
pub const ADMITTED_WITHOUT_WORKERS: u64 = 8;

/// The line for the executor's queue, one per handler; see the module doc.
///
/// ```
/// # async fn demo() {
/// use tasker_orchestrator::Admission;
/// let admission = Admission::default();
/// // No worker serves `resize` yet: a few steps may still queue for one.
/// let permit = admission.try_admit("resize").expect("room for the first step");
/// drop(permit); // the step's result came
/// let permit = admission.admit("resize").await;
/// # drop(permit);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Admission {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Steps each handler's connected workers can hold together.
    capacity: HashMap<Arc<str>, u64>,
    /// Handlers with steps admitted or waiting; removed when neither.
    lines: HashMap<Arc<str>, Line>,
}

#[derive(Default)]
struct Line {
    admitted: u64,
    /// Each is told `()` when admitted (counted in `admitted` by then).
    waiting: VecDeque<oneshot::Sender<()>>,
}

impl Line {
    fn has_room(&self, capacity: u64) -> bool {
        let allowance = if capacity == 0 {
            ADMITTED_WITHOUT_WORKERS
        } else {
            capacity.saturating_mul(2)
        };
        self.admitted < allowance
    }

    /// Lets in whoever waits while there is room, first come first.
    fn admit_waiting(&mut self, capacity: u64) {
        while self.has_room(capacity) {
            let Some(waiter) = self.waiting.pop_front() else {
                return;
            };
            // A waiter that gave up is passed over.
            if waiter.send(()).is_ok() {
                self.admitted += 1;
            }
        }
    }

    fn is_unused(&self) -> bool {
        self.admitted == 0 && self.waiting.is_empty()
    }
}

impl Admission {
    /// A permit for a step of `handler` if one is free and nobody waits
    /// for one.
    pub fn try_admit(&self, handler: &str) -> Option<Permit> {
        let mut state = self.shared.state.lock().expect("admission lock");
        let capacity = state.capacity.get(handler).copied().unwrap_or(0);
        let name = state.key(handler);
        let line = state.lines.entry(Arc::clone(&name)).or_default();
        if !line.waiting.is_empty() || !line.has_room(capacity) {
            if line.is_unused() {
                state.lines.remove(handler);
            }
            return None;
        }
        line.admitted += 1;
        Some(Permit {
            shared: Arc::clone(&self.shared),
            handler: name,
        })
    }

    /// Waits in line for a permit for a step of `handler`. The place in
    /// line is taken when this is called, not when first polled; dropping
    /// the future gives it up (and a permit it was granted meanwhile).
    pub fn admit(&self, handler: &str) -> Admitting {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.state.lock().expect("admission lock");
        let capacity = state.capacity.get(handler).copied().unwrap_or(0);
        let name = state.key(handler);
        let line = state.lines.entry(Arc::clone(&name)).or_default();
        line.waiting.push_back(tx);
        line.admit_waiting(capacity);
        Admitting {
            shared: Arc::clone(&self.shared),
            handler: name,
            granted: rx,
            done: false,
        }
    }

    /// What each handler's connected workers can hold now; a handler not
    /// named has none. Lets in whoever the new figures make room for.
    pub(crate) fn set_capacity(&self, capacity: HashMap<Arc<str>, u64>) {
        let mut state = self.shared.state.lock().expect("admission lock");
        state.capacity = capacity;
        let State { capacity, lines } = &mut *state;
        for (handler, line) in lines.iter_mut() {
            line.admit_waiting(capacity.get(handler).copied().unwrap_or(0));
        }
    }

    /// Steps admitted now, and steps waiting, over all handlers.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.shared.state.lock().expect("admission lock");
        state.lines.values().fold((0, 0), |(a, w), line| {
            (a + line.admitted, w + line.waiting.len() as u64)
        })
    }
}

impl State {
    /// The handler's name, shared with the capacity table's key when there
    /// is one, so a line costs no copy of it.
    fn key(&self, handler: &str) -> Arc<str> {
        self.lines
            .get_key_value(handler)
            .map(|(k, _)| k)
            .or_else(|| self.capacity.get_key_value(handler).map(|(k, _)| k))
            .map_or_else(|| Arc::from(handler), Arc::clone)
    }
}

impl Shared {
    fn release(&self, handler: &str) {
        let mut state = self.state.lock().expect("admission lock");
        let capacity = state.capacity.get(handler).copied().unwrap_or(0);
        if let Some(line) = state.lines.get_mut(handler) {
            line.admitted = line.admitted.saturating_sub(1);
            line.admit_waiting(capacity);
            if line.is_unused() {
                state.lines.remove(handler);
            }
        }
    }
}

/// Room for one step of a handler in the executor's queue; dropping it
/// (when the step's result comes) makes room for the next.
pub struct Permit {
    shared: Arc<Shared>,
    handler: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release(&self.handler);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("handler", &self.handler)
            .finish()
    }
}

/// A place in line: resolves to a [`Permit`].
pub struct Admitting {
    shared: Arc<Shared>,
    handler: Arc<str>,
    granted: oneshot::Receiver<()>,
    done: bool,
}

impl Future for Admitting {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        match Pin::new(&mut self.granted).poll(cx) {
            Poll::Ready(Ok(())) => {
                self.done = true;
                Poll::Ready(Permit {
                    shared: Arc::clone(&self.shared),
                    handler: Arc::clone(&self.handler),
                })
            }
            // The sender lives in the line until it is granted or the
            // admission itself is gone; nothing else drops it.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Admitting {
    fn drop(&mut self) {
        // Granted but never taken: without this the room it was counted
        // for would be held by nobody for good, and the line would stop.
        if !self.done && self.granted.try_recv().is_ok() {
            self.shared.release(&self.handler);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn capacity(handler: &str, n: u64) -> HashMap<Arc<str>, u64> {
        HashMap::from([(Arc::from(handler), n)])
    }

    #[test]
    fn a_handler_without_workers_admits_a_few_steps_and_holds_back_the_rest() {
        let admission = Admission::default();
        let permits: Vec<_> = (0..ADMITTED_WITHOUT_WORKERS)
            .map(|_| admission.try_admit("h").expect("room"))
            .collect();
        assert!(admission.try_admit("h").is_none());
        // Other handlers have lines of their own.
        assert!(admission.try_admit("other").is_some());
        drop(permits);
        assert_eq!(admission.counts(), (0, 0), "lines are dropped when unused");
    }

    #[test]
    fn room_is_twice_what_the_workers_hold() {
        let admission = Admission::default();
        admission.set_capacity(capacity("h", 3));
        let permits: Vec<_> = (0..6).map(|_| admission.try_admit("h").unwrap()).collect();
        assert!(admission.try_admit("h").is_none());
        assert_eq!(permits.len(), 6);
    }

    #[tokio::test]
    async fn waiters_are_let_in_first_come_first_as_results_free_room() {
        let admission = Admission::default();
        admission.set_capacity(capacity("h", 1));
        let first = admission.try_admit("h").unwrap();
        let _second = admission.try_admit("h").unwrap();
        let mut a = Box::pin(admission.admit("h"));
        let mut b = Box::pin(admission.admit("h"));
        // Someone waits: a newcomer does not jump the line.
        assert!(admission.try_admit("h").is_none());
        let quick = Duration::from_millis(20);
        assert!(tokio::time::timeout(quick, &mut a).await.is_err());
        drop(first);
        let _a = tokio::time::timeout(quick, &mut a).await.expect("a first");
        assert!(tokio::time::timeout(quick, &mut b).await.is_err());
        assert_eq!(admission.counts(), (2, 1));
    }

    #[tokio::test]
    async fn workers_arriving_let_in_the_waiters_they_have_room_for() {
        let admission = Admission::default();
        let held: Vec<_> = (0..ADMITTED_WITHOUT_WORKERS)
            .map(|_| admission.try_admit("h").unwrap())
            .collect();
        let waiters: Vec<_> = (0..12).map(|_| admission.admit("h")).collect();
        admission.set_capacity(capacity("h", 8));
        // Room for 16: the 8 held and 8 of the 12 waiting.
        assert_eq!(admission.counts(), (16, 4));
        drop(waiters);
        drop(held);
        assert_eq!(
            admission.counts(),
            (0, 0),
            "granted and dropped: given back"
        );
    }

    #[test]
    fn a_waiter_that_gives_up_is_passed_over() {
        let admission = Admission::default();
        admission.set_capacity(capacity("h", 1));
        let a = admission.try_admit("h").unwrap();
        let _b = admission.try_admit("h").unwrap();
        let gave_up = admission.admit("h");
        let mut stays = admission.admit("h");
        drop(gave_up);
        drop(a);
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(Pin::new(&mut stays).poll(&mut cx), Poll::Ready(_)));
    }

    fn futures_waker() -> std::task::Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Arc::new(Noop).into()
    }
}
