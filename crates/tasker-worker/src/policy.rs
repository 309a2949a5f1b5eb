//! The rules every host of the runtime follows that are not language
//! idiom, written once: how waits are bounded, how many handler threads a
//! worker runs and how many steps each pulls, and the error kinds a worker
//! reports itself. Each binding calls these instead of deciding again.
//!
//! ```
//! use tasker_worker::policy;
//!
//! assert_eq!(policy::handler_threads(4, None).unwrap(), 4);
//! assert_eq!(policy::handler_threads(100, None).unwrap(), policy::DEFAULT_MAX_THREADS);
//! assert_eq!(policy::handler_threads(4, Some(10)).unwrap(), 4, "never more than capacity");
//! assert_eq!(policy::chunk_size(10, 4), 3);
//! assert_eq!(policy::chunk_size(200, 1), 100, "a lone thread pulls half");
//! assert!(policy::wait_timeout(Some(-1.0)).is_err());
//! ```

use std::time::Duration;

pub use tasker_protocol::error_types;
pub use tasker_protocol::MAX_JSON_DEPTH;

/// Handler threads when the host does not say: one per slot, up to this.
pub const DEFAULT_MAX_THREADS: usize = 8;

/// The longest single wait: "no limit" waits this long, which is forever in
/// practice and keeps deadline arithmetic far from overflow.
pub const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A value a host passed that the rules refuse; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// A wait of `seconds` (`None`: no limit) as a duration: negative or NaN is
/// refused, anything longer than [`FOREVER`] (infinity included) is
/// [`FOREVER`].
pub fn wait_timeout(seconds: Option<f64>) -> Result<Option<Duration>, PolicyError> {
    match seconds {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PolicyError(format!(
            "timeout must be a non-negative number of seconds, got {t}"
        ))),
        Some(t) => Ok(Some(
            Duration::try_from_secs_f64(t)
                .unwrap_or(FOREVER)
                .min(FOREVER),
        )),
    }
}

/// How many threads run a worker's handlers: `requested` (at least 1), or
/// one per slot up to [`DEFAULT_MAX_THREADS`]; never more than `capacity`,
/// since the runtime never holds more steps than that.
pub fn handler_threads(capacity: u32, requested: Option<usize>) -> Result<usize, PolicyError> {
    let capacity = (capacity as usize).max(1);
    match requested {
        Some(0) => Err(PolicyError("threads must be at least 1, got 0".into())),
        Some(n) => Ok(n.min(capacity)),
        None => Ok(capacity.min(DEFAULT_MAX_THREADS)),
    }
}

/// Most steps one handler thread pulls at a time, so that the threads
/// together hold exactly `capacity`: ⌈capacity / threads⌉; a single
/// thread pulls half of it at a time.
///
/// The half is what keeps the orchestrator's window open: a lone thread
/// that pulled the whole capacity would answer two batches together, and
/// the orchestrator would get no credit back until both had run. With
/// halves, the first half's results go back (and free credit for the next
/// delivery) while the second half runs.
pub fn chunk_size(capacity: u32, threads: usize) -> usize {
    (capacity as usize).max(1).div_ceil(threads.max(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_bounded_and_bad_ones_named() {
        assert_eq!(wait_timeout(None).unwrap(), None);
        assert_eq!(wait_timeout(Some(f64::INFINITY)).unwrap(), Some(FOREVER));
        assert_eq!(wait_timeout(Some(1e300)).unwrap(), Some(FOREVER));
        assert_eq!(
            wait_timeout(Some(0.25)).unwrap(),
            Some(Duration::from_millis(250))
        );
        let error = wait_timeout(Some(f64::NAN)).unwrap_err();
        assert!(error.0.contains("NaN"), "{error}");
    }

    #[test]
    fn threads_never_exceed_capacity_and_chunks_cover_it() {
        for capacity in 1..40u32 {
            for requested in [None, Some(1), Some(3), Some(64)] {
                let threads = handler_threads(capacity, requested).unwrap();
                assert!(threads >= 1 && threads <= capacity as usize);
                let chunk = chunk_size(capacity, threads);
                // Each thread holding a chunk holds the capacity; a lone
                // thread takes two chunks to.
                let pulls = threads.max(2);
                assert!(chunk * pulls >= capacity as usize);
                assert!((chunk - 1) * pulls < capacity as usize);
            }
        }
        assert!(handler_threads(4, Some(0)).is_err());
    }
}
