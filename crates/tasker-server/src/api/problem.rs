//! Every error the API answers, as an RFC 9457 problem document
//! (`application/problem+json`): the service's errors, bad requests and
//! axum's own rejections.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::types::Problem;
use crate::ServiceError;

/// The media type of every error response.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Where problem type URIs live.
pub const PROBLEM_BASE: &str = "https://tasker-core.dev/problems/";

/// Longest piece of a request quoted back in a problem document: a client
/// may send megabytes where a name was expected, and the answer (and any
/// log line made of it) should not grow with it.
pub const MAX_QUOTED_CHARS: usize = 64;

/// The `Retry-After` of a `store-unavailable` answer, in seconds: a
/// restarting database or a freed disk is usually back within that, and
/// clients retrying sooner only add load while it is not.
pub const STORE_RETRY_AFTER_SECS: u32 = 1;

/// The kinds of problem, each with its type URI, title and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The body is not JSON.
    MalformedJson,
    /// The body is JSON but not the request (wrong type, unknown or
    /// missing field, value out of range).
    InvalidBody,
    /// A path or query parameter is wrong.
    InvalidParameter,
    /// The body is not declared as JSON.
    UnsupportedMediaType,
    /// The body is over [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES).
    BodyTooLarge,
    /// No workflow of that name.
    UnknownWorkflow,
    /// No task of that id.
    TaskNotFound,
    /// The idempotency key belongs to another request.
    IdempotencyConflict,
    /// The task has ended.
    TaskEnded,
    /// The service is stopping.
    ShuttingDown,
    /// `GET /readyz`: the service does not take tasks now.
    NotReady,
    /// The task store cannot take the request for now (unreachable,
    /// restarting, full): the same request may succeed in a moment.
    StoreUnavailable,
    /// No valid bearer token.
    Unauthorized,
    /// No route for the path.
    NotFound,
    /// The route does not take the method.
    MethodNotAllowed,
    /// Something failed inside the service.
    Internal,
    /// Any other status (answered by a layer rather than a handler).
    Other(StatusCode),
}

