//! Results that come on a connection before its hello. A worker whose
//! connection ZeroMQ re-established underneath it (a new pipe, so a new
//! routing id) does not know it must say hello again until it is told, and
//! results it sent meanwhile would be lost: while its old connection still
//! holds those steps, they would end `WorkerLost`, or, once that connection
//! is settled, run a second time. They wait here, bounded in number, bytes
//! and time, for that connection's hello: if it takes over the worker's old
//! connection, they count as answers from it (§6.6).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use tasker_protocol::{StepExecutionResult, StepRef};

use super::registry::RoutingId;

/// Most results waiting, all connections together.
const MOST: usize = 4_096;
/// Most message bytes waiting, all connections together, in messages of
/// the largest size accepted: a count alone let a peer that knows a step in
/// flight park 4,096 results of `max_message_bytes` each (64 GiB at the
/// default) by sending the same one again and again.
const MOST_MESSAGES: usize = 4;

/// One connection's results, with the attempts they answer: a second
/// answer to an attempt is not kept.
struct Waiting {
    since: Instant,
    results: Vec<StepExecutionResult>,
    attempts: HashSet<StepRef>,
    bytes: usize,
}

pub(crate) struct Unclaimed {
    by_peer: HashMap<RoutingId, Waiting>,
    total: usize,
    bytes: usize,
    most_bytes: usize,
}

