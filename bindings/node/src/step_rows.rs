//! Steps and results as they cross to and from JavaScript: positional
//! arrays in JSON text, which V8's `JSON.parse` and `JSON.stringify` build
//! and read faster than keyed objects or one Node-API call per property.
//!
//! The order of a row is written once, here: `STEP_ROW` for a step (the
//! encoder follows it, and [`step_fields`] hands its names to the
//! JavaScript layer, which takes each field from its position at load),
//! `StepOutcome`'s declaration for a result ([`outcome_fields`], which the
//! JavaScript layer checks against the rows it writes, at load).
//!
//! No step is parsed on the way: the runtime keeps each step as the JSON
//! text the orchestrator sent, with its fields located
//! ([`RawStep::fields`]), and a row is those texts copied into an array. On
//! the way back an outcome's output text is spliced into the result
//! unparsed ([`CompletedEncoder`]).

use std::collections::BTreeMap;

use napi_derive::napi;
use serde_json::value::RawValue;
use serde_json::Value;
use tasker_protocol::raw::{CompletedEncoder, EncodedResult, RawStep, RawStepFields};
use tasker_protocol::{StepExecutionError, StepExecutionResult, StepRef, StepStatus};

/// One step to run, as a handler sees it. On the way to JavaScript it is a
/// JSON array of these fields, in the order of `stepFields()`.
///
/// Step and task ids are JavaScript numbers: exact up to
/// `Number.MAX_SAFE_INTEGER` (2^53 - 1). A step whose id is beyond that is
/// never handed to a handler; the worker fails it with `UnsupportedStepId`.
#[napi(object)]
pub struct Step {
    /// The step's id (exact up to 2^53 - 1).
    pub step_id: i64,
    /// The task (workflow instance) the step belongs to.
    pub task_id: i64,
    /// Name of the step within its workflow.
    pub step_name: String,
    /// Name of the handler that runs it.
    pub handler_class: String,
    /// Handler-specific configuration from the workflow definition.
    pub handler_config: Value,
    /// The task's input.
    pub task_context: Value,
    /// Outputs of the steps this one depends on, by step name.
    pub previous_results: BTreeMap<String, Value>,
    /// 1 for the first attempt, incremented by each retry.
    pub attempt: u32,
    /// How many retries the workflow allows after the first attempt.
    pub retry_limit: u32,
    /// Time the worker has, from delivery, before the orchestrator ends the
    /// step as timed out.
    pub timeout_ms: i64,
    /// When the step attempt was created (RFC 3339).
    pub created_at: String,
}

/// A field of a step row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepField {
    StepId,
    TaskId,
    StepName,
    HandlerClass,
    HandlerConfig,
    TaskContext,
    PreviousResults,
    Attempt,
    RetryLimit,
    TimeoutMs,
    CreatedAt,
}

/// The fields of a step row, in order: the one place the order is written.
const STEP_ROW: [StepField; 11] = [
    StepField::StepId,
    StepField::TaskId,
    StepField::StepName,
    StepField::HandlerClass,
    StepField::HandlerConfig,
    StepField::TaskContext,
    StepField::PreviousResults,
    StepField::Attempt,
    StepField::RetryLimit,
    StepField::TimeoutMs,
    StepField::CreatedAt,
];

impl StepField {
    /// Its name in JavaScript: the property of [`Step`].
    fn name(self) -> &'static str {
        match self {
            Self::StepId => "stepId",
            Self::TaskId => "taskId",
            Self::StepName => "stepName",
            Self::HandlerClass => "handlerClass",
            Self::HandlerConfig => "handlerConfig",
            Self::TaskContext => "taskContext",
            Self::PreviousResults => "previousResults",
            Self::Attempt => "attempt",
            Self::RetryLimit => "retryLimit",
            Self::TimeoutMs => "timeoutMs",
            Self::CreatedAt => "createdAt",
        }
    }

    /// Appends its value, copied from the step's text, to `text`.
    fn write(self, f: &RawStepFields, numbers: &mut itoa::Buffer, text: &mut String) {
        match self {
            Self::StepId => text.push_str(numbers.format(f.step_id)),
            Self::TaskId => text.push_str(numbers.format(f.task_id)),
            Self::StepName => text.push_str(f.step_name),
            Self::HandlerClass => text.push_str(f.handler_class),
            Self::HandlerConfig => text.push_str(f.handler_config),
            Self::TaskContext => text.push_str(f.task_context),
            Self::PreviousResults => text.push_str(f.previous_results),
            Self::Attempt => text.push_str(numbers.format(f.attempt)),
            Self::RetryLimit => text.push_str(numbers.format(f.retry_limit)),
            Self::TimeoutMs => text.push_str(numbers.format(f.timeout_ms)),
            Self::CreatedAt => text.push_str(f.created_at),
        }
    }
}

/// The properties of [`Step`] in the order of a step row.
#[napi]
pub fn step_fields() -> Vec<&'static str> {
    STEP_ROW.iter().map(|f| f.name()).collect()
}

/// A chunk of steps as JSON: an array of rows, each the fields of [`Step`]
/// in the order of [`STEP_ROW`]. Every field is copied from the text the
/// orchestrator sent; nothing is parsed or escaped again.
pub(crate) fn encode_chunk(steps: &[RawStep]) -> String {
    let mut numbers = itoa::Buffer::new();
    let mut text = String::with_capacity(steps.len() * 128);
    text.push('[');
    for (i, step) in steps.iter().enumerate() {
        let fields = step.fields();
        text.push_str(if i == 0 { "[" } else { ",[" });
        for (j, field) in STEP_ROW.iter().enumerate() {
            if j > 0 {
                text.push(',');
            }
            field.write(&fields, &mut numbers, &mut text);
        }
        text.push(']');
    }
    text.push(']');
    text
}

