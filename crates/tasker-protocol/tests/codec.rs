//! Decoding: round trips of every message, and a typed error for each kind
//! of bad input.

mod common;

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

/// Any instant chrono holds, years past 9999 and leap seconds included,
/// which the fixed timestamp form cannot express.
fn any_instant() -> impl Strategy<Value = chrono::DateTime<chrono::Utc>> {
    let seconds = prop_oneof![
        0i64..253_402_300_800,
        -9_000_000_000_000i64..9_000_000_000_000
    ];
    (seconds, 0u32..2_000_000_000).prop_filter_map("an instant chrono holds", |(s, n)| {
        // A nanosecond count past a second is a leap second, only at :59.
        let s = if n >= 1_000_000_000 {
            s - s.rem_euclid(60) + 59
        } else {
            s
        };
        chrono::DateTime::from_timestamp(s, n)
    })
}

/// Every status but `completed`, and metadata with any values.
fn result_metadata() -> impl Strategy<Value = (StepStatus, StepResultMetadata)> {
    let status = prop_oneof![
        Just(StepStatus::Failed),
        Just(StepStatus::TimedOut),
        Just(StepStatus::Cancelled),
    ];
    (
        status,
        any::<u64>(),
        "\\PC{0,20}",
        any::<bool>(),
        any_instant(),
    )
        .prop_map(
            |(status, execution_time_ms, worker_id, retryable, completed_at)| {
                let metadata = StepResultMetadata {
                    attempt: 1,
                    execution_time_ms,
                    worker_id,
                    retryable,
                    completed_at,
                };
                (status, metadata)
            },
        )
}

/// An orchestrator id: any non-empty text.
fn orchestrator_id() -> impl Strategy<Value = String> {
    "\\PC{1,24}"
}

prop_compose! {
    fn held_step()(
        step_id in any::<i64>(),
        attempt in 1u32..10,
        orchestrator_id in orchestrator_id(),
    ) -> HeldStep {
        HeldStep { step_id, attempt, orchestrator_id }
    }
}