impl ProblemKind {
    /// The slug after [`PROBLEM_BASE`].
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::MalformedJson => "malformed-json",
            ProblemKind::InvalidBody => "invalid-body",
            ProblemKind::InvalidParameter => "invalid-parameter",
            ProblemKind::UnsupportedMediaType => "unsupported-media-type",
            ProblemKind::BodyTooLarge => "body-too-large",
            ProblemKind::UnknownWorkflow => "unknown-workflow",
            ProblemKind::TaskNotFound => "task-not-found",
            ProblemKind::IdempotencyConflict => "idempotency-conflict",
            ProblemKind::TaskEnded => "task-ended",
            ProblemKind::ShuttingDown => "shutting-down",
            ProblemKind::NotReady => "not-ready",
            ProblemKind::StoreUnavailable => "store-unavailable",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::NotFound => "not-found",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::Internal => "internal",
            ProblemKind::Other(_) => "http-error",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            ProblemKind::MalformedJson | ProblemKind::InvalidParameter => StatusCode::BAD_REQUEST,
            ProblemKind::InvalidBody | ProblemKind::UnknownWorkflow => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ProblemKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProblemKind::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProblemKind::TaskNotFound | ProblemKind::NotFound => StatusCode::NOT_FOUND,
            ProblemKind::IdempotencyConflict | ProblemKind::TaskEnded => StatusCode::CONFLICT,
            ProblemKind::ShuttingDown | ProblemKind::NotReady | ProblemKind::StoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProblemKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ProblemKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProblemKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ProblemKind::Other(status) => status,
        }
    }

    /// The title: the same for every problem of the kind.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::MalformedJson => "Malformed JSON",
            ProblemKind::InvalidBody => "Invalid request body",
            ProblemKind::InvalidParameter => "Invalid parameter",
            ProblemKind::UnsupportedMediaType => "Unsupported media type",
            ProblemKind::BodyTooLarge => "Request body too large",
            ProblemKind::UnknownWorkflow => "Unknown workflow",
            ProblemKind::TaskNotFound => "Task not found",
            ProblemKind::IdempotencyConflict => "Idempotency key reused",
            ProblemKind::TaskEnded => "Task has ended",
            ProblemKind::ShuttingDown => "Service shutting down",
            ProblemKind::NotReady => "Not ready",
            ProblemKind::StoreUnavailable => "Task store unavailable",
            ProblemKind::Unauthorized => "Unauthorized",
            ProblemKind::NotFound => "Not found",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::Internal => "Internal error",
            ProblemKind::Other(status) => status.canonical_reason().unwrap_or("HTTP error"),
        }
    }

    /// Every kind a handler answers with (not [`ProblemKind::Other`]).
    pub const ALL: [ProblemKind; 16] = [
        ProblemKind::MalformedJson,
        ProblemKind::InvalidBody,
        ProblemKind::InvalidParameter,
        ProblemKind::UnsupportedMediaType,
        ProblemKind::BodyTooLarge,
        ProblemKind::UnknownWorkflow,
        ProblemKind::TaskNotFound,
        ProblemKind::IdempotencyConflict,
        ProblemKind::TaskEnded,
        ProblemKind::ShuttingDown,
        ProblemKind::NotReady,
        ProblemKind::StoreUnavailable,
        ProblemKind::Unauthorized,
        ProblemKind::NotFound,
        ProblemKind::MethodNotAllowed,
        ProblemKind::Internal,
    ];

    /// The kind a bare status stands for.
    pub fn for_status(status: StatusCode) -> ProblemKind {
        match status {
            StatusCode::NOT_FOUND => ProblemKind::NotFound,
            StatusCode::UNAUTHORIZED => ProblemKind::Unauthorized,
            StatusCode::METHOD_NOT_ALLOWED => ProblemKind::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => ProblemKind::BodyTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemKind::UnsupportedMediaType,
            StatusCode::INTERNAL_SERVER_ERROR => ProblemKind::Internal,
            other => ProblemKind::Other(other),
        }
    }
}

impl Problem {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self {
            problem_type: format!("{PROBLEM_BASE}{}", kind.slug()),
            title: kind.title().to_string(),
            status: kind.status().as_u16(),
            detail: detail.into(),
            field: None,
            task_id: None,
            task_status: None,
            known_workflows: None,
            closest: None,
            readiness: None,
        }
    }

    /// Names the field or parameter at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// The HTTP status (500 if `status` is not one).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let retry = self
            .problem_type
            .ends_with(ProblemKind::StoreUnavailable.slug());
        let body = serde_json::to_vec(&self).expect("a problem is always serialisable");
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
            )],
            body,
        )
            .into_response();
        if retry {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(STORE_RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl From<ServiceError> for Problem {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::UnknownWorkflow {
                name,
                closest,
                known,
            } => {
                let hint = match &closest {
                    Some(c) => format!("; did you mean `{c}`?"),
                    None if known.is_empty() => "; no workflow is loaded".to_string(),
                    None => format!("; known workflows: {}", list_names(&known)),
                };
                let mut problem = Problem::new(
                    ProblemKind::UnknownWorkflow,
                    format!("workflow: unknown workflow `{}`{hint}", quote(&name)),
                )
                .with_field("workflow");
                problem.known_workflows = Some(known);
                problem.closest = closest;
                problem
            }
            ServiceError::TaskNotFound(task_id) => {
                let mut problem = Problem::new(
                    ProblemKind::TaskNotFound,
                    format!("no task has id {task_id}"),
                );
                problem.task_id = Some(task_id);
                problem
            }
            ServiceError::IdempotencyConflict { key, task_id } => {
                let mut problem = Problem::new(
                    ProblemKind::IdempotencyConflict,
                    format!(
                        "idempotency_key: `{}` was used for task {task_id} with a different \
                         workflow or context; use a new key for a new task",
                        quote(&key)
                    ),
                )
                .with_field("idempotency_key");
                problem.task_id = Some(task_id);
                problem
            }
            ServiceError::TaskEnded { task_id, status } => {
                let mut problem = Problem::new(
                    ProblemKind::TaskEnded,
                    format!("task {task_id} has already ended ({status})"),
                );
                problem.task_id = Some(task_id);
                problem.task_status = Some(status);
                problem
            }
            ServiceError::ShuttingDown => Problem::new(
                ProblemKind::ShuttingDown,
                "the service is shutting down and takes no new work; retry against a running one",
            ),
            // The store's message can carry SQL, paths or connection
            // details: it goes to the log, the client gets a summary.
            ServiceError::Store(error) if error.is_unavailable() => {
                if let Some(since) = store_warning_due() {
                    tracing::warn!(
                        %error,
                        refused_since_last = since,
                        "the task store is unavailable to an API request (said at most every 10 s)"
                    );
                }
                Problem::new(
                    ProblemKind::StoreUnavailable,
                    format!(
                        "the task store cannot take requests now (unreachable, restarting or \
                         full); retry in {STORE_RETRY_AFTER_SECS} s (reads and cancels as they \
                         are, a create only with an idempotency_key, so that it cannot start twice)"
                    ),
                )
            }
            ServiceError::Store(error) => {
                tracing::error!(%error, "store operation failed during an API request");
                Problem::new(
                    ProblemKind::Internal,
                    "the task store failed; the server log has the details",
                )
            }
        }
    }
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}

