//! The JSON Schema carries the rules the decoder enforces: for each rule, a
//! body that keeps every other rule is taken by the decoder, the same body
//! breaking that one rule is refused (`invalid_message`), and the schema
//! states the rule at the place that governs the field.
//!
//! With `TASKER_SCHEMA_CASES=path` the cases are also written out as
//! `[schema file, body, valid]` triples, to run through outside
//! validators (ajv, Python `jsonschema`).

use serde_json::{json, Value};
use tasker_protocol::codec::{self, FromWorker};
use tasker_protocol::*;

const MAX: usize = 1 << 20;

fn schema(file: &str) -> Value {
    schema::all()
        .into_iter()
        .find(|(name, _)| *name == file)
        .unwrap_or_else(|| panic!("no schema {file}"))
        .1
}

fn frames(body: &Value) -> Vec<Vec<u8>> {
    vec![
        PROTOCOL_HEADER.as_bytes().to_vec(),
        body.to_string().into_bytes(),
    ]
}

/// Whether the decoder of the body's direction takes it whole.
fn accepted(file: &str, body: &Value) -> bool {
    if file.starts_with("worker") || file == "step-batch-response.schema.json" {
        let strict = codec::decode::<WorkerMessage>(&frames(body), MAX);
        match codec::decode_from_worker(&frames(body), MAX) {
            Ok(FromWorker::Results(batch)) if !batch.refused.is_empty() => {
                assert!(strict.is_err());
                false
            }
            Ok(_) => {
                assert!(strict.is_ok(), "{strict:?}");
                true
            }
            Err(e) => {
                assert_eq!(e.code(), ProtocolErrorCode::InvalidMessage, "{e}");
                assert_eq!(strict.unwrap_err().code(), e.code());
                false
            }
        }
    } else {
        let typed = codec::decode::<OrchestratorMessage>(&frames(body), MAX);
        let raw = raw::decode_for_worker(&frames(body), MAX);
        assert_eq!(typed.is_ok(), raw.is_ok(), "{typed:?} / {raw:?}");
        if let Err(e) = &typed {
            assert_eq!(e.code(), ProtocolErrorCode::InvalidMessage, "{e}");
        }
        typed.is_ok()
    }
}

fn hello() -> Value {
    json!({"type": "hello", "worker_id": "w-1", "handlers": ["echo"], "capacity": 2,
           "in_progress": [{"step_id": 1, "attempt": 1, "orchestrator_id": "o-1"}]})
}

fn limited_hello() -> Value {
    json!({"type": "hello", "worker_id": "w-1", "handlers": ["echo"], "capacity": 2,
           "handler_limits": {"echo": 1}})
}

fn drain() -> Value {
    json!({"type": "drain", "returned": [{"step_id": 1, "attempt": 1, "orchestrator_id": "o-1"}]})
}

fn response() -> Value {
    let metadata = json!({"attempt": 1, "execution_time_ms": 1, "worker_id": "w-1",
                          "retryable": false, "completed_at": "2026-01-01T00:00:00Z"});
    json!({"type": "step_batch_response", "batch_id": "b", "orchestrator_id": "o-1",
           "protocol_version": "1.0", "results": [
             {"step_id": 1, "status": "completed", "output": {"ok": true}, "metadata": metadata},
             {"step_id": 2, "status": "failed", "metadata": metadata,
              "error": {"message": "no", "error_type": "E", "retryable": false}}]})
}

fn welcome() -> Value {
    json!({"type": "welcome", "heartbeat_interval_ms": 1000, "liveness": 3,
           "max_message_bytes": 1 << 20, "orchestrator_id": "o-1", "max_json_depth": 100})
}

fn request() -> Value {
    json!({"type": "step_batch_request", "batch_id": "b", "protocol_version": "1.0", "steps": [
        {"step_id": 1, "task_id": 1, "step_name": "s", "handler_class": "echo",
         "metadata": {"attempt": 1, "timeout_ms": 1000, "created_at": "2026-01-01T00:00:00Z"}}]})
}

/// `value` with the field at `pointer` set to `to` (`None`: removed).
fn with(mut value: Value, pointer: &str, to: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = value.pointer_mut(parent).unwrap();
    match (target, to) {
        (Value::Object(map), Some(to)) => {
            map.insert(key.to_string(), to);
        }
        (Value::Object(map), None) => {
            map.remove(key);
        }
        (Value::Array(items), Some(to)) => items[key.parse::<usize>().unwrap()] = to,
        (other, _) => panic!("cannot set {pointer} in {other}"),
    }
    value
}

struct Case {
    /// The rule, for messages.
    rule: &'static str,
    /// The schema of the whole message (a direction union's member file).
    file: &'static str,
    good: Value,
    bad: Value,
    /// Where in `file` the rule is stated, and what is there.
    at: &'static str,
    states: Value,
}

