//! The native part of the `tasker_core` gem: a thin magnus layer over
//! `tasker_worker::WorkerRuntime`. The Ruby API (`TaskerCore::Worker`,
//! handler pool, signal handling, logger) lives in `lib/tasker_core`; this
//! crate only moves steps and results across, and never runs Ruby code off a
//! Ruby thread nor blocks while holding the GVL. Every rule that is not
//! Ruby idiom comes from the Rust crates: configuration from
//! `tasker_config::TaskerConfig::resolve`, threads, chunks, waits and error
//! kinds from `tasker_worker::policy`.
//!
//! | module | Ruby side |
//! |--------|-----------|
//! | [`config`] | `Native.resolve_config`, `api_base_url`, `parse_api_url`, `Native::CONFIG_KEYS` |
//! | [`policy`] | `Native.handler_threads`, `chunk_size`, `wait_seconds`, `Native::DEFAULT_MAX_THREADS`, `TaskerCore::ErrorTypes` |
//! | [`runtime`] | `TaskerCore::Native::Runtime` (the worker runtime) |
//! | [`step`] | `TaskerCore::Step` (one pulled step and its result) |
//! | [`logging`] | `Native.log_install`, `next_log_records`, `log_emit` |
//! | [`errors`] | `TaskerCore::Error` and its subclasses |
//! | [`convert`] | Ruby values to JSON and back |
//! | [`nogvl`] | blocking calls without the GVL |

mod config;
mod convert;
mod errors;
mod logging;
mod nogvl;
mod policy;
mod runtime;
mod step;

use magnus::{Error, Module, Ruby};

#[magnus::init(name = "tasker_core")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let core = ruby.define_module("TaskerCore")?;
    errors::define(ruby, core)?;
    let native = core.define_module("Native")?;
    config::define(ruby, native)?;
    policy::define(ruby, core, native)?;
    logging::define(native)?;
    runtime::define(ruby, native)?;
    step::define(ruby, core)?;
    Ok(())
}
