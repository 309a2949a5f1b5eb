//! A peer that sends malformed messages faster than any broken worker
//! would is not read for a while: its messages are dropped unparsed.
//!
//! Parsing is the costly part of a malformed message (a body nested 200
//! deep took 23 µs), and one I/O thread parses for every connection: one
//! peer sending 46,000 such messages a second used all of it, the
//! orchestrator's heartbeats stopped, and its workers, judged silent,
//! reconnected over and over. Dropping a message unread costs a hash
//! lookup; nothing is looked up while no peer is quarantined.

use std::time::{Duration, Instant};

use super::registry::RoutingId;

/// Malformed messages from one peer within [`WINDOW`] that quarantine it.
const STRIKES: u32 = 200;
const WINDOW: Duration = Duration::from_secs(1);
/// How long a quarantined peer's messages are dropped unread.
pub(super) const QUARANTINE: Duration = Duration::from_secs(10);
/// Peers counted at once; past that, new ones are not counted until the
/// window rolls (a flood of connections each sending little costs no
/// more than it did).
const PEERS_COUNTED: usize = 4_096;

#[derive(Default)]
pub(crate) struct Quarantine {
    window_start: Option<Instant>,
    strikes: foldhash::HashMap<RoutingId, u32>,
    held: foldhash::HashMap<RoutingId, Instant>,
}

impl Quarantine {
    /// Whether `peer`'s messages are being dropped unread now.
    pub fn holds(&mut self, peer: &[u8], now: Instant) -> bool {
        if self.held.is_empty() {
            return false;
        }
        match self.held.get(peer) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.held.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Counts a malformed message from `peer`; true when that puts it in
    /// quarantine (say so once).
    pub fn strike(&mut self, peer: &[u8], now: Instant) -> bool {
        if self
            .window_start
            .map_or(true, |start| now.duration_since(start) >= WINDOW)
        {
            self.window_start = Some(now);
            self.strikes.clear();
        }
        if !self.strikes.contains_key(peer) {
            if self.strikes.len() >= PEERS_COUNTED {
                return false;
            }
            self.strikes.insert(peer.to_vec(), 0);
        }
        let n = self.strikes.get_mut(peer).expect("just made sure");
        *n += 1;
        if *n < STRIKES {
            return false;
        }
        self.strikes.remove(peer);
        self.held.insert(peer.to_vec(), now + QUARANTINE);
        true
    }

    /// Forgets quarantines that are over (at each heartbeat tick).
    pub fn expire(&mut self, now: Instant) {
        self.held.retain(|_, until| now < *until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_held_after_its_strikes_within_a_window_and_released_after() {
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        for _ in 0..STRIKES - 1 {
            assert!(!q.strike(b"flood", t0));
        }
        assert!(!q.holds(b"flood", t0));
        assert!(q.strike(b"flood", t0), "the last strike quarantines");
        assert!(q.holds(b"flood", t0));
        assert!(!q.holds(b"other", t0), "others are read");
        assert!(!q.holds(b"flood", t0 + QUARANTINE));
    }

    #[test]
    fn strikes_spread_over_windows_never_add_up() {
        let mut q = Quarantine::default();
        let t0 = Instant::now();
        for second in 0..10u64 {
            let now = t0 + Duration::from_secs(second);
            for _ in 0..STRIKES - 1 {
                assert!(!q.strike(b"slow", now));
            }
        }
        assert!(!q.holds(b"slow", t0 + Duration::from_secs(10)));
    }
}