fn cases() -> Vec<Case> {
    let case =
        |rule, file, good: fn() -> Value, field: &str, bad: Option<Value>, at, states| Case {
            rule,
            file,
            bad: with(good(), field, bad),
            good: good(),
            at,
            states,
        };
    let hello_file = "worker-hello.schema.json";
    let response_file = "step-batch-response.schema.json";
    vec![
        case(
            "capacity >= 1",
            hello_file,
            hello,
            "/capacity",
            Some(json!(0)),
            "/properties/capacity/minimum",
            json!(1),
        ),
        case(
            "handlers non-empty",
            hello_file,
            hello,
            "/handlers",
            Some(json!([])),
            "/properties/handlers/minItems",
            json!(1),
        ),
        case(
            "handler names non-empty",
            hello_file,
            hello,
            "/handlers/0",
            Some(json!("")),
            "/properties/handlers/items/minLength",
            json!(1),
        ),
        case(
            "worker_id non-empty",
            hello_file,
            hello,
            "/worker_id",
            Some(json!("")),
            "/properties/worker_id/minLength",
            json!(1),
        ),
        case(
            "at most 1024 handlers",
            hello_file,
            hello,
            "/handlers",
            Some(json!((0..1025)
                .map(|i| format!("h{i}"))
                .collect::<Vec<_>>())),
            "/properties/handlers/maxItems",
            json!(1024),
        ),
        case(
            "handler names at most 255 characters",
            hello_file,
            hello,
            "/handlers/0",
            // Counted in characters, as maxLength counts: 256 of two bytes each.
            Some(json!("é".repeat(256))),
            "/properties/handlers/items/maxLength",
            json!(255),
        ),
        case(
            "worker_id at most 255 characters",
            hello_file,
            hello,
            "/worker_id",
            Some(json!("w".repeat(256))),
            "/properties/worker_id/maxLength",
            json!(255),
        ),
        case(
            "language at most 255 characters",
            hello_file,
            hello,
            "/language",
            Some(json!("l".repeat(256))),
            "/properties/language/maxLength",
            json!(255),
        ),
        case(
            "handler_limits >= 1",
            hello_file,
            limited_hello,
            "/handler_limits/echo",
            Some(json!(0)),
            "/properties/handler_limits/additionalProperties/minimum",
            json!(1),
        ),
        case(
            "in_progress attempt >= 1",
            hello_file,
            hello,
            "/in_progress/0/attempt",
            Some(json!(0)),
            "/$defs/HeldStep/properties/attempt/minimum",
            json!(1),
        ),
        case(
            "in_progress orchestrator_id non-empty",
            hello_file,
            hello,
            "/in_progress/0/orchestrator_id",
            Some(json!("")),
            "/$defs/HeldStep/properties/orchestrator_id/minLength",
            json!(1),
        ),
        case(
            "returned attempt >= 1",
            "worker-drain.schema.json",
            drain,
            "/returned/0/attempt",
            Some(json!(0)),
            "/$defs/HeldStep/properties/attempt/minimum",
            json!(1),
        ),
        case(
            "results non-empty",
            response_file,
            response,
            "/results",
            Some(json!([])),
            "/properties/results/minItems",
            json!(1),
        ),
        case(
            "response orchestrator_id non-empty",
            response_file,
            response,
            "/orchestrator_id",
            Some(json!("")),
            "/properties/orchestrator_id/minLength",
            json!(1),
        ),
        case(
            "response orchestrator_id required",
            response_file,
            response,
            "/orchestrator_id",
            None,
            "/required/1",
            json!("orchestrator_id"),
        ),
        case(
            "result attempt >= 1",
            response_file,
            response,
            "/results/0/metadata/attempt",
            Some(json!(0)),
            "/$defs/StepResultMetadata/properties/attempt/minimum",
            json!(1),
        ),
        case(
            "result status not timed_out",
            response_file,
            response,
            "/results/1/status",
            Some(json!("timed_out")),
            "/$defs/StepExecutionResult/properties/status/enum",
            json!(["completed", "failed"]),
        ),
        case(
            "result status not cancelled",
            response_file,
            response,
            "/results/1/status",
            Some(json!("cancelled")),
            "/$defs/StepExecutionResult/properties/status/enum",
            json!(["completed", "failed"]),
        ),
        case(
            "error not null",
            response_file,
            response,
            "/results/0/error",
            Some(Value::Null),
            "/$defs/StepExecutionResult/properties/error",
            json!({"$ref": "#/$defs/StepExecutionError", "description": "What went wrong, for every other status; absent (not `null`) when\n`completed`."}),
        ),
        case(
            "failed has an error",
            response_file,
            response,
            "/results/1/error",
            None,
            "/$defs/StepExecutionResult/then/required",
            json!(["error"]),
        ),
        case(
            "completed has no error",
            response_file,
            response,
            "/results/0/error",
            Some(json!({"message": "m", "error_type": "E", "retryable": false})),
            "/$defs/StepExecutionResult/else/properties/error",
            json!(false),
        ),
        case(
            "heartbeat_interval_ms >= 1",
            "welcome.schema.json",
            welcome,
            "/heartbeat_interval_ms",
            Some(json!(0)),
            "/properties/heartbeat_interval_ms/minimum",
            json!(1),
        ),
        case(
            "liveness >= 1",
            "welcome.schema.json",
            welcome,
            "/liveness",
            Some(json!(0)),
            "/properties/liveness/minimum",
            json!(1),
        ),
        case(
            "max_json_depth >= 1",
            "welcome.schema.json",
            welcome,
            "/max_json_depth",
            Some(json!(0)),
            "/properties/max_json_depth/minimum",
            json!(1),
        ),
        case(
            "welcome orchestrator_id non-empty",
            "welcome.schema.json",
            welcome,
            "/orchestrator_id",
            Some(json!("")),
            "/properties/orchestrator_id/minLength",
            json!(1),
        ),
        case(
            "steps non-empty",
            "step-batch-request.schema.json",
            request,
            "/steps",
            Some(json!([])),
            "/properties/steps/minItems",
            json!(1),
        ),
        case(
            "step attempt >= 1",
            "step-batch-request.schema.json",
            request,
            "/steps/0/metadata/attempt",
            Some(json!(0)),
            "/$defs/StepRequestMetadata/properties/attempt/minimum",
            json!(1),
        ),
        case(
            "timeout_ms >= 1",
            "step-batch-request.schema.json",
            request,
            "/steps/0/metadata/timeout_ms",
            Some(json!(0)),
            "/$defs/StepRequestMetadata/properties/timeout_ms/minimum",
            json!(1),
        ),
        case(
            "step_id within i64",
            response_file,
            response,
            "/results/0/step_id",
            Some(json!(u64::MAX)),
            "/$defs/StepExecutionResult/properties/step_id/maximum",
            json!(i64::MAX),
        ),
        case(
            "attempt within u32",
            response_file,
            response,
            "/results/0/metadata/attempt",
            Some(json!(u64::from(u32::MAX) + 1)),
            "/$defs/StepResultMetadata/properties/attempt/maximum",
            json!(u32::MAX),
        ),
    ]
}

