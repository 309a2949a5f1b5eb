//! The step table: every step accepted and not yet ended, its state, its
//! handler queue and its deadline, plus a bounded memory of ended attempts.
//!
//! No I/O happens here; the dispatcher decides what to send and calls these
//! transitions, so "one final result per step attempt" is kept in one
//! place: [`StepTable::finish`] removes the step, and nothing else can.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tasker_protocol::{StepExecutionRequest, StepExecutionResult, StepId, StepRef};
use tokio::sync::mpsc as tokio_mpsc;

use super::registry::ConnId;

/// How many ended steps are remembered to tell late results from duplicates.
const FINISHED_MEMORY: usize = 100_000;

/// Where a submitted batch's results go.
pub(crate) struct BatchSink {
    pub batch_id: String,
    pub results: tokio_mpsc::UnboundedSender<StepExecutionResult>,
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
    pub request: StepExecutionRequest,
    pub sink: Arc<BatchSink>,
    pub state: StepState,
    /// Bumped on every new deadline; a deadline of an older epoch is stale.
    epoch: u64,
}

impl StepEntry {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request.metadata.timeout_ms)
    }
}

/// Who ended a step attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    ByWorker,
    ByOrchestrator,
}

/// Recently ended step attempts, bounded.
#[derive(Default)]
struct Finished {
    ended: HashMap<StepRef, Ended>,
    order: VecDeque<StepRef>,
}

impl Finished {
    fn record(&mut self, step: StepRef, how: Ended) {
        if self.ended.insert(step, how).is_none() {
            self.order.push_back(step);
        }
        while self.order.len() > FINISHED_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.ended.remove(&old);
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
    deadlines: BinaryHeap<Reverse<(Instant, StepId, u64)>>,
    next_epoch: u64,
    finished: Finished,
}

impl StepTable {
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
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
        self.steps.values().map(|e| e.request.step_ref()).collect()
    }

    /// Whether this attempt of the step is out at this connection.
    pub fn held_by(&self, step: StepRef, conn: ConnId) -> bool {
        self.steps.get(&step.step_id).is_some_and(|e| {
            e.request.metadata.attempt == step.attempt && e.state == StepState::Dispatched(conn)
        })
    }

    /// How an attempt that is no longer in flight ended, if remembered.
    pub fn ended(&self, step: StepRef) -> Option<Ended> {
        self.finished.ended.get(&step).copied()
    }

    /// Accepts a submitted step: queued at the back, with a queue deadline
    /// `timeout_ms` from `now`.
    pub fn insert(&mut self, request: StepExecutionRequest, sink: Arc<BatchSink>, now: Instant) {
        let step = request.step_ref();
        self.steps.insert(
            step.step_id,
            StepEntry {
                request,
                sink,
                state: StepState::Queued,
                epoch: 0,
            },
        );
        self.enqueue(step, false);
        self.arm_deadline(step.step_id, now);
    }

    /// Accepts a step an earlier run of this orchestrator dispatched: no
    /// queue; a worker that names it in its hello or answers it adopts it,
    /// and if none does within `grace` it ends as lost.
    pub fn insert_orphan(
        &mut self,
        request: StepExecutionRequest,
        sink: Arc<BatchSink>,
        grace: Duration,
        now: Instant,
    ) {
        let step_id = request.step_id;
        self.steps.insert(
            step_id,
            StepEntry {
                request,
                sink,
                state: StepState::Orphaned,
                epoch: 0,
            },
        );
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        if let Some(entry) = self.steps.get_mut(&step_id) {
            entry.epoch = epoch;
        }
        self.deadlines.push(Reverse((now + grace, step_id, epoch)));
    }

    /// Whether this attempt of the step waits for its worker to come back.
    pub fn is_orphan(&self, step: StepRef) -> bool {
        self.steps.get(&step.step_id).is_some_and(|e| {
            e.request.metadata.attempt == step.attempt && e.state == StepState::Orphaned
        })
    }

