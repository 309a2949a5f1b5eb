//! How many steps a durable caller lets into the executor at once.
//!
//! A store commits a step's dispatch before the step enters the
//! executor's queue, so after a crash it cannot tell a step no worker saw
//! from one a worker held and lost: both cost an attempt, and a step
//! allowed one failed `WorkerLost` without having run. With every step of
//! a backlog queued here, a `kill -9` cost all of them that, and a burst
//! waited in the queue until steps timed out (`ScheduleTimeout`) without
//! having run. A caller that takes a [`Permit`] per step before committing
//! its dispatch keeps the backlog in its store instead.
//!
//! Room is counted per connection: each connection taking work admits up
//! to twice its capacity (one set running, one waiting to follow at once),
//! and a handler's limit on it twice that limit; a step is admitted on the
//! least loaded connection serving its handler. Counting per handler let a
//! worker serving five handlers admit five times its room. Slots still
//! held by steps that already timed out there do not count as room. A
//! handler no connected worker serves admits [`ADMITTED_WITHOUT_WORKERS`]
//! steps, which wait for a worker or end `NoWorkerForHandler` as queued
//! steps do. Waiters are let in first come first served, whatever their
//! handler.
//!
//! The I/O thread tells the admission what each connection can hold
//! whenever workers come and go; permits come back as results do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Steps of a handler admitted while no connected worker serves it: they
/// wait for the first worker, or end `NoWorkerForHandler` at their
/// timeout as any queued step does, while the rest wait in the store.
pub const ADMITTED_WITHOUT_WORKERS: u64 = 8;

/// How often a handler no connected worker serves is warned about.
const UNSERVED_WARNING_EVERY: Duration = Duration::from_secs(60);
/// How long a handler stays unserved, with workers connected and steps of
/// it admitted or waiting, before it is warned about. At a restart of
/// `serve` the workers come back about a second apart, and the first one
/// back made the server warn of every other one's handlers; a misspelt
/// handler is still warned about seconds after its first step, long before
/// that step times out.
const UNSERVED_GRACE: Duration = Duration::from_secs(5);
/// Handlers remembered as warned about, at most (a workflow may name
/// thousands nobody serves).
const WARNED_HANDLERS: usize = 1_024;
/// Served handler names a "did you mean" hint compares at most (on the
/// I/O thread too, for a step that ends `NoWorkerForHandler`).
pub(crate) const NEAR_NAMES_LOOKED_AT: usize = 4_096;

/// What one connection taking work can hold, as the I/O thread sees it.
#[derive(Debug, Clone)]
pub(crate) struct ConnRoom {
    pub id: u64,
    /// Its capacity, less the slots held by steps that timed out there
    /// and still run.
    pub capacity: u64,
    pub handlers: Arc<[String]>,
    /// Its per-handler limits below its capacity.
    pub limits: Vec<(String, u64)>,
}

/// The line for the executor's queue; see the module doc.
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
    rooms: HashMap<u64, Room>,
    /// Handler → the connections serving it.
    serving: HashMap<Arc<str>, Vec<u64>>,
    /// Handlers with steps admitted or waiting; removed when neither.
    lines: HashMap<Arc<str>, Line>,
    /// Handlers whose line has someone waiting.
    waiting: HashSet<Arc<str>>,
    next_seq: u64,
    /// Handlers nobody serves, and when each was last warned about.
    warned: HashMap<Arc<str>, Instant>,
    /// Handlers found unserved whose grace is running, and since when.
    unserved: HashMap<Arc<str>, Instant>,
}

#[derive(Debug)]
struct Room {
    capacity: u64,
    admitted: u64,
    /// Limited handler → (limit, admitted).
    limits: HashMap<String, (u64, u64)>,
}

impl Room {
    fn has_room(&self, handler: &str) -> bool {
        self.admitted < self.capacity.saturating_mul(2)
            && self.limits.get(handler).map_or(true, |(limit, admitted)| {
                *admitted < limit.saturating_mul(2)
            })
    }

    fn take(&mut self, handler: &str) {
        self.admitted += 1;
        if let Some((_, admitted)) = self.limits.get_mut(handler) {
            *admitted += 1;
        }
    }

    fn give_back(&mut self, handler: &str) {
        self.admitted = self.admitted.saturating_sub(1);
        if let Some((_, admitted)) = self.limits.get_mut(handler) {
            *admitted = admitted.saturating_sub(1);
        }
    }

