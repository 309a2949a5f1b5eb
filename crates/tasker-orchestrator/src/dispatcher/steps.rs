//! The step table: every step accepted and not yet ended, its state, its
//! handler queue and its deadline, plus a bounded memory of ended attempts.
//!
//! No I/O happens here; the dispatcher decides what to send and calls these
//! transitions, so "one final result per step attempt" is kept in one
//! place: a step leaves the table only through `StepTable::retire`, which
//! [`StepTable::finish`] and [`StepTable::take_answered`] call.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::registry::ConnId;
use crate::metrics::Recorder;
use crate::sink::ResultSink;
use foldhash::{HashMap, HashSet};
use tasker_protocol::raw::EncodedStep;
use tasker_protocol::{StepExecutionRequest, StepId, StepRef};

/// How many attempts the orchestrator ended itself are remembered, to tell
/// late results from duplicates.
const ENDED_BY_ORCHESTRATOR_MEMORY: usize = 100_000;

/// Stale deadlines kept beyond three per step before compacting (32 bytes
/// each): a small table is not compacted every few steps.
const DEADLINES_SLACK: usize = 16_384;

/// Most times one attempt of a step is given back undone (a drain, a
/// goodbye, a connection retired before it arrived) and queued again with
/// a fresh deadline. Without a bound a peer that took steps, handed them
/// back in a drain and said hello again kept a 2 s step alive for as long
/// as it went on (238 returns in 12 s); a fleet restarting one worker at a
/// time returns a step a few times at most.
pub(crate) const MOST_RETURNS: u32 = 8;

/// Where a submitted batch's results go, several at a time.
pub(crate) struct BatchSink {
    pub batch_id: String,
    pub results: ResultSink,
}

/// A step as the executor handle passes it to the I/O thread: encoded on
/// the submitting thread, once, with what scheduling needs beside it.
pub(crate) struct NewStep {
    pub step: EncodedStep,
    pub handler: Arc<str>,
    pub timeout_ms: u64,
}

