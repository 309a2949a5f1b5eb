//! The worker registry: one entry per connection that said hello, found by
//! its ZeroMQ routing id, and by `worker_id` for the connection that speaks
//! for that worker now.
//!
//! An entry is bound to its connection: its `worker_id` never changes, and
//! only results arriving on it can free its slots. A worker that reconnects
//! gets a new entry; the old one is *retired* (no new work, not counted as
//! a worker) and keeps the steps the new hello did not claim until their
//! results come in on it or its liveness runs out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tasker_protocol::{HeldStep, StepRef};

/// The registry's own number for a connection: cheap to copy into every
/// step it holds (a routing id is a heap buffer), and never reused.
pub(crate) type ConnId = u64;

/// Step attempts, hashed fast: looked up once per step sent or answered,
/// with keys this orchestrator chose.
pub(crate) type StepSet = foldhash::HashSet<StepRef>;

/// A ZeroMQ routing id, as the `ROUTER` prefixes it.
pub(crate) type RoutingId = Vec<u8>;

/// The per-handler limits of a connection whose hello set any (SPEC §6.2):
/// how many steps each limited handler may have out there, and which held
/// steps count against them. A connection without limits has none of this,
/// so its steps cost nothing here.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Limited handler → its limit and the steps of it held now.
    handlers: foldhash::HashMap<Arc<str>, Slots>,
    /// Held steps of limited handlers, with their handler.
    held: foldhash::HashMap<StepRef, Arc<str>>,
    /// Held steps of this orchestrator whose handler it no longer knows
    /// (listed in a hello after they ended here). Any of them may be a
    /// limited handler's, so each counts against every limit: otherwise a
    /// reconnect could let a handler limited to 2 run 3.
    unplaced: StepSet,
}

#[derive(Debug, Clone, Copy)]
struct Slots {
    limit: u32,
    held: u32,
}

impl Limits {
    /// The limits a hello announced; a limit at least `capacity` limits
    /// nothing and is left out. `None` when no handler is limited.
    pub fn new(announced: &BTreeMap<String, u32>, capacity: u32) -> Option<Box<Self>> {
        let handlers: foldhash::HashMap<Arc<str>, Slots> = announced
            .iter()
            .filter(|(_, limit)| **limit < capacity)
            .map(|(handler, limit)| {
                let slots = Slots {
                    limit: *limit,
                    held: 0,
                };
                (Arc::from(handler.as_str()), slots)
            })
            .collect();
        (!handlers.is_empty()).then(|| {
            Box::new(Self {
                handlers,
                held: Default::default(),
                unplaced: Default::default(),
            })
        })
    }

    /// How many more steps of `handler` may go out when `unplaced` more
    /// held steps of unknown handlers count against every limit:
    /// `usize::MAX` for a handler without a limit.
    fn room(&self, handler: &str, unplaced: usize) -> usize {
        self.handlers.get(handler).map_or(usize::MAX, |s| {
            (s.limit.saturating_sub(s.held) as usize).saturating_sub(self.unplaced.len() + unplaced)
        })
    }

    /// A step of `handler` is held now (counted once however often it is
    /// said).
    pub fn occupy(&mut self, step: StepRef, handler: &str) {
        let Some((name, _)) = self.handlers.get_key_value(handler) else {
            return;
        };
        if self.held.contains_key(&step) {
            return;
        }
        let name = Arc::clone(name);
        if let Some(slots) = self.handlers.get_mut(handler) {
            slots.held += 1;
        }
        self.held.insert(step, name);
    }

    /// A held step whose handler is not known here counts against every
    /// limit until it is released.
    pub fn occupy_unplaced(&mut self, step: StepRef) {
        self.unplaced.insert(step);
    }

    /// A held step is not any more.
    pub fn release(&mut self, step: &StepRef) {
        self.unplaced.remove(step);
        if let Some(handler) = self.held.remove(step) {
            if let Some(slots) = self.handlers.get_mut(&handler) {
                slots.held = slots.held.saturating_sub(1);
            }
        }
    }

    /// The handler of a held step of a limited handler.
    pub fn handler_of(&self, step: &StepRef) -> Option<&str> {
        self.held.get(step).map(|h| &**h)
    }

