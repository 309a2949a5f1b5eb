//! Framing, encoding and validating decoding.
//!
//! A message is two ZeroMQ frames: the header [`PROTOCOL_HEADER`]
//! (`tasker/1.0`) and a UTF-8 JSON body. A `ROUTER` peer sees the sender's
//! routing id as an extra first frame; stripping it is the socket owner's job.
//!
//! [`decode`] rejects, with a [`DecodeError`] naming the problem, anything
//! that is not a well-formed message of the expected direction.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use thiserror::Error;

use crate::messages::{
    HeldStep, OrchestratorMessage, ProtocolError, ProtocolErrorCode, StepBatchResponse,
    StepExecutionResult, StepId, StepRef, StepStatus, WorkerMessage,
};
use crate::{MAX_JSON_DEPTH, PROTOCOL_HEADER, PROTOCOL_HEADER_PREFIX, PROTOCOL_MAJOR};

/// Why a message could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not exactly a header frame and a body frame.
    #[error("malformed message: expected 2 frames (header, body), got {0}")]
    FrameCount(usize),
    /// The header frame is not `tasker/MAJOR.MINOR`.
    #[error("not a tasker message: header frame is {0:?}, expected \"tasker/MAJOR.MINOR\"")]
    BadHeader(String),
    /// A version whose major part differs from ours.
    #[error("unsupported protocol version {got:?}: this peer speaks major version {expected}")]
    VersionMismatch {
        /// The version the peer announced.
        got: String,
        /// Our major version.
        expected: u32,
    },
    /// The body exceeds the configured limit.
    #[error("message body of {size} bytes exceeds max_message_bytes ({max})")]
    TooLarge {
        /// Body size in bytes.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// The body is not JSON (or not an object).
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    /// The body has no `type`, or one this side does not accept.
    #[error("unknown message type {0:?}")]
    UnknownMessageType(String),
    /// The body breaks the schema or the rules of its message type.
    #[error("invalid {message_type} message: {reason}")]
    Invalid {
        /// The `type` of the message.
        message_type: String,
        /// What is wrong.
        reason: String,
    },
}

