//! Carries the runtime's `tracing` events to a host language's logger.
//!
//! A host cannot be called from the runtime's I/O thread: Ruby objects may
//! only be touched by Ruby threads, Python needs the GIL, and JavaScript runs
//! on its own event loop. So the bridge only queues records; the host drains
//! them on a thread of its own with [`LogBridge::next_records`] (a blocking
//! wait that [`LogBridge::wake`] interrupts) and hands them to its logger.
//! A wait that one host thread may interrupt while others also wait (Ruby's
//! unblock function) uses [`LogBridge::next_records_or`] with its own
//! [`Interrupt`].
//!
//! ```
//! use std::time::Duration;
//! use tasker_worker::log_bridge::{self, LogLevel};
//!
//! let bridge = log_bridge::install(LogLevel::Info).unwrap();
//! tracing::info!(target: "tasker_worker", worker_id = "w-1", "connected");
//! let records = bridge.next_records(16, Some(Duration::from_secs(1)));
//! assert_eq!(records[0].message, "connected");
//! assert_eq!(records[0].fields, vec![("worker_id".to_string(), "w-1".to_string())]);
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Records kept while the host is not draining; later ones are dropped and
/// counted, so a stalled logger cannot grow memory without bound.
const QUEUE_BOUND: usize = 10_000;

/// Severity of a record, ordered from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something unexpected that the runtime recovered from.
    Warn = 2,
    /// Connection lifecycle: connected, reconnecting, draining, stopped.
    Info = 3,
    /// Per-message detail.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    /// The lower-case name: `error`, `warn`, `info`, `debug` or `trace`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }

    fn of(level: &tracing::Level) -> Self {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A level name that is not one of `error`, `warn`/`warning`, `info`,
/// `debug` or `trace`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log level {0:?}: expected error, warn, info, debug or trace")]
pub struct UnknownLogLevel(pub String);

impl FromStr for LogLevel {
    type Err = UnknownLogLevel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "error" => Ok(LogLevel::Error),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "info" => Ok(LogLevel::Info),
            "debug" => Ok(LogLevel::Debug),
            "trace" => Ok(LogLevel::Trace),
            _ => Err(UnknownLogLevel(s.to_string())),
        }
    }
}

/// One `tracing` event, ready for a host logger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The module that logged it, e.g. `tasker_worker::connection`.
    pub target: String,
    /// The event's message.
    pub message: String,
    /// The event's other fields, in the order they were written.
    pub fields: Vec<(String, String)>,
}

impl fmt::Display for LogRecord {
    /// The message followed by `key=value` pairs, as one log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for (key, value) in &self.fields {
            write!(f, " {key}={value}")?;
        }
        Ok(())
    }
}

/// The bridge could not become the process's `tracing` subscriber.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("another tracing subscriber is already installed in this process")]
pub struct SubscriberAlreadySet;

/// The process-wide queue of records waiting for the host's logger.
pub struct LogBridge {
    level: AtomicU8,
    dropped: AtomicU64,
    state: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    records: VecDeque<LogRecord>,
    /// Bumped by every [`LogBridge::wake`]: each waiter compares it with the
    /// value it saw on entry, so one wake ends every wait under way.
    wakes: u64,
    waiters: usize,
    /// A wake that found nobody waiting, kept for the next call.
    wake_pending: bool,
}

/// The interrupt of one [`LogBridge::next_records_or`] call.
///
/// A single shared "woken" flag let one waiter take another's wake-up: with
/// a host's log thread and a second thread both waiting, interrupting the
/// second could end the first's wait instead, and the second never
/// returned. Each call owning its flag makes the wake-up reach the thread it
/// was meant for, even when it comes before that thread starts to wait.
#[derive(Debug, Default)]
pub struct Interrupt(AtomicBool);

static BRIDGE: OnceLock<Result<&'static LogBridge, SubscriberAlreadySet>> = OnceLock::new();

/// Makes the bridge the process's `tracing` subscriber (first call) and sets
/// the most verbose level it queues (every call).
///
/// Fails when something else installed a global subscriber first; the host
/// then gets no runtime logs through the bridge.
pub fn install(level: LogLevel) -> Result<&'static LogBridge, SubscriberAlreadySet> {
    let bridge = BRIDGE
        .get_or_init(|| {
            let bridge: &'static LogBridge = Box::leak(Box::new(LogBridge::new(level)));
            let subscriber = tracing_subscriber::registry().with(BridgeLayer(bridge));
            tracing::subscriber::set_global_default(subscriber)
                .map(|()| bridge)
                .map_err(|_| SubscriberAlreadySet)
        })
        .clone()?;
    bridge.set_level(level);
    Ok(bridge)
}