    /// Share of its room in use, for picking the least loaded.
    fn load(&self) -> u128 {
        u128::from(self.admitted) * 1_000_000 / u128::from(self.capacity.max(1))
    }
}

/// Where a step was admitted: on a connection, or under the allowance of
/// a handler no worker serves.
type Seat = Option<u64>;

#[derive(Default)]
struct Line {
    admitted: u64,
    /// Admitted while no worker served the handler.
    unserved: u64,
    /// Each is sent its seat when admitted (counted by then).
    waiting: VecDeque<(u64, oneshot::Sender<Seat>)>,
}

impl Line {
    fn is_unused(&self) -> bool {
        self.admitted == 0 && self.waiting.is_empty()
    }
}

impl State {
    /// The handler's name, shared with an existing key when there is one,
    /// so a line costs no copy of it.
    fn key(&self, handler: &str) -> Arc<str> {
        self.lines
            .get_key_value(handler)
            .map(|(k, _)| k)
            .or_else(|| self.serving.get_key_value(handler).map(|(k, _)| k))
            .map_or_else(|| Arc::from(handler), Arc::clone)
    }

    /// A seat for a step of `handler` if there is room.
    fn seat(&mut self, handler: &str) -> Option<Seat> {
        let served = self.serving.get(handler).filter(|ids| !ids.is_empty());
        self.lines.get(handler)?;
        match served {
            Some(ids) => {
                let id = ids
                    .iter()
                    .filter_map(|id| self.rooms.get(id).map(|room| (*id, room)))
                    .filter(|(_, room)| room.has_room(handler))
                    .min_by_key(|(id, room)| (room.load(), *id))
                    .map(|(id, _)| id)?;
                self.rooms.get_mut(&id)?.take(handler);
                self.lines.get_mut(handler)?.admitted += 1;
                Some(Some(id))
            }
            None => {
                let line = self.lines.get_mut(handler)?;
                if line.unserved >= ADMITTED_WITHOUT_WORKERS {
                    return None;
                }
                line.unserved += 1;
                line.admitted += 1;
                self.note_unserved(handler);
                Some(None)
            }
        }
    }

    /// Starts the grace of a handler no connected worker serves, unless it
    /// runs already or the handler was warned about this minute. Nothing
    /// while no worker is connected at all: a server starting, its workers
    /// not back yet.
    fn note_unserved(&mut self, handler: &str) {
        if self.rooms.is_empty() || self.unserved.contains_key(handler) {
            return;
        }
        let recent = self
            .warned
            .get(handler)
            .is_some_and(|at| at.elapsed() < UNSERVED_WARNING_EVERY);
        if recent || self.unserved.len() >= WARNED_HANDLERS {
            return;
        }
        let key = self.key(handler);
        self.unserved.insert(key, Instant::now());
    }

    /// At the end of a handler's grace, says that workers are connected but
    /// none serves it, if that is still so and steps of it still wait: a
    /// typo in a workflow or in a worker's handler list otherwise showed
    /// only when its steps ended `NoWorkerForHandler`, a timeout later (30 s
    /// and three attempts for a new user). At most once a minute per
    /// handler.
    fn warn_if_still_unserved(&mut self, handler: &str) {
        self.unserved.remove(handler);
        let served = self.serving.get(handler).is_some_and(|ids| !ids.is_empty());
        if self.rooms.is_empty() || served || !self.lines.contains_key(handler) {
            return;
        }
        let now = Instant::now();
        let recent = |at: &Instant| now.duration_since(*at) < UNSERVED_WARNING_EVERY;
        if self.warned.len() >= WARNED_HANDLERS {
            self.warned.retain(|_, at| recent(at));
            if self.warned.len() >= WARNED_HANDLERS {
                return;
            }
        }
        self.warned.insert(self.key(handler), now);
        let near = tasker_config::closest(
            self.serving
                .iter()
                .filter(|(_, ids)| !ids.is_empty())
                .map(|(name, _)| &**name)
                .take(NEAR_NAMES_LOOKED_AT),
            handler,
        )
        .map(|near| format!("; did you mean {near:?}?"))
        .unwrap_or_default();
        tracing::warn!(
            "no connected worker serves handler \"{}\": its steps wait for one and end NoWorkerForHandler at their timeout{near}",
            tasker_protocol::codec::truncate(handler, 200)
        );
    }

