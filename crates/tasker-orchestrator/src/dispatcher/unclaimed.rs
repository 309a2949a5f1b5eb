//! Results that come on a connection before its hello. A worker whose
//! connection ZeroMQ re-established underneath it (a new pipe, so a new
//! routing id) does not know it must say hello again until it is told, and
//! results it sent meanwhile would be lost: while its old connection still
//! holds those steps, they would end `WorkerLost`, or, once that connection
//! is settled, run a second time. They wait here, bounded in number and
//! time, for that connection's hello: if it takes over the worker's old
//! connection, they count as answers from it (§6.6).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tasker_protocol::StepExecutionResult;

use super::registry::RoutingId;

/// Most results waiting, all connections together.
const MOST: usize = 4_096;

#[derive(Default)]
pub(crate) struct Unclaimed {
    by_peer: HashMap<RoutingId, (Instant, Vec<StepExecutionResult>)>,
    total: usize,
}

impl Unclaimed {
    /// Keeps `result` for `peer`'s hello; false (and dropped) when full.
    pub fn keep(&mut self, peer: &[u8], result: StepExecutionResult, now: Instant) -> bool {
        if self.total >= MOST {
            return false;
        }
        self.total += 1;
        self.by_peer
            .entry(peer.to_vec())
            .or_insert_with(|| (now, Vec::new()))
            .1
            .push(result);
        true
    }

    /// What `peer` sent before its hello.
    pub fn take(&mut self, peer: &[u8]) -> Vec<StepExecutionResult> {
        let results = self
            .by_peer
            .remove(peer)
            .map(|(_, r)| r)
            .unwrap_or_default();
        self.total -= results.len();
        results
    }

    /// Drops what waited longer than `patience`; returns how many.
    pub fn expire(&mut self, now: Instant, patience: Duration) -> usize {
        let before = self.total;
        self.by_peer.retain(|_, (since, results)| {
            let keep = now.saturating_duration_since(*since) <= patience;
            if !keep {
                self.total -= results.len();
            }
            keep
        });
        before - self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasker_protocol::StepRef;

    fn result(id: i64) -> StepExecutionResult {
        let step = StepRef {
            step_id: id,
            attempt: 1,
        };
        StepExecutionResult::completed(step, serde_json::json!(null), "w", 0)
    }

    #[test]
    fn results_wait_for_their_peer_bounded_in_number_and_time() {
        let mut unclaimed = Unclaimed::default();
        let t0 = Instant::now();
        for id in 0..MOST as i64 {
            assert!(unclaimed.keep(b"a", result(id), t0));
        }
        assert!(!unclaimed.keep(b"b", result(0), t0), "full");
        assert_eq!(unclaimed.take(b"a").len(), MOST);
        assert!(unclaimed.keep(b"b", result(1), t0));
        let later = t0 + Duration::from_secs(2);
        assert_eq!(unclaimed.expire(later, Duration::from_secs(1)), 1);
        assert!(unclaimed.take(b"b").is_empty());
    }
}
