//! `GET /v1/throughput`: steps ended per interval over the last minutes,
//! for the dashboard's chart. Sampled from the executor's counters by a
//! background task, so a page load costs no query.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tasker_orchestrator::MetricsSnapshot;

/// How often the counters are sampled.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Samples kept: ten minutes.
const KEPT: usize = 300;

/// `GET /v1/throughput`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Throughput {
    /// Seconds each point covers.
    pub interval_seconds: u64,
    /// Oldest first, up to the last ten minutes.
    pub points: Vec<ThroughputPoint>,
}

/// Steps that ended in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ThroughputPoint {
    /// The interval's end.
    pub at: DateTime<Utc>,
    /// Steps that ended completed.
    pub completed: u64,
    /// Steps that ended failed or timed out (a retry comes after).
    pub failed: u64,
}

/// The samples, and the counters at the last one.
#[derive(Default)]
pub(crate) struct Samples {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    points: VecDeque<ThroughputPoint>,
    /// Completed and failed at the last sample.
    last: Option<(u64, u64)>,
}

impl Samples {
    /// Records the interval ending now, from the counters now.
    pub fn sample(&self, now: DateTime<Utc>, metrics: &MetricsSnapshot) {
        let totals = (metrics.completed, metrics.failed + metrics.timed_out);
        let mut guard = self.inner.lock().expect("throughput lock");
        let Inner { points, last } = &mut *guard;
        if let Some((completed, failed)) = *last {
            if points.len() == KEPT {
                points.pop_front();
            }
            points.push_back(ThroughputPoint {
                at: now,
                completed: totals.0.saturating_sub(completed),
                failed: totals.1.saturating_sub(failed),
            });
        }
        *last = Some(totals);
    }

    pub fn snapshot(&self) -> Throughput {
        let guard = self.inner.lock().expect("throughput lock");
        Throughput {
            interval_seconds: INTERVAL.as_secs(),
            points: guard.points.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_point_counts_the_steps_ended_since_the_one_before() {
        let samples = Samples::default();
        let at = |s| DateTime::from_timestamp(s, 0).unwrap();
        let counters = |completed, failed, timed_out| MetricsSnapshot {
            completed,
            failed,
            timed_out,
            ..MetricsSnapshot::default()
        };
        samples.sample(at(0), &counters(10, 1, 0));
        assert!(samples.snapshot().points.is_empty(), "no interval yet");
        samples.sample(at(2), &counters(25, 3, 1));
        samples.sample(at(4), &counters(25, 3, 1));
        let points = samples.snapshot().points;
        assert_eq!(points.len(), 2);
        assert_eq!((points[0].completed, points[0].failed), (15, 3));
        assert_eq!((points[1].completed, points[1].failed), (0, 0));
        for s in 3..(3 + KEPT as i64 + 10) {
            samples.sample(at(2 * s), &counters(25 + s as u64, 3, 1));
        }
        assert_eq!(samples.snapshot().points.len(), KEPT, "ten minutes kept");
    }
}