/// `text` cut to [`MAX_QUOTED_CHARS`] characters (with `…` when cut) and
/// with control characters escaped, to quote untrusted input.
pub fn quote(text: &str) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == MAX_QUOTED_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Names as `` `a`, `b` ``, at most a dozen of them.
fn list_names(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut text: Vec<String> = names
        .iter()
        .take(SHOWN)
        .map(|n| format!("`{}`", quote(n)))
        .collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    text.join(", ")
}

/// What a JSON value is, as a problem detail says it ("got a string").
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Rewrites a serde error message for a client: quoted input is cut to
/// [`MAX_QUOTED_CHARS`], and Rust's words become JSON's (`a map` is `an
/// object`).
pub fn sanitize_serde_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(512));
    let mut rest = message;
    // Quoted segments are `...` or "..."; whatever is inside came from the
    // request.
    while let Some(start) = rest.find(['`', '"']) {
        let quote_char = rest[start..].chars().next().unwrap_or('`');
        out.push_str(&rest[..=start]);
        let after = &rest[start + 1..];
        match after.find(quote_char) {
            Some(end) => {
                out.push_str(&quote(&after[..end]));
                out.push(quote_char);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&quote(after));
                rest = "";
            }
        }
    }
    out.push_str(rest);
    json_words(&out)
}

/// serde's names of expected types, in JSON's terms.
fn json_words(message: &str) -> String {
    const WORDS: &[(&str, &str)] = &[
        ("expected a map", "expected an object"),
        ("expected a sequence", "expected an array"),
        ("expected a borrowed string", "expected a string"),
        ("expected i64", "expected an integer"),
        ("expected u64", "expected a non-negative integer"),
        ("expected u32", "expected a non-negative integer"),
        ("expected u16", "expected a non-negative integer"),
        ("expected f64", "expected a number"),
    ];
    let mut text = message.to_string();
    for (rust, json) in WORDS {
        text = text.replace(rust, json);
    }
    text
}

/// When the store-unavailable warning was last said, and how many refusals
/// were held back since.
static STORE_WARNED: std::sync::Mutex<WarnedAt> = std::sync::Mutex::new((None, 0));

/// How often the store-unavailable warning is said at most.
const STORE_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the store-unavailable warning is due (at most every 10 s):
/// with the store down, every request warned, hundreds of lines a second
/// under load. Gives the number of refusals not said since the last one.
fn store_warning_due() -> Option<u64> {
    let mut last = STORE_WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    warning_due(&mut last, std::time::Instant::now())
}

