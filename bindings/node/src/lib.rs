//! Node binding of tasker-core: the Rust worker runtime driven from
//! JavaScript, on Node's own event loop. The package's JavaScript layer
//! (`lib/`) builds the public API on top of this module; `napi build`
//! generates the module's `.d.ts` (`native.d.ts`) from these types.
//!
//! | module | what it holds | exports |
//! |--------|---------------|---------|
//! | [`config`] | configuration, resolved by `TaskerConfig::resolve` only; camelCase keys | `NativeConfig`, `configKeys()` |
//! | [`worker`] | the runtime on Node's event loop, chunked hand-over of steps, results back | `NativeWorker` |
//! | [`step_rows`] | the positional rows steps and outcomes cross as, their order written once | `Step`, `stepFields()`, `outcomeFields()` |
//! | [`logging`] | runtime `tracing` events to a JavaScript logger | `forwardLogs()`, `takeLogs()`, `setLogLevel()`, `LogEntry` |
//! | [`errors`] | what the module throws (`code` picks the JavaScript class); the `error_type` values | `CONFIG_ERROR_CODE`, `errorTypes` |
//! | `uv` | libuv watchers of the worker socket and its deadlines | — |
//!
//! Steps reach JavaScript as JSON text, in chunks, one call per chunk;
//! results come back in batches as JSON text, with each output spliced in
//! unparsed. See [`worker`] for the hand-over and [`step_rows`] for the
//! formats.

#![deny(clippy::all)]

pub mod config;
pub mod errors;
pub mod logging;
pub mod step_rows;
mod uv;
pub mod worker;
