//! Steps and results carried as their JSON text.
//!
//! A worker's I/O thread does not need a step's payload, only its identity,
//! so [`decode_for_worker`] validates a `step_batch_request` as strictly as
//! [`codec::decode`], in one pass, but leaves each
//! step as JSON text: a [`RawStep`] is the step's place in the message body
//! and the places of its fields. Whoever runs the step decodes it on its
//! own thread ([`RawStep::decode`]), or copies the fields' text to a host
//! whose own JSON parser builds the host's objects (the Node SDK gives them
//! to V8's `JSON.parse`), so no step is parsed into a value tree only to be
//! written out again.
//!
//! The way back is the same: an [`EncodedResult`] is one result already
//! encoded as the JSON object it is on the wire, made by the thread that
//! completed the step, and [`encode_results`] frames several of them as one
//! `step_batch_response` by concatenation. A host that produces its output
//! as JSON text splices it in unparsed with [`EncodedResult::completed`].
//!
//! ```
//! use tasker_protocol::{codec, raw, OrchestratorMessage, StepBatchRequest, StepExecutionRequest};
//!
//! let step = StepExecutionRequest::new(7, 1, "validate", "validate_order", 5_000);
//! let batch = OrchestratorMessage::StepBatchRequest(StepBatchRequest::new("b-1", vec![step.clone()]));
//! let frames = codec::encode(&batch).unwrap();
//! let raw::RawOrchestratorMessage::StepBatch(batch) = raw::decode_for_worker(&frames, 1 << 20).unwrap()
//! else { unreachable!() };
//! assert_eq!(batch.steps[0].step_ref(), step.step_ref());
//! assert_eq!(batch.steps[0].decode().unwrap(), step);
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::codec::{self, checked_body, classify, invalid, DecodeError};
use crate::messages::{
    OrchestratorMessage, StepExecutionRequest, StepExecutionResult, StepId, StepRef,
    StepRequestMetadata, TaskId,
};
use crate::{PROTOCOL_HEADER, PROTOCOL_VERSION};

/// One step of a `step_batch_request`, validated and left as JSON text: a
/// place in the message body it came in, which the steps of one message
/// share, with the place of each of its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStep {
    body: Arc<str>,
    step_id: StepId,
    task_id: TaskId,
    attempt: u32,
    retry_limit: u32,
    timeout_ms: u64,
    /// Where the text of each JSON-valued field is in `body`, in the order
    /// of [`Spanned`]; `None` when the field was left out (or `null`).
    spans: [Option<(u32, u32)>; 6],
}

/// The fields of a step whose text [`RawStep::fields`] gives.
#[derive(Clone, Copy)]
enum Spanned {
    StepName,
    HandlerClass,
    HandlerConfig,
    TaskContext,
    PreviousResults,
    CreatedAt,
}

/// The fields of a [`RawStep`]: numbers read, everything else as its JSON
/// text, as sent (strings with their quotes and escapes), ready to be
/// spliced into other JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStepFields<'a> {
    /// `step_id`.
    pub step_id: StepId,
    /// `task_id`.
    pub task_id: TaskId,
    /// `step_name`, a JSON string.
    pub step_name: &'a str,
    /// `handler_class`, a JSON string.
    pub handler_class: &'a str,
    /// `handler_config`, any JSON value (`null` when absent).
    pub handler_config: &'a str,
    /// `task_context`, any JSON value (`null` when absent).
    pub task_context: &'a str,
    /// `previous_results`, a JSON object (`{}` when absent).
    pub previous_results: &'a str,
    /// `metadata.attempt`.
    pub attempt: u32,
    /// `metadata.retry_limit` (0 when absent).
    pub retry_limit: u32,
    /// `metadata.timeout_ms`.
    pub timeout_ms: u64,
    /// `metadata.created_at`, a JSON string holding an RFC 3339 timestamp.
    pub created_at: &'a str,
}

impl RawStep {
    /// The step encoded as it travels on the wire.
    pub fn from_request(request: &StepExecutionRequest) -> Self {
        // A request holds only strings, numbers and JSON values: it always
        // encodes, and its encoding passes the check.
        let body: Arc<str> = serde_json::to_string(request)
            .expect("a StepExecutionRequest always encodes")
            .into();
        let view: check::StepExecutionRequest =
            serde_json::from_str(&body).expect("an encoded request passes the check");
        Self::located(&body, view)
    }