    /// An orphaned step is held by `conn`: it is out there again, with a
    /// fresh execution deadline (its handler may have run for a while
    /// already; a late result is better than a second run).
    pub fn adopt(&mut self, step: StepRef, conn: ConnId, now: Instant) -> bool {
        if !self.is_orphan(step) {
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
    pub fn requeue(&mut self, step: StepRef, now: Instant) {
        if let Some(entry) = self.steps.get_mut(&step.step_id) {
            entry.state = StepState::Queued;
            self.enqueue(step, true);
            self.arm_deadline(step.step_id, now);
        }
    }

    /// Several steps given back at once (a drain, a goodbye, a retired
    /// connection): queued at the front in step id order, which is the
    /// order they were submitted in by every caller here.
    pub fn requeue_all(&mut self, mut steps: Vec<StepRef>, now: Instant) {
        steps.sort_unstable();
        for step in steps.into_iter().rev() {
            self.requeue(step, now);
        }
    }

    /// Steps picked for a delivery that could not be sent: back to the
    /// front, in their order, keeping their queue deadlines.
    pub fn unpick(&mut self, picked: &[StepRef]) {
        for step in picked.iter().rev() {
            if let Some(queue) = self.steps.get(&step.step_id).and_then(|e| {
                (e.state == StepState::Queued).then(|| e.request.handler_class.clone())
            }) {
                self.queues.entry(queue).or_default().push_front(*step);
            }
        }
    }

    fn enqueue(&mut self, step: StepRef, front: bool) {
        let Some(entry) = self.steps.get(&step.step_id) else {
            return;
        };
        let handler = &entry.request.handler_class;
        let queue = match self.queues.get_mut(handler) {
            Some(queue) => queue,
            None => self.queues.entry(handler.clone()).or_default(),
        };
        if front {
            queue.push_front(step);
        } else {
            queue.push_back(step);
        }
        match self.queued_by_handler.get_mut(handler) {
            Some(n) => *n += 1,
            None => {
                self.queued_by_handler.insert(handler.clone(), 1);
            }
        }
        self.queued += 1;
    }

    /// One fewer queued step of this handler.
    fn dequeued(&mut self, handler: &str) {
        self.queued -= 1;
        if let Some(n) = self.queued_by_handler.get_mut(handler) {
            *n -= 1;
            if *n == 0 {
                self.queued_by_handler.remove(handler);
            }
        }
    }

    /// The next queued step of `handler`, taken off its queue (it stays
    /// `Queued` until [`dispatched`](Self::dispatched) or
    /// [`unpick`](Self::unpick)).
    pub fn pick(&mut self, handler: &str) -> Option<StepRef> {
        let queue = self.queues.get_mut(handler)?;
        let mut got = None;
        while let Some(step) = queue.pop_front() {
            let live = self.steps.get(&step.step_id).is_some_and(|e| {
                e.request.metadata.attempt == step.attempt && e.state == StepState::Queued
            });
            if live {
                got = Some(step);
                break;
            }
        }
        if queue.is_empty() {
            self.queues.remove(handler);
        }
        got
    }

    /// Picked steps that went out to `conn`: each gets an execution
    /// deadline `timeout_ms` from `now`.
    pub fn dispatched(&mut self, picked: &[StepRef], conn: ConnId, now: Instant) {
        for step in picked {
            let Some(entry) = self.steps.get_mut(&step.step_id) else {
                continue;
            };
            entry.state = StepState::Dispatched(conn);
            let handler = entry.request.handler_class.clone();
            self.dequeued(&handler);
            self.arm_deadline(step.step_id, now);
        }
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
        self.next_epoch += 1;
        let epoch = self.next_epoch;
        if let Some(entry) = self.steps.get_mut(&step_id) {
            entry.epoch = epoch;
            self.deadlines
                .push(Reverse((from + entry.timeout(), step_id, epoch)));
        }
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
        if entry.state == StepState::Queued {
            let handler = entry.request.handler_class.clone();
            self.dequeued(&handler);
        }
        self.finished.record(entry.request.step_ref(), how);
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> Arc<BatchSink> {
        let (results, _rx) = tokio_mpsc::unbounded_channel();
        Arc::new(BatchSink {
            batch_id: "b".into(),
            results,
        })
    }

    fn table_with(ids: &[(i64, &str)]) -> StepTable {
        let mut table = StepTable::default();
        let sink = sink();
        let now = Instant::now();
        for (id, handler) in ids {
            let request = StepExecutionRequest::new(*id, 1, "s", *handler, 1_000);
            table.insert(request, Arc::clone(&sink), now);
        }
        table
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

        let picked = table.pick("a").unwrap();
        assert_eq!(picked, step(1));
        // Picked but not yet sent: still counted as queued.
        assert_eq!(table.queued(), 3);
        table.dispatched(&[picked], 7, Instant::now());
        assert_eq!(table.queued_by_handler()["a"], 1);
        assert!(table.held_by(step(1), 7));
        assert!(!table.held_by(step(1), 8));

        table.requeue(step(1), Instant::now());
        assert_eq!(table.queued_by_handler()["a"], 2);
        assert_eq!(table.pick("a"), Some(step(1)), "given back steps go first");

        table.finish(3, Ended::ByWorker);
        assert!(!table.queued_by_handler().contains_key("b"));
        assert_eq!(table.pick("b"), None, "an ended step is skipped");
        assert_eq!(table.ended(step(3)), Some(Ended::ByWorker));
    }

    #[test]
    fn a_failed_send_puts_steps_back_in_order() {
        let mut table = table_with(&[(1, "a"), (2, "a"), (3, "a")]);
        let picked: Vec<_> = (0..2).filter_map(|_| table.pick("a")).collect();
        table.unpick(&picked);
        let again: Vec<_> = (0..3).filter_map(|_| table.pick("a")).collect();
        assert_eq!(again, vec![step(1), step(2), step(3)]);
    }

    #[test]
    fn only_the_current_deadline_of_a_step_expires_it() {
        let mut table = table_with(&[(1, "a")]);
        let t0 = Instant::now();
        let picked = table.pick("a").unwrap();
        // Dispatch later: the queue deadline becomes stale.
        table.dispatched(&[picked], 1, t0 + Duration::from_millis(500));
        assert_eq!(table.pop_expired(t0 + Duration::from_millis(1_200)), None);
        assert_eq!(
            table.pop_expired(t0 + Duration::from_millis(1_500)),
            Some(1)
        );
    }
}
