//! Runtime `tracing` events for a JavaScript logger: they go through
//! [`tasker_worker::log_bridge`] to a logger thread that keeps them for
//! `takeLogs` and rings a weak (unreferenced) thread-safe function, so
//! logging never keeps the process alive and no record is lost at exit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use napi::bindgen_prelude::Status;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tasker_worker::log_bridge::{self, LogBridge, LogLevel, LogRecord};

use crate::errors::{BindingError, Result};

/// Most records the logger thread moves out of the bridge at a time.
const LOG_CHUNK: usize = 256;

/// Records kept for a JavaScript logger that does not take them (a blocked
/// event loop); later ones are dropped, as the bridge drops past its bound.
const PENDING_BOUND: usize = 10_000;

/// A Rust `tracing` event of the runtime, for a JavaScript logger.
#[napi(object)]
pub struct LogEntry {
    /// `error`, `warn`, `info`, `debug` or `trace`: declared as that union,
    /// so `console[entry.level]` type-checks (the README's own example).
    #[napi(ts_type = "\"error\" | \"warn\" | \"info\" | \"debug\" | \"trace\"")]
    pub level: String,
    /// The Rust module that logged it, e.g. `tasker_worker::connection`.
    pub target: String,
    /// The event's message.
    pub message: String,
    /// The event's other fields, as text.
    pub fields: BTreeMap<String, String>,
    /// The message followed by `key=value` pairs, as one line.
    pub line: String,
}

impl From<LogRecord> for LogEntry {
    fn from(r: LogRecord) -> Self {
        let line = r.to_string();
        Self {
            level: r.level.as_str().to_string(),
            target: r.target,
            message: r.message,
            fields: r.fields.into_iter().collect(),
            line,
        }
    }
}

/// Told, with no records, that records are waiting for `takeLogs`; weak, so
/// it never holds the event loop.
type LogBell = ThreadsafeFunction<u32, (), u32, Status, false, true>;

/// Records moved out of the bridge, waiting for JavaScript to take them.
///
/// The logger thread once handed each batch to JavaScript inside a call of
/// the weak thread-safe function. Calls still queued when the event loop
/// ended were dropped, and with them the runtime's last lines ("goodbye",
/// "worker connection closed"). Now records wait here, the call only rings,
/// and the JavaScript side takes what is left before the process exits
/// (`takeLogs(true)`), so nothing is only in a queued call.
#[derive(Default)]
struct Pending {
    records: VecDeque<LogRecord>,
    /// A ring is on its way and has not yet been answered by `takeLogs`.
    rung: bool,
    /// Records dropped past [`PENDING_BOUND`] since `takeLogs` last said so.
    dropped: u64,
}

struct LogForwarding {
    bridge: &'static LogBridge,
    bell: Arc<Mutex<Option<Arc<LogBell>>>>,
    pending: Arc<Mutex<Pending>>,
}

static LOGGING: OnceLock<LogForwarding> = OnceLock::new();

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queues the runtime's `tracing` events at `level` (`error`, `warn`,
/// `info`, `debug`, `trace`) and above for `takeLogs`, calling `bell` when
/// some are waiting, from now on; replaces any earlier bell. Returns false
/// when another `tracing` subscriber already owns this process (no events
/// will come).
#[napi]
pub fn forward_logs(
    level: String,
    bell: ThreadsafeFunction<u32, (), u32, Status, false, true>,
) -> Result<bool> {
    let level: LogLevel = level.parse().map_err(BindingError::from)?;
    let bridge = match log_bridge::install(level) {
        Ok(bridge) => bridge,
        Err(log_bridge::SubscriberAlreadySet) => return Ok(false),
    };
    let forwarding = LOGGING.get_or_init(|| {
        let forwarding = LogForwarding {
            bridge,
            bell: Arc::default(),
            pending: Arc::default(),
        };
        let (bell, pending) = (
            Arc::clone(&forwarding.bell),
            Arc::clone(&forwarding.pending),
        );
        // The thread lives as long as the process; it holds no JavaScript
        // handle that could keep the event loop alive.
        let spawned = std::thread::Builder::new()
            .name("tasker-node-log".into())
            .spawn(move || loop {
                if !bridge.wait_for_records(None) {
                    continue;
                }
                let ring = {
                    // Taken under the pending lock, so `takeLogs(true)`
                    // finds every record either here or in the bridge.
                    let mut pending = lock(&pending);
                    let room = PENDING_BOUND.saturating_sub(pending.records.len());
                    let records = bridge.take_records(LOG_CHUNK);
                    let taken = records.len();
                    pending.records.extend(records.into_iter().take(room));
                    // Counted, not logged: a record about dropping would
                    // itself wake this thread, round and round.
                    pending.dropped += (taken - taken.min(room)) as u64;
                    !std::mem::replace(&mut pending.rung, true)
                };
                if ring {
                    if let Some(bell) = lock(&bell).clone() {
                        bell.call(0, ThreadsafeFunctionCallMode::NonBlocking);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log forwarding thread");
        }
        forwarding
    });
    forwarding.bridge.set_level(level);
    *lock(&forwarding.bell) = Some(Arc::new(bell));
    Ok(true)
}

/// Takes the records waiting for the JavaScript logger, oldest first; with
/// `all`, also those the logger thread has not moved yet (at exit, when no
/// ring will be answered again).
#[napi]
pub fn take_logs(all: bool) -> Vec<LogEntry> {
    let Some(forwarding) = LOGGING.get() else {
        return Vec::new();
    };
    let mut pending = lock(&forwarding.pending);
    pending.rung = false;
    let mut records = Vec::with_capacity(pending.records.len() + 1);
    let dropped = std::mem::take(&mut pending.dropped);
    if dropped > 0 {
        records.push(LogRecord {
            level: LogLevel::Warn,
            target: "tasker_core::node".into(),
            message: "log records dropped: the JavaScript logger did not keep up".into(),
            fields: vec![("dropped".into(), dropped.to_string())],
        });
    }
    records.extend(pending.records.drain(..));
    if all {
        records.extend(forwarding.bridge.take_records(usize::MAX));
    }
    records.into_iter().map(LogEntry::from).collect()
}

/// Changes the most verbose level forwarded (see `forwardLogs`).
#[napi]
pub fn set_log_level(level: String) -> Result<()> {
    let level: LogLevel = level.parse().map_err(BindingError::from)?;
    if let Some(forwarding) = LOGGING.get() {
        forwarding.bridge.set_level(level);
    }
    Ok(())
}
