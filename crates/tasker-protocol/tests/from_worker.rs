//! `codec::decode_from_worker`: the results of a `step_batch_response` are
//! judged one by one (one bad result does not cost the others), and the
//! message is refused whole only when its envelope is wrong. Also: every
//! `DecodeError` stays short whatever the input.

mod common;

use proptest::prelude::*;
use serde_json::{json, Value};
use tasker_protocol::codec::{self, DecodeError, FromWorker, ResultBatch};
use tasker_protocol::*;

const MAX: usize = 1 << 20;

fn frames(body: impl Into<Vec<u8>>) -> Vec<Vec<u8>> {
    vec![PROTOCOL_HEADER.as_bytes().to_vec(), body.into()]
}

/// A valid completed result of `step_id`, attempt 1, as JSON text.
fn good(step_id: i64) -> String {
    format!(
        r#"{{"step_id":{step_id},"status":"completed","output":{{"n":{step_id}}},"metadata":{{"attempt":1,"execution_time_ms":1,"worker_id":"w","retryable":false,"completed_at":"2026-01-01T00:00:00Z"}}}}"#
    )
}

/// A valid failed result of `step_id`, attempt 1, with this error message
/// (JSON string text, quotes included).
fn failed(step_id: i64, message: &str) -> String {
    format!(
        r#"{{"step_id":{step_id},"status":"failed","error":{{"message":{message},"error_type":"Boom","retryable":true}},"metadata":{{"attempt":1,"execution_time_ms":1,"worker_id":"w","retryable":true,"completed_at":"2026-01-01T00:00:00Z"}}}}"#
    )
}