    /// Each limited handler with its limit.
    pub fn limited(&self) -> impl Iterator<Item = (&str, u32)> {
        self.handlers.iter().map(|(h, s)| (&**h, s.limit))
    }
}

pub(crate) struct Conn {
    pub routing_id: RoutingId,
    pub worker_id: Arc<str>,
    pub handlers: Arc<[String]>,
    pub capacity: u32,
    /// Step attempts of this orchestrator the worker holds unanswered on
    /// this connection, including ones already ended here (timed out):
    /// they still run there.
    pub occupied: StepSet,
    /// Steps of other orchestrators the worker announced; they hold slots
    /// until their results come.
    pub foreign: HashSet<HeldStep>,
    pub last_seen: Instant,
    /// When its hello registered it.
    pub registered_at: Instant,
    /// Asked for no more work.
    pub draining: bool,
    /// ZeroMQ has no pipe to it any more (a send failed `EHOSTUNREACH`).
    /// For good: a peer that reconnects gets a new routing id. What it
    /// sent before may still be queued for reading.
    pub gone: bool,
    /// A newer connection speaks for this worker now.
    pub retired: bool,
    pub language: Option<String>,
    pub pid: Option<u32>,
    /// The worker run that said hello (`incarnation`), if it said.
    pub incarnation: Option<String>,
    /// The name its CURVE key was admitted under, with CURVE on.
    pub key: Option<String>,
    /// Retired for a hello of another run of its worker (another
    /// `incarnation`, or none to compare): a process that restarted under
    /// the same `worker_id` lists none of the steps it received before,
    /// so what is left here may have started and is never delivered
    /// again (SPEC §6.3).
    pub replaced: bool,
    /// Per-handler limits, when its hello set any below its capacity.
    pub limits: Option<Box<Limits>>,
    /// Where its next delivery's round robin over `handlers` starts.
    pub next_handler: usize,
    /// Its drain was logged (once per connection).
    pub drain_logged: bool,
    /// Steps that timed out here since its last result (see
    /// [`Conn::unresponsive`]).
    pub timed_out_unanswered: u32,
    /// What its hello holds here, as [`Hello::weight`] estimated it.
    weight: usize,
}

impl Conn {
    /// A slot of this connection is free again: the step's result came, or
    /// it was given back or moved. False if the connection did not hold it.
    pub fn release(&mut self, step: &StepRef) -> bool {
        if !self.occupied.remove(step) {
            return false;
        }
        if let Some(limits) = self.limits.as_deref_mut() {
            limits.release(step);
        }
        true
    }

    pub fn in_flight(&self) -> usize {
        self.occupied.len() + self.foreign.len()
    }

    pub fn free_slots(&self) -> usize {
        (self.capacity as usize).saturating_sub(self.in_flight())
    }

    /// How many more steps of each of its handlers may go out, in the
    /// order of `handlers`; `None` when none is limited. Another
    /// orchestrator's steps it holds count against every limit: their
    /// handler is not known here (SPEC §6.2 rule 6).
    pub fn room(&self) -> Option<Vec<usize>> {
        let limits = self.limits.as_deref()?;
        let foreign = self.foreign.len();
        Some(
            self.handlers
                .iter()
                .map(|h| limits.room(h, foreign))
                .collect(),
        )
    }

    /// Whether it may be sent work.
    pub fn takes_work(&self) -> bool {
        !self.draining && !self.retired && !self.gone
    }

    /// [`UNANSWERED_TIMEOUTS`] steps timed out here with no result from
    /// it in between, late ones included: it is sent no new steps until
    /// one comes (SPEC §6.2 rule 7). A peer that declared a vast capacity,
    /// took steps and never answered was sent each retry of what timed out
    /// there (of 298 tasks of a burst, 167 failed after three attempts
    /// there), and a worker whose handlers all hang would be fed the same
    /// way. One hung handler is not enough: the retry of its step may
    /// still go to the same worker's free slots.
    pub fn unresponsive(&self) -> bool {
        self.timed_out_unanswered >= UNANSWERED_TIMEOUTS
    }

    fn is_idle(&self) -> bool {
        self.occupied.is_empty() && self.foreign.is_empty()
    }
}