/// The bridge, once [`install`] has made it the process's subscriber.
pub fn installed() -> Option<&'static LogBridge> {
    BRIDGE.get().and_then(|b| b.as_ref().ok().copied())
}

impl LogBridge {
    fn new(level: LogLevel) -> Self {
        LogBridge {
            level: AtomicU8::new(level as u8),
            dropped: AtomicU64::new(0),
            state: Mutex::new(Queue::default()),
            ready: Condvar::new(),
        }
    }

    /// Sets the most verbose level queued from now on.
    pub fn set_level(&self, level: LogLevel) {
        self.level.store(level as u8, Ordering::Relaxed);
    }

    /// The most verbose level queued.
    pub fn level(&self) -> LogLevel {
        match self.level.load(Ordering::Relaxed) {
            1 => LogLevel::Error,
            2 => LogLevel::Warn,
            3 => LogLevel::Info,
            4 => LogLevel::Debug,
            _ => LogLevel::Trace,
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits until records are queued, then takes up to `max` of them.
    ///
    /// Returns an empty list when `timeout` passes or [`wake`](Self::wake)
    /// is called first. This blocks: a host calls it without its interpreter
    /// lock, with `wake` as the interrupt.
    pub fn next_records(&self, max: usize, timeout: Option<Duration>) -> Vec<LogRecord> {
        self.wait_and_take(max, timeout, None)
    }

    /// [`next_records`](Self::next_records) that also returns, empty, once
    /// [`interrupt`](Self::interrupt) is called with `interrupt` (before or
    /// during the wait). Other waiters are not disturbed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tasker_worker::log_bridge::{self, Interrupt, LogLevel};
    ///
    /// let bridge = log_bridge::install(LogLevel::Error).unwrap();
    /// let interrupt = Interrupt::default();
    /// bridge.interrupt(&interrupt);
    /// assert!(bridge.next_records_or(16, None, &interrupt).is_empty());
    /// ```
    pub fn next_records_or(
        &self,
        max: usize,
        timeout: Option<Duration>,
        interrupt: &Interrupt,
    ) -> Vec<LogRecord> {
        self.wait_and_take(max, timeout, Some(interrupt))
    }

    /// Ends the [`next_records_or`](Self::next_records_or) call holding
    /// `interrupt`, or makes it return at once if it has not started waiting.
    pub fn interrupt(&self, interrupt: &Interrupt) {
        // Under the lock, so the flag cannot be set between the waiter's
        // check and its sleep.
        let _queue = self.state.lock().unwrap_or_else(|e| e.into_inner());
        interrupt.0.store(true, Ordering::Release);
        self.ready.notify_all();
    }

    /// Makes every waiting [`next_records`](Self::next_records) (and
    /// `next_records_or`) return at once, or the next call when none waits.
    pub fn wake(&self) {
        let mut queue = self.state.lock().unwrap_or_else(|e| e.into_inner());
        queue.wakes = queue.wakes.wrapping_add(1);
        if queue.waiters == 0 {
            queue.wake_pending = true;
        }
        self.ready.notify_all();
    }

    /// Waits until records are queued, taking none: true when some are,
    /// false on timeout or [`wake`](Self::wake). For a host that takes them
    /// later with [`take_records`](Self::take_records) under a lock of its
    /// own, so that no record is ever only in a thread's hands.
    pub fn wait_for_records(&self, timeout: Option<Duration>) -> bool {
        self.wait(timeout, None, |_| ()).is_some()
    }

    /// [`wait_for_records`](Self::wait_for_records) that also returns false
    /// once [`interrupt`](Self::interrupt) is called with `interrupt`.
    pub fn wait_for_records_or(&self, timeout: Option<Duration>, interrupt: &Interrupt) -> bool {
        self.wait(timeout, Some(interrupt), |_| ()).is_some()
    }

    /// Takes up to `max` queued records without waiting; empty when none are
    /// queued. Leaves pending wake-ups to the waiters they were meant for.
    pub fn take_records(&self, max: usize) -> Vec<LogRecord> {
        let mut queue = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = max.min(queue.records.len());
        queue.records.drain(..n).collect()
    }

    fn wait_and_take(
        &self,
        max: usize,
        timeout: Option<Duration>,
        interrupt: Option<&Interrupt>,
    ) -> Vec<LogRecord> {
        self.wait(timeout, interrupt, |records| {
            let n = max.max(1).min(records.len());
            records.drain(..n).collect()
        })
        .unwrap_or_default()
    }

    /// Waits until records are queued and calls `take` on them under the
    /// lock; `None` on timeout, a wake or the interrupt.
    fn wait<R>(
        &self,
        timeout: Option<Duration>,
        interrupt: Option<&Interrupt>,
        take: impl FnOnce(&mut VecDeque<LogRecord>) -> R,
    ) -> Option<R> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut queue = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut queue.wake_pending) {
            return None;
        }
        let seen = queue.wakes;
        queue.waiters += 1;
        let taken = loop {
            let interrupted = interrupt.is_some_and(|i| i.0.load(Ordering::Acquire));
            if interrupted || queue.wakes != seen {
                break None;
            }
            if !queue.records.is_empty() {
                break Some(take(&mut queue.records));
            }
            queue = match deadline {
                None => self.ready.wait(queue).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break None;
                    }
                    self.ready
                        .wait_timeout(queue, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        };
        queue.waiters -= 1;
        taken
    }

    fn push(&self, record: LogRecord) {
        let mut queue = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if queue.records.len() >= QUEUE_BOUND {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.records.push_back(record);
        self.ready.notify_one();
    }
}

struct BridgeLayer(&'static LogBridge);

impl<S: Subscriber> Layer<S> for BridgeLayer {
    // The level can change at run time, so no callsite is ruled out for good.
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>, _: Context<'_, S>) -> bool {
        LogLevel::of(metadata.level()) <= self.0.level()
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut visitor = FieldVisitor::default();
        event.record(&mut visitor);
        self.0.push(LogRecord {
            level: LogLevel::of(event.metadata().level()),
            target: event.metadata().target().to_string(),
            message: visitor.message,
            fields: visitor.fields,
        });
    }
}

#[derive(Default)]
struct FieldVisitor {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for FieldVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!("WARNING".parse::<LogLevel>(), Ok(LogLevel::Warn));
        assert!(LogLevel::Error < LogLevel::Debug);
        let err = "loud".parse::<LogLevel>().unwrap_err();
        assert!(err.to_string().contains("\"loud\""));
    }

    #[test]
    fn queues_filters_and_wakes() {
        let bridge = install(LogLevel::Info).unwrap();
        tracing::debug!(target: "t", "hidden");
        tracing::warn!(target: "t", step_id = 7, "shown");
        let records = bridge.next_records(10, Some(Duration::from_secs(1)));
        let shown: Vec<_> = records.iter().filter(|r| r.target == "t").collect();
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].to_string(), "shown step_id=7");
        assert_eq!(shown[0].level, LogLevel::Warn);