/// The outcome of one step, as `NativeWorker.complete` reads it: an array
/// of these fields in this order (trailing absent ones may be left out) or
/// an object with these (camelCase) keys. `output` when it completed (its
/// JSON text is kept as it is), `error` when it failed. The declaration
/// order is the row's order ([`OUTCOME_ROW`] names it).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepOutcome<'a> {
    /// Copied from the step.
    step_id: i64,
    /// Copied from the step.
    attempt: u32,
    /// Wall time of the handler, in whole ms.
    #[serde(default)]
    elapsed_ms: f64,
    /// The handler's output (absent or `null` when it failed).
    #[serde(default, borrow)]
    output: Option<&'a RawValue>,
    /// Why it failed; absent when it completed.
    #[serde(default)]
    error: Option<StepFailure>,
}

/// The names of [`StepOutcome`]'s fields in declaration order (a test
/// checks that serde reads a row in this order).
const OUTCOME_ROW: [&str; 5] = ["stepId", "attempt", "elapsedMs", "output", "error"];

/// The fields of an outcome row, in order.
#[napi]
pub fn outcome_fields() -> Vec<&'static str> {
    OUTCOME_ROW.to_vec()
}

/// Why a step failed, as reported by the JavaScript layer.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StepFailure {
    /// Human-readable description.
    message: String,
    /// The error's kind (the thrown error's name, or a system type).
    error_type: String,
    /// Whether trying again may succeed.
    retryable: bool,
    /// Stack lines, innermost first.
    #[serde(default)]
    backtrace: Option<Vec<String>>,
}

/// Reads a JSON array of outcomes.
pub(crate) fn decode_outcomes(json: &str) -> serde_json::Result<Vec<StepOutcome<'_>>> {
    serde_json::from_str(json)
}

/// The result of an outcome, encoded for the wire; `completed` holds what
/// every result of one call shares (worker id, time).
pub(crate) fn to_result(
    o: StepOutcome,
    completed: &CompletedEncoder,
    worker_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> EncodedResult {
    let step = StepRef {
        step_id: o.step_id,
        attempt: o.attempt,
    };
    let elapsed = if o.elapsed_ms.is_finite() && o.elapsed_ms > 0.0 {
        o.elapsed_ms as u64
    } else {
        0
    };
    if let Some(e) = o.error {
        let mut result = StepExecutionResult::failed(
            step,
            StepStatus::Failed,
            StepExecutionError {
                message: e.message,
                error_type: e.error_type,
                retryable: e.retryable,
                backtrace: e.backtrace.unwrap_or_default(),
            },
            worker_id,
            elapsed,
        );
        result.metadata.completed_at = now;
        tasker_worker::log_failure(&result);
        return EncodedResult::new(&result);
    }
    completed.encode(step, o.output.unwrap_or(RawValue::NULL), elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tasker_protocol::{StepExecutionRequest, StepRequestMetadata};

    #[test]
    fn a_step_row_holds_each_field_at_the_position_step_fields_names() {
        let created_at = chrono::Utc::now();
        let request = StepExecutionRequest {
            step_id: 101,
            task_id: 77,
            step_name: "validate".into(),
            handler_class: "echo".into(),
            handler_config: json!({"strict": true}),
            task_context: json!({"amount": 42.5}),
            previous_results: [("fetch".to_string(), json!({"rows": 3}))].into(),
            metadata: StepRequestMetadata {
                attempt: 2,
                retry_limit: 5,
                timeout_ms: 7000,
                created_at,
            },
        };
        let chunk = encode_chunk(&[RawStep::from_request(&request)]);
        let rows: Vec<Vec<Value>> = serde_json::from_str(&chunk).unwrap();
        let row: BTreeMap<&str, &Value> = step_fields().into_iter().zip(&rows[0]).collect();
        let expected = json!({
            "stepId": 101, "taskId": 77, "stepName": "validate", "handlerClass": "echo",
            "handlerConfig": {"strict": true}, "taskContext": {"amount": 42.5},
            "previousResults": {"fetch": {"rows": 3}}, "attempt": 2, "retryLimit": 5,
            "timeoutMs": 7000, "createdAt": serde_json::to_value(created_at).unwrap(),
        });
        assert_eq!(rows[0].len(), STEP_ROW.len());
        assert_eq!(serde_json::to_value(row).unwrap(), expected);
    }

    #[test]
    fn serde_reads_an_outcome_row_in_the_order_outcome_fields_names() {
        // The same outcome as a keyed object and as a row in OUTCOME_ROW's
        // order must read the same.
        let values = [
            json!(12),
            json!(3),
            json!(40),
            json!("out"),
            json!({"message": "m", "errorType": "E", "retryable": true}),
        ];
        let keyed: serde_json::Map<String, Value> = OUTCOME_ROW
            .iter()
            .map(|k| k.to_string())
            .zip(values.iter().cloned())
            .collect();
        let by_key = serde_json::to_string(&[Value::Object(keyed)]).unwrap();
        let by_row = serde_json::to_string(&[values.to_vec()]).unwrap();
        let summary = |json: &str| {
            let o = decode_outcomes(json).unwrap().remove(0);
            let e = o.error.unwrap();
            (
                o.step_id,
                o.attempt,
                o.elapsed_ms,
                o.output.map(|r| r.get().to_string()),
                e.error_type,
                e.retryable,
            )
        };
        assert_eq!(
            summary(&by_key),
            (
                12,
                3,
                40.0,
                Some("\"out\"".to_string()),
                "E".to_string(),
                true
            )
        );
        assert_eq!(summary(&by_row), summary(&by_key));
    }
}