impl DecodeError {
    /// The protocol-error code to report to the peer.
    pub fn code(&self) -> ProtocolErrorCode {
        match self {
            DecodeError::FrameCount(_) => ProtocolErrorCode::MalformedFrames,
            DecodeError::BadHeader(_) | DecodeError::VersionMismatch { .. } => {
                ProtocolErrorCode::UnsupportedVersion
            }
            DecodeError::TooLarge { .. } => ProtocolErrorCode::MessageTooLarge,
            DecodeError::MalformedJson(_) => ProtocolErrorCode::MalformedJson,
            DecodeError::UnknownMessageType(_) => ProtocolErrorCode::UnknownMessageType,
            DecodeError::Invalid { .. } => ProtocolErrorCode::InvalidMessage,
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// A message type that travels on the wire in one direction.
pub trait WireMessage: Serialize + DeserializeOwned {
    /// The `type` tags this direction accepts.
    const TYPES: &'static [&'static str];

    /// Checks the rules the schema cannot express.
    fn validate(&self) -> Result<(), DecodeError>;

    /// Parses the direction's bulk message straight into its type when the
    /// body starts with its `type` tag, as every encoder here writes it.
    /// A tagged enum otherwise buffers the whole body as generic content
    /// before it knows the variant, which costs more than the parse itself.
    /// `None`: take the general path.
    fn parse_direct(body: &[u8]) -> Option<serde_json::Result<Self>> {
        let _ = body;
        None
    }
}

/// Encodes a message as its two frames: header and JSON body.
pub fn encode<M: Serialize>(message: &M) -> Result<[Vec<u8>; 2], EncodeError> {
    Ok([
        PROTOCOL_HEADER.as_bytes().to_vec(),
        serde_json::to_vec(message)?,
    ])
}

/// Checks a header frame (`tasker/MAJOR.MINOR`).
pub fn check_header(header: &[u8]) -> Result<(), DecodeError> {
    if header == PROTOCOL_HEADER.as_bytes() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(header);
    let version = text
        .strip_prefix(PROTOCOL_HEADER_PREFIX)
        .ok_or_else(|| DecodeError::BadHeader(truncate(&text, 64)))?;
    check_version(version)
}

/// Checks a `MAJOR.MINOR` version string against ours.
pub fn check_version(version: &str) -> Result<(), DecodeError> {
    // Digits only: `u32::from_str` also takes a leading `+`, which a
    // worker reading the SPEC's "unsigned decimal number" refuses.
    let major = version
        .split('.')
        .next()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(PROTOCOL_MAJOR) => Ok(()),
        _ => Err(DecodeError::VersionMismatch {
            got: truncate(version, 64),
            expected: PROTOCOL_MAJOR,
        }),
    }
}

/// Decodes and validates the frames of one message (without a routing id).
///
/// ```
/// use tasker_protocol::{codec, DecodeError, WorkerMessage};
///
/// let err = codec::decode::<WorkerMessage>(&[&b"tasker/2.0"[..], b"{}"], 1024).unwrap_err();
/// assert!(matches!(err, DecodeError::VersionMismatch { .. }));
/// ```
pub fn decode<M: WireMessage>(
    frames: &[impl AsRef<[u8]>],
    max_message_bytes: usize,
) -> Result<M, DecodeError> {
    let body = checked_body(frames, max_message_bytes)?;
    // Fast path: one typed parse. Only a failure pays for the second parse
    // that tells which kind of problem it was.
    let parsed = M::parse_direct(body).unwrap_or_else(|| serde_json::from_slice::<M>(body));
    match parsed {
        Ok(message) => {
            message.validate()?;
            Ok(message)
        }
        Err(typed_error) => Err(classify::<M>(body, typed_error)),
    }
}

/// The parse behind [`WireMessage::parse_direct`]: `body` as `T` when it
/// starts with `start`, by `by_hand` when that reads it, else by serde.
/// The body's UTF-8 is checked once, as a whole: parsed from bytes,
/// serde_json checks every string again on its own, which cost over a
/// quarter of a 100-result response's parse (`decode_cost` in
/// `tests/from_worker.rs`). `None` when the body does not start so or is
/// not UTF-8; the general path then reports the problem.
fn parse_bulk<T: DeserializeOwned>(
    body: &[u8],
    start: &[u8],
    by_hand: impl FnOnce(&str) -> Option<T>,
) -> Option<serde_json::Result<T>> {
    if !body.starts_with(start) {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
    Some(by_hand(text).map_or_else(|| serde_json::from_str(text), Ok))
}

/// The body of a two-frame message whose header and size are acceptable.
pub(crate) fn checked_body(
    frames: &[impl AsRef<[u8]>],
    max_message_bytes: usize,
) -> Result<&[u8], DecodeError> {
    if frames.len() != 2 {
        return Err(DecodeError::FrameCount(frames.len()));
    }
    check_header(frames[0].as_ref())?;
    let body = frames[1].as_ref();
    if body.len() > max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max: max_message_bytes,
        });
    }
    Ok(body)
}

