//! `tasker_core._native`: the thin native layer of the Python worker SDK.
//!
//! The ZeroMQ loop, heartbeats, credit, reconnects and JSON all stay in
//! [`tasker_worker::WorkerRuntime`]; the rules every host follows (bounded
//! waits, handler threads, error kinds) in [`tasker_worker::policy`]; the
//! configuration's resolution in [`tasker_config::TaskerConfig::resolve`].
//! This crate only exposes them to Python. The idiomatic API (`Worker`,
//! decorators, thread pool, asyncio, signals) is Python code in
//! `python/tasker_core/`, typed by `python/tasker_core/_native.pyi`.
//!
//! | module | what it exposes |
//! |---|---|
//! | [`config`] | `load_config` (file, `TASKER_*`, options, through `TaskerConfig::resolve`), `CONFIG_KEYS`; `api_base_url`, `parse_api_url` (the client's API address) |
//! | [`runtime`] | `WorkerRuntime`: pull steps (GIL released), hand results back from any thread, stop, join |
//! | [`step`] | `Step`: a request's fields as attributes, JSON built on first read |
//! | [`policy`] | `handler_threads`, `chunk_size`, `DEFAULT_MAX_THREADS`, `MAX_JSON_DEPTH` |
//! | [`errors`] | `TaskerError`, `ConfigError`, `WorkerError`; the `error_type` constants (`UNKNOWN_HANDLER`, ..., `ERROR_TYPES`) |
//! | [`logging`] | the log bridge: `tracing` events queued in Rust, drained into `logging` |
//! | [`convert`] | JSON values to and from plain Python objects |
//!
//! Every blocking call releases the GIL and returns early when its `wake`
//! companion (or `stop`) is called.

mod config;
mod convert;
mod errors;
mod logging;
mod policy;
mod runtime;
mod step;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    config::register(m)?;
    policy::register(m)?;
    runtime::register(m)?;
    logging::register(m)?;
    Ok(())
}