impl NewStep {
    /// A submitted batch's steps, a zero `timeout_ms` made `default_timeout_ms`.
    ///
    /// Steps in a row with the same handler share one name. The I/O thread
    /// reads each step's handler name several times (its queue, its
    /// metrics) on another core than the one that wrote it: one string per
    /// step cost a cache miss at each of those reads, and a free from the
    /// wrong thread when the step ended.
    pub fn batch(mut requests: Vec<StepExecutionRequest>, default_timeout_ms: u64) -> Vec<Self> {
        for request in &mut requests {
            if request.metadata.timeout_ms == 0 {
                request.metadata.timeout_ms = default_timeout_ms;
            }
        }
        let mut handler: Option<Arc<str>> = None;
        EncodedStep::batch(&requests)
            .into_iter()
            .zip(&requests)
            .map(|(step, request)| {
                let name = match &handler {
                    Some(name) if **name == *request.handler_class => Arc::clone(name),
                    _ => Arc::clone(handler.insert(request.handler_class.as_str().into())),
                };
                Self {
                    step,
                    timeout_ms: request.metadata.timeout_ms,
                    handler: name,
                }
            })
            .collect()
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepState {
    /// In its handler's queue (or picked for a delivery being sent).
    Queued,
    /// Out at this connection.
    Dispatched(ConnId),
    /// Dispatched by an earlier run of this orchestrator (same
    /// `orchestrator_id`, from a store) and waiting for the worker that
    /// holds it to say so, in a hello or with its result.
    Orphaned,
}

pub(crate) struct StepEntry {
    pub step: EncodedStep,
    pub handler: Arc<str>,
    pub timeout_ms: u64,
    pub sink: Arc<BatchSink>,
    pub state: StepState,
    /// When it was submitted, until its first delivery (the queue-wait
    /// histogram); `None` after, and for steps of an earlier run.
    queued_at: Option<Instant>,
    /// Bumped on every new deadline; a deadline of an older epoch is stale.
    epoch: u64,
    /// Times this attempt was given back undone and queued again.
    returns: u32,
}

impl StepEntry {
    pub fn step_ref(&self) -> StepRef {
        self.step.step_ref()
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A step a worker's result took out of the table.
pub(crate) struct Answered {
    pub entry: StepEntry,
    /// It was dispatched before a restart and waited for its worker.
    pub adopted: bool,
}

/// Who ended a step attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    ByWorker,
    ByOrchestrator,
}

/// The attempts the orchestrator ended itself (timed out, worker lost,
/// cancelled), the most recent ones: a result for one of them is late, and
/// any other result for an attempt no longer in flight is a duplicate.
/// Attempts workers ended are not kept: they are nearly every step, and a
/// table of the last 100,000 of them cost a cache miss or two per result.
#[derive(Default)]
struct EndedByOrchestrator {
    steps: HashSet<StepRef>,
    order: VecDeque<StepRef>,
}

impl EndedByOrchestrator {
    fn record(&mut self, step: StepRef) {
        if self.steps.insert(step) {
            self.order.push_back(step);
        }
        while self.order.len() > ENDED_BY_ORCHESTRATOR_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.steps.remove(&old);
            }
        }
    }
}

#[derive(Default)]
pub(crate) struct StepTable {
    steps: HashMap<StepId, StepEntry>,
    /// FIFO per handler. Entries of steps that ended or left the queue
    /// since are skipped when popped, so ending a queued step is O(1).
    queues: HashMap<String, VecDeque<StepRef>>,
    /// Live queued steps per handler: what scheduling plans with.
    queued_by_handler: HashMap<String, usize>,
    queued: usize,
    /// Every deadline armed, current or stale (see `StepEntry::epoch`);
    /// compacted when stale ones dominate, so a long timeout cannot make
    /// it grow with the steps that ended in its span.
    deadlines: BinaryHeap<Reverse<(Instant, StepId, u64)>>,
    next_epoch: u64,
    ended_by_orchestrator: EndedByOrchestrator,
}

/// A new deadline for `entry`, `timeout_ms` from `from`; its earlier one
/// goes stale. Takes the table's parts, so a caller holding the entry
/// needs no second lookup.
fn arm(
    entry: &mut StepEntry,
    next_epoch: &mut u64,
    deadlines: &mut BinaryHeap<Reverse<(Instant, StepId, u64)>>,
    from: Instant,
) {
    *next_epoch += 1;
    entry.epoch = *next_epoch;
    let at = from + entry.timeout();
    deadlines.push(Reverse((at, entry.step_ref().step_id, entry.epoch)));
}

/// One more queued step of `handler`.
fn count_queued(counts: &mut HashMap<String, usize>, handler: &str) {
    match counts.get_mut(handler) {
        Some(n) => *n += 1,
        None => {
            counts.insert(handler.to_string(), 1);
        }
    }
}

/// `step` into `handler`'s queue, at the front or the back, and counted.
fn queue_up(
    queues: &mut HashMap<String, VecDeque<StepRef>>,
    counts: &mut HashMap<String, usize>,
    handler: &str,
    step: StepRef,
    front: bool,
) {
    let queue = match queues.get_mut(handler) {
        Some(queue) => queue,
        None => queues.entry(handler.to_string()).or_default(),
    };
    if front {
        queue.push_front(step);
    } else {
        queue.push_back(step);
    }
    count_queued(counts, handler);
}

/// One fewer queued step of `handler`.
fn count_dequeued(counts: &mut HashMap<String, usize>, handler: &str) {
    if let Some(n) = counts.get_mut(handler) {
        *n -= 1;
        if *n == 0 {
            counts.remove(handler);
        }
    }
}

impl StepTable {
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Room for `n` more steps without growing the table step by step.
    pub fn reserve(&mut self, n: usize) {
        self.steps.reserve(n);
    }