/// serde_json's words for `error` in parsing `text`, at most a few hundred
/// bytes, replaced where they mislead: a lone surrogate escape reads
/// "unexpected end of hex escape", which sends people looking for a typo,
/// where the usual cause is a string cut in the middle of a character by
/// its sender (Python's `json.dumps`, JavaScript's `JSON.stringify`).
///
/// ```
/// use tasker_protocol::codec::json_error_reason;
/// let text = br#"{"s":"\ud800"}"#;
/// let error = serde_json::from_slice::<serde_json::Value>(text).unwrap_err();
/// let reason = json_error_reason(&error, text);
/// assert!(reason.starts_with("lone surrogate escape"), "{reason}");
/// assert!(!reason.contains("end of hex escape"), "{reason}");
/// ```
pub fn json_error_reason(error: &serde_json::Error, text: &[u8]) -> String {
    let message = truncate(&error.to_string(), 200);
    let surrogate = |w: &[u8]| {
        matches!(
            w,
            [b'\\', b'u', b'd' | b'D', b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F']
        )
    };
    if message.contains("hex escape") && text.windows(4).any(surrogate) {
        // serde_json's own words ("unexpected end of hex escape at line 1
        // column 9") are left out: the escape is whole, only its other half
        // is missing, and the position is within whatever fragment was
        // parsed, often one field rather than the body.
        "lone surrogate escape: a \\uD800-\\uDFFF escape must be one half of a surrogate pair"
            .to_string()
    } else if message.starts_with("recursion limit exceeded") {
        // The text may be valid JSON; it is deeper than anyone here reads.
        format!("nested {JSON_PARSE_DEPTH} levels deep or more, more than is read ({message})")
    } else {
        message
    }
}

/// How deep serde_json's parse of arrays and objects gives up ("recursion
/// limit exceeded"): at this level, so 127 levels are read.
const JSON_PARSE_DEPTH: usize = 128;

/// The top-level fields of a body, each left as its JSON text: read
/// without building values, so neither nesting depth nor string escapes
/// inside a field can fail it. An error when the body is not JSON text
/// (including: not UTF-8) or not an object.
fn top_level(body: &[u8]) -> Result<BTreeMap<Cow<'_, str>, &RawValue>, DecodeError> {
    // Said first: skipping a value does not look inside its strings, and
    // the parse's own error for a bad byte reads like an escape problem.
    if let Err(e) = std::str::from_utf8(body) {
        return Err(DecodeError::MalformedJson(format!(
            "body is not UTF-8 (the bytes at offset {} are not)",
            e.valid_up_to()
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
            DecodeError::MalformedJson("body is not a JSON object".into())
        } else {
            DecodeError::MalformedJson(json_error_reason(&e, body))
        }
    })
}

/// The `type` of a body, as a string: `Err` names what else it is.
fn type_of(fields: &BTreeMap<Cow<'_, str>, &RawValue>) -> Result<String, String> {
    match fields.get("type") {
        None => Err("<missing>".into()),
        Some(raw) => serde_json::from_str::<String>(raw.get()).map_err(|_| truncate(raw.get(), 64)),
    }
}

/// Names what is wrong with a body the typed parse refused.
///
/// Not JSON text or not an object: `MalformedJson`. A missing or unknown
/// `type`: `UnknownMessageType`. A `protocol_version` of another major:
/// `VersionMismatch`. Anything else, including a lone surrogate escape or
/// nesting beyond the parser's limit inside a field: `Invalid`, with the
/// typed parse's reason.
pub(crate) fn classify<M: WireMessage>(body: &[u8], typed_error: serde_json::Error) -> DecodeError {
    let fields = match top_level(body) {
        Ok(fields) => fields,
        Err(e) => return e,
    };
    let t = match type_of(&fields) {
        Ok(t) if M::TYPES.contains(&t.as_str()) => t,
        Ok(t) => return DecodeError::UnknownMessageType(truncate(&t, 64)),
        Err(what) => return DecodeError::UnknownMessageType(what),
    };
    // A wrong major version inside a batch is a version problem, not a
    // shape problem: report it as such.
    if let Some(v) = fields
        .get("protocol_version")
        .and_then(|raw| serde_json::from_str::<Cow<'_, str>>(raw.get()).ok())
    {
        if let Err(e) = check_version(&v) {
            return e;
        }
    }
    DecodeError::Invalid {
        message_type: t,
        reason: json_error_reason(&typed_error, body),
    }
}

/// `text` in at most `max_bytes` bytes (so at most that many characters),
/// cut at a character boundary and marked `…` when cut, with control
/// characters escaped (`\n`, `\u{1b}`): untrusted input is never quoted
/// whole in a log line or a reply, and cannot forge a log line of its own
/// (a `worker_id` holding a newline and a timestamp did) or colour a
/// terminal. Escapes count against `max_bytes`, so text of control
/// characters is not quoted six times longer.
///
/// ```
/// use tasker_protocol::codec::truncate;
/// assert_eq!(truncate("abcdef", 3), "abc…");
/// assert_eq!(truncate("ééé", 3), "é…");
/// assert_eq!(truncate("abc", 3), "abc");
/// assert_eq!(truncate("a\nERROR forged\u{1b}[31m", 64), "a\\nERROR forged\\u{1b}[31m");
/// assert_eq!(truncate(&"\u{1}".repeat(100), 12), "\\u{1}\\u{1}…");
/// // Text that reorders or hides what follows it on a terminal, too.
/// assert_eq!(truncate("evil\u{202e}gpj.exe\u{200b}", 64), "evil\\u{202e}gpj.exe\\u{200b}");
/// ```
pub fn truncate(text: &str, max_bytes: usize) -> String {
    escape(text, max_bytes, false)
}

/// `text` cut to `max_bytes` (then `…`), control and invisible characters
/// escaped, and with `quotes` also `"` and `\`.
fn escape(text: &str, max_bytes: usize, quotes: bool) -> String {
    let mut cut = String::with_capacity(text.len().min(max_bytes) + '…'.len_utf8());
    let mut escaped = String::new();
    for c in text.chars() {
        escaped.clear();
        if c.is_control() || is_invisible(c) {
            escaped.extend(c.escape_default());
        } else if quotes && (c == '"' || c == '\\') {
            escaped.push('\\');
            escaped.push(c);
        } else {
            escaped.push(c);
        }
        if cut.len() + escaped.len() > max_bytes {
            cut.push('…');
            break;
        }
        cut.push_str(&escaped);
    }
    cut
}

/// [`truncate`] as a log field's value: in double quotes, with `"` and `\`
/// escaped too, so text a peer chose (a `worker_id` such as
/// `w error_type=Forged`) cannot pass for more fields of the line.
///
/// ```
/// use tasker_protocol::codec::quoted;
/// assert_eq!(quoted("w1", 64), r#""w1""#);
/// assert_eq!(quoted("w error=\"x\"", 64), r#""w error=\"x\"""#);
/// assert_eq!(quoted("a\\b\n", 64), r#""a\\b\n""#);
/// ```
pub fn quoted(text: &str, max_bytes: usize) -> String {
    format!("\"{}\"", escape(text, max_bytes, true))
}

/// Characters that draw nothing yet change what a terminal shows around
/// them: bidirectional overrides and isolates (which can show `exe.txt` for
/// `txt.exe`), zero-width characters, and line and paragraph separators.
/// [`truncate`] escapes them, as it does control characters.
///
/// ```
/// assert!(tasker_protocol::codec::is_invisible('\u{202e}'));
/// assert!(!tasker_protocol::codec::is_invisible('é'));
/// ```
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// How deeply arrays and objects nest in `value`: `7` is 0 deep, `[7]`
/// and `[]` 1, `{"a":[7]}` 2. Compared with `max_json_depth`
/// ([`crate::MAX_JSON_DEPTH`]). Walks without recursion, so any value a
/// handler builds can be measured.
///
/// ```
/// use serde_json::json;
/// use tasker_protocol::codec::json_depth;
/// assert_eq!(json_depth(&json!(7)), 0);
/// assert_eq!(json_depth(&json!([])), 1);
/// assert_eq!(json_depth(&json!({"a": [7], "b": 1})), 2);
/// ```
pub fn json_depth(value: &Value) -> u32 {
    // Measured twice per output on the orchestrator's I/O thread (by the
    // reader of the canonical form, then by `check_result`): only
    // containers go on the stack, and nothing is allocated per node.
    let nests = |v: &&Value| matches!(v, Value::Array(_) | Value::Object(_));
    if !nests(&value) {
        return 0;
    }
    let mut deepest = 0;
    let mut stack = vec![(value, 1u32)];
    while let Some((value, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        let below = |child| (child, depth + 1);
        match value {
            Value::Array(items) => stack.extend(items.iter().filter(nests).map(below)),
            Value::Object(map) => stack.extend(map.values().filter(nests).map(below)),
            _ => {}
        }
    }
    deepest
}

pub(crate) fn invalid(message_type: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        message_type: message_type.to_string(),
        reason: truncate(&reason.into(), 200),
    }
}

impl WireMessage for WorkerMessage {
    const TYPES: &'static [&'static str] = &[
        "hello",
        "heartbeat",
        "step_batch_response",
        "drain",
        "goodbye",
        "protocol_error",
    ];

    fn parse_direct(body: &[u8]) -> Option<serde_json::Result<Self>> {
        // The form every encoder here writes is read by hand; any other,
        // and anything wrong, by serde.
        parse_bulk(
            body,
            br#"{"type":"step_batch_response","#,
            crate::read::response,
        )
        .map(|parsed| parsed.map(WorkerMessage::StepBatchResponse))
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let t = self.type_name();
        match self {
            WorkerMessage::Hello(hello) => {
                if hello.worker_id.is_empty() {
                    return Err(invalid(t, "worker_id is empty"));
                }
                if hello.handlers.is_empty() {
                    return Err(invalid(t, "handlers is empty"));
                }
                if hello.handlers.iter().any(String::is_empty) {
                    return Err(invalid(t, "a handler name is empty"));
                }
                crate::check_hello_names(
                    &hello.worker_id,
                    &hello.handlers,
                    hello.language.as_deref(),
                )
                .map_err(|reason| invalid(t, reason))?;
                if let Some(incarnation) = &hello.incarnation {
                    if incarnation.is_empty() {
                        return Err(invalid(t, "incarnation is empty"));
                    }
                    if incarnation.chars().count() > crate::MAX_INCARNATION_CHARS {
                        return Err(invalid(
                            t,
                            format!(
                                "incarnation is longer than {} characters",
                                crate::MAX_INCARNATION_CHARS
                            ),
                        ));
                    }
                }
                if hello.capacity == 0 {
                    return Err(invalid(t, "capacity must be at least 1"));
                }
                if hello.in_progress.len() > hello.capacity as usize {
                    return Err(invalid(
                        t,
                        format!(
                            "in_progress lists {} steps, more than capacity {}",
                            hello.in_progress.len(),
                            hello.capacity
                        ),
                    ));
                }
                check_held(t, "in_progress", &hello.in_progress)?;
                let served: std::collections::HashSet<&str> = if hello.handler_limits.is_empty() {
                    std::collections::HashSet::new()
                } else {
                    hello.handlers.iter().map(String::as_str).collect()
                };
                for (handler, limit) in &hello.handler_limits {
                    if *limit == 0 {
                        return Err(invalid(
                            t,
                            format!(
                                "handler_limits[{:?}] must be at least 1",
                                truncate(handler, 64)
                            ),
                        ));
                    }
                    if !served.contains(handler.as_str()) {
                        return Err(invalid(
                            t,
                            format!(
                                "handler_limits names {:?}, which is not one of handlers",
                                truncate(handler, 64)
                            ),
                        ));
                    }
                }
            }
            WorkerMessage::Drain(drain) => check_held(t, "returned", &drain.returned)?,
            WorkerMessage::Goodbye(goodbye) => check_held(t, "unanswered", &goodbye.unanswered)?,
            WorkerMessage::StepBatchResponse(response) => {
                check_response_envelope(response)?;
                for (index, result) in response.results.iter().enumerate() {
                    if let Err(reason) = check_result(result) {
                        return Err(invalid(t, format!("results[{index}]: {reason}")));
                    }
                }
            }
            WorkerMessage::Heartbeat(_) | WorkerMessage::ProtocolError(_) => {}
        }
        Ok(())
    }
}

/// The entries of a hello's `in_progress` or a drain's `returned`.
fn check_held(message_type: &str, field: &str, held: &[HeldStep]) -> Result<(), DecodeError> {
    for (index, step) in held.iter().enumerate() {
        if step.attempt == 0 {
            return Err(invalid(
                message_type,
                format!(
                    "{field}[{index}]: step {}: attempt must be at least 1",
                    step.step_id
                ),
            ));
        }
        if step.orchestrator_id.is_empty() {
            return Err(invalid(
                message_type,
                format!("{field}[{index}]: orchestrator_id is empty"),
            ));
        }
    }
    Ok(())
}

/// The rules of a `step_batch_response` that concern the whole message.
fn check_response_envelope(response: &StepBatchResponse) -> Result<(), DecodeError> {
    check_envelope(
        &response.protocol_version,
        &response.orchestrator_id,
        response.results.len(),
    )
}

fn check_envelope(
    protocol_version: &str,
    orchestrator_id: &str,
    results: usize,
) -> Result<(), DecodeError> {
    check_version(protocol_version)?;
    if orchestrator_id.is_empty() {
        return Err(invalid("step_batch_response", "orchestrator_id is empty"));
    }
    if results == 0 {
        return Err(invalid("step_batch_response", "results is empty"));
    }
    Ok(())
}

/// The rules one step of a `step_batch_request` must keep that its schema
/// alone does not say: attempt and timeout at least 1.
pub(crate) fn check_step(step_id: StepId, attempt: u32, timeout_ms: u64) -> Result<(), String> {
    if attempt == 0 {
        return Err(format!(
            "step {step_id}: metadata.attempt must be at least 1"
        ));
    }
    if timeout_ms == 0 {
        return Err(format!(
            "step {step_id}: metadata.timeout_ms must be at least 1"
        ));
    }
    Ok(())
}

/// The rules one result from a worker must keep beyond its types (SPEC
/// §4.2): attempt at least 1, status `completed` or `failed`, an error
/// exactly when failed, output nested at most [`crate::MAX_JSON_DEPTH`]
/// deep. The reason names the step.
pub fn check_result(result: &StepExecutionResult) -> Result<(), String> {
    let id = result.step_id;
    if result.metadata.attempt == 0 {
        return Err(format!("step {id}: metadata.attempt must be at least 1"));
    }
    if let Some(output) = &result.output {
        let depth = json_depth(output);
        if depth > MAX_JSON_DEPTH {
            return Err(format!(
                "step {id}: output nested {depth} deep, more than max_json_depth {MAX_JSON_DEPTH}"
            ));
        }
    }
    if !result.status.is_reportable_by_worker() {
        return Err(format!(
            "step {id}: a worker cannot report status {:?}",
            result.status
        ));
    }
    match (result.status, &result.output, &result.error) {
        (StepStatus::Completed, _, Some(_)) => Err(format!("step {id}: completed with an error")),
        (StepStatus::Failed, _, None) => Err(format!("step {id}: failed without an error")),
        _ => Ok(()),
    }
}

/// What the orchestrator reads from a worker: a control message, or the
/// results of a `step_batch_response`, each result judged on its own.
#[derive(Debug, Clone, PartialEq)]
pub enum FromWorker {
    /// Any message but `step_batch_response`.
    Message(WorkerMessage),
    /// A `step_batch_response`.
    Results(ResultBatch),
}

/// A `step_batch_response` whose envelope is valid, with its results
/// split into those that keep the rules and those that do not. One bad
/// result does not cost the others (SPEC §3.3).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultBatch {
    /// `batch_id` as sent.
    pub batch_id: String,
    /// The orchestrator whose steps these results answer.
    pub orchestrator_id: String,
    /// The results that keep the rules, in message order.
    pub results: Vec<StepExecutionResult>,
    /// The results that do not.
    pub refused: Vec<RefusedResult>,
}

