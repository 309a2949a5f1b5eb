//! Lines about what peers send and do are rate-limited: a peer that sends
//! garbage as fast as it can, or peers connecting, saying hello and going
//! as fast as they can (3,000 in 10 s wrote 7,896 lines), must not turn the
//! orchestrator's log into their amplifier, nor stall the loop writing it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::registry::ConnId;

const WINDOW: Duration = Duration::from_secs(1);
/// Warnings per peer per window.
const PER_PEER: u32 = 5;
/// Warnings per window, all peers together.
const WARNINGS: u32 = 50;
/// Lines about connections coming and going per window, all together: a
/// fleet of a hundred starting at once is still said worker by worker.
const COMINGS_AND_GOINGS: u32 = 100;
/// Peers tracked per window; beyond, only the total applies.
const PEERS_TRACKED: usize = 1_024;

pub(crate) struct Limiter {
    /// What it limits, for the line that says how many were held back.
    what: &'static str,
    most: u32,
    window_start: Option<Instant>,
    per_peer: HashMap<Vec<u8>, u32>,
    total: u32,
    suppressed: u64,
}

impl Limiter {
    /// For warnings about what peers send.
    pub fn warnings() -> Self {
        Self::new("log lines about peers", WARNINGS)
    }

    /// For the lines that say a connection came, changed or went.
    pub fn comings_and_goings() -> Self {
        Self::new(
            "lines about connections coming and going",
            COMINGS_AND_GOINGS,
        )
    }

    fn new(what: &'static str, most: u32) -> Self {
        Self {
            what,
            most,
            window_start: None,
            per_peer: HashMap::new(),
            total: 0,
            suppressed: 0,
        }
    }

    /// Whether a line about `peer` (a routing id) may be logged now.
    pub fn allow(&mut self, peer: &[u8]) -> bool {
        self.roll();
        if self.total >= self.most {
            self.suppressed += 1;
            return false;
        }
        if let Some(n) = self.per_peer.get_mut(peer) {
            if *n >= PER_PEER {
                self.suppressed += 1;
                return false;
            }
            *n += 1;
        } else if self.per_peer.len() < PEERS_TRACKED {
            self.per_peer.insert(peer.to_vec(), 1);
        }
        self.total += 1;
        true
    }

    /// [`allow`](Self::allow) for a registered connection.
    pub fn allow_conn(&mut self, conn: ConnId) -> bool {
        self.allow(&conn.to_be_bytes())
    }

    /// Says how many warnings were held back once their window is over.
    pub fn flush(&mut self) {
        if self.suppressed > 0
            && self
                .window_start
                .is_some_and(|start| start.elapsed() >= WINDOW)
        {
            tracing::warn!(
                suppressed = self.suppressed,
                "more {} were held back (rate limit)",
                self.what
            );
            self.suppressed = 0;
        }
    }

    fn roll(&mut self) {
        let now = Instant::now();
        if !self
            .window_start
            .is_some_and(|start| now.duration_since(start) < WINDOW)
        {
            self.flush();
            self.window_start = Some(now);
            self.per_peer.clear();
            self.total = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_noisy_peer_is_held_to_its_share() {
        let mut limiter = Limiter::warnings();
        let allowed = (0..100).filter(|_| limiter.allow(b"noisy")).count();
        assert_eq!(allowed, PER_PEER as usize);
        assert!(limiter.allow(b"quiet"), "other peers still get through");
        assert_eq!(limiter.suppressed, 100 - PER_PEER as u64);
    }

    #[test]
    fn many_peers_together_are_held_to_the_total() {
        for (mut limiter, most) in [
            (Limiter::warnings(), WARNINGS),
            (Limiter::comings_and_goings(), COMINGS_AND_GOINGS),
        ] {
            let allowed = (0..10_000u32)
                .filter(|i| limiter.allow(&i.to_be_bytes()))
                .count();
            assert_eq!(allowed, most as usize);
            assert!(limiter.per_peer.len() <= PEERS_TRACKED);
        }
    }
}
