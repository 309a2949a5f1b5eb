//! Retry policies: how many attempts a step gets and how long to wait
//! between them.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tasker_protocol::MAX_TIMEOUT_MS;

/// How a step's failed attempts are retried.
///
/// Only retryable failures are retried: a handler's `RetryableError`, an
/// unexpected error when the worker's default says so, a timeout, or a lost
/// worker. The wait before attempt `n + 1` is
/// `min(max_ms, initial_ms × multiplierⁿ⁻¹)`, shortened by a random fraction
/// of at most `jitter` so that steps failing together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use tasker_engine::RetryPolicy;
///
/// let policy = RetryPolicy { max_attempts: 4, initial_ms: 100, multiplier: 2.0, max_ms: 300, jitter: 0.0 };
/// assert_eq!(policy.delay(1, 0.5), Duration::from_millis(100));
/// assert_eq!(policy.delay(2, 0.5), Duration::from_millis(200));
/// assert_eq!(policy.delay(3, 0.5), Duration::from_millis(300)); // capped
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means never retry.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// Wait after the first failed attempt, in ms (at most 30 days).
    #[serde(default = "default_initial_ms")]
    #[schemars(range(max = MAX_TIMEOUT_MS))]
    pub initial_ms: u64,
    /// Factor the wait grows by after each further failure (≥ 1).
    #[serde(default = "default_multiplier")]
    #[schemars(range(min = 1.0))]
    pub multiplier: f64,
    /// Longest wait, in ms (at most 30 days; when left out, 10 000 or
    /// `initial_ms` if that is longer).
    #[serde(default = "default_max_ms")]
    #[schemars(range(max = MAX_TIMEOUT_MS))]
    pub max_ms: u64,
    /// Largest fraction (0 to 1) taken off a wait at random.
    #[serde(default = "default_jitter")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: f64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_ms() -> u64 {
    200
}
fn default_multiplier() -> f64 {
    2.0
}
fn default_max_ms() -> u64 {
    10_000
}
fn default_jitter() -> f64 {
    0.1
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            initial_ms: default_initial_ms(),
            multiplier: default_multiplier(),
            max_ms: default_max_ms(),
            jitter: default_jitter(),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (1-based), with `random` in
    /// `[0, 1)` choosing how much jitter to take off; never more than
    /// [`MAX_TIMEOUT_MS`] (30 days), whatever a policy built without
    /// [`TaskTemplate::check`](crate::TaskTemplate::check) says.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(63) as i32;
        let base = (self.initial_ms as f64 * self.multiplier.powi(exponent))
            .min(self.max_ms as f64)
            .min(MAX_TIMEOUT_MS as f64);
        let jittered = base * (1.0 - self.jitter * random.clamp(0.0, 1.0));
        Duration::from_micros((jittered * 1000.0) as u64)
    }

    /// The field at fault and why, for a policy that cannot work.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_attempts == 0 {
            return Err(("max_attempts", "must be at least 1".into()));
        }
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err((
                "multiplier",
                format!("must be a number ≥ 1, got {}", self.multiplier),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err((
                "jitter",
                format!("must be between 0 and 1, got {}", self.jitter),
            ));
        }
        for (field, ms) in [("initial_ms", self.initial_ms), ("max_ms", self.max_ms)] {
            if ms > MAX_TIMEOUT_MS {
                return Err((
                    field,
                    format!("must be at most {MAX_TIMEOUT_MS} (30 days), got {ms}"),
                ));
            }
        }
        if self.max_ms < self.initial_ms {
            return Err((
                "max_ms",
                format!(
                    "must not be below initial_ms ({} < {})",
                    self.max_ms, self.initial_ms
                ),
            ));
        }
        Ok(())
    }

    /// This policy with the keys of a step's partial `retry:` replaced; an
    /// error names the key at fault. `max_written`: this policy's `max_ms`
    /// was written (in `defaults`), so it is kept as written.
    pub(crate) fn merged(
        &self,
        overrides: serde_norway::Value,
        max_written: bool,
    ) -> Result<Self, (String, serde_norway::Error)> {
        let decode = |value: serde_norway::Value| {
            serde_path_to_error::deserialize(value)
                .map_err(|e| (e.path().to_string(), e.into_inner()))
        };
        let serde_norway::Value::Mapping(written) = overrides else {
            // Not a mapping: the decode names what is wrong with it.
            return decode(overrides);
        };
        let serde_norway::Value::Mapping(mut base) =
            serde_norway::to_value(self).expect("a policy serialises")
        else {
            unreachable!("a policy serialises to a mapping")
        };
        base.extend(written.clone());
        let mut merged: Self = decode(serde_norway::Value::Mapping(base))?;
        if !max_written {
            merged.widen_unset_max(&serde_norway::Value::Mapping(written));
        }
        Ok(merged)
    }

    /// A `max_ms` left out of `written` is at least its `initial_ms`: a
    /// workflow setting only `initial_ms: 60000` was refused for a default
    /// `max_ms` it never wrote. One it wrote is kept, and checked.
    pub(crate) fn widen_unset_max(&mut self, written: &serde_norway::Value) {
        if written.get("max_ms").is_none() {
            self.max_ms = self.max_ms.max(self.initial_ms);
        }
    }
}