/// Says how many store-unavailable refusals were held back since the last
/// warning once that warning is 10 s old: the count of an outage's last
/// seconds was never said when no refusal came after it (the store back).
/// Called every few seconds.
pub(crate) fn say_held_back_store_refusals() {
    let mut last = STORE_WARNED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(held) = held_back_due(&mut last, std::time::Instant::now()) {
        tracing::warn!(
            refused_since_last = held,
            "the task store was unavailable to more API requests after the last warning"
        );
    }
}

/// When a warning was last said, and how many were held back since.
type WarnedAt = (Option<std::time::Instant>, u64);

fn warning_due(last: &mut WarnedAt, now: std::time::Instant) -> Option<u64> {
    if last
        .0
        .is_some_and(|at| now.duration_since(at) < STORE_WARNING_EVERY)
    {
        last.1 += 1;
        return None;
    }
    let since = std::mem::take(&mut last.1);
    last.0 = Some(now);
    Some(since)
}

/// The held-back count, once the last warning is old enough to say it.
fn held_back_due(last: &mut WarnedAt, now: std::time::Instant) -> Option<u64> {
    let old_enough = last
        .0
        .is_some_and(|at| now.duration_since(at) >= STORE_WARNING_EVERY);
    if last.1 == 0 || !old_enough {
        return None;
    }
    last.0 = Some(now);
    Some(std::mem::take(&mut last.1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_unavailable_warning_is_said_at_most_every_ten_seconds_with_a_count() {
        use std::time::{Duration, Instant};
        let mut last = (None, 0);
        let start = Instant::now();
        assert_eq!(super::warning_due(&mut last, start), Some(0));
        for ms in [1, 500, 9_999] {
            let at = start + Duration::from_millis(ms);
            assert_eq!(super::warning_due(&mut last, at), None);
        }
        assert_eq!(
            super::warning_due(&mut last, start + Duration::from_secs(10)),
            Some(3)
        );
    }

    /// An outage's last refusals, held back after its last warning, are
    /// said once that warning is 10 s old, whether more come or not.
    #[test]
    fn refusals_held_back_after_the_last_warning_are_said_ten_seconds_on() {
        use std::time::{Duration, Instant};
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut last = (None, 0);
        assert_eq!(
            super::held_back_due(&mut last, at(0)),
            None,
            "nothing said yet"
        );
        assert_eq!(super::warning_due(&mut last, at(0)), Some(0));
        assert_eq!(
            super::held_back_due(&mut last, at(5_000)),
            None,
            "none held"
        );
        assert_eq!(super::warning_due(&mut last, at(6_000)), None);
        assert_eq!(super::warning_due(&mut last, at(7_000)), None);
        assert_eq!(super::held_back_due(&mut last, at(9_999)), None, "too soon");
        assert_eq!(super::held_back_due(&mut last, at(10_000)), Some(2));
        assert_eq!(
            super::held_back_due(&mut last, at(30_000)),
            None,
            "said once"
        );
        assert_eq!(
            super::warning_due(&mut last, at(15_000)),
            None,
            "the held-back line counts as the last warning"
        );
    }

    use super::*;
    use tasker_engine::TaskState;

    #[test]
    fn every_kind_has_its_own_type_uri_and_an_error_status() {
        let mut slugs: Vec<&str> = ProblemKind::ALL.iter().map(|k| k.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), ProblemKind::ALL.len());
        for kind in ProblemKind::ALL {
            assert!(
                kind.status().is_client_error() || kind.status().is_server_error(),
                "{kind:?}"
            );
            let problem = Problem::new(kind, "x");
            assert_eq!(
                problem.problem_type,
                format!("https://tasker-core.dev/problems/{}", kind.slug())
            );
            assert_eq!(problem.status, kind.status().as_u16());
        }
    }

    #[test]
    fn unknown_workflow_is_422_with_known_and_closest() {
        let problem = Problem::from(ServiceError::UnknownWorkflow {
            name: "order_fulfilment".into(),
            closest: Some("order_fulfillment".into()),
            known: vec!["order_fulfillment".into(), "etl".into()],
        });
        assert_eq!(problem.status, 422);
        assert_eq!(
            problem.problem_type,
            "https://tasker-core.dev/problems/unknown-workflow"
        );
        assert_eq!(problem.field.as_deref(), Some("workflow"));
        assert_eq!(problem.closest.as_deref(), Some("order_fulfillment"));
        assert_eq!(
            problem.known_workflows,
            Some(vec!["order_fulfillment".to_string(), "etl".to_string()])
        );
        assert_eq!(
            problem.detail,
            "workflow: unknown workflow `order_fulfilment`; did you mean `order_fulfillment`?"
        );

        let problem = Problem::from(ServiceError::UnknownWorkflow {
            name: "zzz".into(),
            closest: None,
            known: vec!["a".into(), "b".into()],
        });
        assert_eq!(
            problem.detail,
            "workflow: unknown workflow `zzz`; known workflows: `a`, `b`"
        );
    }

    #[test]
    fn an_unknown_name_is_quoted_cut_short() {
        let name = "x".repeat(10_000);
        let problem = Problem::from(ServiceError::UnknownWorkflow {
            name,
            closest: None,
            known: vec![],
        });
        assert!(problem.detail.len() < 200, "{}", problem.detail);
        assert!(problem.detail.contains(&format!("`{}…`", "x".repeat(64))));
    }

    #[test]
    fn a_store_that_is_unavailable_is_answered_503_with_retry_after() {
        let error = ServiceError::Store(tasker_store::StoreError::Closed);
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let shutting_down = ServiceError::ShuttingDown.into_response();
        assert!(shutting_down.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn service_errors_map_to_their_statuses() {
        let cases: Vec<(ServiceError, u16, &str)> = vec![
            (ServiceError::TaskNotFound(7), 404, "task-not-found"),
            (
                ServiceError::IdempotencyConflict {
                    key: "k1".into(),
                    task_id: 3,
                },
                409,
                "idempotency-conflict",
            ),
            (
                ServiceError::TaskEnded {
                    task_id: 4,
                    status: TaskState::Complete,
                },
                409,
                "task-ended",
            ),
            (ServiceError::ShuttingDown, 503, "shutting-down"),
            (
                ServiceError::Store(tasker_store::StoreError::Write(
                    "database or disk is full at /secret/path.db".into(),
                )),
                503,
                "store-unavailable",
            ),
            (
                ServiceError::Store(tasker_store::StoreError::Corrupt(
                    "row 12 of /secret/path.db: bad json".into(),
                )),
                500,
                "internal",
            ),
        ];
        for (error, status, slug) in cases {
            let problem = Problem::from(error);
            assert_eq!(problem.status, status, "{problem:?}");
            assert!(problem.problem_type.ends_with(slug), "{problem:?}");
            assert!(!problem.detail.contains("/secret"), "{problem:?}");
        }
        let conflict = Problem::from(ServiceError::IdempotencyConflict {
            key: "k1".into(),
            task_id: 3,
        });
        assert_eq!(conflict.task_id, Some(3));
        assert_eq!(conflict.field.as_deref(), Some("idempotency_key"));
        let ended = Problem::from(ServiceError::TaskEnded {
            task_id: 4,
            status: TaskState::Failed,
        });
        assert_eq!(ended.detail, "task 4 has already ended (failed)");
        assert_eq!(ended.task_status, Some(TaskState::Failed));
    }

    #[test]
    fn a_problem_response_is_problem_json() {
        let response = Problem::new(ProblemKind::TaskNotFound, "no task has id 9").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn serde_messages_lose_long_input_and_rust_words() {
        let long = "w".repeat(500);
        let message = format!(
            "unknown field `{long}`, expected one of `workflow`, `context`, `idempotency_key`"
        );
        let clean = sanitize_serde_message(&message);
        assert_eq!(
            clean,
            format!(
                "unknown field `{}…`, expected one of `workflow`, `context`, `idempotency_key`",
                "w".repeat(64)
            )
        );
        assert_eq!(
            sanitize_serde_message("invalid type: string \"abc\", expected a map"),
            "invalid type: string \"abc\", expected an object"
        );
        assert_eq!(quote("a\nb\u{7}"), "a\\nb\\u{7}");
    }
}
