//! The two bulk messages read by hand when they are in the form every
//! encoder here writes: a `step_batch_response` as `write::result`,
//! `raw::CompletedEncoder` and the SDKs through them write it, a
//! `step_batch_request` as `write::request` and `raw::encode_steps` do.
//! Keys in that order, no whitespace between them. Anything else, down to
//! one unexpected byte, makes [`response`]
//! and [`request`] give up (`None`) and the caller parses the whole
//! message with serde, which has the last word on what is accepted and
//! why not.
//!
//! Every result is decoded on the orchestrator's I/O thread, every step on
//! the worker's: serde's derived code took about 280 ns a result
//! (`decode_cost` in `tests/from_worker.rs`), most of it matching keys it
//! has to expect in any order. Here the keys are compared as the bytes
//! they must be. JSON values (outputs, configs, contexts) and strings
//! with escapes are still serde_json's to read, where they stand.
//!
//! What this reader accepts, serde accepts too and reads the same (the
//! tests below hold the two together, on well-formed and on mangled
//! bodies). The one place where reading a part alone could differ from
//! reading the whole is nesting depth: serde refuses a message nested
//! past its recursion limit, and a value parsed on its own starts three or
//! four levels higher up. A value nested deeper than [`MAX_JSON_DEPTH`]
//! (far under that limit) therefore sends the message to serde as well.
//!
//! Every message and item is built with all its fields named, so a field
//! added to one stops the build here, as it does in `write`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codec::json_depth;
use crate::messages::{
    StepBatchRequest, StepBatchResponse, StepExecutionError, StepExecutionRequest,
    StepExecutionResult, StepRequestMetadata, StepResultMetadata, StepStatus,
};
use crate::MAX_JSON_DEPTH;