/// `good(step_id)` with its output replaced by this JSON text.
fn with_output(step_id: i64, output: &str) -> String {
    good(step_id).replace(&format!(r#"{{"n":{step_id}}}"#), output)
}

fn nested(depth: usize) -> String {
    format!("{}7{}", "[".repeat(depth), "]".repeat(depth))
}

fn response(results: &[String]) -> String {
    format!(
        r#"{{"type":"step_batch_response","batch_id":"b-1","orchestrator_id":"o-1","protocol_version":"1.0","results":[{}]}}"#,
        results.join(",")
    )
}

fn results_of(body: &str) -> ResultBatch {
    match codec::decode_from_worker(&frames(body), MAX) {
        Ok(FromWorker::Results(batch)) => batch,
        other => panic!("not results: {other:?}\n{}", &body[..body.len().min(300)]),
    }
}

fn ids(batch: &ResultBatch) -> Vec<i64> {
    batch.results.iter().map(|r| r.step_id).collect()
}

fn step(step_id: i64) -> Option<StepRef> {
    Some(StepRef {
        step_id,
        attempt: 1,
    })
}

/// Each kind of bad result, alone between two good ones.
#[test]
fn one_bad_result_is_refused_alone() {
    let cases: Vec<(&str, String, Option<StepRef>, &str)> = vec![
        (
            "output nested 200 deep",
            with_output(2, &nested(200)),
            step(2),
            "recursion limit",
        ),
        (
            "output nested 101 deep",
            with_output(2, &nested(101)),
            step(2),
            "max_json_depth",
        ),
        (
            "lone surrogate in output",
            with_output(2, r#""caf\udce9""#),
            step(2),
            "escape must be one half of a surrogate pair",
        ),
        (
            "lone surrogate in error.message",
            failed(2, r#""x\ud800""#),
            step(2),
            "escape must be one half of a surrogate pair",
        ),
        (
            "attempt 0",
            good(2).replace(r#""attempt":1"#, r#""attempt":0"#),
            None,
            "step 2: metadata.attempt must be at least 1",
        ),
        (
            "status timed_out",
            failed(2, r#""slow""#).replace(r#""failed""#, r#""timed_out""#),
            step(2),
            "cannot report",
        ),
        (
            "status cancelled",
            failed(2, r#""x""#).replace(r#""failed""#, r#""cancelled""#),
            step(2),
            "cannot report",
        ),
        (
            "missing step_id",
            good(2).replace(r#""step_id":2,"#, ""),
            None,
            "step_id",
        ),
        (
            "error null",
            good(2).replace(r#""output""#, r#""error":null,"output""#),
            step(2),
            "null",
        ),
        (
            "failed without error",
            failed(2, r#""x""#).replace(
                r#""error":{"message":"x","error_type":"Boom","retryable":true},"#,
                "",
            ),
            step(2),
            "without an error",
        ),
        (
            "completed with error",
            failed(2, r#""x""#).replace(r#""failed""#, r#""completed""#),
            step(2),
            "completed with an error",
        ),
        (
            "not an object",
            "17".into(),
            None,
            "expected struct StepExecutionResult",
        ),
    ];
    for (what, bad, expected_step, reason) in cases {
        let body = response(&[good(1), bad, good(3)]);
        let batch = results_of(&body);
        assert_eq!(ids(&batch), [1, 3], "{what}");
        assert_eq!(batch.refused.len(), 1, "{what}");
        let refused = &batch.refused[0];
        assert_eq!(refused.index, 1, "{what}");
        assert_eq!(refused.step, expected_step, "{what}");
        assert!(
            refused.reason.contains(reason),
            "{what}: {}",
            refused.reason
        );
        assert!(
            refused.reason.len() < 300,
            "{what}: {}",
            refused.reason.len()
        );
        // The strict decode refuses the whole message.
        let strict = codec::decode::<WorkerMessage>(&frames(body.as_str()), MAX);
        assert!(strict.is_err(), "{what}: strict decode took it");
        let refusal = batch.refusal().unwrap();
        assert_eq!(refusal.code, ProtocolErrorCode::InvalidMessage);
        assert!(
            refusal.message.contains("results [1]"),
            "{}",
            refusal.message
        );
    }
}

#[test]
fn depth_limit_is_max_json_depth() {
    let batch = results_of(&response(&[
        with_output(1, &nested(MAX_JSON_DEPTH as usize)),
        with_output(2, &nested(MAX_JSON_DEPTH as usize + 1)),
    ]));
    assert_eq!(ids(&batch), [1]);
    assert_eq!(batch.refused[0].index, 1);
}

/// All the bad kinds in one message, interleaved with good results, with
/// `type` first (the direct parse) and last (the tagged-enum parse).
#[test]
fn every_bad_result_of_a_message_is_named_and_the_good_ones_are_taken() {
    let results = vec![
        good(1),
        with_output(2, &nested(200)),
        good(3),
        with_output(4, r#"{"s":"\udce9"}"#),
        failed(5, r#""\udce9 cut mid-emoji""#),
        good(6).replace(r#""attempt":1"#, r#""attempt":0"#),
        failed(7, r#""x""#).replace(r#""failed""#, r#""timed_out""#),
        good(8).replace(r#""step_id":8,"#, ""),
        failed(9, r#""fine""#),
    ];
    let first = response(&results);
    let last = format!(
        r#"{{"batch_id":"b-1","orchestrator_id":"o-1","protocol_version":"1.0","results":[{}],"type":"step_batch_response"}}"#,
        results.join(",")
    );
    for body in [first, last] {
        let batch = results_of(&body);
        assert_eq!(batch.batch_id, "b-1");
        assert_eq!(batch.orchestrator_id, "o-1");
        assert_eq!(ids(&batch), [1, 3, 9]);
        let refused: Vec<_> = batch.refused.iter().map(|r| (r.index, r.step)).collect();
        assert_eq!(
            refused,
            [
                (1, step(2)),
                (3, step(4)),
                (4, step(5)),
                (5, None),
                (6, step(7)),
                (7, None),
            ]
        );
        assert!(batch.refused[3].reason.contains("step 6"));
        let message = batch.refusal().unwrap().message;
        assert!(message.contains("results [1, 3, 4, 5, 6, 7]"), "{message}");
    }
}

#[test]
fn a_bad_envelope_refuses_the_message_whole() {
    let bad_result = with_output(2, &nested(200));
    let code = |body: &str| {
        codec::decode_from_worker(&frames(body), MAX)
            .unwrap_err()
            .code()
    };
    // Empty results.
    assert_eq!(code(&response(&[])), ProtocolErrorCode::InvalidMessage);
    for results in [vec![good(1)], vec![good(1), bad_result.clone()]] {
        let body = response(&results);
        // Another major version.
        let v2 = body.replace(r#""protocol_version":"1.0""#, r#""protocol_version":"2.0""#);
        let err = codec::decode_from_worker(&frames(v2), MAX).unwrap_err();
        assert!(matches!(err, DecodeError::VersionMismatch { .. }), "{err}");
        // No orchestrator_id, or an empty one.
        let none = body.replace(r#""orchestrator_id":"o-1","#, "");
        let err = codec::decode_from_worker(&frames(none), MAX).unwrap_err();
        assert_eq!(err.code(), ProtocolErrorCode::InvalidMessage);
        assert!(err.to_string().contains("orchestrator_id"), "{err}");
        let empty = body.replace(r#""orchestrator_id":"o-1""#, r#""orchestrator_id":"""#);
        assert_eq!(code(&empty), ProtocolErrorCode::InvalidMessage);
        // No protocol_version.
        let unversioned = body.replace(r#""protocol_version":"1.0","#, "");
        assert_eq!(code(&unversioned), ProtocolErrorCode::InvalidMessage);
        // A lone surrogate in the envelope: the whole message is invalid.
        let id = body.replace(r#""batch_id":"b-1""#, r#""batch_id":"\ud800""#);
        assert_eq!(code(&id), ProtocolErrorCode::InvalidMessage);
        // Bytes that are not UTF-8, even inside one result's output.
        let mut bytes = response(&[good(1), with_output(2, "\"\u{1}\"")]).into_bytes();
        let at = bytes.iter().position(|&b| b == 1).unwrap();
        bytes[at] = 0xff;
        let err = codec::decode_from_worker(&frames(bytes), MAX).unwrap_err();
        assert_eq!(err.code(), ProtocolErrorCode::MalformedJson, "{err}");
    }
    // Not a response at all: refused as the strict decode refuses it.
    let hello = r#"{"type":"hello","worker_id":"w","handlers":["a"],"capacity":0}"#;
    assert_eq!(
        codec::decode_from_worker(&frames(hello), MAX).unwrap_err(),
        codec::decode::<WorkerMessage>(&frames(hello), MAX).unwrap_err()
    );
}

#[test]
fn control_messages_come_back_as_messages() {
    let hello = WorkerMessage::Hello(WorkerHello::new("w", vec!["a".into()], 1));
    let decoded = codec::decode_from_worker(&codec::encode(&hello).unwrap(), MAX).unwrap();
    assert_eq!(decoded, FromWorker::Message(hello));
}

#[test]
fn attempt_zero_is_invalid_everywhere_a_step_attempt_appears() {
    let result = response(&[good(1).replace(r#""attempt":1"#, r#""attempt":0"#)]);
    let hello = r#"{"type":"hello","worker_id":"w","handlers":["a"],"capacity":2,
        "in_progress":[{"step_id":1,"attempt":0,"orchestrator_id":"o"}]}"#;
    let drain = r#"{"type":"drain","returned":[{"step_id":1,"attempt":0,"orchestrator_id":"o"}]}"#;
    for body in [result.as_str(), hello, drain] {
        let err = codec::decode::<WorkerMessage>(&frames(body), MAX).unwrap_err();
        assert_eq!(err.code(), ProtocolErrorCode::InvalidMessage, "{body}");
        assert!(err.to_string().contains("attempt"), "{err}");
    }
    for body in [hello, drain] {
        let err = codec::decode_from_worker(&frames(body), MAX).unwrap_err();
        assert_eq!(err.code(), ProtocolErrorCode::InvalidMessage, "{body}");
    }
    let step = serde_json::to_string(&StepExecutionRequest::new(1, 1, "s", "h", 1_000)).unwrap();
    for bad in [
        step.replace(r#""attempt":1"#, r#""attempt":0"#),
        step.replace(r#""timeout_ms":1000"#, r#""timeout_ms":0"#),
    ] {
        let body = format!(
            r#"{{"type":"step_batch_request","batch_id":"b","protocol_version":"1.0","steps":[{bad}]}}"#
        );
        let typed = codec::decode::<OrchestratorMessage>(&frames(body.as_str()), MAX).unwrap_err();
        let raw = raw::decode_for_worker(&frames(body.as_str()), MAX).unwrap_err();
        assert_eq!(typed.code(), ProtocolErrorCode::InvalidMessage, "{typed}");
        assert_eq!(raw, typed);
    }
}

#[test]
fn a_hello_holding_more_than_its_capacity_is_invalid() {
    let mut hello = WorkerHello::new("w", vec!["a".into()], 1);
    hello.in_progress = (1..=2)
        .map(|step_id| HeldStep {
            step_id,
            attempt: 1,
            orchestrator_id: "o".into(),
        })
        .collect();
    let frames = codec::encode(&WorkerMessage::Hello(hello)).unwrap();
    let err = codec::decode_from_worker(&frames, MAX).unwrap_err();
    assert_eq!(err.code(), ProtocolErrorCode::InvalidMessage);
    assert!(err.to_string().contains("capacity"), "{err}");
}

#[test]
fn a_hello_limiting_a_handler_it_lacks_or_to_zero_is_invalid() {
    let limited = |handler: &str, limit: u32| {
        let mut hello = WorkerHello::new("w", vec!["a".into(), "b".into()], 4);
        hello.handler_limits.insert(handler.into(), limit);
        codec::encode(&WorkerMessage::Hello(hello)).unwrap()
    };
    let err = codec::decode_from_worker(&limited("c", 1), MAX).unwrap_err();
    assert_eq!(err.code(), ProtocolErrorCode::InvalidMessage);
    assert!(err.to_string().contains("not one of handlers"), "{err}");
    let err = codec::decode_from_worker(&limited("a", 0), MAX).unwrap_err();
    assert_eq!(err.code(), ProtocolErrorCode::InvalidMessage);
    assert!(err.to_string().contains("at least 1"), "{err}");
    // A limit above the capacity is valid (it limits nothing), and a hello
    // without limits sends none.
    assert!(codec::decode_from_worker(&limited("b", 9), MAX).is_ok());
    let plain = codec::encode(&WorkerMessage::Hello(WorkerHello::new(
        "w",
        vec!["a".into()],
        1,
    )));
    let body = String::from_utf8(plain.unwrap()[1].clone()).unwrap();
    assert!(!body.contains("handler_limits"), "{body}");
}

// ---- decode_from_worker agrees with the strict decode ----

/// A result as JSON, possibly broken in one of the ways a worker breaks
/// them.
fn result_value() -> impl Strategy<Value = Value> {
    (
        any::<i64>(),
        1u32..5,
        any::<bool>(),
        "\\PC{0,12}",
        0usize..12,
    )
        .prop_map(|(step_id, attempt, completed, text, flaw)| {
            let mut result = if completed {
                json!({"step_id": step_id, "status": "completed", "output": {"text": text},
                    "metadata": {"attempt": attempt, "execution_time_ms": 1, "worker_id": "w",
                                 "retryable": false, "completed_at": "2026-01-01T00:00:00Z"}})
            } else {
                json!({"step_id": step_id, "status": "failed",
                    "error": {"message": text, "error_type": "E", "retryable": true},
                    "metadata": {"attempt": attempt, "execution_time_ms": 1, "worker_id": "w",
                                 "retryable": true, "completed_at": "2026-01-01T00:00:00Z"}})
            };
            match flaw {
                0 => result["metadata"]["attempt"] = json!(0),
                1 => result["status"] = json!("timed_out"),
                2 => result["status"] = json!("cancelled"),
                3 => result["error"] = Value::Null,
                4 => {
                    result.as_object_mut().unwrap().remove("step_id");
                }
                5 => result["output"] = serde_json::from_str(&nested(101)).unwrap(),
                6 => result["metadata"]["attempt"] = json!(-1),
                _ => {} // most results are fine
            }
            result
        })
}

/// Any message a worker sends, as a body; bad results included.
fn worker_body() -> impl Strategy<Value = Vec<u8>> {
    let response = (
        prop::collection::vec(result_value(), 0..5),
        prop_oneof![Just("o-1".to_string()), Just(String::new())],
        any::<bool>(),
    )
        .prop_map(|(results, orchestrator_id, type_first)| {
            let envelope = json!({"batch_id": "b", "orchestrator_id": orchestrator_id,
                                  "protocol_version": "1.0", "results": results});
            let text = envelope.to_string();
            if type_first {
                format!(r#"{{"type":"step_batch_response",{}"#, &text[1..])
            } else {
                // serde_json writes keys sorted: `type` goes last.
                let mut value = envelope;
                value["type"] = json!("step_batch_response");
                value.to_string()
            }
            .into_bytes()
        });
    let control = prop_oneof![
        Just(json!({"type": "heartbeat"})),
        Just(json!({"type": "goodbye", "reason": "bye"})),
        (0u32..3).prop_map(|capacity| json!({"type": "hello", "worker_id": "w",
            "handlers": ["a"], "capacity": capacity,
            "in_progress": [{"step_id": 1, "attempt": 1, "orchestrator_id": "o"}]})),
        (0u32..2).prop_map(|attempt| json!({"type": "drain",
            "returned": [{"step_id": 1, "attempt": attempt, "orchestrator_id": "o"}]})),
    ]
    .prop_map(|v| v.to_string().into_bytes());
    prop_oneof![3 => response, 1 => control]
}

proptest! {
    /// Where the strict decode takes a message, `decode_from_worker` gives
    /// the same message, refusing nothing; where it refuses the envelope,
    /// both name the same problem; a refused result means the strict
    /// decode refused the message.
    #[test]
    fn decode_from_worker_agrees_with_the_strict_decode(body in worker_body()) {
        let strict = codec::decode::<WorkerMessage>(&frames(body.clone()), MAX);
        let lenient = codec::decode_from_worker(&frames(body.clone()), MAX);
        match (&strict, &lenient) {
            (Ok(WorkerMessage::StepBatchResponse(response)), Ok(FromWorker::Results(batch))) => {
                prop_assert!(batch.refused.is_empty());
                prop_assert_eq!(&batch.results, &response.results);
                prop_assert_eq!(&batch.batch_id, &response.batch_id);
                prop_assert_eq!(&batch.orchestrator_id, &response.orchestrator_id);
            }
            (Ok(message), Ok(FromWorker::Message(got))) => prop_assert_eq!(got, message),
            (Ok(_), _) => prop_assert!(false, "strict {:?} but lenient {:?}", strict, lenient),
            (Err(_), Ok(FromWorker::Results(batch))) => prop_assert!(!batch.refused.is_empty()),
            (Err(s), Err(l)) => prop_assert_eq!(s.code(), l.code()),
            (Err(_), Ok(FromWorker::Message(_))) => prop_assert!(false, "strict {:?} but lenient {:?}", strict, lenient),
        }
    }

    /// The good results of a message are all taken, whatever else it holds.
    #[test]
    fn good_results_are_taken_beside_bad_ones(results in prop::collection::vec(result_value(), 1..8)) {
        let texts: Vec<String> = results.iter().map(Value::to_string).collect();
        let batch = results_of(&response(&texts));
        prop_assert_eq!(batch.results.len() + batch.refused.len(), results.len());
        let mut taken = batch.results.iter();
        for (index, text) in texts.iter().enumerate() {
            let alone = codec::decode::<WorkerMessage>(&frames(response(std::slice::from_ref(text))), MAX);
            let refused = batch.refused.iter().any(|r| r.index == index);
            prop_assert_eq!(alone.is_err(), refused, "{}", text);
            if let Ok(WorkerMessage::StepBatchResponse(r)) = alone {
                prop_assert_eq!(Some(&r.results[0]), taken.next());
            }
        }
    }
}

// ---- every DecodeError is short, whatever the input ----

const HUGE: usize = 4 << 20;

/// 4 MiB of text whose start grows when escaped or quoted (multi-byte
/// characters, quotes, backslashes and control characters): what an
/// error message quotes is its start.
fn huge_text() -> String {
    let mut text = "é\"\\\u{1}😀x".repeat(1000);
    text.push_str(&"x".repeat(HUGE - text.len()));
    text
}

/// The same as a JSON string.
fn huge_json_string() -> String {
    serde_json::to_string(&huge_text()).unwrap()
}

fn assert_short(what: &str, err: &DecodeError) {
    let text = err.to_string();
    assert!(
        text.len() < 512,
        "{what}: {} bytes: {}…",
        text.len(),
        codec::truncate(&text, 300)
    );
}

#[test]
fn every_decode_error_is_short_whatever_the_input() {
    let big = huge_text();
    let s = huge_json_string();
    let result = |status: &str| {
        format!(
            r#"{{"step_id":1,"status":{status},"metadata":{{"attempt":1,"execution_time_ms":1,"worker_id":"w","retryable":false,"completed_at":"2026-01-01T00:00:00Z"}}}}"#
        )
    };
    // (what, frames, sent by a worker?)
    let bodies: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        ("frame count", vec![big.clone().into_bytes(); 3], true),
        (
            "bad header",
            vec![big.clone().into_bytes(), b"{}".to_vec()],
            true,
        ),
        (
            "header major",
            vec![format!("tasker/{big}").into_bytes(), b"{}".to_vec()],
            false,
        ),
        ("too large", frames(big.clone()), true),
        ("not json", frames(format!("{{{big}")), true),
        (
            "not utf-8",
            frames([&b"{\"type\":\""[..], &vec![0xff; HUGE]].concat()),
            false,
        ),
        (
            "unterminated string",
            frames(format!(
                r#"{{"type":"hello","worker_id":{}"#,
                &s[..s.len() - 1]
            )),
            true,
        ),
        ("unknown type", frames(format!(r#"{{"type":{s}}}"#)), true),
        ("unknown type", frames(format!(r#"{{"type":{s}}}"#)), false),
        (
            "wrong type of field",
            frames(format!(
                r#"{{"type":"hello","worker_id":"w","handlers":["a"],"capacity":{s}}}"#
            )),
            true,
        ),
        ("unknown status", frames(response(&[result(&s)])), true),
        (
            "body version",
            frames(response(&[good(1)]).replace(r#""1.0""#, &s)),
            true,
        ),
        (
            "unknown error code",
            frames(format!(
                r#"{{"type":"protocol_error","code":{s},"message":"m"}}"#
            )),
            true,
        ),
        (
            "bad timestamp",
            frames(response(
                &[good(1).replace(r#""2026-01-01T00:00:00Z""#, &s)],
            )),
            true,
        ),
        (
            "step request",
            frames(format!(
                r#"{{"type":"step_batch_request","batch_id":"b","protocol_version":"1.0","steps":[{{"step_id":{s}}}]}}"#
            )),
            false,
        ),
        (
            "step version",
            frames(format!(
                r#"{{"type":"step_batch_request","batch_id":"b","protocol_version":{s},"steps":[]}}"#
            )),
            false,
        ),
        (
            "welcome",
            frames(format!(
                r#"{{"type":"welcome","heartbeat_interval_ms":{s}}}"#
            )),
            false,
        ),
    ];
    let max = 4 * HUGE;
    let mut kinds = std::collections::BTreeSet::new();
    for (what, frames, from_worker) in &bodies {
        let max = if *what == "too large" { 1024 } else { max };
        let errors = if *from_worker {
            [
                codec::decode::<WorkerMessage>(frames, max).err(),
                codec::decode_from_worker(frames, max).err(),
            ]
        } else {
            [
                codec::decode::<OrchestratorMessage>(frames, max).err(),
                raw::decode_for_worker(frames, max).err(),
            ]
        };
        for err in errors.iter().flatten() {
            kinds.insert(format!("{:?}", err.code()));
            assert_short(what, err);
        }
        if !from_worker {
            continue;
        }
        if let Ok(FromWorker::Results(batch)) = codec::decode_from_worker(frames, max) {
            for refused in &batch.refused {
                assert!(
                    refused.reason.len() < 512,
                    "{what}: {}",
                    refused.reason.len()
                );
            }
            if let Some(refusal) = batch.refusal() {
                assert!(refusal.message.len() < 512, "{what}");
            }
        }
    }
    // Every kind of error was met.
    for code in [
        "MalformedFrames",
        "UnsupportedVersion",
        "MessageTooLarge",
        "MalformedJson",
        "UnknownMessageType",
        "InvalidMessage",
    ] {
        assert!(kinds.contains(code), "{code} not met: {kinds:?}");
    }
}

#[test]
fn a_refused_result_quoting_huge_input_is_named_briefly() {
    let s = huge_json_string();
    let body = response(&[
        good(1),
        good(2).replace(r#""completed""#, &s),
        with_output(3, &format!("[{s}, \"\\udce9\"]")),
    ]);
    let Ok(FromWorker::Results(batch)) = codec::decode_from_worker(&frames(body), 64 << 20) else {
        panic!("not results")
    };
    assert_eq!(ids(&batch), [1]);
    assert_eq!(batch.refused.len(), 2);
    for refused in &batch.refused {
        assert!(refused.reason.len() < 512, "{}", refused.reason.len());
    }
    assert!(batch.refusal().unwrap().message.len() < 512);
}

/// What decoding a 100-result response costs per result: serde's derived
/// code parsing from bytes (serde_json checks every string's UTF-8 on its
/// own) and from the text checked once as a whole, and
/// `decode_from_worker` in all (the text checked once, read by hand, then
/// each result's checks). `cargo test --release -p tasker-protocol --test
/// from_worker decode_cost -- --ignored --nocapture`
#[test]
#[ignore = "a benchmark: prints figures"]
fn decode_cost() {
    let results: Vec<String> = (0..100)
        .map(|i| {
            format!(
                r#"{{"step_id":{},"status":"completed","output":null,"metadata":{{"attempt":1,"execution_time_ms":0,"worker_id":"rust-4242-1a2b3c4d","retryable":false,"completed_at":"2026-12-03T10:00:00.004123456Z"}}}}"#,
                1_000 + i
            )
        })
        .collect();
    let body = response(&results);
    let message = frames(body.clone());
    fn least(decode: impl FnMut() -> usize) -> f64 {
        common::least_ns_per_item(10_000, 100, decode)
    }
    let from_bytes = least(|| {
        let parsed: StepBatchResponse = serde_json::from_slice(body.as_bytes()).unwrap();
        parsed.results.len()
    });
    let from_text = least(|| {
        let text = std::str::from_utf8(body.as_bytes()).unwrap();
        let parsed: StepBatchResponse = serde_json::from_str(text).unwrap();
        parsed.results.len()
    });
    let decode = least(|| match codec::decode_from_worker(&message, MAX) {
        Ok(FromWorker::Results(batch)) => batch.results.len(),
        other => panic!("not results: {other:?}"),
    });
    eprintln!(
        "ns per result: serde from bytes {from_bytes:.0}, serde from text checked once {from_text:.0}, decode_from_worker {decode:.0} ({:.0}% of serde from bytes)",
        100.0 * decode / from_bytes
    );
}