    /// The step `view` was read from, in `body`.
    fn located(body: &Arc<str>, view: check::StepExecutionRequest<'_>) -> Self {
        let base = body.as_ptr() as usize;
        let span = |text: Option<&RawValue>| {
            text.map(|t| {
                let start = t.get().as_ptr() as usize - base;
                // Bodies are bounded by max_message_bytes, far below 4 GiB.
                (start as u32, t.get().len() as u32)
            })
        };
        Self {
            body: Arc::clone(body),
            step_id: view.step_id,
            task_id: view.task_id,
            attempt: view.metadata.attempt,
            retry_limit: view.metadata.retry_limit,
            timeout_ms: view.metadata.timeout_ms,
            spans: [
                span(Some(view.step_name.0)),
                span(Some(view.handler_class.0)),
                span(view.handler_config),
                span(view.task_context),
                span(view.previous_results.0),
                span(Some(view.metadata.created_at.0)),
            ],
        }
    }

    /// The `(step_id, attempt)` this step is an attempt of.
    pub fn step_ref(&self) -> StepRef {
        StepRef {
            step_id: self.step_id,
            attempt: self.attempt,
        }
    }

    /// Each field's value, without parsing anything again.
    ///
    /// ```
    /// use tasker_protocol::{raw::RawStep, StepExecutionRequest};
    ///
    /// let step = RawStep::from_request(&StepExecutionRequest::new(7, 1, "validate", "validate_order", 5_000));
    /// let fields = step.fields();
    /// assert_eq!(fields.step_name, r#""validate""#);
    /// assert_eq!(fields.task_context, "{}");
    /// assert_eq!(fields.timeout_ms, 5_000);
    /// ```
    pub fn fields(&self) -> RawStepFields<'_> {
        RawStepFields {
            step_id: self.step_id,
            task_id: self.task_id,
            step_name: self.text(Spanned::StepName, ""),
            handler_class: self.text(Spanned::HandlerClass, ""),
            handler_config: self.text(Spanned::HandlerConfig, "null"),
            task_context: self.text(Spanned::TaskContext, "null"),
            previous_results: self.text(Spanned::PreviousResults, "{}"),
            attempt: self.attempt,
            retry_limit: self.retry_limit,
            timeout_ms: self.timeout_ms,
            created_at: self.text(Spanned::CreatedAt, ""),
        }
    }

    fn text(&self, field: Spanned, absent: &'static str) -> &str {
        match self.spans[field as usize] {
            Some((start, len)) => &self.body[start as usize..(start + len) as usize],
            None => absent,
        }
    }

    /// The step as a typed request, built from its fields' text.
    ///
    /// Fails only where the receiving check does not look: a JSON value
    /// nested deeper than serde_json builds value trees (128 levels), or a
    /// string in `handler_config`, `task_context` or `previous_results`
    /// with an unpaired UTF-16 surrogate escape (`"\ud800"`), which a
    /// JavaScript host takes but a Rust `String` cannot hold.
    pub fn decode(&self) -> Result<StepExecutionRequest, serde_json::Error> {
        let f = self.fields();
        let mut created_at = serde_json::Deserializer::from_str(f.created_at);
        Ok(StepExecutionRequest {
            step_id: f.step_id,
            task_id: f.task_id,
            step_name: serde_json::from_str(f.step_name)?,
            handler_class: serde_json::from_str(f.handler_class)?,
            handler_config: serde_json::from_str(f.handler_config)?,
            task_context: serde_json::from_str(f.task_context)?,
            previous_results: serde_json::from_str(f.previous_results)?,
            metadata: StepRequestMetadata {
                attempt: f.attempt,
                retry_limit: f.retry_limit,
                timeout_ms: f.timeout_ms,
                created_at: crate::timestamp::deserialize(&mut created_at)?,
            },
        })
    }
}

/// A `step_batch_request` whose steps are kept as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStepBatch {
    /// Correlation id of the delivery.
    pub batch_id: String,
    /// The steps; never empty.
    pub steps: Vec<RawStep>,
}

/// What an orchestrator sends, as a worker receives it: step batches kept
/// raw, every other message typed.
#[derive(Debug, Clone, PartialEq)]
pub enum RawOrchestratorMessage {
    /// Steps to execute.
    StepBatch(RawStepBatch),
    /// Any other message (never a `StepBatchRequest`).
    Control(OrchestratorMessage),
}

