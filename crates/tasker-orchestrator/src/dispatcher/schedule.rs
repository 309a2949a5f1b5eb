//! Scheduling: which worker gets how many queued steps of which handler.
//!
//! A pure function of the workers' free credit and the queue lengths, so
//! the rules of SPEC §6.2 are tested here without a socket; the dispatcher
//! then takes the steps off the queues and sends them.

use std::sync::Arc;

use foldhash::HashMap;

use super::registry::ConnId;

/// A worker that may be sent work, as scheduling sees it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub conn: ConnId,
    pub capacity: u32,
    /// Slots occupied now.
    pub in_flight: usize,
    pub handlers: Arc<[String]>,
    /// For a worker with per-handler limits: how many more steps of
    /// `handlers[i]` it may be sent (`usize::MAX` for one without a
    /// limit). `None`, the usual case: no handler is limited.
    pub room: Option<Vec<usize>>,
    /// The handler its round robin starts at: the one after the last
    /// that got a step.
    pub first: usize,
}

/// One `step_batch_request` to send: `per_handler[i]` steps of
/// `handlers[i]`, taken round robin across the handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub conn: ConnId,
    pub handlers: Arc<[String]>,
    pub per_handler: Vec<usize>,
    /// Where the worker's next round robin starts.
    pub next_first: usize,
}

impl Delivery {
    pub fn len(&self) -> usize {
        self.per_handler.iter().sum()
    }
}

/// Plans deliveries for these candidates from the live queue lengths:
///
/// * least occupied worker first (ties by connection, oldest first);
/// * each delivery carries at most min(free credit, `batch_size`) steps;
/// * an idle worker gets work as soon as it has credit; a busy one only
///   once its free credit reaches max(1, min(`batch_size`, steps queued,
///   ⌈capacity / 2⌉)), so freed slots are filled in batches rather than
///   one step per message (Nagle for steps);
/// * a worker's handlers are served round robin;
/// * a handler with a limit on a worker gets at most its room there;
/// * only what the worker may be sent (its handlers' steps, a limited
///   handler's up to its room) counts as queued for its threshold.
pub(crate) fn plan(
    candidates: &[Candidate],
    queued: &HashMap<String, usize>,
    batch_size: usize,
) -> Vec<Delivery> {
    let mut remaining: HashMap<&str, usize> =
        queued.iter().map(|(h, n)| (h.as_str(), *n)).collect();
    let mut total: usize = remaining.values().sum();
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by_key(|c| (c.in_flight, c.conn));
    let mut plan = Vec::new();
    for candidate in order {
        let mut in_flight = candidate.in_flight;
        let mut room = candidate.room.clone();
        let mut first = candidate.first;
        loop {
            if total == 0 {
                return plan;
            }
            let free = (candidate.capacity as usize).saturating_sub(in_flight);
            let take = free.min(batch_size);
            if take == 0 {
                break;
            }
            let threshold = batch_size
                .min(total)
                .min((candidate.capacity as usize).div_ceil(2))
                .max(1);
            if free < threshold && in_flight > 0 {
                // Only steps it may be sent make it wait for more credit:
                // steps of handlers it does not serve, or over a limited
                // handler's room, kept a busy worker's free slots empty
                // for as long as they waited (a step nobody serves waits
                // its whole timeout). Counted only here, when the cheap
                // bound above would hold it back.
                let sendable: usize = candidate
                    .handlers
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        let queued = remaining.get(h.as_str()).copied().unwrap_or(0);
                        room.as_ref().map_or(queued, |room| queued.min(room[i]))
                    })
                    .fold(0, usize::saturating_add);
                if free < threshold.min(sendable).max(1) {
                    break;
                }
            }
            let (per_handler, next_first) = round_robin(
                &candidate.handlers,
                &mut remaining,
                take,
                room.as_deref_mut(),
                first,
            );
            first = next_first;
            let n: usize = per_handler.iter().sum();
            if n == 0 {
                break;
            }
            plan.push(Delivery {
                conn: candidate.conn,
                handlers: Arc::clone(&candidate.handlers),
                per_handler,
                next_first,
            });
            in_flight += n;
            total -= n;
            if n < take {
                break;
            }
        }
    }
    plan
}