impl Unclaimed {
    /// Holds at most [`MOST`] results and [`MOST_MESSAGES`] messages of
    /// `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Self {
        Self {
            by_peer: HashMap::new(),
            total: 0,
            bytes: 0,
            most_bytes: max_message_bytes.saturating_mul(MOST_MESSAGES),
        }
    }

    /// Keeps for `peer`'s hello the `results` of one message of `bytes`,
    /// all of them or none; a result answering an attempt `peer` already
    /// has one waiting for is not kept. Returns the results not kept,
    /// other peers' pushed out included.
    ///
    /// The room is shared, not first come first served: when the message
    /// would pass a bound, the peers holding more than `peer` then would
    /// (in the bound passed) lose what they hold, largest first, and only
    /// when none does is this message refused. First come first served
    /// let a peer that never says hello fill the room with large forged
    /// answers to a step in flight, and the real worker's small result,
    /// sent as its connection was re-established, was lost.
    pub fn keep(
        &mut self,
        peer: &[u8],
        results: Vec<StepExecutionResult>,
        bytes: usize,
        now: Instant,
    ) -> Vec<StepExecutionResult> {
        if results.is_empty() {
            return results;
        }
        let (held, held_bytes) = self
            .by_peer
            .get(peer)
            .map_or((0, 0), |w| (w.results.len(), w.bytes));
        let (would_hold, would_hold_bytes) = (held + results.len(), held_bytes + bytes);
        let mut pushed_out = Vec::new();
        loop {
            let over_count = self.total + results.len() > MOST;
            let over_bytes = self.bytes + bytes > self.most_bytes;
            if !over_count && !over_bytes {
                break;
            }
            let size = |w: &Waiting| if over_bytes { w.bytes } else { w.results.len() };
            let mine = if over_bytes {
                would_hold_bytes
            } else {
                would_hold
            };
            let largest = self
                .by_peer
                .iter()
                .filter(|(other, w)| other.as_slice() != peer && size(w) > mine)
                .max_by_key(|(_, w)| size(w))
                .map(|(other, _)| other.clone());
            let Some(largest) = largest else {
                pushed_out.extend(results);
                return pushed_out;
            };
            pushed_out.extend(self.take(&largest));
        }
        let waiting = self
            .by_peer
            .entry(peer.to_vec())
            .or_insert_with(|| Waiting {
                since: now,
                results: Vec::new(),
                attempts: HashSet::new(),
                bytes: 0,
            });
        let mut refused = Vec::new();
        for result in results {
            if waiting.attempts.insert(result.step_ref()) {
                waiting.results.push(result);
                self.total += 1;
            } else {
                refused.push(result);
            }
        }
        waiting.bytes += bytes;
        self.bytes += bytes;
        pushed_out.extend(refused);
        pushed_out
    }

    /// What `peer` sent before its hello.
    pub fn take(&mut self, peer: &[u8]) -> Vec<StepExecutionResult> {
        let Some(waiting) = self.by_peer.remove(peer) else {
            return Vec::new();
        };
        self.total -= waiting.results.len();
        self.bytes -= waiting.bytes;
        waiting.results
    }

    /// Drops what waited longer than `patience`; returns how many.
    pub fn expire(&mut self, now: Instant, patience: Duration) -> usize {
        let before = self.total;
        self.by_peer.retain(|_, waiting| {
            let keep = now.saturating_duration_since(waiting.since) <= patience;
            if !keep {
                self.total -= waiting.results.len();
                self.bytes -= waiting.bytes;
            }
            keep
        });
        before - self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: i64) -> StepExecutionResult {
        let step = StepRef {
            step_id: id,
            attempt: 1,
        };
        StepExecutionResult::completed(step, serde_json::json!(null), "w", 0)
    }

    fn results(ids: std::ops::Range<i64>) -> Vec<StepExecutionResult> {
        ids.map(result).collect()
    }

    #[test]
    fn results_wait_for_their_peer_bounded_in_number_and_time() {
        let mut unclaimed = Unclaimed::new(1 << 20);
        let t0 = Instant::now();
        let most = MOST as i64;
        assert!(unclaimed.keep(b"a", results(0..most), 10, t0).is_empty());
        assert_eq!(
            unclaimed.keep(b"a", results(most..most + 1), 10, t0).len(),
            1,
            "full"
        );
        assert_eq!(
            unclaimed.keep(b"b", results(0..1), 10, t0).len(),
            MOST,
            "the peer holding more gives way"
        );
        assert!(unclaimed.take(b"a").is_empty());
        assert!(unclaimed.keep(b"b", results(1..2), 10, t0).is_empty());
        let later = t0 + Duration::from_secs(2);
        assert_eq!(unclaimed.expire(later, Duration::from_secs(1)), 2);
        assert!(unclaimed.take(b"b").is_empty());
    }

    #[test]
    fn results_waiting_are_bounded_in_bytes_and_freed_with_them() {
        let mut unclaimed = Unclaimed::new(1_000);
        let t0 = Instant::now();
        for id in 0..4 {
            assert!(unclaimed
                .keep(b"a", results(id..id + 1), 1_000, t0)
                .is_empty());
        }
        assert_eq!(
            unclaimed.keep(b"a", results(10..11), 1_000, t0).len(),
            1,
            "a message past the bytes bound is not kept"
        );
        assert_eq!(
            unclaimed.keep(b"b", results(10..12), 1, t0).len(),
            4,
            "the peer holding more bytes gives way"
        );
        assert!(unclaimed.take(b"a").is_empty());
        assert_eq!(unclaimed.take(b"b").len(), 2);
        assert!(unclaimed.keep(b"b", results(10..12), 4_000, t0).is_empty());
        assert_eq!(
            unclaimed.expire(t0 + Duration::from_secs(2), Duration::ZERO),
            2
        );
        assert!(unclaimed.keep(b"c", results(20..21), 4_000, t0).is_empty());
    }

    #[test]
    fn a_peer_holding_more_gives_way_to_a_small_result() {
        // Peers that never say hello fill the room with large forged
        // answers; the worker whose connection was re-established sends
        // one small result, which must be kept for its hello.
        let mut unclaimed = Unclaimed::new(1_000);
        let t0 = Instant::now();
        for (peer, id) in [(b"x", 0), (b"y", 1), (b"z", 2)] {
            assert!(unclaimed
                .keep(peer, results(id..id + 1), 1_000, t0)
                .is_empty());
        }
        assert!(unclaimed.keep(b"z", results(3..4), 1_000, t0).is_empty());
        let pushed_out = unclaimed.keep(b"worker", results(9..10), 100, t0);
        assert_eq!(
            pushed_out
                .iter()
                .map(|r| r.step_ref().step_id)
                .collect::<Vec<_>>(),
            [2, 3],
            "the largest holder's results went"
        );
        assert_eq!(unclaimed.take(b"worker").len(), 1);
        // A peer holding no more than the newcomer would is not pushed out:
        // the newcomer is refused.
        let mut unclaimed = Unclaimed::new(1_000);
        for (peer, id) in [(b"a", 0), (b"b", 1), (b"c", 2), (b"d", 3)] {
            assert!(unclaimed
                .keep(peer, results(id..id + 1), 1_000, t0)
                .is_empty());
        }
        assert_eq!(unclaimed.keep(b"e", results(4..5), 1_000, t0).len(), 1);
        assert_eq!(unclaimed.take(b"a").len(), 1);
    }

    #[test]
    fn an_attempt_is_kept_once_per_peer() {
        let mut unclaimed = Unclaimed::new(1 << 20);
        let t0 = Instant::now();
        assert!(unclaimed.keep(b"a", results(0..2), 10, t0).is_empty());
        let again = unclaimed.keep(b"a", results(1..3), 10, t0);
        assert_eq!(
            again
                .iter()
                .map(|r| r.step_ref().step_id)
                .collect::<Vec<_>>(),
            [1]
        );
        assert!(
            unclaimed.keep(b"b", results(1..2), 10, t0).is_empty(),
            "another peer's own"
        );
        assert_eq!(unclaimed.take(b"a").len(), 3);
    }
}