/// `text` as a response, when it is in the canonical form; `None` for
/// anything else, whether valid or not.
pub(crate) fn response(text: &str) -> Option<StepBatchResponse> {
    let mut r = Reader { text, at: 0 };
    r.expect(br#"{"type":"step_batch_response","batch_id":"#)?;
    let batch_id = r.owned_string()?;
    r.expect(br#","orchestrator_id":"#)?;
    let orchestrator_id = r.owned_string()?;
    r.expect(br#","protocol_version":"#)?;
    let protocol_version = r.owned_string()?;
    r.expect(br#","results":"#)?;
    let results = r.array(160, Reader::result)?;
    r.end()?;
    Some(StepBatchResponse {
        batch_id,
        orchestrator_id,
        protocol_version,
        results,
    })
}

/// `text` as a request, when it is in the canonical form; `None` for
/// anything else, whether valid or not.
pub(crate) fn request(text: &str) -> Option<StepBatchRequest> {
    let mut r = Reader { text, at: 0 };
    r.expect(br#"{"type":"step_batch_request","batch_id":"#)?;
    let batch_id = r.owned_string()?;
    r.expect(br#","protocol_version":"#)?;
    let protocol_version = r.owned_string()?;
    r.expect(br#","steps":"#)?;
    let steps = r.array(240, Reader::step)?;
    r.end()?;
    Some(StepBatchRequest {
        batch_id,
        protocol_version,
        steps,
    })
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.text.as_bytes()[self.at..]
    }

    fn expect(&mut self, bytes: &[u8]) -> Option<()> {
        self.rest()
            .starts_with(bytes)
            .then(|| self.at += bytes.len())
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.expect(&[byte]).is_some()
    }

    /// The message's closing brace, and nothing after it.
    fn end(&mut self) -> Option<()> {
        self.expect(b"}")?;
        (self.at == self.text.len()).then_some(())
    }

    /// An array of what `item` reads. Room is made for the items left if
    /// each takes at least `min_len` bytes (a result some 200, a step some
    /// 300), so the vector does not grow, moving every item, four or five
    /// times.
    fn array<T>(
        &mut self,
        min_len: usize,
        mut item: impl FnMut(&mut Self) -> Option<T>,
    ) -> Option<Vec<T>> {
        self.expect(b"[")?;
        let mut items = Vec::with_capacity((self.rest().len() / min_len).min(1024));
        if self.eat(b']') {
            return Some(items);
        }
        loop {
            items.push(item(self)?);
            if self.eat(b']') {
                return Some(items);
            }
            self.expect(b",")?;
        }
    }

    fn step(&mut self) -> Option<StepExecutionRequest> {
        self.expect(br#"{"step_id":"#)?;
        let step_id = i64::try_from(self.unsigned()?).ok()?;
        self.expect(br#","task_id":"#)?;
        let task_id = i64::try_from(self.unsigned()?).ok()?;
        self.expect(br#","step_name":"#)?;
        let step_name = self.owned_string()?;
        self.expect(br#","handler_class":"#)?;
        let handler_class = self.owned_string()?;
        self.expect(br#","handler_config":"#)?;
        let handler_config = self.value()?;
        self.expect(br#","task_context":"#)?;
        let task_context = self.value()?;
        self.expect(br#","previous_results":"#)?;
        let previous_results = if self.expect(b"{}").is_some() {
            BTreeMap::new()
        } else {
            let map: BTreeMap<String, Value> = self.serde()?;
            if map.values().any(|v| json_depth(v) > MAX_JSON_DEPTH) {
                return None;
            }
            map
        };
        self.expect(br#","metadata":{"attempt":"#)?;
        let attempt = u32::try_from(self.unsigned()?).ok()?;
        self.expect(br#","retry_limit":"#)?;
        let retry_limit = u32::try_from(self.unsigned()?).ok()?;
        self.expect(br#","timeout_ms":"#)?;
        let timeout_ms = self.unsigned()?;
        self.expect(br#","created_at":"#)?;
        let created_at = crate::timestamp::parse(&self.string()?)?;
        self.expect(b"}}")?;
        Some(StepExecutionRequest {
            step_id,
            task_id,
            step_name,
            handler_class,
            handler_config,
            task_context,
            previous_results,
            metadata: StepRequestMetadata {
                attempt,
                retry_limit,
                timeout_ms,
                created_at,
            },
        })
    }

    fn result(&mut self) -> Option<StepExecutionResult> {
        self.expect(br#"{"step_id":"#)?;
        let step_id = i64::try_from(self.unsigned()?).ok()?;
        let status = if self.expect(br#","status":"completed""#).is_some() {
            StepStatus::Completed
        } else {
            self.expect(br#","status":"failed""#)?;
            StepStatus::Failed
        };
        let output = if self.expect(br#","output":"#).is_some() {
            Some(self.value()?)
        } else {
            None
        };
        let error = if self.expect(br#","error":{"message":"#).is_some() {
            let message = self.owned_string()?;
            self.expect(br#","error_type":"#)?;
            let error_type = self.owned_string()?;
            let retryable = self.boolean(br#","retryable":"#)?;
            let backtrace = if self.expect(br#","backtrace":"#).is_some() {
                self.array(32, Reader::owned_string)?
            } else {
                Vec::new()
            };
            self.expect(b"}")?;
            Some(StepExecutionError {
                message,
                error_type,
                retryable,
                backtrace,
            })
        } else {
            None
        };
        self.expect(br#","metadata":{"attempt":"#)?;
        let attempt = u32::try_from(self.unsigned()?).ok()?;
        self.expect(br#","execution_time_ms":"#)?;
        let execution_time_ms = self.unsigned()?;
        self.expect(br#","worker_id":"#)?;
        let worker_id = self.owned_string()?;
        let retryable = self.boolean(br#","retryable":"#)?;
        self.expect(br#","completed_at":"#)?;
        let completed_at = crate::timestamp::parse(&self.string()?)?;
        self.expect(b"}}")?;
        Some(StepExecutionResult {
            step_id,
            status,
            output,
            error,
            metadata: StepResultMetadata {
                attempt,
                execution_time_ms,
                worker_id,
                retryable,
                completed_at,
            },
        })
    }

    /// A string: sliced from the body when it holds no escapes (the body
    /// is UTF-8 already, and `"` never sits inside a character), else
    /// unescaped by serde_json, which also refuses what JSON refuses in a
    /// string (control characters, bad escapes).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let rest = self.rest().strip_prefix(b"\"")?;
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest[len] != b'"' {
            return self.serde().map(Cow::Owned);
        }
        let start = self.at + 1;
        self.at = start + len + 1;
        Some(Cow::Borrowed(&self.text[start..start + len]))
    }

    fn owned_string(&mut self) -> Option<String> {
        self.string().map(Cow::into_owned)
    }

    /// `key` and `true` or `false` after it.
    fn boolean(&mut self, key: &[u8]) -> Option<bool> {
        self.expect(key)?;
        if self.expect(b"true").is_some() {
            Some(true)
        } else {
            self.expect(b"false").map(|()| false)
        }
    }

    /// Digits without a sign, a leading zero, a fraction or an exponent,
    /// that fit in a `u64`. What follows is checked by the caller's next
    /// `expect`, so `1.5` or `1e3` stops there.
    fn unsigned(&mut self) -> Option<u64> {
        let digits = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.rest()[..digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        let n = text.iter().try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        self.at += digits;
        Some(n)
    }

    /// One JSON value: the usual small ones here, anything else by
    /// serde_json.
    fn value(&mut self) -> Option<Value> {
        for (literal, value) in [
            (&b"null"[..], Value::Null),
            (b"{}", Value::Object(Default::default())),
            (b"true", Value::Bool(true)),
            (b"false", Value::Bool(false)),
        ] {
            if self.expect(literal).is_some() {
                return Some(value);
            }
        }
        let value: Value = self.serde()?;
        (json_depth(&value) <= MAX_JSON_DEPTH).then_some(value)
    }

    /// One value of type `T` by serde_json, which reads one and says where
    /// it ended.
    fn serde<T: DeserializeOwned>(&mut self) -> Option<T> {
        // Whitespace is the serde path's (and a value never starts with it
        // in the canonical form).
        if self.rest().first().map_or(true, u8::is_ascii_whitespace) {
            return None;
        }
        let mut values = serde_json::Deserializer::from_str(&self.text[self.at..]).into_iter::<T>();
        let value = values.next()?.ok()?;
        self.at += values.byte_offset();
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::StepExecutionError;
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    fn canonical(results: &[StepExecutionResult]) -> String {
        let message = StepBatchResponse::new("b-1", "orch-1", results.to_vec());
        let message = crate::messages::WorkerMessage::StepBatchResponse(message);
        serde_json::to_string(&message).unwrap()
    }

    fn serde(text: &str) -> Option<StepBatchResponse> {
        serde_json::from_str(text).ok()
    }

    fn completed(step_id: i64, output: Value) -> StepExecutionResult {
        let step = crate::StepRef {
            step_id,
            attempt: 1,
        };
        let mut result = StepExecutionResult::completed(step, output, "w-1", 3);
        result.metadata.completed_at = Utc.timestamp_opt(1_780_000_000, 4_123_456).unwrap();
        result
    }

    #[test]
    fn the_canonical_form_reads_as_serde_reads_it() {
        let results = vec![
            completed(1, Value::Null),
            completed(2, serde_json::json!({"a": [1, 2.5, "x"], "b": {"c": null}})),
            completed(3, serde_json::json!("text")),
            completed(i64::MAX, serde_json::json!(-7)),
        ];
        let text = canonical(&results);
        assert_eq!(response(&text), serde(&text));
        assert_eq!(response(&text).unwrap().results, results);
    }

    #[test]
    fn escapes_and_errors_read_as_serde_reads_them() {
        let step = crate::StepRef {
            step_id: 5,
            attempt: 2,
        };
        let mut error = StepExecutionError::new("KeyError", "no key \"id\"\n", false);
        error.backtrace = vec!["app.py:3 in run".into(), "tab\there".into()];
        let mut failed = StepExecutionResult::failed(step, StepStatus::Failed, error, "w\\1", 9);
        failed.metadata.completed_at = Utc.timestamp_opt(1_780_000_000, 0).unwrap();
        let results = vec![completed(1, Value::Null), failed];
        let text = canonical(&results);
        assert!(text.contains(r#"\"id\""#), "the message is escaped: {text}");
        assert_eq!(response(&text).unwrap().results, results);
    }

    #[test]
    fn anything_else_goes_to_serde() {
        let plain = canonical(&[completed(1, Value::Null)]);
        let deep = {
            let mut output = Value::Null;
            for _ in 0..=MAX_JSON_DEPTH {
                output = Value::Array(vec![output]);
            }
            canonical(&[completed(1, output)])
        };
        for (why, text) in [
            (
                "a control character in a string",
                plain.replace("w-1", "w\u{1}1"),
            ),
            (
                "whitespace",
                plain.replace(r#""step_id":1"#, r#""step_id": 1"#),
            ),
            (
                "a leading zero",
                plain.replace(r#""step_id":1"#, r#""step_id":01"#),
            ),
            (
                "a negative id",
                plain.replace(r#""step_id":1"#, r#""step_id":-1"#),
            ),
            ("a deep output", deep),
            ("trailing whitespace", format!("{plain} ")),
            (
                "keys in another order",
                plain.replace(
                    r#""type":"step_batch_response","batch_id":"b-1""#,
                    r#""batch_id":"b-1","type":"step_batch_response""#,
                ),
            ),
        ] {
            assert_eq!(response(&text), None, "{why}");
        }
    }

    /// Bytes that change what JSON means, put and taken anywhere.
    const EDITS: &[u8] = b"0123456789-+.eE\"\\{}[],: \tnulltruefalsex\x01\x7f";

    /// Every body one byte away from `text`: each byte of [`EDITS`] put in
    /// place of each byte and before it, and each byte taken out.
    fn one_byte_edits(text: &str) -> impl Iterator<Item = String> + '_ {
        let bytes = text.as_bytes();
        (0..=bytes.len()).flat_map(move |i| {
            let removed = (i < bytes.len()).then(|| [&bytes[..i], &bytes[i + 1..]].concat());
            let edits = EDITS.iter().flat_map(move |&b| {
                let inserted = [&bytes[..i], &[b], &bytes[i..]].concat();
                let replaced =
                    (i < bytes.len()).then(|| [&bytes[..i], &[b], &bytes[i + 1..]].concat());
                std::iter::once(inserted).chain(replaced)
            });
            removed
                .into_iter()
                .chain(edits)
                .filter_map(|b| String::from_utf8(b).ok())
        })
    }

    fn canonical_request(steps: &[StepExecutionRequest]) -> String {
        let message = StepBatchRequest::new("b-1:7", steps.to_vec());
        let message = crate::messages::OrchestratorMessage::StepBatchRequest(message);
        serde_json::to_string(&message).unwrap()
    }

    fn serde_request(text: &str) -> Option<StepBatchRequest> {
        serde_json::from_str(text).ok()
    }

    fn step(step_id: i64) -> StepExecutionRequest {
        let mut step = StepExecutionRequest::new(step_id, 3, "charge", "payments.Charge", 30_000);
        step.metadata.created_at = Utc.timestamp_opt(1_780_000_000, 5).unwrap();
        step
    }

    #[test]
    fn a_canonical_request_reads_as_serde_reads_it() {
        let mut full = step(2);
        full.handler_config = serde_json::json!({"retries": [1, 2], "url": "https://x/\\ é"});
        full.task_context = serde_json::json!(null);
        full.previous_results
            .insert("validate".into(), serde_json::json!({"ok": true}));
        full.previous_results.insert("é \"q\"".into(), Value::Null);
        full.metadata.retry_limit = 3;
        let steps = vec![step(1), full];
        let text = canonical_request(&steps);
        assert_eq!(request(&text).unwrap().steps, steps);
    }

    #[test]
    fn numbers_out_of_their_range_go_to_serde() {
        let text = canonical_request(&[step(1)]);
        for (field, from, to) in [
            (
                "step_id",
                r#""step_id":1"#,
                r#""step_id":9223372036854775808"#,
            ),
            (
                "task_id",
                r#""task_id":3"#,
                r#""task_id":9223372036854775808"#,
            ),
            ("attempt", r#""attempt":1"#, r#""attempt":4294967296"#),
            (
                "retry_limit",
                r#""retry_limit":0"#,
                r#""retry_limit":4294967296"#,
            ),
            (
                "timeout_ms",
                r#""timeout_ms":30000"#,
                r#""timeout_ms":18446744073709551616"#,
            ),
        ] {
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text, "{field}");
            assert_eq!(request(&edited), None, "{field}");
            assert_eq!(serde_request(&edited), None, "{field}");
        }
    }

    #[test]
    fn every_one_byte_edit_of_a_request_is_refused_or_read_as_serde_reads_it() {
        let mut second = step(20);
        second.handler_config = serde_json::json!({"k": [1, "v"]});
        second
            .previous_results
            .insert("a".into(), serde_json::json!(7));
        let text = canonical_request(&[step(10), second]);
        let mut read = 0;
        for edited in one_byte_edits(&text) {
            if let Some(request) = request(&edited) {
                assert_eq!(Some(request), serde_request(&edited), "{edited}");
                read += 1;
            }
        }
        assert!(read > 100, "only {read} edits read by hand");
    }

    #[test]
    fn every_one_byte_edit_is_refused_or_read_as_serde_reads_it() {
        let mut failed = completed(30, Value::Null);
        failed.status = StepStatus::Failed;
        failed.output = None;
        failed.error = Some(StepExecutionError {
            message: "no \"id\"".into(),
            error_type: "KeyError".into(),
            retryable: true,
            backtrace: vec!["a.py:1".into()],
        });
        let text = canonical(&[
            completed(10, Value::Null),
            completed(20, serde_json::json!({"k": [1, "v"]})),
            failed,
        ]);
        let mut read = 0;
        for edited in one_byte_edits(&text) {
            if let Some(response) = response(&edited) {
                assert_eq!(Some(response), serde(&edited), "{edited}");
                read += 1;
            }
        }
        // Digits changed in numbers, strings and timestamps still read.
        assert!(read > 100, "only {read} edits read by hand");
    }

    fn any_output() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[ -~\\\\\"\u{7f}-\u{3ff}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\]{0,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_error() -> impl Strategy<Value = StepExecutionError> {
        let text = "[ -~\t\n\u{80}-\u{3ff}]{0,12}";
        (text, text, any::<bool>(), prop::collection::vec(text, 0..3)).prop_map(
            |(message, error_type, retryable, backtrace)| StepExecutionError {
                message,
                error_type,
                retryable,
                backtrace,
            },
        )
    }

    fn any_result() -> impl Strategy<Value = StepExecutionResult> {
        (
            (0..i64::MAX, prop::option::of(any_error())),
            prop::option::of(any_output()),
            1..u32::MAX,
            any::<u64>(),
            "[ -~\u{80}-\u{3ff}]{0,12}",
            any::<bool>(),
            0..4_000_000_000i64,
            0..1_000_000_000u32,
        )
            .prop_map(
                |((step_id, error), output, attempt, ms, worker, retryable, secs, nanos)| {
                    let mut result = completed(step_id, Value::Null);
                    if error.is_some() {
                        result.status = StepStatus::Failed;
                    }
                    result.error = error;
                    result.output = output;
                    result.metadata.attempt = attempt;
                    result.metadata.execution_time_ms = ms;
                    result.metadata.worker_id = worker;
                    result.metadata.retryable = retryable;
                    result.metadata.completed_at = Utc.timestamp_opt(secs, nanos).unwrap();
                    result
                },
            )
    }

    fn any_step() -> impl Strategy<Value = StepExecutionRequest> {
        (
            (
                0..i64::MAX,
                0..i64::MAX,
                "[ -~\u{80}-\u{3ff}]{0,12}",
                "[ -~]{0,12}",
            ),
            (any_output(), any_output()),
            prop::collection::btree_map("[ -~]{0,6}", any_output(), 0..3),
            (1..u32::MAX, any::<u32>(), 1..u64::MAX),
            (0..4_000_000_000i64, 0..1_000_000_000u32),
        )
            .prop_map(
                |(
                    (id, task, name, handler),
                    (config, context),
                    previous,
                    (attempt, retry_limit, timeout),
                    (secs, nanos),
                )| {
                    let mut step = StepExecutionRequest::new(id, task, name, handler, timeout);
                    step.handler_config = config;
                    step.task_context = context;
                    step.previous_results = previous;
                    step.metadata.attempt = attempt;
                    step.metadata.retry_limit = retry_limit;
                    step.metadata.created_at = Utc.timestamp_opt(secs, nanos).unwrap();
                    step
                },
            )
    }

    proptest! {
        #[test]
        fn a_request_it_reads_serde_reads_the_same(steps in prop::collection::vec(any_step(), 0..5)) {
            let text = canonical_request(&steps);
            let read = request(&text);
            if read.is_some() {
                prop_assert_eq!(&read, &serde_request(&text));
            }
            prop_assert!(read.is_some(), "the canonical form is read by hand");
        }

        #[test]
        fn what_it_reads_serde_reads_the_same(results in prop::collection::vec(any_result(), 0..6)) {
            let text = canonical(&results);
            let read = response(&text);
            if read.is_some() {
                prop_assert_eq!(&read, &serde(&text));
            }
            prop_assert!(read.is_some(), "the canonical form is read by hand");
        }

        /// One byte changed, added or taken out anywhere: this reader
        /// either gives up or reads what serde reads.
        #[test]
        fn a_mangled_body_is_refused_or_read_as_serde_reads_it(
            results in prop::collection::vec(any_result(), 1..4),
            at in any::<prop::sample::Index>(),
            byte in prop::sample::select(b"0123456789-+.eE\"\\{}[],: \tnulltruefalse x\x01".to_vec()),
            how in 0..3u8,
        ) {
            let mut bytes = canonical(&results).into_bytes();
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => { bytes.remove(i); }
            }
            let Ok(text) = String::from_utf8(bytes) else { return Ok(()) };
            if let Some(read) = response(&text) {
                prop_assert_eq!(Some(read), serde(&text));
            }
        }
    }
}