impl ResultBatch {
    /// The `protocol_error` (`invalid_message`) to send once for this
    /// message when some of its results were refused: it names their
    /// indices (the first 16) and the first reason, in a few hundred bytes.
    /// `None` when every result was accepted.
    pub fn refusal(&self) -> Option<ProtocolError> {
        let first = self.refused.first()?;
        let mut indices: Vec<String> = self
            .refused
            .iter()
            .take(16)
            .map(|r| r.index.to_string())
            .collect();
        if self.refused.len() > 16 {
            indices.push(format!("… ({} in all)", self.refused.len()));
        }
        // "The others" only where there were others.
        let others = if self.results.is_empty() {
            ""
        } else {
            " (the others were taken)"
        };
        Some(ProtocolError {
            code: ProtocolErrorCode::InvalidMessage,
            message: format!(
                "step_batch_response: results [{}] refused{others}; results[{}]: {}",
                indices.join(", "),
                first.index,
                truncate(&first.reason, 200)
            ),
        })
    }
}

/// A result refused on its own, inside an otherwise valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedResult {
    /// Its place in `results`.
    pub index: usize,
    /// The step attempt it names, when `step_id` and `metadata.attempt`
    /// could be read (and the attempt is at least 1).
    pub step: Option<StepRef>,
    /// What is wrong, at most a few hundred bytes.
    pub reason: String,
}