    /// Steps waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Live queued steps per handler.
    pub fn queued_by_handler(&self) -> &HashMap<String, usize> {
        &self.queued_by_handler
    }

    pub fn contains(&self, step_id: StepId) -> bool {
        self.steps.contains_key(&step_id)
    }

    pub fn get(&self, step_id: StepId) -> Option<&StepEntry> {
        self.steps.get(&step_id)
    }

    /// Every step in flight, in no order.
    pub fn step_refs(&self) -> Vec<StepRef> {
        self.steps.values().map(StepEntry::step_ref).collect()
    }

    /// The connection this attempt of the step is out at, if any.
    pub fn holder_of(&self, step: StepRef) -> Option<ConnId> {
        match self.steps.get(&step.step_id) {
            Some(e) if e.step_ref() == step => match e.state {
                StepState::Dispatched(conn) => Some(conn),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether this attempt of the step is out at this connection.
    pub fn held_by(&self, step: StepRef, conn: ConnId) -> bool {
        self.steps
            .get(&step.step_id)
            .is_some_and(|e| e.step_ref() == step && e.state == StepState::Dispatched(conn))
    }

    /// Whether the orchestrator ended this attempt itself (as far as it
    /// remembers): a result for it now is late rather than a duplicate.
    pub fn ended_by_orchestrator(&self, step: StepRef) -> bool {
        self.ended_by_orchestrator.steps.contains(&step)
    }

    /// Accepts a submitted step: queued at the back, with a queue deadline
    /// `timeout_ms` from `now`.
    pub fn insert(&mut self, new: NewStep, sink: Arc<BatchSink>, now: Instant) {
        let step = new.step.step_ref();
        let mut entry = StepEntry {
            step: new.step,
            handler: new.handler,
            timeout_ms: new.timeout_ms,
            sink,
            state: StepState::Queued,
            queued_at: Some(now),
            epoch: 0,
            returns: 0,
        };
        // Queued and armed before it goes in: one lookup in the table per
        // step accepted, where finding it again for each cost two more.
        arm(&mut entry, &mut self.next_epoch, &mut self.deadlines, now);
        queue_up(
            &mut self.queues,
            &mut self.queued_by_handler,
            &entry.handler,
            step,
            false,
        );
        self.queued += 1;
        self.steps.insert(step.step_id, entry);
        self.compact_deadlines();
    }

    /// Accepts a step an earlier run of this orchestrator dispatched: no
    /// queue; a worker that names it in its hello or answers it adopts it,
    /// and if none does within `grace` it ends as lost.
    pub fn insert_orphan(
        &mut self,
        new: NewStep,
        sink: Arc<BatchSink>,
        grace: Duration,
        now: Instant,
    ) {
        let step_id = new.step.step_ref().step_id;
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        self.steps.insert(
            step_id,
            StepEntry {
                step: new.step,
                handler: new.handler,
                timeout_ms: new.timeout_ms,
                sink,
                state: StepState::Orphaned,
                queued_at: None,
                epoch,
                returns: 0,
            },
        );
        self.push_deadline(now + grace, step_id, epoch);
    }

    /// Whether this attempt of the step waits for its worker to come back,
    /// and a worker serving `handlers` may claim it: only one that serves
    /// its handler could have been sent it (guarantee 1). A stranger that
    /// knew the orchestrator id and the step id took a step of any handler
    /// after a crash.
    pub fn is_orphan_for(&self, step: StepRef, handlers: &[String]) -> bool {
        self.steps.get(&step.step_id).is_some_and(|e| {
            e.step_ref() == step
                && e.state == StepState::Orphaned
                && handlers.iter().any(|h| **h == *e.handler)
        })
    }

    /// An orphaned step is held by `conn`, which serves `handlers`: it is
    /// out there again, with a fresh execution deadline (its handler may
    /// have run for a while already; a late result is better than a second
    /// run). False, and nothing changes, unless [`is_orphan_for`](Self::is_orphan_for).
    pub fn adopt(
        &mut self,
        step: StepRef,
        conn: ConnId,
        handlers: &[String],
        now: Instant,
    ) -> bool {
        if !self.is_orphan_for(step, handlers) {
            return false;
        }
        if let Some(entry) = self.steps.get_mut(&step.step_id) {
            entry.state = StepState::Dispatched(conn);
        }
        self.arm_deadline(step.step_id, now);
        true
    }

    /// A step given back unstarted by its connection: queued at the front
    /// with a fresh schedule-to-start deadline.
    /// Queues a step given back undone again, with a fresh deadline;
    /// false, leaving it as it is, once it was given back
    /// [`MOST_RETURNS`] times.
    fn requeue(&mut self, step: StepRef, now: Instant) -> bool {
        let Some(entry) = self.steps.get_mut(&step.step_id) else {
            return true;
        };
        if entry.returns >= MOST_RETURNS {
            return false;
        }
        entry.returns += 1;
        entry.state = StepState::Queued;
        self.enqueue(step, true);
        self.arm_deadline(step.step_id, now);
        true
    }

    /// Several steps given back at once (a drain, a goodbye, a retired
    /// connection): queued at the front in step id order, which is the
    /// order they were submitted in by every caller here. Returns those
    /// given back too often to be queued again (the caller ends them).
    pub fn requeue_all(&mut self, mut steps: Vec<StepRef>, now: Instant) -> Vec<StepRef> {
        steps.sort_unstable();
        let mut too_often = Vec::new();
        for step in steps.into_iter().rev() {
            if !self.requeue(step, now) {
                too_often.push(step);
            }
        }
        too_often
    }

    /// Steps picked for a delivery that could not be sent: back to the
    /// front, in their order, keeping their queue deadlines.
    pub fn unpick(&mut self, picked: &[StepRef]) {
        for step in picked.iter().rev() {
            let Some(entry) = self.steps.get(&step.step_id) else {
                continue;
            };
            if entry.state != StepState::Queued {
                continue;
            }
            match self.queues.get_mut(&*entry.handler) {
                Some(queue) => queue.push_front(*step),
                None => {
                    self.queues
                        .insert(entry.handler.to_string(), VecDeque::from([*step]));
                }
            }
        }
    }

    fn enqueue(&mut self, step: StepRef, front: bool) {
        let Some(entry) = self.steps.get(&step.step_id) else {
            return;
        };
        queue_up(
            &mut self.queues,
            &mut self.queued_by_handler,
            &entry.handler,
            step,
            front,
        );
        self.queued += 1;
    }

    /// Up to `n` queued steps of `handler`, taken off its queue into
    /// `picked` (they stay `Queued` until [`dispatched`](Self::dispatched)
    /// or [`unpick`](Self::unpick)); how many were taken.
    pub fn pick(&mut self, handler: &str, n: usize, picked: &mut Vec<StepRef>) -> usize {
        let Some(queue) = self.queues.get_mut(handler) else {
            return 0;
        };
        let mut taken = 0;
        while taken < n {
            let Some(step) = queue.pop_front() else {
                break;
            };
            let live = self
                .steps
                .get(&step.step_id)
                .is_some_and(|e| e.step_ref() == step && e.state == StepState::Queued);
            if live {
                picked.push(step);
                taken += 1;
            }
        }
        if queue.is_empty() {
            self.queues.remove(handler);
        }
        taken
    }

    /// Picked steps that went out to `conn`: each gets an execution
    /// deadline `timeout_ms` from `now`.
    pub fn dispatched(
        &mut self,
        picked: &[StepRef],
        conn: ConnId,
        now: Instant,
        mut recorder: Option<&mut Recorder>,
    ) {
        for step in picked {
            let Some(entry) = self.steps.get_mut(&step.step_id) else {
                continue;
            };
            entry.state = StepState::Dispatched(conn);
            if let Some(recorder) = recorder.as_deref_mut() {
                let queued = entry
                    .queued_at
                    .take()
                    .map(|at| now.saturating_duration_since(at));
                recorder.dispatched(&entry.handler, queued);
            }
            count_dequeued(&mut self.queued_by_handler, &entry.handler);
            self.queued -= 1;
            arm(entry, &mut self.next_epoch, &mut self.deadlines, now);
        }
        self.compact_deadlines();
    }

    /// A step of `from` listed by the same worker's hello on `to`.
    pub fn move_to(&mut self, step: StepRef, from: ConnId, to: ConnId) -> bool {
        if !self.held_by(step, from) {
            return false;
        }
        if let Some(entry) = self.steps.get_mut(&step.step_id) {
            entry.state = StepState::Dispatched(to);
        }
        true
    }

    fn arm_deadline(&mut self, step_id: StepId, from: Instant) {
        if let Some(entry) = self.steps.get_mut(&step_id) {
            arm(entry, &mut self.next_epoch, &mut self.deadlines, from);
            self.compact_deadlines();
        }
    }

    fn push_deadline(&mut self, at: Instant, step_id: StepId, epoch: u64) {
        self.deadlines.push(Reverse((at, step_id, epoch)));
        self.compact_deadlines();
    }

    /// Drops the stale deadlines once there are three per step in the
    /// table (and some slack): linear, and rare enough to cost about one
    /// look-up per deadline armed (with twice, it cost two, and was a
    /// twentieth of the I/O thread's time at batch 100).
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() <= 3 * self.steps.len() + DEADLINES_SLACK {
            return;
        }
        let steps = &self.steps;
        self.deadlines.retain(|Reverse((_, step_id, epoch))| {
            steps.get(step_id).is_some_and(|e| e.epoch == *epoch)
        });
    }

    /// The orchestrator itself was not running for `stall`: a queued step
    /// could not be sent meanwhile, nor a reclaimed one claimed, so their
    /// deadlines move back by the stall. (A pause of `serve` longer than
    /// `timeout_ms` failed every queued step `ScheduleTimeout`, "no worker
    /// had room", with idle workers connected.) Steps out at workers keep
    /// theirs: their handlers ran all along. Stale deadlines are dropped on
    /// the way.
    pub fn forgive(&mut self, stall: Duration) {
        let steps = &self.steps;
        self.deadlines = std::mem::take(&mut self.deadlines)
            .into_iter()
            .filter_map(|Reverse((at, step_id, epoch))| {
                let entry = steps.get(&step_id).filter(|e| e.epoch == epoch)?;
                let waiting = matches!(entry.state, StepState::Queued | StepState::Orphaned);
                Some(Reverse((
                    if waiting { at + stall } else { at },
                    step_id,
                    epoch,
                )))
            })
            .collect();
    }

    /// The earliest deadline that may still be live.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _, _))| *at)
    }

    /// A step whose current deadline has passed at `now`, if any.
    pub fn pop_expired(&mut self, now: Instant) -> Option<StepId> {
        while let Some(Reverse((at, step_id, epoch))) = self.deadlines.peek().copied() {
            if at > now {
                return None;
            }
            self.deadlines.pop();
            if self.steps.get(&step_id).is_some_and(|e| e.epoch == epoch) {
                return Some(step_id);
            }
        }
        None
    }

    /// Ends a step with `result`: the one place a step leaves the table.
    /// Returns the entry so the caller can send the result to its sink.
    pub fn finish(&mut self, step_id: StepId, how: Ended) -> Option<StepEntry> {
        let entry = self.steps.remove(&step_id)?;
        Some(self.retire(entry, how))
    }

    /// Takes out a step a worker answered on `conn`: when this attempt of
    /// it is out at `conn`, or waits for its worker to come back and `conn`
    /// serves its handler (then the answer adopts it: the ids say it is the
    /// same dispatch). `None`, and
    /// nothing changes, for any other result. One lookup per result, where
    /// adopting, checking the holder and finishing each looked it up.
    pub fn take_answered(
        &mut self,
        step: StepRef,
        conn: ConnId,
        handlers: &[String],
    ) -> Option<Answered> {
        let Entry::Occupied(slot) = self.steps.entry(step.step_id) else {
            return None;
        };
        let entry = slot.get();
        if entry.step_ref() != step {
            return None;
        }
        let adopted = match entry.state {
            StepState::Dispatched(holder) if holder == conn => false,
            StepState::Orphaned if handlers.iter().any(|h| **h == *entry.handler) => true,
            StepState::Orphaned => return None,
            StepState::Dispatched(_) | StepState::Queued => return None,
        };
        let entry = slot.remove();
        let entry = self.retire(entry, Ended::ByWorker);
        Some(Answered { entry, adopted })
    }

    /// The bookkeeping of a step that has just left `steps`.
    fn retire(&mut self, entry: StepEntry, how: Ended) -> StepEntry {
        if entry.state == StepState::Queued {
            count_dequeued(&mut self.queued_by_handler, &entry.handler);
            self.queued -= 1;
        }
        if how == Ended::ByOrchestrator {
            self.ended_by_orchestrator.record(entry.step_ref());
        }
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> Arc<BatchSink> {
        let (results, _rx) = crate::sink::channel();
        Arc::new(BatchSink {
            batch_id: "b".into(),
            results,
        })
    }

    fn table_with(ids: &[(i64, &str)]) -> StepTable {
        let mut table = StepTable::default();
        let sink = sink();
        let now = Instant::now();
        let requests = ids
            .iter()
            .map(|(id, handler)| StepExecutionRequest::new(*id, 1, "s", *handler, 1_000))
            .collect();
        for step in NewStep::batch(requests, 0) {
            table.insert(step, Arc::clone(&sink), now);
        }
        table
    }

    #[test]
    fn a_stall_moves_back_the_deadlines_of_queued_steps_only() {
        // Steps 1 and 2 queued at t0 with 1 s to be sent; 2 goes out.
        let mut table = table_with(&[(1, "a"), (2, "a")]);
        let t0 = Instant::now();
        let mut picked = Vec::new();
        table.pick("a", 1, &mut picked);
        let out = picked[0];
        table.dispatched(&picked, 7, t0, None);
        table.forgive(Duration::from_secs(5));
        let later = t0 + Duration::from_secs(2);
        // The one out at a worker is late (its handler ran all along); the
        // one still queued is not: nothing could send it meanwhile.
        assert_eq!(table.pop_expired(later), Some(out.step_id));
        assert_eq!(table.pop_expired(later), None);
        assert_eq!(
            table.pop_expired(t0 + Duration::from_secs(7)),
            Some(3 - out.step_id)
        );
    }

    #[test]
    fn steps_in_a_row_with_one_handler_share_its_name() {
        let requests = [(1, "a"), (2, "a"), (3, "b"), (4, "a")]
            .iter()
            .map(|(id, handler)| StepExecutionRequest::new(*id, 1, "s", *handler, 0))
            .collect();
        let steps = NewStep::batch(requests, 250);
        let names: Vec<&str> = steps.iter().map(|s| &*s.handler).collect();
        assert_eq!(names, ["a", "a", "b", "a"]);
        assert!(Arc::ptr_eq(&steps[0].handler, &steps[1].handler));
        assert!(!Arc::ptr_eq(&steps[1].handler, &steps[3].handler));
        // A step without a timeout of its own gets the default.
        assert!(steps.iter().all(|s| s.timeout_ms == 250));
    }

    /// Every step's deadlines stay in the heap until they expire or a
    /// compaction drops them: with a long timeout and steps ending quickly,
    /// only compaction keeps the heap from growing with every step ever
    /// run.
    #[test]
    fn stale_deadlines_stay_bounded_by_the_steps_in_the_table() {
        let mut table = StepTable::default();
        let sink = sink();
        let now = Instant::now();
        // At most eleven steps are in the table at once.
        let bound = 3 * 11 + DEADLINES_SLACK + 1;
        let n = 20 * DEADLINES_SLACK as i64;
        for id in 0..n {
            let request = StepExecutionRequest::new(id, 1, "s", "h", 3_600_000);
            let step = NewStep::batch(vec![request], 0).pop().unwrap();
            table.insert(step, Arc::clone(&sink), now);
            let picked = pick(&mut table, "h").unwrap();
            table.dispatched(&[picked], 1, now, None);
            // The first ten steps stay in the table; the rest end at once.
            if id >= 10 {
                table.finish(id, Ended::ByWorker).unwrap();
            }
            assert!(
                table.deadlines.len() <= bound,
                "{} deadlines",
                table.deadlines.len()
            );
        }
        assert_eq!(table.len(), 10);
        // The steps that stayed kept their deadlines through every
        // compaction.
        let later = now + Duration::from_secs(7_200);
        let mut expired: Vec<StepId> = std::iter::from_fn(|| table.pop_expired(later)).collect();
        expired.sort_unstable();
        assert_eq!(expired, (0..10).collect::<Vec<_>>());
    }

    fn pick(table: &mut StepTable, handler: &str) -> Option<StepRef> {
        let mut picked = Vec::new();
        table.pick(handler, 1, &mut picked);
        picked.pop()
    }

    fn step(id: i64) -> StepRef {
        StepRef {
            step_id: id,
            attempt: 1,
        }
    }

    #[test]
    fn queued_counts_follow_every_transition() {
        let mut table = table_with(&[(1, "a"), (2, "a"), (3, "b")]);
        assert_eq!(table.queued(), 3);
        assert_eq!(table.queued_by_handler()["a"], 2);

        let picked = pick(&mut table, "a").unwrap();
        assert_eq!(picked, step(1));
        // Picked but not yet sent: still counted as queued.
        assert_eq!(table.queued(), 3);
        table.dispatched(&[picked], 7, Instant::now(), None);
        assert_eq!(table.queued_by_handler()["a"], 1);
        assert!(table.held_by(step(1), 7));
        assert!(!table.held_by(step(1), 8));

        table.requeue(step(1), Instant::now());
        assert_eq!(table.queued_by_handler()["a"], 2);
        assert_eq!(
            pick(&mut table, "a"),
            Some(step(1)),
            "given back steps go first"
        );

        table.finish(3, Ended::ByWorker);
        assert!(!table.queued_by_handler().contains_key("b"));
        assert_eq!(pick(&mut table, "b"), None, "an ended step is skipped");
        assert!(!table.ended_by_orchestrator(step(3)));
        table.finish(2, Ended::ByOrchestrator);
        assert!(table.ended_by_orchestrator(step(2)));
    }

    #[test]
    fn a_failed_send_puts_steps_back_in_order() {
        let mut table = table_with(&[(1, "a"), (2, "a"), (3, "a")]);
        let picked: Vec<_> = (0..2).filter_map(|_| pick(&mut table, "a")).collect();
        table.unpick(&picked);
        let again: Vec<_> = (0..3).filter_map(|_| pick(&mut table, "a")).collect();
        assert_eq!(again, vec![step(1), step(2), step(3)]);
    }

    #[test]
    fn only_the_current_deadline_of_a_step_expires_it() {
        let mut table = table_with(&[(1, "a")]);
        let t0 = Instant::now();
        let picked = pick(&mut table, "a").unwrap();
        // Dispatch later: the queue deadline becomes stale.
        table.dispatched(&[picked], 1, t0 + Duration::from_millis(500), None);
        assert_eq!(table.pop_expired(t0 + Duration::from_millis(1_200)), None);
        assert_eq!(
            table.pop_expired(t0 + Duration::from_millis(1_500)),
            Some(1)
        );
    }
}