/// `take` steps over `handlers`, one of each in turn, from `first`; the
/// counts, and the handler the next turn starts at. Starting at the first
/// handler every time, a busy worker refilled a step or two at a time ran
/// only its first handlers' steps while they lasted, and the last ones
/// none.
fn round_robin(
    handlers: &[String],
    remaining: &mut HashMap<&str, usize>,
    take: usize,
    mut room: Option<&mut [usize]>,
    first: usize,
) -> (Vec<usize>, usize) {
    let len = handlers.len();
    let mut counts = vec![0; len];
    let mut n = 0;
    let mut next_first = first % len.max(1);
    while n < take {
        let mut progressed = false;
        for i in (0..len).map(|k| (first + k) % len) {
            let handler = &handlers[i];
            if n == take {
                break;
            }
            if room.as_deref().is_some_and(|room| room[i] == 0) {
                continue;
            }
            if let Some(left) = remaining
                .get_mut(handler.as_str())
                .filter(|left| **left > 0)
            {
                *left -= 1;
                if let Some(room) = room.as_deref_mut() {
                    room[i] -= 1;
                }
                counts[i] += 1;
                n += 1;
                progressed = true;
                next_first = (i + 1) % len;
            }
        }
        if !progressed {
            break;
        }
    }
    (counts, next_first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(conn: ConnId, capacity: u32, in_flight: usize, handlers: &[&str]) -> Candidate {
        Candidate {
            conn,
            capacity,
            in_flight,
            handlers: handlers.iter().map(|h| h.to_string()).collect(),
            room: None,
            first: 0,
        }
    }

    fn queued(entries: &[(&str, usize)]) -> HashMap<String, usize> {
        entries.iter().map(|(h, n)| (h.to_string(), *n)).collect()
    }

    fn plan_for_rest() -> Vec<Delivery> {
        plan(&[worker(1, 250, 200, &["a"])], &queued(&[("a", 50)]), 100)
    }

    fn sizes(plan: &[Delivery]) -> Vec<(ConnId, usize)> {
        plan.iter().map(|d| (d.conn, d.len())).collect()
    }

    #[test]
    fn credit_is_never_exceeded_and_batches_are_capped() {
        let plan = plan(&[worker(1, 250, 0, &["a"])], &queued(&[("a", 1_000)]), 100);
        // The last 50 slots wait: a busy worker is refilled only once
        // ⌈250 / 2⌉ slots (capped at the batch size, 100) are free.
        assert_eq!(sizes(&plan), vec![(1, 100), (1, 100)]);
        let plan = plan_for_rest();
        assert_eq!(sizes(&plan), vec![(1, 50)]);
    }

    #[test]
    fn the_least_occupied_worker_is_served_first() {
        let workers = [worker(1, 4, 2, &["a"]), worker(2, 4, 0, &["a"])];
        let plan = plan(&workers, &queued(&[("a", 5)]), 100);
        assert_eq!(sizes(&plan), vec![(2, 4), (1, 1)]);
    }

    #[test]
    fn a_busy_worker_waits_for_half_its_capacity_to_free_up() {
        // 3 of 8 free: below ⌈8/2⌉ = 4 while 10 steps wait.
        let busy = [worker(1, 8, 5, &["a"])];
        assert!(plan(&busy, &queued(&[("a", 10)]), 100).is_empty());
        // With fewer steps queued than the threshold, they go at once.
        assert_eq!(sizes(&plan(&busy, &queued(&[("a", 2)]), 100)), vec![(1, 2)]);
        // An idle worker takes even one free slot's worth.
        let idle = [worker(1, 1, 0, &["a"])];
        assert_eq!(
            sizes(&plan(&idle, &queued(&[("a", 10)]), 100)),
            vec![(1, 1)]
        );
    }

    #[test]
    fn handlers_are_served_round_robin_and_only_the_workers_own() {
        let workers = [worker(1, 5, 0, &["a", "b"])];
        let plan = plan(&workers, &queued(&[("a", 10), ("b", 1), ("c", 9)]), 100);
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].per_handler, vec![4, 1]);
    }

    #[test]
    fn a_worker_refilled_a_step_at_a_time_takes_its_handlers_in_turn() {
        let mut busy = worker(1, 2, 1, &["a", "b", "c"]);
        let queued = queued(&[("a", 10), ("b", 10), ("c", 10)]);
        let mut taken = Vec::new();
        for _ in 0..6 {
            let plan = plan(&[busy.clone()], &queued, 100);
            let i = plan[0].per_handler.iter().position(|n| *n == 1).unwrap();
            taken.push(busy.handlers[i].clone());
            busy.first = plan[0].next_first;
        }
        assert_eq!(taken, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn nothing_is_planned_without_queued_steps_for_the_workers() {
        let workers = [worker(1, 5, 0, &["a"])];
        assert!(plan(&workers, &queued(&[("b", 3)]), 100).is_empty());
        assert!(plan(&workers, &queued(&[]), 100).is_empty());
    }

    #[test]
    fn a_limited_handler_gets_its_room_and_the_others_the_rest() {
        // Capacity 8, `slow` limited to 2 with 1 out: 1 more `slow`, and
        // the rest of the credit to `fast`.
        let mut limited = worker(1, 8, 1, &["slow", "fast"]);
        limited.room = Some(vec![1, usize::MAX]);
        let plan = plan(
            &[limited.clone()],
            &queued(&[("slow", 10), ("fast", 10)]),
            100,
        );
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].per_handler, vec![1, 6]);
        // No room: nothing of `slow`, however much credit is free.
        limited.room = Some(vec![0, usize::MAX]);
        assert!(super::plan(&[limited.clone()], &queued(&[("slow", 10)]), 100).is_empty());
    }

    #[test]
    fn steps_of_handlers_it_does_not_serve_do_not_hold_a_busy_workers_slots() {
        // 1 of 4 free, 9 queued but 1 of them its own: the batch
        // threshold (⌈4/2⌉ = 2) counts what it may be sent, so it goes.
        let busy = [worker(1, 4, 3, &["a"])];
        let plan = plan(&busy, &queued(&[("a", 1), ("nobody", 8)]), 100);
        assert_eq!(sizes(&plan), vec![(1, 1)]);
    }

    #[test]
    fn a_limited_handlers_room_is_not_held_back_for_a_batch() {
        // 2 of 8 free, 10 queued: a batch threshold of 4 would make it
        // wait, but only 1 step of `slow` may go, and it goes at once.
        let mut busy = worker(1, 8, 6, &["slow", "fast"]);
        busy.room = Some(vec![1, usize::MAX]);
        let plan = plan(&[busy], &queued(&[("slow", 10)]), 100);
        assert_eq!(sizes(&plan), vec![(1, 1)]);
    }
}
