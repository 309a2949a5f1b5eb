//! Runtime `tracing` events for a JavaScript logger: they go through
//! [`tasker_worker::log_bridge`] to a logger thread that calls a weak
//! (unreferenced) thread-safe function, so logging never keeps the process
//! alive.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use napi::bindgen_prelude::Status;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tasker_worker::log_bridge::{self, LogBridge, LogLevel, LogRecord};

use crate::errors::{BindingError, Result};

/// Most records handed to the JavaScript logger per call.
const LOG_CHUNK: usize = 256;

/// A Rust `tracing` event of the runtime, for a JavaScript logger.
#[napi(object)]
pub struct LogEntry {
    /// `error`, `warn`, `info`, `debug` or `trace`.
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

/// Receives batches of log entries; weak, so it never holds the event loop.
type LogCallback = ThreadsafeFunction<Vec<LogEntry>, (), Vec<LogEntry>, Status, false, true>;

struct LogForwarding {
    bridge: &'static LogBridge,
    callback: Arc<Mutex<Option<Arc<LogCallback>>>>,
}

static LOGGING: OnceLock<LogForwarding> = OnceLock::new();

/// Sends the runtime's `tracing` events at `level` (`error`, `warn`, `info`,
/// `debug`, `trace`) and above to `callback`, in batches, from now on;
/// replaces any earlier callback. Returns false when another `tracing`
/// subscriber already owns this process (no events will come).
#[napi]
pub fn forward_logs(
    level: String,
    callback: ThreadsafeFunction<Vec<LogEntry>, (), Vec<LogEntry>, Status, false, true>,
) -> Result<bool> {
    let level: LogLevel = level.parse().map_err(BindingError::from)?;
    let bridge = match log_bridge::install(level) {
        Ok(bridge) => bridge,
        Err(log_bridge::SubscriberAlreadySet) => return Ok(false),
    };
    let forwarding = LOGGING.get_or_init(|| {
        let callback: Arc<Mutex<Option<Arc<LogCallback>>>> = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&callback);
        // The thread lives as long as the process; it holds no JavaScript
        // handle that could keep the event loop alive.
        let spawned = std::thread::Builder::new()
            .name("tasker-node-log".into())
            .spawn(move || loop {
                let records = bridge.next_records(LOG_CHUNK, None);
                if records.is_empty() {
                    continue;
                }
                let target = shared.lock().ok().and_then(|c| c.clone());
                if let Some(cb) = target {
                    let entries = records.into_iter().map(LogEntry::from).collect();
                    cb.call(entries, ThreadsafeFunctionCallMode::NonBlocking);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the log forwarding thread");
        }
        LogForwarding { bridge, callback }
    });
    forwarding.bridge.set_level(level);
    if let Ok(mut slot) = forwarding.callback.lock() {
        *slot = Some(Arc::new(callback));
    }
    Ok(true)
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
