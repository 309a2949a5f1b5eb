//! The checks a result's output passes before it is sent (SPEC §5, W7):
//! nesting no deeper than the orchestrator's `max_json_depth`, and, for
//! output handed over as JSON text, every string valid Unicode (no lone
//! UTF-16 surrogate escape such as `"\udce9"`, which JavaScript's
//! `JSON.stringify` and Python's `json.dumps` both write). An output that
//! fails them would be refused by the orchestrator; the worker reports the
//! step `failed` with [`error_types::SERIALIZATION_ERROR`] instead, not
//! retryable (the same output would fail again).
//!
//! The checks run where the result is handed over, on the thread that
//! completes the step, never on the I/O thread:
//! [`WorkerRuntime::complete_many`](crate::WorkerRuntime::complete_many)
//! checks typed outputs ([`check_output`]),
//! [`WorkerRuntime::complete_encoded`](crate::WorkerRuntime::complete_encoded)
//! results encoded already, in one pass over their text. A host that
//! converts outputs itself can check as it goes
//! ([`WorkerRuntime::max_json_depth`](crate::WorkerRuntime::max_json_depth))
//! and name where the problem is.

use serde_json::Value;
use tasker_protocol::{error_types, StepExecutionError, StepExecutionResult, StepRef, StepStatus};

/// Deepest `max_json_depth` a worker takes from a `welcome`: outputs are
/// built and encoded recursively, and this bounds the stack they use. An
/// orchestrator that accepts deeper output gets at most this.
pub(crate) const DEPTH_CAP: u32 = 1_000;