/// Decodes and validates one message from the orchestrator, as
/// [`codec::decode`] does, keeping a batch's steps as JSON text.
///
/// A batch is refused for the reasons the typed decode refuses it, with the
/// same [`DecodeError`] kind; only values the check skips rather than
/// builds are not looked into (see [`RawStep::decode`]).
pub fn decode_for_worker(
    frames: &[impl AsRef<[u8]>],
    max_message_bytes: usize,
) -> Result<RawOrchestratorMessage, DecodeError> {
    let body = checked_body(frames, max_message_bytes)?;
    if !body.starts_with(br#"{"type":"step_batch_request","#) {
        // Control messages, and batches from encoders that do not lead with
        // the tag (rare: encode their steps again).
        return Ok(
            match codec::decode::<OrchestratorMessage>(frames, max_message_bytes)? {
                OrchestratorMessage::StepBatchRequest(batch) => {
                    RawOrchestratorMessage::StepBatch(RawStepBatch {
                        steps: batch.steps.iter().map(RawStep::from_request).collect(),
                        batch_id: batch.batch_id,
                    })
                }
                other => RawOrchestratorMessage::Control(other),
            },
        );
    }
    let Ok(text) = std::str::from_utf8(body) else {
        // Not JSON: the typed decode names the problem.
        return Err(
            codec::decode::<OrchestratorMessage>(frames, max_message_bytes)
                .err()
                .unwrap_or_else(|| DecodeError::MalformedJson("body is not UTF-8".into())),
        );
    };
    // One copy of the body, which its steps share; one pass over it.
    let text: Arc<str> = text.into();
    let envelope: BatchEnvelope<'_> = match serde_json::from_str(&text) {
        Ok(envelope) => envelope,
        Err(e) => return Err(classify::<OrchestratorMessage>(body, e)),
    };
    codec::check_version(&envelope.protocol_version)?;
    if envelope.steps.is_empty() {
        return Err(invalid("step_batch_request", "steps is empty"));
    }
    for (index, step) in envelope.steps.iter().enumerate() {
        let m = &step.metadata;
        if let Err(reason) = codec::check_step(step.step_id, m.attempt, m.timeout_ms) {
            return Err(invalid(
                "step_batch_request",
                format!("steps[{index}]: {reason}"),
            ));
        }
    }
    let steps = envelope
        .steps
        .into_iter()
        .map(|view| RawStep::located(&text, view))
        .collect();
    Ok(RawOrchestratorMessage::StepBatch(RawStepBatch {
        batch_id: envelope.batch_id,
        steps,
    }))
}

#[derive(Deserialize)]
struct BatchEnvelope<'a> {
    batch_id: String,
    #[serde(borrow)]
    protocol_version: Cow<'a, str>,
    #[serde(borrow)]
    steps: Vec<check::StepExecutionRequest<'a>>,
}

/// What the receiving check reads of a step: numbers typed, every other
/// field kept as its text after checking it is what the typed decode takes.
mod check {
    use serde::de::{self, Unexpected};
    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    use crate::messages::{StepId, TaskId};

