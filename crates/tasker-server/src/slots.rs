//! The API's connection slots: a bound on the connections open at once.
//!
//! Every connection is a descriptor, and the process's worker port and
//! store need theirs: 21,000 connections that sent half a request head each
//! took every descriptor `serve` had, so the API answered no one and no
//! worker could finish its CURVE handshake, until the head timeout closed
//! them (and the client opened them again). Past the bound, the connection
//! that has waited longest without a request in progress gives its slot to
//! the newcomer: a client that connects to say nothing can only push out
//! others that say nothing, while one that sends its request at once (as
//! every real client does) is in a request before thousands more could
//! come. When every slot is in a request, the newcomer is closed at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Notify;

/// The open connections, by a number of their own.
pub(crate) struct Slots {
    max: usize,
    /// Connections pushed out so far.
    pushed_out: u64,
    next: u64,
    open: HashMap<u64, Arc<Slot>>,
    started: Instant,
}

/// One connection's slot: whether it is in a request, and since when not.
pub(crate) struct Slot {
    busy: AtomicUsize,
    /// Milliseconds from the table's start to when it last had no request.
    idle_since_ms: AtomicU64,
    started: Instant,
    pushed_out: Notify,
}

/// A request in progress on a connection; ends with the value.
pub(crate) struct Busy(Arc<Slot>);

impl Slots {
    /// At most `max` connections (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            pushed_out: 0,
            next: 0,
            open: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// A slot for a new connection, or `None` when every slot is in a
    /// request. At the bound, the connection idle the longest is pushed out
    /// (its [`Slot::pushed_out`] completes) to make room.
    pub fn admit(&mut self) -> Option<(u64, Arc<Slot>)> {
        if self.open.len() >= self.max {
            let idlest = self
                .open
                .iter()
                .filter(|(_, slot)| slot.busy.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, slot)| slot.idle_since_ms.load(Ordering::Acquire))
                .map(|(id, _)| *id)?;
            if let Some(slot) = self.open.remove(&idlest) {
                slot.pushed_out.notify_one();
                self.pushed_out += 1;
            }
        }
        let slot = Arc::new(Slot {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(ms_since(self.started)),
            started: self.started,
            pushed_out: Notify::new(),
        });
        self.next += 1;
        self.open.insert(self.next, Arc::clone(&slot));
        Some((self.next, slot))
    }

    /// The connection `id` has closed.
    pub fn release(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many idle connections have been closed to make room.
    pub fn pushed_out_total(&self) -> u64 {
        self.pushed_out
    }
}

impl Slot {
    /// Marks a request in progress until the value is dropped.
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Completes once the connection must close to make room.
    pub async fn pushed_out(&self) {
        self.pushed_out.notified().await;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let slot = &self.0;
        slot.idle_since_ms
            .store(ms_since(slot.started), Ordering::Release);
        slot.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ms_since(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The bound `tasker serve` uses: a quarter of the open-files limit (which
/// `tasker` raises to its hard limit at start), between 64 and 16,384, so
/// the worker port, the store and the log keep the rest.
pub(crate) fn default_max() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct it is given, which lives on
    // this stack for the call.
    let known = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let open_files = if known { limit.rlim_cur } else { 1024 };
    usize::try_from(open_files / 4)
        .unwrap_or(usize::MAX)
        .clamp(64, 16_384)
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures_util::FutureExt;

    fn is_pushed_out(slot: &Slot) -> bool {
        slot.pushed_out().now_or_never().is_some()
    }

    #[test]
    fn at_the_bound_the_longest_idle_connection_makes_room_and_busy_ones_never_do() {
        let mut slots = Slots::new(2);
        let (first, a) = slots.admit().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (_, b) = slots.admit().unwrap();
        // `a` idle longest: pushed out for the third.
        let (_, c) = slots.admit().unwrap();
        assert!(is_pushed_out(&a));
        slots.release(first);
        let busy_b = b.enter();
        let busy_c = c.enter();
        assert!(slots.admit().is_none(), "every slot is in a request");
        drop(busy_c);
        assert!(slots.admit().is_some(), "c is idle again");
        assert!(is_pushed_out(&c));
        assert!(!is_pushed_out(&b));
        drop(busy_b);
    }
}
