//! The wire protocol of tasker-core.
//!
//! An orchestrator (a ZeroMQ `ROUTER` that binds) hands batches of workflow
//! steps to workers (ZeroMQ `DEALER`s that connect) and receives their results.
//! This crate is the single source of truth for every message on that wire:
//!
//! * [`messages`]: the message types, under the names of the original design
//!   note (`StepBatchRequest`, `StepExecutionResult`, ...) plus the control
//!   messages (hello, welcome, heartbeat, drain, goodbye, protocol error);
//! * [`codec`]: framing, encoding and validating decoding of those messages;
//! * [`raw`]: the worker's way to the same messages with steps and results
//!   kept as JSON text, so a step is not parsed and written out again on
//!   its way to a host that parses JSON itself;
//! * [`schema`]: JSON Schema (Draft 2020-12) generation, from the same types.
//!
//! `protocol/SPEC.md` in the repository describes the state machines that use
//! these messages.
//!
//! # Example
//!
//! ```
//! use tasker_protocol::{codec, messages::*};
//!
//! let hello = WorkerMessage::Hello(WorkerHello::new("w-1", vec!["echo".into()], 4));
//! let frames = codec::encode(&hello).unwrap();
//! let decoded: WorkerMessage = codec::decode(&frames, 1 << 20).unwrap();
//! assert_eq!(decoded, hello);
//! ```

pub mod api;
pub mod codec;
pub mod messages;
pub mod raw;
mod read;
pub mod schema;
mod timestamp;
mod write;

pub use codec::DecodeError;
pub use messages::*;

/// Version of the protocol this crate speaks, `MAJOR.MINOR`.
///
/// Peers must agree on the major version; a higher minor version only adds
/// optional fields, which older peers ignore.
pub const PROTOCOL_VERSION: &str = "1.0";

/// Major part of [`PROTOCOL_VERSION`].
pub const PROTOCOL_MAJOR: u32 = 1;

/// The first frame of every message: `tasker/` followed by [`PROTOCOL_VERSION`].
pub const PROTOCOL_HEADER: &str = "tasker/1.0";

/// Deepest nesting of arrays and objects a worker may send in a result's
/// `output` (`7` is 0 deep, `[7]` 1, `{"a":[7]}` 2). The orchestrator states
/// it in `welcome` (`max_json_depth`); a worker checks its output against it
/// and reports `SerializationError` instead of sending a deeper one.
pub const MAX_JSON_DEPTH: u32 = 100;

/// Most handler names a `hello` may announce. The orchestrator keeps every
/// name of every registered worker and scans a worker's names each time it
/// plans a delivery to it: without a bound, one 16 MiB hello of short names
/// cost it 120 MB and made each plan walk two million of them.
pub const MAX_HANDLERS: usize = 1024;

/// Longest `worker_id`, handler name or `language` in a `hello`, in
/// characters (as JSON Schema's `maxLength` counts them).
pub const MAX_NAME_CHARS: usize = 255;

/// Longest step `timeout_ms` an orchestrator accepts, and longest retry wait
/// a workflow may set: 30 days. Past it a deadline is no longer a timeout
/// anyone waits for, and far past it the time it names cannot be written.
pub const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;

/// Longest `incarnation` in a `hello`, in characters.
pub const MAX_INCARNATION_CHARS: usize = 64;

/// Why a hello's names break [`MAX_HANDLERS`] or [`MAX_NAME_CHARS`], if
/// they do: the orchestrator refuses such a hello, and a worker refuses to
/// start with them rather than be refused on every connection.
///
/// ```
/// use tasker_protocol::check_hello_names;
/// assert!(check_hello_names("w-1", &["echo".to_string()], Some("rust")).is_ok());
/// let long = "h".repeat(256);
/// assert!(check_hello_names("w-1", &[long], None).unwrap_err().contains("longer than 255"));
/// ```
pub fn check_hello_names(
    worker_id: &str,
    handlers: &[String],
    language: Option<&str>,
) -> Result<(), String> {
    if handlers.len() > MAX_HANDLERS {
        return Err(format!(
            "{} handlers registered; a worker serves at most {MAX_HANDLERS}",
            handlers.len()
        ));
    }
    let too_long = |name: &str| name.chars().count() > MAX_NAME_CHARS;
    if too_long(worker_id) {
        return Err(format!(
            "worker_id {:?} is longer than {MAX_NAME_CHARS} characters",
            codec::truncate(worker_id, 32)
        ));
    }
    if let Some(name) = handlers.iter().find(|h| too_long(h)) {
        return Err(format!(
            "handler name {:?} is longer than {MAX_NAME_CHARS} characters",
            codec::truncate(name, 32)
        ));
    }
    if language.is_some_and(too_long) {
        return Err(format!(
            "language is longer than {MAX_NAME_CHARS} characters"
        ));
    }
    Ok(())
}

/// Prefix of [`PROTOCOL_HEADER`], used to tell a foreign peer from an
/// incompatible version of our own.
pub const PROTOCOL_HEADER_PREFIX: &str = "tasker/";