    /// A [`crate::StepExecutionRequest`] checked field by field, without
    /// building its JSON values. Named like it, so that errors read alike.
    #[derive(Deserialize)]
    pub(super) struct StepExecutionRequest<'a> {
        pub step_id: StepId,
        pub task_id: TaskId,
        #[serde(borrow)]
        pub step_name: JsonString<'a>,
        #[serde(borrow)]
        pub handler_class: JsonString<'a>,
        #[serde(default, borrow)]
        pub handler_config: Option<&'a RawValue>,
        #[serde(default, borrow)]
        pub task_context: Option<&'a RawValue>,
        #[serde(default, borrow)]
        pub previous_results: JsonObject<'a>,
        #[serde(borrow)]
        pub metadata: StepRequestMetadata<'a>,
    }

    /// A [`crate::StepRequestMetadata`], checked.
    #[derive(Deserialize)]
    pub(super) struct StepRequestMetadata<'a> {
        pub attempt: u32,
        #[serde(default)]
        pub retry_limit: u32,
        pub timeout_ms: u64,
        #[serde(borrow)]
        pub created_at: Timestamp<'a>,
    }

    /// What a JSON text is, for "invalid type" errors.
    fn kind(text: &RawValue) -> Unexpected<'static> {
        match text.get().as_bytes().first() {
            Some(b'{') => Unexpected::Map,
            Some(b'[') => Unexpected::Seq,
            Some(b'"') => Unexpected::Other("string"),
            Some(b't' | b'f') => Unexpected::Other("boolean"),
            Some(b'n') => Unexpected::Other("null"),
            _ => Unexpected::Other("number"),
        }
    }

    /// A JSON string that a Rust `String` can hold.
    pub(super) struct JsonString<'a>(pub &'a RawValue);

    impl<'de: 'a, 'a> Deserialize<'de> for JsonString<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = <&RawValue>::deserialize(deserializer)?;
            if !text.get().starts_with('"') {
                return Err(de::Error::invalid_type(kind(text), &"a string"));
            }
            // Escapes are only checked for syntax while skipping; an
            // unpaired surrogate needs the real parse.
            if text.get().contains('\\') {
                serde_json::from_str::<String>(text.get()).map_err(de::Error::custom)?;
            }
            Ok(Self(text))
        }
    }

    /// A JSON object, unread; `None` when absent.
    #[derive(Default)]
    pub(super) struct JsonObject<'a>(pub Option<&'a RawValue>);

    impl<'de: 'a, 'a> Deserialize<'de> for JsonObject<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = <&RawValue>::deserialize(deserializer)?;
            if !text.get().starts_with('{') {
                return Err(de::Error::invalid_type(kind(text), &"a map"));
            }
            Ok(Self(Some(text)))
        }
    }

    /// A JSON string holding an RFC 3339 timestamp.
    pub(super) struct Timestamp<'a>(pub &'a RawValue);

    impl<'de: 'a, 'a> Deserialize<'de> for Timestamp<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = <&RawValue>::deserialize(deserializer)?;
            let mut parser = serde_json::Deserializer::from_str(text.get());
            crate::timestamp::deserialize(&mut parser).map_err(de::Error::custom)?;
            Ok(Self(text))
        }
    }
}

/// One step result, already encoded as its JSON object (a
/// [`StepExecutionResult`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedResult {
    step: StepRef,
    execution_time_ms: u64,
    json: String,
}

/// A result's JSON text. Sized for a small result at the start: from
/// `to_string`'s 128 bytes nearly every result grew once.
fn encode_result(result: &StepExecutionResult) -> String {
    let mut json = Vec::with_capacity(256);
    crate::write::result(&mut json, result);
    // Constant ASCII keys, and serde_json's encoding of everything else.
    String::from_utf8(json).expect("JSON text is UTF-8")
}

impl EncodedResult {
    /// Encodes a typed result.
    pub fn new(result: &StepExecutionResult) -> Self {
        Self {
            step: result.step_ref(),
            execution_time_ms: result.metadata.execution_time_ms,
            json: encode_result(result),
        }
    }

    /// A completed result whose output is JSON text already, spliced in
    /// as it is. The same bytes as
    /// `EncodedResult::new(&StepExecutionResult::completed(..))` with that
    /// output parsed, without parsing it.
    ///
    /// ```
    /// use serde_json::value::RawValue;
    /// use tasker_protocol::{raw::EncodedResult, StepRef};
    ///
    /// let output = RawValue::from_string(r#"{"valid":true}"#.into()).unwrap();
    /// let step = StepRef { step_id: 7, attempt: 1 };
    /// let result = EncodedResult::completed(step, &output, "w-1", 3, chrono::Utc::now());
    /// assert!(result.json().contains(r#""output":{"valid":true}"#));
    /// ```
    pub fn completed(
        step: StepRef,
        output: &RawValue,
        worker_id: &str,
        execution_time_ms: u64,
        completed_at: DateTime<Utc>,
    ) -> Self {
        CompletedEncoder::new(worker_id, completed_at).encode(step, output, execution_time_ms)
    }

    /// The step attempt this result answers.
    pub fn step_ref(&self) -> StepRef {
        self.step
    }

    /// Wall time the handler ran, in milliseconds.
    pub fn execution_time_ms(&self) -> u64 {
        self.execution_time_ms
    }

    /// The result's JSON object.
    pub fn json(&self) -> &str {
        &self.json
    }
}

/// Encodes completed results of one worker at one moment: the worker id
/// and the timestamp are written once, and each result is then a few
/// copies. The bytes are those of [`EncodedResult::new`] for the typed
/// result (a test holds the two to that).
///
/// ```
/// use serde_json::value::RawValue;
/// use tasker_protocol::{raw::CompletedEncoder, StepRef};
///
/// let encoder = CompletedEncoder::new("w-1", chrono::Utc::now());
/// let output = RawValue::from_string("null".into()).unwrap();
/// let results: Vec<_> = (1..=3)
///     .map(|id| encoder.encode(StepRef { step_id: id, attempt: 1 }, &output, 0))
///     .collect();
/// assert!(results[2].json().starts_with(r#"{"step_id":3,"status":"completed","output":null,"#));
/// ```
#[derive(Debug, Clone)]
pub struct CompletedEncoder {
    /// Everything after `execution_time_ms`'s value.
    tail: String,
}