/// Checks a typed output: arrays and objects nested at most `max_depth`
/// deep (`7` is 0 deep, `[7]` 1, `{"a":[7]}` 2). The reason names the
/// limit. Does not recurse, so any depth is safe to check.
///
/// ```
/// use serde_json::json;
/// assert!(tasker_worker::check_output(&json!({"a": [7]}), 2).is_ok());
/// assert!(tasker_worker::check_output(&json!({"a": [[7]]}), 2).is_err());
/// ```
pub fn check_output(output: &Value, max_depth: u32) -> Result<(), String> {
    // Containers still to look into, with their depth.
    let mut open: Vec<(&Value, u32)> = Vec::new();
    open.extend(enter(output, 1));
    while let Some((value, level)) = open.pop() {
        if level > max_depth {
            return Err(too_deep(max_depth));
        }
        match value {
            Value::Array(items) => open.extend(items.iter().filter_map(|v| enter(v, level + 1))),
            Value::Object(map) => open.extend(map.values().filter_map(|v| enter(v, level + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// `value` with its depth, if it is an array or an object.
fn enter(value: &Value, level: u32) -> Option<(&Value, u32)> {
    (value.is_array() || value.is_object()).then_some((value, level))
}

/// Checks an output given as JSON text (syntactically valid, e.g. a
/// `serde_json::value::RawValue`): nesting at most `max_depth` deep, and no
/// `\u` escape of a UTF-16 surrogate that is not part of a high-low pair.
/// One pass over the text, without parsing it.
///
/// ```
/// assert!(tasker_worker::check_output_json(r#"{"a":"\ud83c\udf89"}"#, 100).is_ok());
/// let lone = tasker_worker::check_output_json(r#"{"a":"caf\udce9"}"#, 100).unwrap_err();
/// assert!(lone.contains("surrogate"), "{lone}");
/// assert!(tasker_worker::check_output_json("[[1]]", 1).is_err());
/// ```
pub fn check_output_json(text: &str, max_depth: u32) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth: u32 = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(too_deep(max_depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => i = check_string(bytes, i + 1)?,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Checks a whole result as JSON text (a [`StepExecutionResult`] object,
/// as [`tasker_protocol::raw::EncodedResult`] holds it): the nesting of its
/// `output` only (the result's own structure does not count), and every
/// string in it.
pub(crate) fn check_result_json(text: &str, max_depth: u32) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut depth: u32 = 0;
    // The next value at depth 1 is the output's; then, while inside it.
    let mut output_next = false;
    let mut in_output = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'[' | b'{' => {
                in_output |= std::mem::take(&mut output_next);
                depth += 1;
                if in_output && depth - 1 > max_depth {
                    return Err(too_deep(max_depth));
                }
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth <= 1 {
                    in_output = false;
                }
            }
            b'"' => {
                let end = check_string(bytes, i + 1)?;
                let is_output_key = depth == 1
                    && !output_next
                    && &bytes[i + 1..end] == b"output"
                    && bytes
                        .get(end + 1..)
                        .unwrap_or_default()
                        .iter()
                        .find(|b| !b.is_ascii_whitespace())
                        == Some(&b':');
                output_next = is_output_key;
                i = end;
            }
            b',' => output_next = false,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Checks the escapes of the string whose text starts at `i` (after its
/// opening quote); returns the index of its closing quote.
fn check_string(bytes: &[u8], mut i: usize) -> Result<usize, String> {
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Ok(i),
            b'\\' => {
                if bytes.get(i + 1) == Some(&b'u') {
                    let unit = hex4(bytes, i + 2);
                    match unit {
                        Some(0xD800..=0xDBFF) => {
                            let low = (bytes.get(i + 6) == Some(&b'\\')
                                && bytes.get(i + 7) == Some(&b'u'))
                            .then(|| hex4(bytes, i + 8))
                            .flatten();
                            if !matches!(low, Some(0xDC00..=0xDFFF)) {
                                return Err(lone_surrogate(unit.unwrap_or_default()));
                            }
                            i += 12;
                        }
                        Some(0xDC00..=0xDFFF) => {
                            return Err(lone_surrogate(unit.unwrap_or_default()));
                        }
                        _ => i += 6,
                    }
                } else {
                    i += 2;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(i)
}

fn hex4(bytes: &[u8], at: usize) -> Option<u16> {
    let digits = bytes.get(at..at + 4)?;
    let text = std::str::from_utf8(digits).ok()?;
    u16::from_str_radix(text, 16).ok()
}

fn too_deep(max_depth: u32) -> String {
    format!(
        "it is nested more than {max_depth} levels deep (arrays and objects); \
         the orchestrator accepts at most {max_depth} (max_json_depth)"
    )
}

fn lone_surrogate(unit: u16) -> String {
    format!(
        "a string holds a lone UTF-16 surrogate (\\u{unit:04x}), which is not valid Unicode; \
         the orchestrator accepts valid Unicode text only"
    )
}

/// The result reporting that a step's output cannot be sent: `failed`,
/// [`error_types::SERIALIZATION_ERROR`], not retryable, the message naming
/// `problem` (as returned by [`check_output`] or [`check_output_json`]).
pub fn serialization_failure(
    step: StepRef,
    problem: &str,
    worker_id: &str,
    execution_time_ms: u64,
) -> StepExecutionResult {
    StepExecutionResult::failed(
        step,
        StepStatus::Failed,
        StepExecutionError::new(
            error_types::SERIALIZATION_ERROR,
            format!("the step's output cannot be sent: {problem}"),
            false,
        ),
        worker_id,
        execution_time_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(depth: usize) -> String {
        format!("{}7{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_arrays_and_objects_as_the_protocol_does() {
        for (text, depth) in [
            ("7", 0),
            ("[7]", 1),
            (r#"{"a":[7]}"#, 2),
            ("[]", 1),
            (r#"[{}, [[]]]"#, 3),
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(check_output(&value, depth).is_ok(), "{text}");
            assert!(check_output_json(text, depth).is_ok(), "{text}");
            if depth > 0 {
                assert!(check_output(&value, depth - 1).is_err(), "{text}");
                assert!(check_output_json(text, depth - 1).is_err(), "{text}");
            }
        }
        let deep = nested(100);
        assert!(check_output_json(&deep, 100).is_ok());
        assert!(check_output_json(&nested(101), 100).is_err());
        // A typed value far deeper than any recursion would survive.
        let mut value = json!(7);
        for _ in 0..100_000 {
            value = Value::Array(vec![value]);
        }
        assert!(check_output(&value, 100).unwrap_err().contains("100"));
        // Dropping it would recurse as deep.
        std::mem::forget(value);
        // Siblings nest too.
        let value = json!([1, {"a": [[7]]}, []]);
        assert!(check_output(&value, 3).is_err());
        assert!(check_output(&value, 4).is_ok());
    }

    #[test]
    fn in_a_whole_result_only_the_output_counts() {
        let step = StepRef {
            step_id: 1,
            attempt: 1,
        };
        let completed = |output: Value| {
            serde_json::to_string(&StepExecutionResult::completed(step, output, "w", 0)).unwrap()
        };
        for (output, depth) in [
            (json!(7), 0),
            (json!("output"), 0),
            (json!({"output": [1]}), 2),
            (json!([[[]]]), 3),
        ] {
            let text = completed(output.clone());
            assert!(check_result_json(&text, depth).is_ok(), "{text}");
            if depth > 0 {
                assert!(check_result_json(&text, depth - 1).is_err(), "{text}");
            }
        }
        let mut error = StepExecutionError::new("E", "m", false);
        error.backtrace = vec!["at x".into()];
        let failed = StepExecutionResult::failed(step, StepStatus::Failed, error, "w", 0);
        assert!(check_result_json(&serde_json::to_string(&failed).unwrap(), 0).is_ok());
        let raw = serde_json::value::RawValue::from_string(nested(101)).unwrap();
        let now = chrono::Utc::now();
        let encoded = tasker_protocol::raw::EncodedResult::completed(step, &raw, "w", 0, now);
        assert!(check_result_json(encoded.json(), 100).is_err());
        assert!(check_result_json(encoded.json(), 101).is_ok());
        let lone = serde_json::value::RawValue::from_string(r#"["\udce9"]"#.to_string()).unwrap();
        let encoded = tasker_protocol::raw::EncodedResult::completed(step, &lone, "w", 0, now);
        assert!(check_result_json(encoded.json(), 100)
            .unwrap_err()
            .contains("surrogate"));
    }

    #[test]
    fn brackets_and_escapes_inside_strings_are_text() {
        assert!(check_output_json(r#"["[[[", "\\\"{{{", "\"]]"]"#, 1).is_ok());
        assert!(
            check_output_json(r#""\\udce9""#, 0).is_ok(),
            "an escaped backslash"
        );
    }

    #[test]
    fn only_paired_surrogate_escapes_pass() {
        for ok in [
            r#""\ud83c\udf89""#,
            r#""\uD83C\uDF89""#,
            r#""\u00e9 \u0041""#,
            r#""caf\u00e9""#,
            r#""🎉""#,
        ] {
            assert!(check_output_json(ok, 0).is_ok(), "{ok}");
        }
        for bad in [
            r#""\udce9""#,
            r#""\ud83c""#,
            r#""\ud83c x""#,
            r#""\ud83c\u0041""#,
            r#""\udf89\ud83c""#,
            r#"{"k":["ok","x\ud800"]}"#,
        ] {
            let e = check_output_json(bad, 10).unwrap_err();
            assert!(e.contains("surrogate"), "{bad}: {e}");
        }
    }
}