/// Decodes one message from a worker as the orchestrator does: like
/// [`decode`]`::<WorkerMessage>`, except that the results of a
/// `step_batch_response` are judged one by one. A result nested deeper
/// than the parser goes, holding a lone surrogate escape, or breaking a
/// rule of §4.2 is refused alone ([`RefusedResult`]); the message is
/// refused whole only when its envelope is wrong.
///
/// ```
/// use tasker_protocol::codec::{self, FromWorker};
///
/// let body = r#"{"type":"step_batch_response","batch_id":"b","orchestrator_id":"o",
///   "protocol_version":"1.0","results":[
///   {"step_id":1,"status":"completed","output":"\udce9","metadata":{"attempt":1,
///    "execution_time_ms":1,"worker_id":"w","retryable":false,"completed_at":"2025-01-01T00:00:00Z"}},
///   {"step_id":2,"status":"completed","output":"ok","metadata":{"attempt":1,
///    "execution_time_ms":1,"worker_id":"w","retryable":false,"completed_at":"2025-01-01T00:00:00Z"}}]}"#;
/// let Ok(FromWorker::Results(batch)) = codec::decode_from_worker(&[&b"tasker/1.0"[..], body.as_bytes()], 1 << 20)
/// else { panic!() };
/// assert_eq!(batch.results.len(), 1);
/// assert_eq!(batch.refused[0].step.unwrap().step_id, 1);
/// ```
pub fn decode_from_worker(
    frames: &[impl AsRef<[u8]>],
    max_message_bytes: usize,
) -> Result<FromWorker, DecodeError> {
    let body = checked_body(frames, max_message_bytes)?;
    let parsed = WorkerMessage::parse_direct(body).unwrap_or_else(|| serde_json::from_slice(body));
    let typed_error = match parsed {
        Ok(WorkerMessage::StepBatchResponse(response)) => {
            check_response_envelope(&response)?;
            return Ok(FromWorker::Results(split_results(response)));
        }
        Ok(message) => {
            message.validate()?;
            return Ok(FromWorker::Message(message));
        }
        Err(e) => e,
    };
    lenient_results(body, typed_error).map(FromWorker::Results)
}