    fn unseat(&mut self, handler: &str, seat: Seat) {
        match seat {
            Some(id) => {
                if let Some(room) = self.rooms.get_mut(&id) {
                    room.give_back(handler);
                }
            }
            None => {
                if let Some(line) = self.lines.get_mut(handler) {
                    line.unserved = line.unserved.saturating_sub(1);
                }
            }
        }
        if let Some(line) = self.lines.get_mut(handler) {
            line.admitted = line.admitted.saturating_sub(1);
        }
    }

    /// Lets in whoever waits while there is room, longest waiting first
    /// whatever the handler.
    fn admit_waiting(&mut self) {
        loop {
            let mut heads: Vec<(u64, Arc<str>)> = self
                .waiting
                .iter()
                .filter_map(|h| {
                    let seq = self.lines.get(h)?.waiting.front()?.0;
                    Some((seq, Arc::clone(h)))
                })
                .collect();
            heads.sort_unstable();
            let mut progressed = false;
            for (_, handler) in heads {
                let Some(seat) = self.seat(&handler) else {
                    continue;
                };
                let line = self.lines.get_mut(&handler).expect("a line waits");
                let (_, waiter) = line.waiting.pop_front().expect("a head waits");
                if line.waiting.is_empty() {
                    self.waiting.remove(&handler);
                }
                // A waiter that gave up is passed over.
                if waiter.send(seat).is_err() {
                    self.unseat(&handler, seat);
                }
                progressed = true;
                break;
            }
            if !progressed {
                return;
            }
        }
    }

    fn drop_if_unused(&mut self, handler: &str) {
        if self.lines.get(handler).is_some_and(Line::is_unused) {
            self.lines.remove(handler);
        }
    }
}

impl Admission {
    /// A permit for a step of `handler` if there is room and nobody waits
    /// for one of its handler.
    pub fn try_admit(&self, handler: &str) -> Option<Permit> {
        let mut state = self.shared.state.lock().expect("admission lock");
        let name = state.key(handler);
        let line = state.lines.entry(Arc::clone(&name)).or_default();
        let seat = if line.waiting.is_empty() {
            state.seat(handler)
        } else {
            None
        };
        match seat {
            Some(seat) => Some(Permit {
                shared: Arc::clone(&self.shared),
                handler: name,
                seat,
            }),
            None => {
                state.drop_if_unused(handler);
                None
            }
        }
    }

    /// Waits in line for a permit for a step of `handler`. The place in
    /// line is taken when this is called, not when first polled; dropping
    /// the future gives it up (and a permit it was granted meanwhile).
    pub fn admit(&self, handler: &str) -> Admitting {
        let (tx, rx) = oneshot::channel();
        let mut state = self.shared.state.lock().expect("admission lock");
        let name = state.key(handler);
        let seq = state.next_seq;
        state.next_seq += 1;
        state
            .lines
            .entry(Arc::clone(&name))
            .or_default()
            .waiting
            .push_back((seq, tx));
        state.waiting.insert(Arc::clone(&name));
        state.admit_waiting();
        Admitting {
            shared: Arc::clone(&self.shared),
            handler: name,
            granted: rx,
            done: false,
        }
    }

    /// What each connection taking work can hold now. Lets in whoever the
    /// new figures make room for.
    pub(crate) fn set_rooms(&self, rooms: Vec<ConnRoom>) {
        let mut state = self.shared.state.lock().expect("admission lock");
        let mut old = std::mem::take(&mut state.rooms);
        let mut serving: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        for conn in rooms {
            let kept = old.remove(&conn.id);
            let mut limits: HashMap<String, (u64, u64)> = conn
                .limits
                .into_iter()
                .map(|(h, limit)| (h, (limit, 0)))
                .collect();
            if let Some(kept) = &kept {
                for (h, (_, admitted)) in &kept.limits {
                    if let Some(entry) = limits.get_mut(h) {
                        entry.1 = *admitted;
                    }
                }
            }
            for handler in conn.handlers.iter() {
                match serving.get_mut(handler.as_str()) {
                    Some(ids) => ids.push(conn.id),
                    None => {
                        let key = state.key(handler);
                        serving.insert(key, vec![conn.id]);
                    }
                }
            }
            state.rooms.insert(
                conn.id,
                Room {
                    capacity: conn.capacity,
                    admitted: kept.map_or(0, |k| k.admitted),
                    limits,
                },
            );
        }
        state.serving = serving;
        state.admit_waiting();
    }