prop_compose! {
    fn welcome()(
        heartbeat_interval_ms in 1u64..100_000,
        liveness in 1u32..20,
        max_message_bytes in 1024u64..(1 << 30),
        orchestrator_id in orchestrator_id(),
        max_json_depth in 1u32..=1000,
    ) -> Welcome {
        Welcome { heartbeat_interval_ms, liveness, max_message_bytes, orchestrator_id, max_json_depth }
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
    fn step_batch_response_round_trips(
        results in prop::collection::vec(step_result(), 1..5),
        orchestrator in orchestrator_id(),
    ) {
        let message = WorkerMessage::StepBatchResponse(StepBatchResponse::new("b:1", orchestrator, results));
        let encoded = codec::encode(&message).unwrap();
        let decoded: WorkerMessage = codec::decode(&encoded, MAX).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn hello_round_trips(
        id in "\\PC{1,20}",
        handlers in prop::collection::vec("[a-z_]{1,10}", 1..4),
        capacity in 1u32..1000,
        in_progress in prop::collection::vec(held_step(), 0..4),
    ) {
        // A hello lists at most `capacity` held steps.
        let capacity = capacity.max(in_progress.len() as u32);
        let mut hello = WorkerHello::new(id, handlers, capacity);
        hello.in_progress = in_progress;
        hello.language = Some("python".into());
        let message = WorkerMessage::Hello(hello);
        let decoded: WorkerMessage = codec::decode(&codec::encode(&message).unwrap(), MAX).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn drain_round_trips(returned in prop::collection::vec(held_step(), 0..5)) {
        let message = WorkerMessage::Drain(WorkerDrain { returned });
        let decoded: WorkerMessage = codec::decode(&codec::encode(&message).unwrap(), MAX).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn welcome_round_trips(welcome in welcome()) {
        let message = OrchestratorMessage::Welcome(welcome);
        let frames = codec::encode(&message).unwrap();
        let decoded: OrchestratorMessage = codec::decode(&frames, MAX).unwrap();
        prop_assert_eq!(&decoded, &message);
        let raw = raw::decode_for_worker(&frames, MAX).unwrap();
        prop_assert_eq!(raw, raw::RawOrchestratorMessage::Control(message));
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
            returned: vec![HeldStep {
                step_id: 4,
                attempt: 2,
                orchestrator_id: "o-1".into(),
            }],
        }),
        WorkerMessage::Goodbye(Goodbye {
            reason: "bye".into(),
            unanswered: vec![HeldStep {
                step_id: 9,
                attempt: 1,
                orchestrator_id: "o-1".into(),
            }],
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
            orchestrator_id: "o-1".into(),
            max_json_depth: MAX_JSON_DEPTH,
        }),
        OrchestratorMessage::Heartbeat(Heartbeat {}),
        OrchestratorMessage::Goodbye(Goodbye::new("bye")),
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
        "o",
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
    // A newer minor version is compatible, and so is a major alone.
    for header in ["tasker/1.7", "tasker/1"] {
        let ok = codec::decode::<WorkerMessage>(
            &[
                header.as_bytes().to_vec(),
                br#"{"type":"heartbeat"}"#.to_vec(),
            ],
            MAX,
        );
        assert!(ok.is_ok(), "{header}: {ok:?}");
    }
    // MAJOR is digits only (SPEC 3.2.2): Rust's number parser alone took a
    // sign, which a worker built from the SPEC refuses.
    for header in ["tasker/+1.0", "tasker/ 1.0", "tasker/.1", "tasker/"] {
        let err = codec::decode::<WorkerMessage>(
            &[
                header.as_bytes().to_vec(),
                br#"{"type":"heartbeat"}"#.to_vec(),
            ],
            MAX,
        )
        .unwrap_err();
        assert_eq!(
            err.code(),
            ProtocolErrorCode::UnsupportedVersion,
            "{header}"
        );
    }
}

#[test]
fn wrong_major_inside_a_batch_is_a_version_error() {
    let body = r#"{"type":"step_batch_response","batch_id":"b","orchestrator_id":"o","protocol_version":"2.1","results":[
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
            r#"{"type":"step_batch_response","batch_id":"b","orchestrator_id":"o","protocol_version":"1.0","results":[
              {"step_id":1,"status":"timed_out","metadata":{"attempt":1,"execution_time_ms":0,"worker_id":"w","retryable":false,"completed_at":"2026-01-01T00:00:00Z"}}]}"#,
            "cannot report",
        ),
        (
            r#"{"type":"step_batch_response","batch_id":"b","orchestrator_id":"o","protocol_version":"1.0","results":[
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
    let response = WorkerMessage::StepBatchResponse(StepBatchResponse::new("b", "o", vec![result]));
    let [_, body] = codec::encode(&request).unwrap();
    assert!(body.starts_with(br#"{"type":"step_batch_request","#));
    let [_, body] = codec::encode(&response).unwrap();
    assert!(body.starts_with(br#"{"type":"step_batch_response","#));
}

/// The fast parse of a bulk message checks its UTF-8 once for the whole
/// body; bytes that are not UTF-8 anywhere in it still make it malformed.
#[test]
fn a_bulk_message_with_bytes_that_are_not_utf8_is_malformed_json() {
    let step = StepExecutionRequest::new(1, 1, "s", "h", 1_000);
    let request = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new("b", vec![step]));
    let [header, mut body] = codec::encode(&request).unwrap();
    let at = body.windows(3).position(|w| w == b"\"h\"").unwrap() + 1;
    body[at] = 0xff;
    let err = codec::decode::<OrchestratorMessage>(&[header, body], 1 << 20).unwrap_err();
    assert_eq!(err.code(), ProtocolErrorCode::MalformedJson, "{err}");
    // The reason names the problem, and where.
    assert!(
        err.to_string()
            .contains(&format!("body is not UTF-8 (the bytes at offset {at}")),
        "{err}"
    );
}

// ---- raw: steps and results kept as JSON text (tasker_protocol::raw) ----

fn batch_body(steps: &[String]) -> String {
    format!(
        r#"{{"type":"step_batch_request","batch_id":"b-1","protocol_version":"1.0","steps":[{}]}}"#,
        steps.join(",")
    )
}

/// Every field of a step, as a path into its JSON object.
const STEP_FIELDS: &[&[&str]] = &[
    &["step_id"],
    &["task_id"],
    &["step_name"],
    &["handler_class"],
    &["handler_config"],
    &["task_context"],
    &["previous_results"],
    &["metadata"],
    &["metadata", "attempt"],
    &["metadata", "retry_limit"],
    &["metadata", "timeout_ms"],
    &["metadata", "created_at"],
];

fn typed_steps(frames: &[Vec<u8>]) -> Result<Vec<StepExecutionRequest>, DecodeError> {
    match codec::decode::<OrchestratorMessage>(frames, MAX)? {
        OrchestratorMessage::StepBatchRequest(batch) => Ok(batch.steps),
        other => panic!("not a batch: {other:?}"),
    }
}

fn raw_batch(frames: &[impl AsRef<[u8]>]) -> Result<raw::RawStepBatch, DecodeError> {
    match raw::decode_for_worker(frames, MAX)? {
        raw::RawOrchestratorMessage::StepBatch(batch) => Ok(batch),
        other => panic!("not a batch: {other:?}"),
    }
}

/// `fields()` of a raw step give the same values as the typed step.
fn assert_fields_are(raw: &raw::RawStep, step: &StepExecutionRequest) {
    let fields = raw.fields();
    let parse = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    assert_eq!(fields.step_id, step.step_id);
    assert_eq!(fields.task_id, step.task_id);
    assert_eq!(parse(fields.step_name), json!(step.step_name));
    assert_eq!(parse(fields.handler_class), json!(step.handler_class));
    assert_eq!(parse(fields.handler_config), step.handler_config);
    assert_eq!(parse(fields.task_context), step.task_context);
    assert_eq!(parse(fields.previous_results), json!(step.previous_results));
    assert_eq!(fields.attempt, step.metadata.attempt);
    assert_eq!(fields.retry_limit, step.metadata.retry_limit);
    assert_eq!(fields.timeout_ms, step.metadata.timeout_ms);
    assert_eq!(
        parse(fields.created_at),
        json!(step.metadata).get("created_at").cloned().unwrap()
    );
}

proptest! {
    #[test]
    fn raw_steps_are_the_steps_as_sent(steps in prop::collection::vec(step_request(), 1..5), id in "\\PC{1,20}") {
        let message = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(id.clone(), steps.clone()));
        let batch = raw_batch(codec::encode(&message).unwrap().as_ref()).unwrap();
        prop_assert_eq!(&batch.batch_id, &id);
        prop_assert_eq!(batch.steps.len(), steps.len());
        for (raw, step) in batch.steps.iter().zip(&steps) {
            prop_assert_eq!(raw.step_ref(), step.step_ref());
            prop_assert_eq!(&raw.decode().unwrap(), step);
            assert_fields_are(raw, step);
        }
    }

    /// The raw check refuses a step exactly when the typed decode does,
    /// whatever one field is replaced with or whether it is there at all.
    #[test]
    fn raw_and_typed_decoding_agree_on_every_field(
        step in step_request(),
        field in 0..STEP_FIELDS.len(),
        replacement in prop::option::of(json_value()),
    ) {
        let mut value = serde_json::to_value(&step).unwrap();
        let path = STEP_FIELDS[field];
        let (last, parents) = path.split_last().unwrap();
        let mut object = &mut value;
        for key in parents {
            object = object.get_mut(*key).unwrap();
        }
        let object = object.as_object_mut().unwrap();
        match replacement {
            Some(v) => { object.insert(last.to_string(), v); }
            None => { object.remove(*last); }
        }
        let body = batch_body(&[value.to_string()]);
        let typed = typed_steps(&frames(&body));
        let raw = raw_batch(&frames(&body));
        match (&typed, &raw) {
            (Ok(typed), Ok(raw)) => {
                prop_assert_eq!(&raw.steps[0].decode().unwrap(), &typed[0]);
                assert_fields_are(&raw.steps[0], &typed[0]);
            }
            (Err(typed), Err(raw)) => prop_assert_eq!(typed.code(), raw.code()),
            _ => prop_assert!(false, "typed {:?} but raw {:?} for {}", typed, raw, body),
        }
    }

    #[test]
    fn raw_decoding_of_arbitrary_batches_never_panics(tail in "\\PC{0,120}") {
        let body = format!(r#"{{"type":"step_batch_request",{tail}"#);
        let typed = codec::decode::<OrchestratorMessage>(&frames(&body), MAX);
        let raw = raw::decode_for_worker(&frames(&body), MAX);
        prop_assert_eq!(typed.is_ok(), raw.is_ok());
    }

    #[test]
    fn encoded_results_are_the_typed_encoding(
        results in prop::collection::vec((step_result(), result_metadata()), 1..5),
        batch_id in "\\PC{0,20}",
        orchestrator in orchestrator_id(),
    ) {
        let results: Vec<StepExecutionResult> = results
            .into_iter()
            .map(|(mut result, (status, metadata))| {
                if result.status != StepStatus::Completed {
                    result.status = status;
                }
                result.metadata = StepResultMetadata { attempt: result.metadata.attempt, ..metadata };
                result
            })
            .collect();
        let encoded: Vec<raw::EncodedResult> = results.iter().map(raw::EncodedResult::new).collect();
        let typed = WorkerMessage::StepBatchResponse(StepBatchResponse::new(batch_id.clone(), orchestrator.clone(), results));
        let frames = raw::encode_results(&batch_id, &orchestrator, &encoded);
        prop_assert_eq!(&frames, &codec::encode(&typed).unwrap());
        let len: usize = raw::response_envelope_len(&batch_id, &orchestrator)
            + encoded.iter().map(|r| r.json().len()).sum::<usize>()
            + encoded.len() - 1;
        prop_assert_eq!(frames[1].len(), len);
    }

    #[test]
    fn encoded_steps_are_the_typed_encoding(
        steps in prop::collection::vec((step_request(), any_instant(), any::<u32>()), 1..5),
        batch_id in "\\PC{0,20}",
    ) {
        let steps: Vec<StepExecutionRequest> = steps
            .into_iter()
            .map(|(mut step, created_at, retry_limit)| {
                step.metadata.created_at = created_at;
                step.metadata.retry_limit = retry_limit;
                step
            })
            .collect();
        let encoded: Vec<raw::EncodedStep> = steps.iter().map(raw::EncodedStep::new).collect();
        // Encoded together, into one shared buffer, each step is the same.
        let together = raw::EncodedStep::batch(&steps);
        prop_assert_eq!(&together, &encoded);
        let typed = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(batch_id.clone(), steps));
        let frames = raw::encode_steps(&batch_id, &encoded);
        prop_assert_eq!(&frames, &codec::encode(&typed).unwrap());
        prop_assert_eq!(&raw::encode_steps(&batch_id, &together), &frames);
        let len: usize = raw::request_envelope_len(&batch_id)
            + encoded.iter().map(|s| s.json().len()).sum::<usize>()
            + encoded.len() - 1;
        prop_assert_eq!(frames[1].len(), len);
    }

    #[test]
    fn spliced_output_is_the_typed_encoding(
        output in json_value(),
        step_id in any::<i64>(),
        attempt in 1u32..10,
        worker_id in "\\PC{1,20}",
        elapsed in any::<u64>(),
    ) {
        let step = StepRef { step_id, attempt };
        let mut typed = StepExecutionResult::completed(step, output.clone(), &worker_id, elapsed);
        // Whole microseconds, as a JavaScript host would see them.
        typed.metadata.completed_at = chrono::DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let text = serde_json::value::RawValue::from_string(output.to_string()).unwrap();
        let spliced = raw::EncodedResult::completed(step, &text, &worker_id, elapsed, typed.metadata.completed_at);
        let expected = raw::EncodedResult::new(&typed);
        prop_assert_eq!(spliced.json(), expected.json());
        prop_assert_eq!(spliced.step_ref(), step);
        prop_assert_eq!(spliced.execution_time_ms(), elapsed);
    }
}

#[test]
fn raw_decoding_names_the_bad_step_like_the_typed_decode() {
    let good = serde_json::to_string(&StepExecutionRequest::new(1, 1, "s", "h", 1_000)).unwrap();
    let bad = good.replace(r#""attempt":1"#, r#""attempt":-1"#);
    let body = batch_body(&[good.clone(), bad]);
    let err = raw_batch(&frames(&body)).unwrap_err();
    assert!(
        matches!(err, DecodeError::Invalid { ref message_type, .. } if message_type == "step_batch_request"),
        "{err}"
    );
    assert!(err.to_string().contains("expected u32"), "{err}");

    let not_an_object = batch_body(&[good.clone(), "5".into()]);
    let err = raw_batch(&frames(&not_an_object)).unwrap_err();
    assert!(
        err.to_string()
            .contains("expected struct StepExecutionRequest"),
        "{err}"
    );

    let empty = batch_body(&[]);
    assert_eq!(
        raw_batch(&frames(&empty)).unwrap_err(),
        typed_steps(&frames(&empty)).unwrap_err()
    );
    let newer_major = batch_body(std::slice::from_ref(&good)).replace(r#""1.0""#, r#""2.0""#);
    assert!(matches!(
        raw_batch(&frames(&newer_major)).unwrap_err(),
        DecodeError::VersionMismatch { .. }
    ));
    let cut = &batch_body(&[good])[..60];
    assert!(matches!(
        raw_batch(&frames(cut)).unwrap_err(),
        DecodeError::MalformedJson(_)
    ));
}

#[test]
fn raw_decoding_takes_control_messages_and_batches_in_any_field_order() {
    let welcome = OrchestratorMessage::Welcome(Welcome {
        heartbeat_interval_ms: 1000,
        liveness: 3,
        max_message_bytes: MAX as u64,
        orchestrator_id: "o-1".into(),
        max_json_depth: MAX_JSON_DEPTH,
    });
    let decoded = raw::decode_for_worker(&codec::encode(&welcome).unwrap(), MAX).unwrap();
    assert_eq!(decoded, raw::RawOrchestratorMessage::Control(welcome));

    // Another encoder may put the tag last; the steps are the same.
    let step = StepExecutionRequest::new(9, 1, "s", "h", 1_000);
    let body = format!(
        r#"{{"batch_id":"b","protocol_version":"1.0","steps":[{}],"type":"step_batch_request"}}"#,
        serde_json::to_string(&step).unwrap()
    );
    let batch = raw_batch(&frames(&body)).unwrap();
    assert_eq!(batch.batch_id, "b");
    assert_eq!(batch.steps[0].decode().unwrap(), step);
}

#[test]
fn raw_checks_escapes_where_the_typed_decode_builds_strings() {
    let step = serde_json::to_string(&StepExecutionRequest::new(4, 1, "s", "h", 1_000)).unwrap();
    // An unpaired surrogate cannot be a Rust String: refused in names.
    let lone = step.replace(r#""step_name":"s""#, r#""step_name":"a\ud800b""#);
    let body = batch_body(&[lone]);
    let typed = typed_steps(&frames(&body)).unwrap_err();
    let err = raw_batch(&frames(&body)).unwrap_err();
    assert_eq!(err.code(), typed.code());
    assert!(err.to_string().contains("lone surrogate escape"), "{err}");
    // Paired escapes are fine, and kept as sent.
    let pair = step.replace(r#""step_name":"s""#, r#""step_name":"\ud83d\ude00 \n""#);
    let batch = raw_batch(&frames(&batch_body(&[pair]))).unwrap();
    assert_eq!(batch.steps[0].fields().step_name, r#""\ud83d\ude00 \n""#);
    assert_eq!(batch.steps[0].decode().unwrap().step_name, "😀 \n");
    // Inside a JSON value the check only skips: the typed decode names it.
    let inside = step.replace(r#""task_context":{}"#, r#""task_context":{"k":"\udc00"}"#);
    let batch = raw_batch(&frames(&batch_body(&[inside]))).unwrap();
    assert_eq!(batch.steps[0].fields().task_context, r#"{"k":"\udc00"}"#);
    let err = batch.steps[0].decode().unwrap_err();
    assert!(err.to_string().contains("hex escape"), "{err}");
}

#[test]
fn steps_nested_beyond_the_value_parser_are_refused_only_when_decoded() {
    let mut step = serde_json::to_value(StepExecutionRequest::new(3, 1, "s", "h", 1_000)).unwrap();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    step["task_context"] = Value::Null;
    let text = step.to_string().replace(
        r#""task_context":null"#,
        &format!(r#""task_context":{deep}"#),
    );
    let batch = raw_batch(&frames(&batch_body(&[text]))).unwrap();
    assert_eq!(
        batch.steps[0].step_ref(),
        StepRef {
            step_id: 3,
            attempt: 1
        }
    );
    assert!(batch.steps[0]
        .decode()
        .unwrap_err()
        .to_string()
        .contains("recursion limit"));
}

/// What decoding a step costs the worker, read by hand (the canonical form,
/// as `raw::encode_steps` writes it) and by serde's derived code:
/// `cargo test --release -p tasker-protocol --test codec request_decode_cost
/// -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: prints figures"]
fn request_decode_cost() {
    let steps: Vec<_> = (0..100)
        .map(|i| StepExecutionRequest::new(1_000 + i, 7, "validate", "orders.Validate", 30_000))
        .collect();
    let message = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new("b:1", steps));
    let [header, body] = codec::encode(&message).unwrap();
    let framed = [header, body.clone()];
    fn least(decode: impl FnMut() -> usize) -> f64 {
        common::least_ns_per_item(5_000, 100, decode)
    }
    let by_serde = least(|| {
        let text = std::str::from_utf8(&body).unwrap();
        let parsed: StepBatchRequest = serde_json::from_str(text).unwrap();
        parsed.steps.len()
    });
    let decoded = least(
        || match codec::decode::<OrchestratorMessage>(&framed, MAX) {
            Ok(OrchestratorMessage::StepBatchRequest(batch)) => batch.steps.len(),
            other => panic!("not a batch: {other:?}"),
        },
    );
    eprintln!(
        "ns per step: serde's derived code {by_serde:.0}, codec::decode {decoded:.0} ({:.0}%)",
        100.0 * decoded / by_serde
    );
}

/// The depth by its definition, recursively (fine for test values).
fn depth_by_definition(value: &Value) -> u32 {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth_by_definition).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth_by_definition).max().unwrap_or(0),
        _ => 0,
    }
}

proptest! {
    #[test]
    fn json_depth_is_the_nesting_of_arrays_and_objects(value in json_value()) {
        prop_assert_eq!(codec::json_depth(&value), depth_by_definition(&value));
    }
}