fn split_results(response: StepBatchResponse) -> ResultBatch {
    let (mut results, mut refused) = (response.results, Vec::new());
    // Nearly always every result passes: then they stay where they were
    // decoded, rather than each being moved to a second vector.
    if results.iter().any(|result| check_result(result).is_err()) {
        let all = std::mem::take(&mut results);
        for (index, result) in all.into_iter().enumerate() {
            match check_result(&result) {
                Ok(()) => results.push(result),
                Err(reason) => refused.push(RefusedResult {
                    index,
                    step: (result.metadata.attempt > 0).then(|| result.step_ref()),
                    reason,
                }),
            }
        }
    }
    ResultBatch {
        batch_id: response.batch_id,
        orchestrator_id: response.orchestrator_id,
        results,
        refused,
    }
}

/// A message the typed parse refused, read again as a
/// `step_batch_response` with each result kept as text (the raw reader
/// neither recurses nor checks escapes, so no one result can sink the
/// parse), then each result parsed alone. A message that is not a response
/// whose envelope reads is refused whole, named by the envelope's own
/// problem when it is a response.
fn lenient_results(
    body: &[u8],
    typed_error: serde_json::Error,
) -> Result<ResultBatch, DecodeError> {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
        batch_id: String,
        orchestrator_id: String,
        protocol_version: String,
        #[serde(borrow)]
        results: Vec<&'a serde_json::value::RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Ident {
        step_id: StepId,
        metadata: IdentMetadata,
    }
    #[derive(serde::Deserialize)]
    struct IdentMetadata {
        attempt: u32,
    }
    let envelope = match serde_json::from_slice::<Envelope<'_>>(body) {
        Ok(envelope) if envelope.kind == "step_batch_response" => envelope,
        Ok(_) => return Err(classify::<WorkerMessage>(body, typed_error)),
        Err(envelope_error) => {
            let is_response = top_level(body)
                .ok()
                .and_then(|fields| type_of(&fields).ok())
                .is_some_and(|t| t == "step_batch_response");
            let error = if is_response {
                envelope_error
            } else {
                typed_error
            };
            return Err(classify::<WorkerMessage>(body, error));
        }
    };
    check_envelope(
        &envelope.protocol_version,
        &envelope.orchestrator_id,
        envelope.results.len(),
    )?;
    let mut results = Vec::with_capacity(envelope.results.len());
    let mut refused = Vec::new();
    for (index, raw) in envelope.results.iter().enumerate() {
        match serde_json::from_str::<StepExecutionResult>(raw.get()) {
            Ok(result) => match check_result(&result) {
                Ok(()) => results.push(result),
                Err(reason) => refused.push(RefusedResult {
                    index,
                    step: (result.metadata.attempt > 0).then(|| result.step_ref()),
                    reason,
                }),
            },
            Err(error) => {
                let step = serde_json::from_str::<Ident>(raw.get())
                    .ok()
                    .filter(|i| i.metadata.attempt > 0)
                    .map(|i| StepRef {
                        step_id: i.step_id,
                        attempt: i.metadata.attempt,
                    });
                let why = json_error_reason(&error, raw.get().as_bytes());
                let reason = match step {
                    Some(s) => format!("step {}: {why}", s.step_id),
                    None => why,
                };
                refused.push(RefusedResult {
                    index,
                    step,
                    reason,
                });
            }
        }
    }
    Ok(ResultBatch {
        batch_id: envelope.batch_id,
        orchestrator_id: envelope.orchestrator_id,
        results,
        refused,
    })
}