    /// Warns of each handler whose grace has ended while it is still
    /// unserved with workers connected (see `UNSERVED_GRACE`). The I/O
    /// thread calls this at each heartbeat tick.
    pub(crate) fn warn_unserved_past_grace(&self, now: Instant) {
        let mut state = self.shared.state.lock().expect("admission lock");
        if state.unserved.is_empty() {
            return;
        }
        let due: Vec<Arc<str>> = state
            .unserved
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= UNSERVED_GRACE)
            .map(|(handler, _)| Arc::clone(handler))
            .collect();
        for handler in due {
            state.warn_if_still_unserved(&handler);
        }
    }

    /// Steps admitted now, and tasks waiting in line (those still
    /// waiting: one that gave up, cancelled, is not counted).
    pub fn counts(&self) -> (u64, u64) {
        let state = self.shared.state.lock().expect("admission lock");
        state.lines.values().fold((0, 0), |(a, w), line| {
            let waiting = line
                .waiting
                .iter()
                .filter(|(_, tx)| !tx.is_closed())
                .count();
            (a + line.admitted, w + waiting as u64)
        })
    }
}

impl Shared {
    fn release(&self, handler: &str, seat: Seat) {
        let mut state = self.state.lock().expect("admission lock");
        state.unseat(handler, seat);
        state.admit_waiting();
        state.drop_if_unused(handler);
    }
}

/// Room for one step in the executor's queue; dropping it (when the
/// step's result comes) makes room for the next.
pub struct Permit {
    shared: Arc<Shared>,
    handler: Arc<str>,
    seat: Seat,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.shared.release(&self.handler, self.seat);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("handler", &self.handler)
            .field("connection", &self.seat)
            .finish()
    }
}

/// A place in line: resolves to a [`Permit`].
pub struct Admitting {
    shared: Arc<Shared>,
    handler: Arc<str>,
    granted: oneshot::Receiver<Seat>,
    done: bool,
}

