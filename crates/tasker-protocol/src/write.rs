//! Steps and results written as JSON by hand, byte for byte what serde
//! writes for them (the tests `encoded_steps_are_the_typed_encoding` and
//! `encoded_results_are_the_typed_encoding` hold the two together).
//!
//! serde_json checks every key for characters to escape and grows its
//! buffer from 128 bytes; the keys here are constants without any, and
//! one step or result is encoded for every step that runs, on the thread
//! that submits it and on the worker's I/O thread. Strings and JSON values
//! that come from users still go through serde_json's escaping.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::messages::{
    StepExecutionError, StepExecutionRequest, StepExecutionResult, StepRequestMetadata,
    StepResultMetadata, StepStatus,
};

/// Appends `request` as its JSON object.
pub(crate) fn request(out: &mut Vec<u8>, request: &StepExecutionRequest) {
    // Named in full, so a field added to the type stops the build here
    // rather than going missing from the wire.
    let StepExecutionRequest {
        step_id,
        task_id,
        step_name,
        handler_class,
        handler_config,
        task_context,
        previous_results,
        metadata,
    } = request;
    let StepRequestMetadata {
        attempt,
        retry_limit,
        timeout_ms,
        created_at,
    } = metadata;
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(br#"{"step_id":"#);
    out.extend_from_slice(numbers.format(*step_id).as_bytes());
    out.extend_from_slice(br#","task_id":"#);
    out.extend_from_slice(numbers.format(*task_id).as_bytes());
    out.extend_from_slice(br#","step_name":"#);
    json(out, step_name);
    out.extend_from_slice(br#","handler_class":"#);
    json(out, handler_class);
    out.extend_from_slice(br#","handler_config":"#);
    json(out, handler_config);
    out.extend_from_slice(br#","task_context":"#);
    json(out, task_context);
    out.extend_from_slice(br#","previous_results":{"#);
    for (i, (name, output)) in previous_results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json(out, name);
        out.push(b':');
        json(out, output);
    }
    out.extend_from_slice(br#"},"metadata":{"attempt":"#);
    out.extend_from_slice(numbers.format(*attempt).as_bytes());
    out.extend_from_slice(br#","retry_limit":"#);
    out.extend_from_slice(numbers.format(*retry_limit).as_bytes());
    out.extend_from_slice(br#","timeout_ms":"#);
    out.extend_from_slice(numbers.format(*timeout_ms).as_bytes());
    out.extend_from_slice(br#","created_at":"#);
    timestamp(out, created_at);
    out.extend_from_slice(b"}}");
}

/// Appends `result` as its JSON object.
pub(crate) fn result(out: &mut Vec<u8>, result: &StepExecutionResult) {
    let StepExecutionResult {
        step_id,
        status,
        output,
        error,
        metadata,
    } = result;
    let StepResultMetadata {
        attempt,
        execution_time_ms,
        worker_id,
        retryable,
        completed_at,
    } = metadata;
    let mut numbers = itoa::Buffer::new();
    out.extend_from_slice(br#"{"step_id":"#);
    out.extend_from_slice(numbers.format(*step_id).as_bytes());
    out.extend_from_slice(match status {
        StepStatus::Completed => br#","status":"completed""#.as_slice(),
        StepStatus::Failed => br#","status":"failed""#,
        StepStatus::TimedOut => br#","status":"timed_out""#,
        StepStatus::Cancelled => br#","status":"cancelled""#,
    });
    if let Some(output) = output {
        out.extend_from_slice(br#","output":"#);
        json(out, output);
    }
    if let Some(e) = error {
        out.extend_from_slice(br#","error":"#);
        write_error(out, e);
    }
    out.extend_from_slice(br#","metadata":{"attempt":"#);
    out.extend_from_slice(numbers.format(*attempt).as_bytes());
    out.extend_from_slice(br#","execution_time_ms":"#);
    out.extend_from_slice(numbers.format(*execution_time_ms).as_bytes());
    result_tail(out, worker_id, *retryable, completed_at);
}

/// The end of a result, from `metadata.worker_id` to its closing braces:
/// also what [`CompletedEncoder`](crate::raw::CompletedEncoder) writes once
/// for all of a worker's results of one moment.
pub(crate) fn result_tail(
    out: &mut Vec<u8>,
    worker_id: &str,
    retryable: bool,
    completed_at: &DateTime<Utc>,
) {
    out.extend_from_slice(br#","worker_id":"#);
    json(out, worker_id);
    out.extend_from_slice(if retryable {
        br#","retryable":true,"completed_at":"#.as_slice()
    } else {
        br#","retryable":false,"completed_at":"#
    });
    timestamp(out, completed_at);
    out.extend_from_slice(b"}}");
}

fn write_error(out: &mut Vec<u8>, error: &StepExecutionError) {
    let StepExecutionError {
        message,
        error_type,
        retryable,
        backtrace,
    } = error;
    out.extend_from_slice(br#"{"message":"#);
    json(out, message);
    out.extend_from_slice(br#","error_type":"#);
    json(out, error_type);
    out.extend_from_slice(if *retryable {
        br#","retryable":true"#.as_slice()
    } else {
        br#","retryable":false"#
    });
    if !backtrace.is_empty() {
        out.extend_from_slice(br#","backtrace":["#);
        for (i, line) in backtrace.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json(out, line);
        }
        out.push(b']');
    }
    out.push(b'}');
}

fn timestamp(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    match crate::timestamp::format(at) {
        Some(text) => {
            out.push(b'"');
            out.extend_from_slice(&text);
            out.push(b'"');
        }
        None => {
            // Years past 9999 and leap seconds: as serde writes them.
            #[derive(Serialize)]
            struct Timestamp(#[serde(with = "crate::timestamp")] DateTime<Utc>);
            json(out, &Timestamp(*at));
        }
    }
}

/// A string, a JSON value or a timestamp: serde_json's own encoding, with
/// its escaping.
fn json(out: &mut Vec<u8>, value: &(impl Serialize + ?Sized)) {
    // Strings, JSON values and timestamps always encode.
    serde_json::to_writer(out, value).expect("writing to a Vec cannot fail");
}