        let waiter = std::thread::spawn(move || bridge.next_records(10, None));
        std::thread::sleep(Duration::from_millis(50));
        bridge.wake();
        assert!(waiter.join().unwrap().is_empty());
    }

    #[test]
    fn an_interrupt_ends_only_its_own_wait_even_with_another_waiter() {
        // Not the installed bridge: other tests' events would end the waits.
        let bridge: &'static LogBridge = Box::leak(Box::new(LogBridge::new(LogLevel::Info)));
        let logger = std::thread::spawn(move || bridge.next_records(10, None));
        let interrupt = std::sync::Arc::new(Interrupt::default());
        let mine = {
            let interrupt = interrupt.clone();
            std::thread::spawn(move || bridge.next_records_or(10, None, &interrupt))
        };
        std::thread::sleep(Duration::from_millis(50));
        bridge.interrupt(&interrupt);
        assert!(mine.join().unwrap().is_empty());
        assert!(!logger.is_finished(), "the other waiter was woken too");

        // An interrupt that comes before its wait starts is not lost.
        let early = Interrupt::default();
        bridge.interrupt(&early);
        assert!(bridge.next_records_or(10, None, &early).is_empty());

        // One wake ends every wait under way.
        bridge.wake();
        assert!(logger.join().unwrap().is_empty());
    }

    #[test]
    fn waiting_for_records_takes_none_and_taking_leaves_wakes_alone() {
        let bridge: &'static LogBridge = Box::leak(Box::new(LogBridge::new(LogLevel::Info)));
        assert!(bridge.take_records(10).is_empty());
        assert!(!bridge.wait_for_records(Some(Duration::from_millis(10))));
        for message in ["one", "two", "three"] {
            bridge.push(LogRecord {
                level: LogLevel::Info,
                target: "t".into(),
                message: message.into(),
                fields: Vec::new(),
            });
        }
        assert!(bridge.wait_for_records(None));
        assert!(bridge.wait_for_records(None), "the first wait took records");
        let taken: Vec<_> = bridge
            .take_records(2)
            .into_iter()
            .map(|r| r.message)
            .collect();
        assert_eq!(taken, ["one", "two"]);

        // A wake kept for the next waiter survives a take in between.
        bridge.wake();
        assert_eq!(bridge.take_records(10).len(), 1);
        assert!(!bridge.wait_for_records(None));
    }
}