impl Future for Admitting {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        match Pin::new(&mut self.granted).poll(cx) {
            Poll::Ready(Ok(seat)) => {
                self.done = true;
                Poll::Ready(Permit {
                    shared: Arc::clone(&self.shared),
                    handler: Arc::clone(&self.handler),
                    seat,
                })
            }
            // The sender lives in the line until it is granted, and the
            // line as long as the admission, which this holds.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Admitting {
    fn drop(&mut self) {
        // Granted but never taken: without this the room it was counted
        // for would be held by nobody for good, and the line would stop.
        if !self.done {
            if let Ok(seat) = self.granted.try_recv() {
                self.shared.release(&self.handler, seat);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn conn(id: u64, capacity: u64, handlers: &[&str]) -> ConnRoom {
        ConnRoom {
            id,
            capacity,
            handlers: handlers.iter().map(|h| h.to_string()).collect(),
            limits: Vec::new(),
        }
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
    fn a_connection_admits_twice_its_capacity_over_all_its_handlers() {
        let admission = Admission::default();
        admission.set_rooms(vec![conn(1, 2, &["a", "b", "c", "d", "e"])]);
        let permits: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .cycle()
            .take(10)
            .filter_map(|h| admission.try_admit(h))
            .collect();
        assert_eq!(permits.len(), 4, "room for 4 steps in all, not 4 a handler");
    }

    #[test]
    fn a_handlers_limit_on_a_connection_bounds_its_share() {
        let admission = Admission::default();
        let mut limited = conn(1, 8, &["slow", "fast"]);
        limited.limits = vec![("slow".into(), 1)];
        admission.set_rooms(vec![limited]);
        let slow: Vec<_> = (0..5).filter_map(|_| admission.try_admit("slow")).collect();
        assert_eq!(slow.len(), 2);
        let fast: Vec<_> = (0..20)
            .filter_map(|_| admission.try_admit("fast"))
            .collect();
        assert_eq!(fast.len(), 14);
    }

    #[test]
    fn steps_go_to_the_least_loaded_connection_serving_them() {
        let admission = Admission::default();
        admission.set_rooms(vec![conn(1, 1, &["h"]), conn(2, 3, &["h"])]);
        let permits: Vec<_> = (0..10).filter_map(|_| admission.try_admit("h")).collect();
        assert_eq!(permits.len(), 8);
        let on = |id| permits.iter().filter(|p| p.seat == Some(id)).count();
        assert_eq!((on(1), on(2)), (2, 6));
    }

    #[tokio::test]
    async fn waiters_are_let_in_first_come_first_whatever_their_handler() {
        let admission = Admission::default();
        admission.set_rooms(vec![conn(1, 1, &["a", "b"])]);
        let first = admission.try_admit("a").unwrap();
        let _second = admission.try_admit("a").unwrap();
        let mut b = Box::pin(admission.admit("b"));
        let mut a = Box::pin(admission.admit("a"));
        // Someone of `a` waits: a newcomer of `a` does not jump the line.
        assert!(admission.try_admit("a").is_none());
        let quick = Duration::from_millis(20);
        assert!(tokio::time::timeout(quick, &mut b).await.is_err());
        drop(first);
        let _b = tokio::time::timeout(quick, &mut b).await.expect("b first");
        assert!(tokio::time::timeout(quick, &mut a).await.is_err());
        assert_eq!(admission.counts(), (2, 1));
    }

    #[tokio::test]
    async fn workers_arriving_let_in_the_waiters_they_have_room_for() {
        let admission = Admission::default();
        let held: Vec<_> = (0..ADMITTED_WITHOUT_WORKERS)
            .map(|_| admission.try_admit("h").unwrap())
            .collect();
        let waiters: Vec<_> = (0..12).map(|_| admission.admit("h")).collect();
        admission.set_rooms(vec![conn(7, 4, &["h"])]);
        // Room for 8 on the worker: 8 of the 12 waiting.
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
    fn a_waiter_that_gives_up_is_passed_over_and_not_counted() {
        let admission = Admission::default();
        admission.set_rooms(vec![conn(1, 1, &["h"])]);
        let a = admission.try_admit("h").unwrap();
        let _b = admission.try_admit("h").unwrap();
        let gave_up = admission.admit("h");
        let mut stays = admission.admit("h");
        drop(gave_up);
        assert_eq!(
            admission.counts(),
            (2, 1),
            "a cancelled waiter is not counted"
        );
        drop(a);
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(Pin::new(&mut stays).poll(&mut cx), Poll::Ready(_)));
    }

    #[test]
    fn a_connection_gone_takes_its_room_with_it() {
        let admission = Admission::default();
        admission.set_rooms(vec![conn(1, 1, &["h"])]);
        let permits: Vec<_> = (0..2).map(|_| admission.try_admit("h").unwrap()).collect();
        admission.set_rooms(vec![conn(2, 1, &["h"])]);
        // The new connection's room is whole; the old permits give back
        // nothing to it.
        let more: Vec<_> = (0..3).filter_map(|_| admission.try_admit("h")).collect();
        assert_eq!(more.len(), 2);
        drop(permits);
        assert!(admission.try_admit("h").is_none());
    }

    /// At a restart of `serve` the workers come back a second apart: the
    /// first one back made the server warn of the handlers of all the
    /// others. A handler still unserved at the end of its grace is a typo.
    #[test]
    fn a_handler_is_warned_of_only_if_still_unserved_at_the_end_of_its_grace() {
        let warned = |admission: &Admission| {
            let state = admission.shared.state.lock().unwrap();
            let mut names: Vec<String> = state.warned.keys().map(|h| h.to_string()).collect();
            names.sort();
            names
        };
        let admission = Admission::default();
        let _before_any_worker = admission.try_admit("nobody").unwrap();
        admission.set_rooms(vec![conn(1, 2, &["a"])]);
        let _back_soon = admission.try_admit("b").unwrap();
        let _typo = admission.try_admit("ecko").unwrap();
        let started = Instant::now();
        admission.warn_unserved_past_grace(started);
        assert!(warned(&admission).is_empty(), "not before the grace ends");
        admission.set_rooms(vec![conn(1, 2, &["a"]), conn(2, 2, &["b"])]);
        admission.warn_unserved_past_grace(started + UNSERVED_GRACE);
        assert_eq!(
            warned(&admission),
            ["ecko"],
            "not b, whose worker came back; not a step admitted while no worker was connected"
        );
    }

    fn noop_waker() -> std::task::Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Arc::new(Noop).into()
    }
}