/// The union schema of the direction a message of `file` travels.
fn union_of(file: &str) -> &'static str {
    if file == "welcome.schema.json" || file == "step-batch-request.schema.json" {
        "orchestrator-message.schema.json"
    } else {
        "worker-message.schema.json"
    }
}

#[test]
fn the_decoder_and_the_schema_state_the_same_rules() {
    for c in cases() {
        assert!(accepted(c.file, &c.good), "{}: good body refused", c.rule);
        assert!(!accepted(c.file, &c.bad), "{}: bad body taken", c.rule);
        let body_schema = schema(c.file);
        assert_eq!(
            body_schema.pointer(c.at),
            Some(&c.states),
            "{}: {} of {} is not {}",
            c.rule,
            c.at,
            c.file,
            c.states
        );
        // The direction's union schema carries the same definition.
        let union = schema(union_of(c.file));
        let body_def =
            c.at.strip_prefix("/$defs")
                .map(str::to_string)
                .unwrap_or_else(|| {
                    let title = body_schema["title"].as_str().unwrap();
                    format!("/{title}{}", c.at)
                });
        assert_eq!(
            union.pointer(&format!("/$defs{body_def}")),
            Some(&c.states),
            "{}: union lacks {body_def}",
            c.rule
        );
    }
    if let Ok(path) = std::env::var("TASKER_SCHEMA_CASES") {
        let mut out = Vec::new();
        for c in cases() {
            for file in [c.file, union_of(c.file)] {
                out.push(json!([file, c.good, true]));
                out.push(json!([file, c.bad, false]));
            }
        }
        std::fs::write(path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
    }
}

/// Only standard keywords: no integer `format`; every integer bounded by
/// its Rust type; `date-time` the only format.
#[test]
fn schemas_use_standard_keywords_only() {
    fn walk(file: &str, path: &str, value: &Value) {
        match value {
            Value::Object(map) => {
                if let Some(format) = map.get("format") {
                    assert_eq!(format, "date-time", "{file}{path}");
                }
                let is_integer = match map.get("type") {
                    Some(Value::String(t)) => t == "integer",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer"),
                    _ => false,
                };
                if is_integer {
                    assert!(
                        map.contains_key("minimum") && map.contains_key("maximum"),
                        "{file}{path}: integer without bounds"
                    );
                }
                for (key, child) in map {
                    walk(file, &format!("{path}/{key}"), child);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    walk(file, &format!("{path}/{i}"), child);
                }
            }
            _ => {}
        }
    }
    for (file, schema) in schema::all() {
        walk(file, "", &schema);
    }
}

/// Metrics label protocol errors by `as_str`: it must be the wire name.
#[test]
fn protocol_error_codes_print_as_they_are_on_the_wire() {
    for code in tasker_protocol::ProtocolErrorCode::ALL {
        assert_eq!(
            serde_json::to_value(code).unwrap(),
            serde_json::Value::String(code.as_str().to_string())
        );
    }
}