impl CompletedEncoder {
    /// An encoder for results of `worker_id` completed at `completed_at`.
    pub fn new(worker_id: &str, completed_at: DateTime<Utc>) -> Self {
        let mut tail = Vec::with_capacity(128);
        crate::write::result_tail(&mut tail, worker_id, false, &completed_at);
        Self {
            tail: String::from_utf8(tail).expect("JSON text is UTF-8"),
        }
    }

    /// The completed result of `step` with this output (JSON text, spliced
    /// in as it is).
    pub fn encode(
        &self,
        step: StepRef,
        output: &RawValue,
        execution_time_ms: u64,
    ) -> EncodedResult {
        let mut numbers = itoa::Buffer::new();
        let output = output.get();
        let mut json = String::with_capacity(96 + output.len() + self.tail.len());
        json.push_str(r#"{"step_id":"#);
        json.push_str(numbers.format(step.step_id));
        json.push_str(r#","status":"completed","output":"#);
        json.push_str(output);
        json.push_str(r#","metadata":{"attempt":"#);
        json.push_str(numbers.format(step.attempt));
        json.push_str(r#","execution_time_ms":"#);
        json.push_str(numbers.format(execution_time_ms));
        json.push_str(&self.tail);
        EncodedResult {
            step,
            execution_time_ms,
            json,
        }
    }
}

/// The most an [`EncodedStep::batch`] keeps of its buffer between batches.
const SCRATCH_KEPT: usize = 64 * 1024;

/// One step request encoded once, when it is submitted, as the JSON object
/// it is on the wire: every delivery of it (the first, and any after a
/// worker gives it back) copies these bytes into a `step_batch_request`
/// ([`encode_steps`]) instead of serialising the step again, and the
/// orchestrator's I/O thread keeps no value tree of it.
///
/// The steps of one [`batch`](Self::batch) share one buffer: it is
/// allocated once on the submitting thread and freed once, when the last
/// of them is dropped. One allocation per step cost, at batch 100, a
/// twelfth of the orchestrator's I/O thread in frees alone, each of memory
/// another thread allocated (glibc then takes that thread's arena lock).
/// The price: a batch's text stays in memory until its last step ends.
///
/// ```
/// use tasker_protocol::{raw::EncodedStep, StepExecutionRequest};
///
/// let step = EncodedStep::new(&StepExecutionRequest::new(7, 1, "validate", "validate_order", 5_000));
/// assert!(step.json().starts_with(r#"{"step_id":7,"task_id":1,"#));
/// ```
#[derive(Clone)]
pub struct EncodedStep {
    step: StepRef,
    /// The batch's text, this step's object in `range`.
    text: Arc<str>,
    range: std::ops::Range<usize>,
}

impl EncodedStep {
    /// Encodes a typed request.
    pub fn new(request: &StepExecutionRequest) -> Self {
        Self::batch([request]).pop().expect("one step in, one out")
    }

    /// Encodes requests into one shared buffer, in order.
    ///
    /// ```
    /// use tasker_protocol::{raw::EncodedStep, StepExecutionRequest};
    ///
    /// let requests = [
    ///     StepExecutionRequest::new(1, 1, "a", "noop", 5_000),
    ///     StepExecutionRequest::new(2, 1, "b", "noop", 5_000),
    /// ];
    /// let steps = EncodedStep::batch(&requests);
    /// assert_eq!(steps[1].step_ref().step_id, 2);
    /// assert_eq!(steps[1].json(), EncodedStep::new(&requests[1]).json());
    /// ```
    pub fn batch<'a>(requests: impl IntoIterator<Item = &'a StepExecutionRequest>) -> Vec<Self> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        // Written into a buffer this thread keeps, then copied out at its
        // size, once for the whole batch.
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.clear();
            let requests = requests.into_iter();
            let mut spans = Vec::with_capacity(requests.size_hint().0);
            for request in requests {
                let start = scratch.len();
                crate::write::request(scratch, request);
                spans.push((request.step_ref(), start..scratch.len()));
            }
            let text: Arc<str> =
                Arc::from(std::str::from_utf8(scratch).expect("JSON text is UTF-8"));
            if scratch.capacity() > SCRATCH_KEPT {
                // One large batch does not pin its size for the thread's life.
                *scratch = Vec::new();
            }
            spans
                .into_iter()
                .map(|(step, range)| Self {
                    step,
                    text: Arc::clone(&text),
                    range,
                })
                .collect()
        })
    }

