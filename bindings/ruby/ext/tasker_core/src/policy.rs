//! The rules of `tasker_worker::policy` as the gem sees them: how many
//! handler threads a worker runs and how many steps each pulls, how a Ruby
//! timeout becomes a bounded wait, and the error kinds, exported as
//! `TaskerCore::ErrorTypes` constants so that the gem's Ruby code names
//! them instead of spelling strings.

use std::time::Duration;

use magnus::{function, Error, Module, Object, RModule, Ruby};
use tasker_worker::policy::{self, error_types};

use crate::convert;
use crate::errors;

/// The error kind of the steps of a chunk a handler thread was interrupted
/// before running (`Thread#kill`, `exit` or another non-`StandardError`
/// exception in a handler); retryable. Ruby's own: no other SDK's handler
/// threads die under it.
pub const WORKER_INTERRUPTED: &str = "WorkerInterrupted";

/// A Ruby timeout in seconds (`nil`: no limit) as a bounded wait
/// (`policy::wait_timeout`: anything longer, infinity included, is
/// `policy::FOREVER`); `ArgumentError` for a negative or NaN one.
pub fn wait_timeout(seconds: Option<f64>) -> Result<Option<Duration>, Error> {
    policy::wait_timeout(seconds).map_err(|e| errors::argument(e.0))
}

/// `Native.wait_seconds(timeout)`: [`wait_timeout`] for a wait done in Ruby
/// (`Worker#wait`): the bounded number of seconds, or nil.
fn wait_seconds(seconds: Option<f64>) -> Result<Option<f64>, Error> {
    Ok(wait_timeout(seconds)?.map(|d| d.as_secs_f64()))
}

/// A worker's declared capacity: at least 1 (the runtime refuses 0).
fn capacity(capacity: i64) -> Result<u32, Error> {
    if capacity < 1 {
        return Err(errors::invalid(format!(
            "capacity must be at least 1, got {capacity}"
        )));
    }
    u32::try_from(capacity)
        .map_err(|_| errors::invalid(format!("capacity must be at most {}", u32::MAX)))
}

/// `Native.handler_threads(capacity, threads)`: the size of a worker's
/// handler pool (`policy::handler_threads`: `threads`, or one per slot up to
/// `DEFAULT_MAX_THREADS`; never more than `capacity`). `ConfigError` for a
/// capacity or thread count below 1.
fn handler_threads(capacity_: i64, requested: Option<i64>) -> Result<usize, Error> {
    let capacity = capacity(capacity_)?;
    let requested = match requested {
        // `policy` takes a count; a negative one is refused as 0 is.
        Some(n) if n < 0 => {
            return Err(errors::invalid(format!(
                "threads must be at least 1, got {n}"
            )))
        }
        other => other.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    };
    policy::handler_threads(capacity, requested).map_err(|e| errors::invalid(e.0))
}

/// `Native.chunk_size(capacity, threads)`: most steps one handler thread
/// pulls at a time (`policy::chunk_size`: ⌈capacity / threads⌉).
fn chunk_size(capacity_: i64, threads: usize) -> Result<usize, Error> {
    Ok(policy::chunk_size(capacity(capacity_)?, threads))
}

/// Defines the policy functions and constants on `TaskerCore::Native`, and
/// `TaskerCore::ErrorTypes`.
pub fn define(ruby: &Ruby, core: RModule, native: RModule) -> Result<(), Error> {
    native.const_set("DEFAULT_MAX_THREADS", policy::DEFAULT_MAX_THREADS)?;
    native.const_set("MAX_JSON_DEPTH", policy::MAX_JSON_DEPTH)?;
    native.define_singleton_method("handler_threads", function!(handler_threads, 2))?;
    native.define_singleton_method("chunk_size", function!(chunk_size, 2))?;
    native.define_singleton_method("wait_seconds", function!(wait_seconds, 1))?;
    let kinds = core.define_module("ErrorTypes")?;
    // `TaskerCore::ErrorTypes`: the protocol's error kinds and the gem's own.
    let own = [("WORKER_INTERRUPTED", WORKER_INTERRUPTED)];
    for (name, value) in error_types::ALL.iter().chain(&own) {
        kinds.const_set(*name, convert::frozen_str(ruby, value))?;
    }
    Ok(())
}
