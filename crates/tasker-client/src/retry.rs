//! When a call is tried again (CLIENT.md §5).

use std::time::Duration;

/// How a [`Client`](crate::Client) retries idempotent calls after no
/// answer or a 5xx: `delays.len()` retries, each after its delay ±20%.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// The wait before each retry.
    pub delays: Vec<Duration>,
}

impl Default for RetryPolicy {
    /// 0.2, 0.4, 0.8 and 1.6 s: about 3 s before giving up, enough to ride
    /// out a restart's first moments without hiding a server that is down.
    fn default() -> Self {
        RetryPolicy {
            delays: [200, 400, 800, 1600]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        }
    }
}

impl RetryPolicy {
    /// No retries: every call is tried once.
    pub fn none() -> Self {
        RetryPolicy { delays: Vec::new() }
    }

    /// The wait before retry `n` (0-based), jittered so that many clients
    /// cut off together do not come back in step; `None` when spent.
    pub(crate) fn delay(&self, n: usize) -> Option<Duration> {
        let base = *self.delays.get(n)?;
        Some(base.mul_f64(0.8 + 0.4 * fastrand::f64()))
    }
}
