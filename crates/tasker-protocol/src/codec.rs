//! Framing, encoding and validating decoding.
//!
//! A message is two ZeroMQ frames: the header [`PROTOCOL_HEADER`]
//! (`tasker/1.0`) and a UTF-8 JSON body. A `ROUTER` peer sees the sender's
//! routing id as an extra first frame; stripping it is the socket owner's job.
//!
//! [`decode`] rejects, with a [`DecodeError`] naming the problem, anything
//! that is not a well-formed message of the expected direction.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::messages::{OrchestratorMessage, ProtocolErrorCode, StepStatus, WorkerMessage};
use crate::{PROTOCOL_HEADER, PROTOCOL_HEADER_PREFIX, PROTOCOL_MAJOR};

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
    let major = version
        .split('.')
        .next()
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

/// Names what is wrong with a body the typed parse refused.
pub(crate) fn classify<M: WireMessage>(body: &[u8], typed_error: serde_json::Error) -> DecodeError {
    let value: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => return DecodeError::MalformedJson(e.to_string()),
    };
    let Some(object) = value.as_object() else {
        return DecodeError::MalformedJson("body is not a JSON object".into());
    };
    match object.get("type").and_then(Value::as_str) {
        None => DecodeError::UnknownMessageType("<missing>".into()),
        Some(t) if !M::TYPES.contains(&t) => DecodeError::UnknownMessageType(truncate(t, 64)),
        Some(t) => {
            // A wrong major version inside a batch is a version problem, not
            // a shape problem: report it as such.
            if let Some(v) = object.get("protocol_version").and_then(Value::as_str) {
                if let Err(e) = check_version(v) {
                    return e;
                }
            }
            DecodeError::Invalid {
                message_type: t.to_string(),
                reason: typed_error.to_string(),
            }
        }
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(max_chars).collect();
        cut.push('…');
        cut
    }
}

pub(crate) fn invalid(message_type: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        message_type: message_type.to_string(),
        reason: reason.into(),
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
        body.starts_with(br#"{"type":"step_batch_response","#)
            .then(|| serde_json::from_slice(body).map(WorkerMessage::StepBatchResponse))
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
                if hello.capacity == 0 {
                    return Err(invalid(t, "capacity must be at least 1"));
                }
            }
            WorkerMessage::StepBatchResponse(response) => {
                check_version(&response.protocol_version)?;
                if response.results.is_empty() {
                    return Err(invalid(t, "results is empty"));
                }
                for result in &response.results {
                    let id = result.step_id;
                    if !result.status.is_reportable_by_worker() {
                        return Err(invalid(
                            t,
                            format!(
                                "step {id}: a worker cannot report status {:?}",
                                result.status
                            ),
                        ));
                    }
                    match (result.status, &result.output, &result.error) {
                        (StepStatus::Completed, _, Some(_)) => {
                            return Err(invalid(t, format!("step {id}: completed with an error")))
                        }
                        (StepStatus::Failed, _, None) => {
                            return Err(invalid(t, format!("step {id}: failed without an error")))
                        }
                        _ => {}
                    }
                }
            }
            WorkerMessage::Heartbeat(_)
            | WorkerMessage::Drain(_)
            | WorkerMessage::Goodbye(_)
            | WorkerMessage::ProtocolError(_) => {}
        }
        Ok(())
    }
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
        body.starts_with(br#"{"type":"step_batch_request","#)
            .then(|| serde_json::from_slice(body).map(OrchestratorMessage::StepBatchRequest))
    }

    fn validate(&self) -> Result<(), DecodeError> {
        let t = self.type_name();
        match self {
            OrchestratorMessage::StepBatchRequest(batch) => {
                check_version(&batch.protocol_version)?;
                if batch.steps.is_empty() {
                    return Err(invalid(t, "steps is empty"));
                }
            }
            OrchestratorMessage::Welcome(welcome) => {
                if welcome.heartbeat_interval_ms == 0 || welcome.liveness == 0 {
                    return Err(invalid(
                        t,
                        "heartbeat_interval_ms and liveness must be positive",
                    ));
                }
            }
            OrchestratorMessage::Heartbeat(_)
            | OrchestratorMessage::Goodbye(_)
            | OrchestratorMessage::ProtocolError(_) => {}
        }
        Ok(())
    }
}