    /// The step attempt this is.
    pub fn step_ref(&self) -> StepRef {
        self.step
    }

    /// The step's JSON object.
    pub fn json(&self) -> &str {
        &self.text[self.range.clone()]
    }
}

/// The step and its own object, not the whole batch's text.
impl std::fmt::Debug for EncodedStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncodedStep")
            .field("step", &self.step)
            .field("json", &self.json())
            .finish()
    }
}

/// The same step attempt encoded to the same bytes, whichever batch's
/// buffer holds them.
impl PartialEq for EncodedStep {
    fn eq(&self, other: &Self) -> bool {
        self.step == other.step && self.json() == other.json()
    }
}

impl Eq for EncodedStep {}

const REQUEST_START: &[u8] = br#"{"type":"step_batch_request","batch_id":"#;

/// Size in bytes of a `step_batch_request` body for `batch_id` with no
/// steps: the body with steps `s1..sn` is this plus their lengths plus
/// `n - 1` separating commas.
pub fn request_envelope_len(batch_id: &str) -> usize {
    request_body(batch_id, std::iter::empty(), 0).len()
}

/// The frames of a `step_batch_request` carrying these encoded steps: the
/// same bytes [`codec::encode`] writes for the typed message.
pub fn encode_steps<'a>(
    batch_id: &str,
    steps: impl IntoIterator<Item = &'a EncodedStep> + Clone,
) -> [Vec<u8>; 2] {
    let payload: usize = steps.clone().into_iter().map(|s| s.range.len() + 1).sum();
    [
        PROTOCOL_HEADER.as_bytes().to_vec(),
        request_body(batch_id, steps.into_iter().map(EncodedStep::json), payload),
    ]
}

fn request_body<'a>(
    batch_id: &str,
    steps: impl Iterator<Item = &'a str>,
    payload: usize,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(REQUEST_START.len() + batch_id.len() + 48 + payload);
    body.extend_from_slice(REQUEST_START);
    serde_json::to_writer(&mut body, batch_id).expect("writing to a Vec cannot fail");
    body.extend_from_slice(br#","protocol_version":""#);
    body.extend_from_slice(PROTOCOL_VERSION.as_bytes());
    body.extend_from_slice(br#"","steps":["#);
    for (i, step) in steps.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(step.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}

const RESPONSE_START: &[u8] = br#"{"type":"step_batch_response","batch_id":"#;

/// Size in bytes of a `step_batch_response` body for `batch_id` and
/// `orchestrator_id` with no results: the body with results `r1..rn` is
/// this plus their lengths plus `n - 1` separating commas.
pub fn response_envelope_len(batch_id: &str, orchestrator_id: &str) -> usize {
    response_body(batch_id, orchestrator_id, &[]).len()
}

/// The frames of a `step_batch_response` carrying these results of steps
/// delivered by `orchestrator_id`: the same bytes [`codec::encode`] writes
/// for the typed message.
pub fn encode_results(
    batch_id: &str,
    orchestrator_id: &str,
    results: &[EncodedResult],
) -> [Vec<u8>; 2] {
    [
        PROTOCOL_HEADER.as_bytes().to_vec(),
        response_body(batch_id, orchestrator_id, results),
    ]
}

fn response_body(batch_id: &str, orchestrator_id: &str, results: &[EncodedResult]) -> Vec<u8> {
    let payload: usize = results.iter().map(|r| r.json.len() + 1).sum();
    let mut body = Vec::with_capacity(
        RESPONSE_START.len() + batch_id.len() + orchestrator_id.len() + 72 + payload,
    );
    body.extend_from_slice(RESPONSE_START);
    serde_json::to_writer(&mut body, batch_id).expect("writing to a Vec cannot fail");
    body.extend_from_slice(br#","orchestrator_id":"#);
    serde_json::to_writer(&mut body, orchestrator_id).expect("writing to a Vec cannot fail");
    body.extend_from_slice(br#","protocol_version":""#);
    body.extend_from_slice(PROTOCOL_VERSION.as_bytes());
    body.extend_from_slice(br#"","results":["#);
    for (i, result) in results.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(result.json.as_bytes());
    }
    body.extend_from_slice(b"]}");
    body
}
