//! `TaskerCore::Native` log functions: the runtime's `tracing` events are
//! queued by `tasker_worker::log_bridge`, and a Ruby thread drains them into
//! a `Logger` with [`wait_for_log_records`] and [`take_log_records`].

use magnus::{function, Error, Object, RArray, RModule, Ruby};
use tasker_worker::log_bridge::{self, Interrupt, LogLevel, LogRecord};

use crate::errors;
use crate::nogvl::without_gvl;
use crate::policy::wait_timeout;

/// Installs the bridge (first call) and sets its level: `error`, `warn`,
/// `info`, `debug` or `trace`. Raises `TaskerCore::Error` for an unknown
/// level or when another `tracing` subscriber owns the process.
fn install(name: String) -> Result<(), Error> {
    let level = name
        .parse::<LogLevel>()
        .map_err(|e| errors::error(e.to_string()))?;
    log_bridge::install(level).map_err(|e| errors::error(e.to_string()))?;
    Ok(())
}

/// Waits up to `timeout` seconds (nil: no limit) for records; returns an
/// Array of `[level, target, line]`, empty on timeout (and at once when the
/// bridge is not installed). Ruby interrupts end the wait and run.
fn next_log_records(ruby: &Ruby, max: usize, timeout: Option<f64>) -> Result<RArray, Error> {
    let timeout = wait_timeout(timeout)?;
    let Some(bridge) = log_bridge::installed() else {
        return Ok(ruby.ary_new());
    };
    // This call's own interrupt: the tasker-log thread may be waiting too,
    // and must neither take this wake-up nor be ended by it.
    let interrupt = Interrupt::default();
    let records = without_gvl(
        || bridge.next_records_or(max, timeout, &interrupt),
        || bridge.interrupt(&interrupt),
    )
    .unwrap_or_default();
    if records.is_empty() {
        // The wait ends early only for an interrupt: run it.
        ruby.thread_check_ints()?;
    }
    to_array(ruby, records)
}

/// Waits up to `timeout` seconds (nil: no limit) until records are queued,
/// taking none: true when some are, false on timeout (and at once when the
/// bridge is not installed). Ruby interrupts end the wait and run. The
/// records are then taken with [`take_log_records`] under the Ruby side's
/// lock, so a flush never passes records another thread holds unlogged.
fn wait_for_log_records(ruby: &Ruby, timeout: Option<f64>) -> Result<bool, Error> {
    let timeout = wait_timeout(timeout)?;
    let Some(bridge) = log_bridge::installed() else {
        return Ok(false);
    };
    let interrupt = Interrupt::default();
    let queued = without_gvl(
        || bridge.wait_for_records_or(timeout, &interrupt),
        || bridge.interrupt(&interrupt),
    )
    .unwrap_or(false);
    if !queued {
        ruby.thread_check_ints()?;
    }
    Ok(queued)
}

/// Takes up to `max` queued records without waiting, as
/// [`next_log_records`] returns them; empty when none are queued.
fn take_log_records(ruby: &Ruby, max: usize) -> Result<RArray, Error> {
    let records = log_bridge::installed()
        .map(|bridge| bridge.take_records(max))
        .unwrap_or_default();
    to_array(ruby, records)
}

fn to_array(ruby: &Ruby, records: Vec<LogRecord>) -> Result<RArray, Error> {
    let out = ruby.ary_new_capa(records.len());
    for record in records {
        let line = record.to_string();
        out.push((record.level.as_str(), record.target, line))?;
    }
    Ok(out)
}

/// Emits a `tracing` event at `level` with target `tasker_core_ruby`, so a
/// host can check its logger set-up end to end.
fn emit(level: String, message: String) -> Result<(), Error> {
    match level
        .parse::<LogLevel>()
        .map_err(|e| errors::error(e.to_string()))?
    {
        LogLevel::Error => tracing::error!(target: "tasker_core_ruby", "{message}"),
        LogLevel::Warn => tracing::warn!(target: "tasker_core_ruby", "{message}"),
        LogLevel::Info => tracing::info!(target: "tasker_core_ruby", "{message}"),
        LogLevel::Debug => tracing::debug!(target: "tasker_core_ruby", "{message}"),
        LogLevel::Trace => tracing::trace!(target: "tasker_core_ruby", "{message}"),
    }
    Ok(())
}

/// Defines the log functions on `TaskerCore::Native`.
pub fn define(native: RModule) -> Result<(), Error> {
    native.define_singleton_method("log_install", function!(install, 1))?;
    native.define_singleton_method("next_log_records", function!(next_log_records, 2))?;
    native.define_singleton_method("wait_for_log_records", function!(wait_for_log_records, 1))?;
    native.define_singleton_method("take_log_records", function!(take_log_records, 1))?;
    native.define_singleton_method("log_emit", function!(emit, 2))?;
    Ok(())
}