/// Steps timed out at a connection with no result from it in between after
/// which it is sent nothing until a result comes (see [`Conn::unresponsive`]).
pub(crate) const UNANSWERED_TIMEOUTS: u32 = 3;

/// The registry's hellos hold at most this many times `max_message_bytes`
/// together (256 MiB by default): bounded by `max_workers` alone, hellos
/// of 16 MiB could have held 160 GB.
pub(crate) const HELLO_BYTES_PER_MESSAGE: usize = 16;

/// The estimated bytes of one more hello that ask the registry for room:
/// the entry itself and its maps' slots.
const ENTRY_BYTES: usize = 512;
/// Per name (handler, language): a `String`, its allocation's header.
const NAME_BYTES: usize = 48;
/// Per held step of this orchestrator: a `StepRef` in a `StepSet`.
const HELD_BYTES: usize = 32;
/// Per held step of another orchestrator: a `HeldStep` in a `HashSet`, and
/// its id's allocation header.
const FOREIGN_BYTES: usize = 96;

/// What a hello needs from the registry.
pub(crate) struct Hello {
    pub worker_id: String,
    pub handlers: Vec<String>,
    pub capacity: u32,
    pub mine: StepSet,
    pub foreign: HashSet<HeldStep>,
    pub language: Option<String>,
    pub pid: Option<u32>,
    pub incarnation: Option<String>,
    /// The name its CURVE key was admitted under, with CURVE on.
    pub key: Option<String>,
    /// Its limits, with the held steps (of `mine`, and for a hello again
    /// those held already) counted.
    pub limits: Option<Box<Limits>>,
}

impl Hello {
    /// About how many bytes this hello will hold in the registry: its
    /// names and held steps with the allocations around them. A hello of
    /// short names costs several times its size on the wire (two million
    /// one-character handlers, 16 MB sent, took 120 MB).
    pub fn weight(&self) -> usize {
        let names: usize = self
            .handlers
            .iter()
            .chain(&self.language)
            .chain(&self.incarnation)
            .chain(&self.key)
            .map(|name| name.len() + NAME_BYTES)
            .sum();
        let foreign: usize = self
            .foreign
            .iter()
            .map(|held| held.orchestrator_id.len() + FOREIGN_BYTES)
            .sum();
        ENTRY_BYTES + self.worker_id.len() + names + self.mine.len() * HELD_BYTES + foreign
    }
}

pub(crate) struct Registry {
    conns: HashMap<ConnId, Conn>,
    by_routing: HashMap<RoutingId, ConnId>,
    /// The live (not retired) connection of each worker.
    by_worker: HashMap<Arc<str>, ConnId>,
    next_id: ConnId,
    max: usize,
    /// The sum of the entries' weights, and its bound.
    bytes: usize,
    max_bytes: usize,
}

impl Registry {
    /// A registry of at most `max` connections whose hellos hold at most
    /// `max_bytes` together ([`Hello::weight`]).
    pub fn new(max: usize, max_bytes: usize) -> Self {
        Self {
            conns: HashMap::new(),
            by_routing: HashMap::new(),
            by_worker: HashMap::new(),
            next_id: 1,
            max,
            bytes: 0,
            max_bytes,
        }
    }

    /// Whether a hello of `weight` fits, in place of `replacing`'s when it
    /// re-registers that connection.
    pub fn has_room_for(&self, weight: usize, replacing: Option<ConnId>) -> bool {
        let freed = replacing
            .and_then(|conn| self.conns.get(&conn))
            .map_or(0, |c| c.weight);
        self.bytes - freed + weight <= self.max_bytes
    }

    /// The most bytes the registered hellos may hold together.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The bytes the registered hellos hold, as estimated.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Registered workers (live connections).
    pub fn workers(&self) -> usize {
        self.by_worker.len()
    }

    pub fn is_full(&self) -> bool {
        self.conns.len() >= self.max
    }

    pub fn id_of(&self, routing_id: &[u8]) -> Option<ConnId> {
        self.by_routing.get(routing_id).copied()
    }