impl WireMessage for OrchestratorMessage {
    const TYPES: &'static [&'static str] = &[
        "welcome",
        "step_batch_request",
        "heartbeat",
        "goodbye",
        "protocol_error",
    ];

    fn parse_direct(body: &[u8]) -> Option<serde_json::Result<Self>> {
        parse_bulk(
            body,
            br#"{"type":"step_batch_request","#,
            crate::read::request,
        )
        .map(|parsed| parsed.map(OrchestratorMessage::StepBatchRequest))
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let t = self.type_name();
        match self {
            OrchestratorMessage::StepBatchRequest(batch) => {
                check_version(&batch.protocol_version)?;
                if batch.steps.is_empty() {
                    return Err(invalid(t, "steps is empty"));
                }
                for (index, step) in batch.steps.iter().enumerate() {
                    let m = &step.metadata;
                    if let Err(reason) = check_step(step.step_id, m.attempt, m.timeout_ms) {
                        return Err(invalid(t, format!("steps[{index}]: {reason}")));
                    }
                }
            }
            OrchestratorMessage::Welcome(welcome) => {
                if welcome.heartbeat_interval_ms == 0 || welcome.liveness == 0 {
                    return Err(invalid(
                        t,
                        "heartbeat_interval_ms and liveness must be positive",
                    ));
                }
                if welcome.orchestrator_id.is_empty() {
                    return Err(invalid(t, "orchestrator_id is empty"));
                }
                if welcome.max_json_depth == 0 {
                    return Err(invalid(t, "max_json_depth must be at least 1"));
                }
            }
            OrchestratorMessage::Heartbeat(_)
            | OrchestratorMessage::Goodbye(_)
            | OrchestratorMessage::ProtocolError(_) => {}
        }
        Ok(())
    }
}
