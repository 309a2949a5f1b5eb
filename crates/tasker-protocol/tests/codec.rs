//! Decoding: round trips of every message, and a typed error for each kind
//! of bad input.

use proptest::prelude::*;
use serde_json::{json, Value};
use tasker_protocol::codec::{self, DecodeError};
use tasker_protocol::*;

const MAX: usize = 1 << 20;

fn frames(body: &str) -> Vec<Vec<u8>> {
    vec![
        PROTOCOL_HEADER.as_bytes().to_vec(),
        body.as_bytes().to_vec(),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

prop_compose! {
    fn step_request()(
        step_id in any::<i64>(),
        task_id in any::<i64>(),
        name in "\\PC{1,16}",
        handler in "[a-z_]{1,12}",
        context in json_value(),
        config in json_value(),
        previous in prop::collection::btree_map("[a-z]{1,6}", json_value(), 0..3),
        attempt in 1u32..10,
        timeout_ms in 1u64..100_000,
    ) -> StepExecutionRequest {
        let mut step = StepExecutionRequest::new(step_id, task_id, name, handler, timeout_ms);
        step.task_context = context;
        step.handler_config = config;
        step.previous_results = previous;
        step.metadata.attempt = attempt;
        step
    }
}

prop_compose! {
    fn step_result()(
        step_id in any::<i64>(),
        attempt in 1u32..10,
        output in json_value(),
        failed in any::<bool>(),
        message in "\\PC{0,40}",
        retryable in any::<bool>(),
        backtrace in prop::collection::vec("\\PC{0,20}", 0..3),
    ) -> StepExecutionResult {
        let step = StepRef { step_id, attempt };
        if failed {
            let mut error = StepExecutionError::new("SomeError", message, retryable);
            error.backtrace = backtrace;
            StepExecutionResult::failed(step, StepStatus::Failed, error, "w-1", 3)
        } else {
            StepExecutionResult::completed(step, output, "w-1", 3)
        }
    }
}

proptest! {
    #[test]
    fn step_batch_request_round_trips(steps in prop::collection::vec(step_request(), 1..5), id in "\\PC{1,20}") {
        let message = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(id, steps));
        let encoded = codec::encode(&message).unwrap();
        let decoded: OrchestratorMessage = codec::decode(&encoded, MAX).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn step_batch_response_round_trips(results in prop::collection::vec(step_result(), 1..5)) {
        let message = WorkerMessage::StepBatchResponse(StepBatchResponse::new("b:1", results));
        let encoded = codec::encode(&message).unwrap();
        let decoded: WorkerMessage = codec::decode(&encoded, MAX).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn hello_round_trips(
        id in "\\PC{1,20}",
        handlers in prop::collection::vec("[a-z_]{1,10}", 1..4),
        capacity in 1u32..1000,
        in_progress in prop::collection::vec((any::<i64>(), 1u32..5), 0..4),
    ) {
        let mut hello = WorkerHello::new(id, handlers, capacity);
        hello.in_progress = in_progress.into_iter().map(|(step_id, attempt)| StepRef { step_id, attempt }).collect();
        hello.language = Some("python".into());
        let message = WorkerMessage::Hello(hello);
        let decoded: WorkerMessage = codec::decode(&codec::encode(&message).unwrap(), MAX).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), header in prop::collection::vec(any::<u8>(), 0..16)) {
        let _ = codec::decode::<WorkerMessage>(&[header.clone(), body.clone()], MAX);
        let _ = codec::decode::<OrchestratorMessage>(&[header, body], MAX);
    }
}

#[test]
fn control_messages_round_trip() {
    let messages = vec![
        WorkerMessage::Heartbeat(Heartbeat {}),
        WorkerMessage::Drain(WorkerDrain {
            returned: vec![StepRef {
                step_id: 4,
                attempt: 2,
            }],
        }),
        WorkerMessage::Goodbye(Goodbye {
            reason: "bye".into(),
        }),
        WorkerMessage::ProtocolError(ProtocolError {
            code: ProtocolErrorCode::MalformedJson,
            message: "x".into(),
        }),
    ];
    for m in messages {
        let decoded: WorkerMessage = codec::decode(&codec::encode(&m).unwrap(), MAX).unwrap();
        assert_eq!(decoded, m);
    }
    let messages = vec![
        OrchestratorMessage::Welcome(Welcome {
            heartbeat_interval_ms: 1000,
            liveness: 3,
            max_message_bytes: 1024,
        }),
        OrchestratorMessage::Heartbeat(Heartbeat {}),
        OrchestratorMessage::Goodbye(Goodbye {
            reason: "bye".into(),
        }),
        OrchestratorMessage::ProtocolError(ProtocolError {
            code: ProtocolErrorCode::UnknownWorker,
            message: "x".into(),
        }),
    ];
    for m in messages {
        let decoded: OrchestratorMessage = codec::decode(&codec::encode(&m).unwrap(), MAX).unwrap();
        assert_eq!(decoded, m);
    }
}

#[test]
fn wire_tags_are_snake_case() {
    let body = serde_json::to_value(WorkerMessage::StepBatchResponse(StepBatchResponse::new(
        "b",
        vec![],
    )))
    .unwrap();
    assert_eq!(body["type"], "step_batch_response");
    let result = StepExecutionResult::failed(
        StepRef {
            step_id: 1,
            attempt: 1,
        },
        StepStatus::TimedOut,
        StepExecutionError::new("TimedOut", "slow", true),
        "orchestrator",
        0,
    );
    assert_eq!(
        serde_json::to_value(&result).unwrap()["status"],
        "timed_out"
    );
}

#[test]
fn wrong_frame_count_is_named() {
    let err = codec::decode::<WorkerMessage>(&[b"tasker/1.0".to_vec()], MAX).unwrap_err();
    assert_eq!(err, DecodeError::FrameCount(1));
    assert_eq!(err.code(), ProtocolErrorCode::MalformedFrames);
    let three = vec![b"tasker/1.0".to_vec(), b"{}".to_vec(), b"{}".to_vec()];
    assert_eq!(
        codec::decode::<WorkerMessage>(&three, MAX).unwrap_err(),
        DecodeError::FrameCount(3)
    );
}

#[test]
fn foreign_header_and_wrong_major_are_named() {
    let err =
        codec::decode::<WorkerMessage>(&[b"MDPW01".to_vec(), b"{}".to_vec()], MAX).unwrap_err();
    assert!(
        matches!(err, DecodeError::BadHeader(ref h) if h == "MDPW01"),
        "{err}"
    );
    let err =
        codec::decode::<WorkerMessage>(&[b"tasker/2.0".to_vec(), b"{}".to_vec()], MAX).unwrap_err();
    assert!(
        matches!(err, DecodeError::VersionMismatch { ref got, expected: 1 } if got == "2.0"),
        "{err}"
    );
    assert_eq!(err.code(), ProtocolErrorCode::UnsupportedVersion);
    // A newer minor version is compatible.
    let ok = codec::decode::<WorkerMessage>(
        &[b"tasker/1.7".to_vec(), br#"{"type":"heartbeat"}"#.to_vec()],
        MAX,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn wrong_major_inside_a_batch_is_a_version_error() {
    let body = r#"{"type":"step_batch_response","batch_id":"b","protocol_version":"2.1","results":[
        {"step_id":1,"status":"completed","output":1,"metadata":{"attempt":1,"execution_time_ms":0,"worker_id":"w","retryable":false,"completed_at":"2026-01-01T00:00:00Z"}}]}"#;
    let err = codec::decode::<WorkerMessage>(&frames(body), MAX).unwrap_err();
    assert!(matches!(err, DecodeError::VersionMismatch { .. }), "{err}");
}

#[test]
fn oversized_body_is_named_before_parsing() {
    let body = format!(r#"{{"type":"goodbye","reason":"{}"}}"#, "x".repeat(2000));
    let err = codec::decode::<WorkerMessage>(&frames(&body), 1024).unwrap_err();
    assert_eq!(
        err,
        DecodeError::TooLarge {
            size: body.len(),
            max: 1024
        }
    );
    assert!(err.to_string().contains("max_message_bytes"));
}

#[test]
fn malformed_json_unknown_type_and_invalid_fields_are_told_apart() {
    let err = codec::decode::<WorkerMessage>(&frames("{not json"), MAX).unwrap_err();
    assert!(matches!(err, DecodeError::MalformedJson(_)), "{err}");
    let err = codec::decode::<WorkerMessage>(&frames("[1,2]"), MAX).unwrap_err();
    assert!(matches!(err, DecodeError::MalformedJson(_)), "{err}");
    let err =
        codec::decode::<WorkerMessage>(&frames(r#"{"type":"partial_result"}"#), MAX).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownMessageType("partial_result".into())
    );
    // A worker may not send what only the orchestrator sends.
    let err = codec::decode::<WorkerMessage>(&frames(r#"{"type":"welcome"}"#), MAX).unwrap_err();
    assert_eq!(err, DecodeError::UnknownMessageType("welcome".into()));
    let err = codec::decode::<WorkerMessage>(&frames(r#"{"type":"hello","worker_id":"w"}"#), MAX)
        .unwrap_err();
    assert!(
        matches!(err, DecodeError::Invalid { ref message_type, .. } if message_type == "hello"),
        "{err}"
    );
    assert!(err.to_string().contains("handlers"), "{err}");
}

#[test]
fn rules_beyond_the_schema_are_enforced() {
    let cases = [
        (
            r#"{"type":"hello","worker_id":"w","handlers":[],"capacity":1}"#,
            "handlers is empty",
        ),
        (
            r#"{"type":"hello","worker_id":"w","handlers":["a"],"capacity":0}"#,
            "capacity",
        ),
        (
            r#"{"type":"hello","worker_id":"","handlers":["a"],"capacity":1}"#,
            "worker_id",
        ),
        (
            r#"{"type":"step_batch_response","batch_id":"b","protocol_version":"1.0","results":[
              {"step_id":1,"status":"timed_out","metadata":{"attempt":1,"execution_time_ms":0,"worker_id":"w","retryable":false,"completed_at":"2026-01-01T00:00:00Z"}}]}"#,
            "cannot report",
        ),
        (
            r#"{"type":"step_batch_response","batch_id":"b","protocol_version":"1.0","results":[
              {"step_id":1,"status":"failed","metadata":{"attempt":1,"execution_time_ms":0,"worker_id":"w","retryable":false,"completed_at":"2026-01-01T00:00:00Z"}}]}"#,
            "without an error",
        ),
    ];
    for (body, expected) in cases {
        let err = codec::decode::<WorkerMessage>(&frames(body), MAX).unwrap_err();
        assert!(err.to_string().contains(expected), "{body}: {err}");
    }
}

#[test]
fn unknown_fields_are_ignored_for_minor_version_compatibility() {
    let body = r#"{"type":"heartbeat","sent_at":"later","extra":{"a":1}}"#;
    assert!(codec::decode::<WorkerMessage>(&frames(body), MAX).is_ok());
}

/// The bulk messages start with their tag, so decoding takes the direct
/// parse instead of buffering the body as generic content first.
#[test]
fn bulk_messages_lead_with_their_type_tag() {
    let step = StepExecutionRequest::new(1, 1, "s", "h", 1_000);
    let result =
        StepExecutionResult::completed(step.step_ref(), serde_json::json!({"a": 1}), "w", 0);
    let request = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new("b", vec![step]));
    let response = WorkerMessage::StepBatchResponse(StepBatchResponse::new("b", vec![result]));
    let [_, body] = codec::encode(&request).unwrap();
    assert!(body.starts_with(br#"{"type":"step_batch_request","#));
    let [_, body] = codec::encode(&response).unwrap();
    assert!(body.starts_with(br#"{"type":"step_batch_response","#));
}