    pub fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn)
    }

    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(&conn)
    }

    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.conns.iter().map(|(id, c)| (*id, c))
    }

    /// The live connection of `worker_id`.
    pub fn holder(&self, worker_id: &str) -> Option<ConnId> {
        self.by_worker.get(worker_id).copied()
    }

    /// Registers a new connection; the caller has checked that the worker
    /// id is free (or retired its holder) and that there is room.
    pub fn register(&mut self, routing_id: RoutingId, hello: Hello, now: Instant) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        let weight = hello.weight();
        self.bytes += weight;
        let worker_id: Arc<str> = hello.worker_id.into();
        self.by_routing.insert(routing_id.clone(), id);
        self.by_worker.insert(Arc::clone(&worker_id), id);
        self.conns.insert(
            id,
            Conn {
                routing_id,
                worker_id,
                handlers: hello.handlers.into(),
                capacity: hello.capacity,
                occupied: hello.mine,
                foreign: hello.foreign,
                last_seen: now,
                registered_at: now,
                draining: false,
                gone: false,
                retired: false,
                language: hello.language,
                pid: hello.pid,
                incarnation: hello.incarnation,
                key: hello.key,
                replaced: false,
                limits: hello.limits,
                next_handler: 0,
                drain_logged: false,
                timed_out_unanswered: 0,
                weight,
            },
        );
        id
    }

    /// A hello again on a registered connection (same worker id): new
    /// handlers and capacity, taking work again. Its steps of this
    /// orchestrator are added to what the connection holds (the caller
    /// passes only those it adopted: the rest it holds already, or never
    /// sent); another orchestrator's steps are the hello's list alone,
    /// since a worker lists all it holds. Adding those too let a peer grow
    /// one entry without bound by repeating hellos of new steps.
    pub fn reregister(&mut self, conn: ConnId, hello: Hello) {
        let weight = hello.weight();
        if let Some(c) = self.conns.get_mut(&conn) {
            self.bytes = self.bytes - c.weight + weight;
            c.weight = weight;
            c.handlers = hello.handlers.into();
            c.capacity = hello.capacity;
            c.occupied.extend(hello.mine);
            c.foreign = hello.foreign;
            c.draining = false;
            c.language = hello.language;
            c.pid = hello.pid;
            c.limits = hello.limits;
        }
    }

    /// A newer connection speaks for this one's worker: no more work for
    /// it. Returns false when it held nothing and was removed outright.
    pub fn retire(&mut self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        c.retired = true;
        if self.by_worker.get(&c.worker_id) == Some(&conn) {
            self.by_worker.remove(&c.worker_id);
        }
        if c.is_idle() {
            self.remove(conn);
            return false;
        }
        true
    }

    /// Forgets a connection; returns its entry so the caller can end the
    /// steps it held.
    pub fn remove(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        self.bytes -= c.weight;
        self.by_routing.remove(&c.routing_id);
        if self.by_worker.get(&c.worker_id) == Some(&conn) {
            self.by_worker.remove(&c.worker_id);
        }
        Some(c)
    }

    /// A retired connection whose last step got its answer has nothing
    /// left to wait for.
    pub fn drop_if_spent(&mut self, conn: ConnId) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.retired && c.is_idle())
        {
            self.remove(conn);
        }
    }

    /// Connections silent for longer than `expiry` at `now`.
    pub fn silent(&self, now: Instant, expiry: Duration) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_seen) > expiry)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The orchestrator itself was not running for `stall`: nothing could be
    /// heard meanwhile, so that time is not held against any worker.
    pub fn forgive(&mut self, stall: Duration) {
        for c in self.conns.values_mut() {
            c.last_seen += stall;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, mine: &[i64]) -> Hello {
        Hello {
            worker_id: id.into(),
            handlers: vec!["echo".into()],
            capacity: 4,
            mine: mine
                .iter()
                .map(|&step_id| StepRef {
                    step_id,
                    attempt: 1,
                })
                .collect(),
            foreign: HashSet::new(),
            language: None,
            pid: None,
            incarnation: None,
            key: None,
            limits: None,
        }
    }

    #[test]
    fn a_retired_connection_is_no_longer_the_workers_but_keeps_its_steps() {
        let mut registry = Registry::new(10, usize::MAX);
        let now = Instant::now();
        let old = registry.register(b"x".to_vec(), hello("w", &[1]), now);
        assert!(registry.retire(old), "it still holds step 1");
        assert_eq!(registry.holder("w"), None);
        assert_eq!(registry.workers(), 0);
        assert_eq!(registry.id_of(b"x"), Some(old), "its results still find it");
        let new = registry.register(b"y".to_vec(), hello("w", &[]), now);
        assert_eq!(registry.holder("w"), Some(new));

        registry.get_mut(old).unwrap().occupied.clear();
        registry.drop_if_spent(old);
        assert_eq!(registry.id_of(b"x"), None);
        assert_eq!(registry.holder("w"), Some(new));
    }

    #[test]
    fn a_held_step_of_unknown_handler_takes_room_from_every_limit_until_released() {
        let step = |step_id| StepRef {
            step_id,
            attempt: 1,
        };
        let announced = [("a".to_string(), 2), ("b".to_string(), 3)].into();
        let mut limits = Limits::new(&announced, 10).expect("both below capacity");
        limits.occupy(step(1), "a");
        limits.occupy_unplaced(step(2));
        assert_eq!(limits.room("a", 0), 0);
        assert_eq!(limits.room("b", 0), 2);
        assert_eq!(limits.room("b", 1), 1, "another orchestrator's step too");
        assert_eq!(limits.room("unlimited", 5), usize::MAX);
        limits.release(&step(2));
        assert_eq!((limits.room("a", 0), limits.room("b", 0)), (1, 3));
    }

    #[test]
    fn an_idle_connection_retires_by_going_away() {
        let mut registry = Registry::new(10, usize::MAX);
        let old = registry.register(b"x".to_vec(), hello("w", &[]), Instant::now());
        assert!(!registry.retire(old));
        assert!(registry.get(old).is_none());
    }

    #[test]
    fn the_registry_is_full_at_its_bound_counting_retired_entries() {
        let mut registry = Registry::new(2, usize::MAX);
        let now = Instant::now();
        let a = registry.register(b"a".to_vec(), hello("a", &[1]), now);
        registry.retire(a);
        registry.register(b"b".to_vec(), hello("b", &[]), now);
        assert!(registry.is_full());
        registry.remove(a);
        assert!(!registry.is_full());
    }

    #[test]
    fn the_hellos_bytes_are_bounded_and_a_hello_again_replaces_its_own() {
        let foreign = |n: i64| -> HashSet<HeldStep> {
            (0..n)
                .map(|step_id| HeldStep {
                    step_id,
                    attempt: 1,
                    orchestrator_id: "another".into(),
                })
                .collect()
        };
        let with_foreign = |id: &str, n| Hello {
            foreign: foreign(n),
            ..hello(id, &[])
        };
        let one = with_foreign("a", 100).weight();
        assert!(one > 100 * FOREIGN_BYTES, "{one}");
        let mut registry = Registry::new(10, 2 * one);
        let now = Instant::now();
        let a = registry.register(b"a".to_vec(), with_foreign("a", 100), now);
        assert!(registry.has_room_for(one, None));
        registry.register(b"b".to_vec(), with_foreign("b", 100), now);
        assert!(!registry.has_room_for(hello("c", &[]).weight(), None));
        // The same hello again on a registered connection takes no more.
        assert!(registry.has_room_for(one, Some(a)));
        for _ in 0..5 {
            registry.reregister(a, with_foreign("a", 100));
        }
        assert_eq!(registry.get(a).unwrap().foreign.len(), 100);
        assert_eq!(registry.bytes(), 2 * one);
        registry.remove(a);
        assert_eq!(registry.bytes(), one);
    }

    #[test]
    fn a_stall_of_the_orchestrator_is_not_silence_of_its_workers() {
        let mut registry = Registry::new(2, usize::MAX);
        let t0 = Instant::now();
        registry.register(b"a".to_vec(), hello("a", &[]), t0);
        let expiry = Duration::from_millis(600);
        let woke = t0 + Duration::from_millis(1_500);
        assert_eq!(registry.silent(woke, expiry).len(), 1);
        registry.forgive(Duration::from_millis(1_400));
        assert!(registry.silent(woke, expiry).is_empty());
    }
}
