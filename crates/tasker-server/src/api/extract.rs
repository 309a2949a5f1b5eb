//! Reading requests: the JSON body, the task id in the path and the list
//! query, each failing with a problem that names what was wrong.

// A `Problem` is built once on a request's failure path and becomes the
// response; its size costs nothing worth a box.
#![allow(clippy::result_large_err)]

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::Segment;
use tasker_engine::TaskState;
use tasker_store::TaskFilter;

use super::problem::{json_kind, quote, sanitize_serde_message, ProblemKind};
use super::types::{
    CreateTaskRequest, ListTasksQuery, Problem, DEFAULT_LIST_LIMIT, DEFAULT_WORKERS_LIMIT,
    MAX_IDEMPOTENCY_KEY_CHARS, MAX_LIST_LIMIT, MAX_WORKERS_LIMIT,
};
use super::MAX_BODY_BYTES;

/// A request body checked beyond its JSON shape.
pub trait Validate {
    /// A problem naming the field at fault, if any.
    fn validate(&self) -> Result<(), Problem>;
}

impl Validate for CreateTaskRequest {
    fn validate(&self) -> Result<(), Problem> {
        if self.workflow.is_empty() {
            return Err(
                Problem::new(ProblemKind::InvalidBody, "workflow: must not be empty")
                    .with_field("workflow"),
            );
        }
        if let Some(key) = &self.idempotency_key {
            let chars = key.chars().count();
            if !(1..=MAX_IDEMPOTENCY_KEY_CHARS).contains(&chars) {
                return Err(Problem::new(
                    ProblemKind::InvalidBody,
                    format!(
                        "idempotency_key: must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters, \
                         got {chars}"
                    ),
                )
                .with_field("idempotency_key"));
            }
            // A key is shown back in logs, problems and the dashboard; a
            // control character there could forge a log line or hide the
            // key's end, and no client picks one on purpose.
            if let Some(at) = key.chars().position(char::is_control) {
                return Err(Problem::new(
                    ProblemKind::InvalidBody,
                    format!(
                        "idempotency_key: must not hold control characters, \
                         found one at character {}",
                        at + 1
                    ),
                )
                .with_field("idempotency_key"));
            }
        }
        Ok(())
    }
}

/// A JSON request body of type `T`: `Content-Type: application/json`, at
/// most [`MAX_BODY_BYTES`], a JSON object that deserialises to `T` and
/// passes `T`'s [`Validate`].
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Validate,
{
    type Rejection = Problem;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(req.headers().get(header::CONTENT_TYPE))?;
        check_no_content_encoding(req.headers().get(header::CONTENT_ENCODING))?;
        let declared = declared_length(req.headers());
        // Refused before any of it is read: a client that declares 100 GB
        // and sends nothing would otherwise hold the request until the
        // body timeout, and one that sent `Expect: 100-continue` learns
        // before it uploads.
        if declared.is_some_and(|n| n > MAX_DRAINED_BYTES as u64)
            || (declared.is_some_and(|n| n > MAX_BODY_BYTES as u64)
                && req.headers().contains_key(header::EXPECT))
        {
            return Err(body_too_large());
        }
        let read = tokio::time::timeout(BODY_TIMEOUT, read_body(req.into_body())).await;
        let bytes = read.map_err(|_| body_too_slow())??;
        let value = parse_body(&bytes)?;
        Ok(ApiJson(value))
    }
}

/// Most bytes of a body read past [`MAX_BODY_BYTES`] before the 413.
///
/// A client sends the body right after the head. Answered and closed with
/// the body's rest unread, the connection is reset under the client while
/// it still writes, and Python's and Node's clients then saw a broken pipe
/// (a server gone, retried) where the 413 said what was wrong. Reading the
/// rest first lets the answer reach them; past this, a client is no longer
/// mistaken but wasting the server's bandwidth, and is cut off.
pub const MAX_DRAINED_BYTES: usize = 16 * MAX_BODY_BYTES;

/// The whole body, or a problem: over [`MAX_BODY_BYTES`] (read to its end
/// up to [`MAX_DRAINED_BYTES`], so the answer reaches the client), or its
/// HTTP framing broken.
async fn read_body(body: axum::body::Body) -> Result<Bytes, Problem> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            // A bad chunk, a connection cut short: not a JSON problem.
            Problem::new(
                ProblemKind::Other(axum::http::StatusCode::BAD_REQUEST),
                format!("the body could not be read: {}", quote(&innermost(&error))),
            )
        })?;
        seen = seen.saturating_add(chunk.len());
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if seen > MAX_DRAINED_BYTES {
            break;
        } else {
            kept = Vec::new();
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(body_too_large());
    }
    Ok(Bytes::from(kept))
}

/// Longest a request body may take to arrive: the head's limit (see
/// `http::Limits`) does not cover it, and a client trickling a body would
/// otherwise hold its connection for as long as it likes.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The problem for a body that did not arrive within [`BODY_TIMEOUT`].
fn body_too_slow() -> Problem {
    Problem::new(
        ProblemKind::Other(axum::http::StatusCode::REQUEST_TIMEOUT),
        format!(
            "the body did not arrive within {} s",
            BODY_TIMEOUT.as_secs()
        ),
    )
}

/// The `Content-Length` the client declared, if it is a number.
pub(super) fn declared_length(headers: &header::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The message of the error at the end of `error`'s chain of causes:
/// hyper's own words ("invalid chunk size line") rather than axum's
/// wrapping of them.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// The problem for a body over [`MAX_BODY_BYTES`].
pub fn body_too_large() -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("the body is larger than the limit of {MAX_BODY_BYTES} bytes (1 MiB)"),
    )
}

/// Refuses a body sent compressed (or in any coding but `identity`): it
/// was read as JSON text and refused as malformed, which sent people
/// looking at their JSON.
fn check_no_content_encoding(value: Option<&header::HeaderValue>) -> Result<(), Problem> {
    let Some(value) = value else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("a non-ASCII value").trim();
    if text.eq_ignore_ascii_case("identity") {
        return Ok(());
    }
    Err(Problem::new(
        ProblemKind::UnsupportedMediaType,
        format!(
            "Content-Encoding: the body must be sent uncompressed, got {}",
            super::problem::quote(text)
        ),
    )
    .with_field("Content-Encoding"))
}

/// Accepts `application/json` and any `application/*+json`, with
/// parameters (`; charset=utf-8`).
fn check_json_content_type(value: Option<&header::HeaderValue>) -> Result<(), Problem> {
    let problem = |got: &str| {
        Problem::new(
            ProblemKind::UnsupportedMediaType,
            format!("Content-Type: expected application/json, got {got}"),
        )
        .with_field("Content-Type")
    };
    let Some(value) = value else {
        return Err(problem("none"));
    };
    let text = value.to_str().map_err(|_| problem("a non-ASCII value"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if !json {
        return Err(problem(&format!("`{}`", quote(text))));
    }
    // JSON text is UTF-8 (RFC 8259 §8.1); a body said to be in another
    // charset was read as UTF-8 anyway, its Latin-1 bytes refused as
    // malformed or, all ASCII, taken.
    let charset = text.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_ascii_lowercase())
    });
    match charset.as_deref() {
        None | Some("utf-8") | Some("utf8") => Ok(()),
        Some(_) => Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            format!("Content-Type: JSON is sent in UTF-8, got `{}`", quote(text)),
        )
        .with_field("Content-Type")),
    }
}

/// Parses and checks a request body: malformed JSON is a 400, JSON that
/// is not the request a 422 naming the field.
pub fn parse_body<T: DeserializeOwned + Validate>(bytes: &[u8]) -> Result<T, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Problem::new(
            ProblemKind::MalformedJson,
            "the body is empty; expected a JSON object",
        ));
    }
    let value = serde_json::from_slice::<UniqueKeys>(bytes)
        .map(|v| v.0)
        .map_err(|e| {
            // serde_json's syntax errors say where (line, column), never what.
            let reason = tasker_protocol::codec::json_error_reason(&e, bytes);
            // Too deep may still be valid JSON: not called malformed then.
            let detail = if reason.starts_with("nested ") {
                format!("the body is {reason}")
            } else if e.is_data() {
                // Valid JSON that repeats a key (see `UniqueKeys`).
                format!("the body {reason}")
            } else {
                format!("the body is not valid JSON: {reason}")
            };
            Problem::new(ProblemKind::MalformedJson, detail)
        })?;
    if !value.is_object() {
        return Err(Problem::new(
            ProblemKind::InvalidBody,
            format!("the body must be a JSON object, got {}", json_kind(&value)),
        ));
    }
    let parsed: T = serde_path_to_error::deserialize(&value)
        .map_err(|e| data_problem(&value, e.path(), &e.inner().to_string()))?;
    parsed.validate()?;
    Ok(parsed)
}

/// A JSON value in which no object repeats a key.
///
/// RFC 8259 leaves the meaning of a repeated name open, and parsers differ:
/// serde_json keeps the last, others the first. A proxy or an audit log
/// that read `{"workflow": "report", "workflow": "refund"}` one way while
/// this server read it the other would each see a different request, so
/// such a body is refused rather than read either way.
struct UniqueKeys(Value);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

/// Builds a [`Value`] as serde_json's own visitor does, but fails on a
/// repeated key.
struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no NaN or infinity; serde_json's own visitor maps
        // them to null the same way.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "repeats the key `{}` in one object",
                    quote(&key)
                )));
            }
            let UniqueKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A problem for JSON that does not deserialise: `message` is serde's, at
/// `path` in `body`.
fn data_problem(body: &Value, path: &serde_path_to_error::Path, message: &str) -> Problem {
    let segments: Vec<&Segment> = path.iter().collect();
    let field = path_string(&segments);
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`"; the path
        // ends at the unknown field, its parent is where it was found.
        let field = path_string(&segments[..segments.len().saturating_sub(1)]);
        let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let detail = sanitize_serde_message(&format!("unknown field `{name}`{expected}"));
        let detail = match &field {
            Some(parent) => format!("{parent}: {detail}"),
            None => detail,
        };
        let name = quote(name);
        let full = match &field {
            Some(parent) => format!("{parent}.{name}"),
            None => name,
        };
        return Problem::new(ProblemKind::InvalidBody, detail).with_field(full);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let full = match &field {
            Some(parent) => format!("{parent}.{name}"),
            None => name.to_string(),
        };
        return Problem::new(
            ProblemKind::InvalidBody,
            format!("{full}: missing (a required field)"),
        )
        .with_field(full);
    }
    if message.starts_with("invalid type: ") {
        if let (Some(field), Some(expected)) = (&field, message.split(", expected ").nth(1)) {
            let got = lookup(body, path).map(json_kind).unwrap_or("another type");
            let expected = sanitize_serde_message(&format!("expected {expected}"));
            return Problem::new(
                ProblemKind::InvalidBody,
                format!("{field}: {expected}, got {got}"),
            )
            .with_field(field.clone());
        }
    }
    let detail = sanitize_serde_message(message);
    match field {
        Some(field) => {
            Problem::new(ProblemKind::InvalidBody, format!("{field}: {detail}")).with_field(field)
        }
        None => Problem::new(ProblemKind::InvalidBody, detail),
    }
}

/// `context.items[2]`, or `None` at the top level.
fn path_string(segments: &[&Segment]) -> Option<String> {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote(key));
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote(variant));
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The value at `path` in `body`.
fn lookup<'a>(body: &'a Value, path: &serde_path_to_error::Path) -> Option<&'a Value> {
    let mut at = body;
    for segment in path.iter() {
        at = match segment {
            Segment::Seq { index } => at.get(*index)?,
            Segment::Map { key } => at.get(key.as_str())?,
            Segment::Enum { .. } | Segment::Unknown => return None,
        };
    }
    Some(at)
}

/// The `{id}` of a task route.
#[derive(Debug, Clone, Copy)]
pub struct TaskIdPath(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for TaskIdPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                Problem::new(
                    ProblemKind::InvalidParameter,
                    format!("id: {}", sanitize_serde_message(&e.body_text())),
                )
                .with_field("id")
            })?;
        parse_task_id(&raw).map(TaskIdPath)
    }
}

/// A task id as a path gives it.
pub fn parse_task_id(raw: &str) -> Result<i64, Problem> {
    match raw.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(Problem::new(
            ProblemKind::InvalidParameter,
            format!(
                "id: expected a task id (a positive integer), got `{}`",
                quote(raw)
            ),
        )
        .with_field("id")),
    }
}

/// The query of `GET /v1/tasks`, as a [`TaskFilter`].
#[derive(Debug, Clone)]
pub struct ListQuery(pub TaskFilter);

/// The parameters `GET /v1/tasks` takes, in the order of
/// [`ListTasksQuery`]'s fields.
pub const LIST_PARAMETERS: [&str; 5] = ["status", "workflow", "created_since", "limit", "cursor"];

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let query = parse_list_query(&query_pairs(parts, state).await?)?;
        Ok(ListQuery(filter_of(&query)?))
    }
}

/// Longest long-poll of `GET /v1/tasks/{id}?wait=`, in seconds.
pub const MAX_WAIT_SECONDS: f64 = 60.0;

/// The query of `GET /v1/tasks/{id}`: how long to wait for the task to end.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitQuery(pub Option<std::time::Duration>);

impl<S: Send + Sync> FromRequestParts<S> for WaitQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        parse_wait_query(&query_pairs(parts, state).await?).map(WaitQuery)
    }
}

/// The query of `GET /v1/workers`: `limit`, how many workers to list (0:
/// none, only the totals), [`DEFAULT_WORKERS_LIMIT`] by default.
#[derive(Debug, Clone, Copy)]
pub struct WorkersQuery(pub usize);

impl<S: Send + Sync> FromRequestParts<S> for WorkersQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let mut limit = None;
        for (name, value) in query_pairs(parts, state).await? {
            if name != "limit" {
                return Err(Problem::new(
                    ProblemKind::InvalidParameter,
                    format!(
                        "unknown query parameter `{}`, expected `limit`",
                        quote(&name)
                    ),
                )
                .with_field(quote(&name)));
            }
            let bad = |detail: String| {
                Problem::new(ProblemKind::InvalidParameter, format!("limit: {detail}"))
                    .with_field("limit")
            };
            if limit.is_some() {
                return Err(bad("given more than once".into()));
            }
            limit = Some(
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n <= MAX_WORKERS_LIMIT)
                    .ok_or_else(|| {
                        bad(format!(
                            "expected an integer from 0 to {MAX_WORKERS_LIMIT}, got `{}`",
                            quote(&value)
                        ))
                    })?,
            );
        }
        Ok(WorkersQuery(limit.unwrap_or(DEFAULT_WORKERS_LIMIT)))
    }
}

/// The query of a `/v1` route that takes no parameters: any parameter is a
/// 400 naming it. Ignored, `POST /v1/tasks?idempotency_key=A-1` would make
/// a task on every retry while its sender believed the key kept it to one,
/// and `GET /v1/tasks/1/journal?limit=10` would answer as if limited.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match query_pairs(parts, state).await?.first() {
            None => Ok(NoQuery),
            Some((name, _)) => Err(Problem::new(
                ProblemKind::InvalidParameter,
                format!(
                    "unknown query parameter `{}`: {} {} takes none",
                    quote(name),
                    parts.method,
                    quote(parts.uri.path())
                ),
            )
            .with_field(quote(name))),
        }
    }
}

/// The query string's name/value pairs, in order, repeats kept (so a
/// parameter given twice can be refused by name).
async fn query_pairs<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
) -> Result<Vec<(String, String)>, Problem> {
    let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
        .await
        .map_err(|e| {
            Problem::new(
                ProblemKind::InvalidParameter,
                format!(
                    "the query string does not parse: {}",
                    sanitize_serde_message(&e.body_text())
                ),
            )
        })?;
    Ok(pairs)
}

/// Reads `GET /v1/tasks/{id}`'s one parameter, `wait` (seconds, 0 to
/// [`MAX_WAIT_SECONDS`], fractions allowed).
pub fn parse_wait_query(
    pairs: &[(String, String)],
) -> Result<Option<std::time::Duration>, Problem> {
    let mut wait = None;
    for (name, value) in pairs {
        if name != "wait" {
            return Err(Problem::new(
                ProblemKind::InvalidParameter,
                format!("unknown query parameter `{}`, expected `wait`", quote(name)),
            )
            .with_field(quote(name)));
        }
        let bad = |detail: String| {
            Problem::new(ProblemKind::InvalidParameter, format!("wait: {detail}"))
                .with_field("wait")
        };
        if wait.is_some() {
            return Err(bad("given more than once".into()));
        }
        let seconds = value
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && (0.0..=MAX_WAIT_SECONDS).contains(s))
            .ok_or_else(|| {
                bad(format!(
                    "expected seconds from 0 to {MAX_WAIT_SECONDS}, got `{}`",
                    quote(value)
                ))
            })?;
        wait = Some(std::time::Duration::from_secs_f64(seconds));
    }
    Ok(wait)
}

/// Reads `GET /v1/tasks`'s parameters; each bad one is a 400 naming it.
pub fn parse_list_query(pairs: &[(String, String)]) -> Result<ListTasksQuery, Problem> {
    let bad = |name: &str, detail: String| {
        Problem::new(ProblemKind::InvalidParameter, format!("{name}: {detail}")).with_field(name)
    };
    let mut query = ListTasksQuery::default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        let Some(known) = LIST_PARAMETERS.iter().find(|p| **p == name) else {
            let expected: Vec<String> = LIST_PARAMETERS.iter().map(|p| format!("`{p}`")).collect();
            return Err(Problem::new(
                ProblemKind::InvalidParameter,
                format!(
                    "unknown query parameter `{}`, expected one of {}",
                    quote(name),
                    expected.join(", ")
                ),
            )
            .with_field(quote(name)));
        };
        if seen.contains(known) {
            return Err(bad(known, "given more than once".into()));
        }
        seen.push(known);
        match *known {
            "status" => {
                query.status = Some(value.parse::<TaskState>().map_err(|_| {
                    let states: Vec<String> =
                        TaskState::ALL.iter().map(|s| format!("`{s}`")).collect();
                    bad(
                        known,
                        format!(
                            "expected one of {}, got `{}`",
                            states.join(", "),
                            quote(value)
                        ),
                    )
                })?)
            }
            "workflow" => {
                if value.is_empty() {
                    return Err(bad(known, "must not be empty".into()));
                }
                query.workflow = Some(value.clone());
            }
            "created_since" => {
                query.created_since = Some(parse_time(value).ok_or_else(|| {
                    bad(
                        known,
                        format!(
                            "expected an RFC 3339 time such as 2026-05-01T00:00:00Z, got `{}`",
                            quote(value)
                        ),
                    )
                })?)
            }
            "limit" => {
                query.limit = Some(
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
                        .ok_or_else(|| {
                            bad(
                                known,
                                format!(
                                    "expected an integer from 1 to {MAX_LIST_LIMIT}, got `{}`",
                                    quote(value)
                                ),
                            )
                        })?,
                )
            }
            "cursor" => query.cursor = Some(value.clone()),
            _ => unreachable!("every name in LIST_PARAMETERS is handled"),
        }
    }
    Ok(query)
}

/// An RFC 3339 time. A `+` offset arrives as a space when the client did
/// not percent-encode it (form encoding reads `+` as a space), so that
/// reading is tried too.
fn parse_time(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .or_else(|e| {
            let repaired = value.replace(' ', "+");
            if repaired == value {
                Err(e)
            } else {
                DateTime::parse_from_rfc3339(&repaired)
            }
        })
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The store's filter for a query.
pub fn filter_of(query: &ListTasksQuery) -> Result<TaskFilter, Problem> {
    let before_id =
        match &query.cursor {
            None => None,
            Some(cursor) => Some(cursor.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(
                || {
                    Problem::new(
                        ProblemKind::InvalidParameter,
                        format!(
                            "cursor: expected the `next_cursor` of a previous page, got `{}`",
                            quote(cursor)
                        ),
                    )
                    .with_field("cursor")
                },
            )?),
        };
    Ok(TaskFilter {
        status: query.status,
        workflow: query.workflow.clone(),
        created_since: query.created_since,
        before_id,
        limit: query.limit.unwrap_or(DEFAULT_LIST_LIMIT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// A JSON POST whose body never arrives, and how long (on the paused
    /// clock) reading it took to fail.
    async fn read_a_body_that_never_comes(
        content_length: Option<&str>,
    ) -> (Problem, std::time::Duration) {
        let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let mut request = Request::builder()
            .method("POST")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(length) = content_length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let request = request.body(axum::body::Body::from_stream(never)).unwrap();
        let started = tokio::time::Instant::now();
        let problem = ApiJson::<CreateTaskRequest>::from_request(request, &())
            .await
            .expect_err("no body came");
        (problem, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_a_408_problem() {
        let (problem, waited) = read_a_body_that_never_comes(None).await;
        assert_eq!(waited, BODY_TIMEOUT);
        assert_eq!(problem.status, 408);
        assert!(problem.problem_type.ends_with("/http-error"), "{problem:?}");
        assert_eq!(problem.detail, "the body did not arrive within 30 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_declared_over_the_limit_is_refused_before_it_is_read() {
        let (problem, waited) = read_a_body_that_never_comes(Some("99999999999")).await;
        assert_eq!(waited, std::time::Duration::ZERO, "answered at once");
        assert_eq!(problem.status, 413, "{problem:?}");
    }

    fn body_problem(text: &str) -> Problem {
        parse_body::<CreateTaskRequest>(text.as_bytes()).expect_err(text)
    }

    #[test]
    fn a_lone_surrogate_is_named_as_such() {
        for body in [
            r#"{"workflow":"w","context":{"s":"\ud800"}}"#,
            r#"{"workflow":"w","context":{"s":"\uDBFFx"}}"#,
        ] {
            let problem = body_problem(body);
            assert_eq!(problem.status, 400, "{problem:?}");
            assert!(
                problem
                    .detail
                    .contains("must be one half of a surrogate pair"),
                "{problem:?}"
            );
        }
        let other = body_problem(r#"{"workflow":"w","context":{"s":"\uZZZZ"}}"#);
        assert!(!other.detail.contains("surrogate"), "{other:?}");
    }

    #[test]
    fn a_good_body_parses_with_defaults() {
        let req: CreateTaskRequest = parse_body(br#"{"workflow":"etl"}"#).unwrap();
        assert_eq!(req.workflow, "etl");
        assert!(req.context.is_empty());
        assert_eq!(req.idempotency_key, None);
        let req: CreateTaskRequest =
            parse_body(br#"{"workflow":"etl","context":{"a":[1]},"idempotency_key":"k"}"#).unwrap();
        assert_eq!(req.context["a"], serde_json::json!([1]));
        assert_eq!(req.idempotency_key.as_deref(), Some("k"));
    }

    #[test]
    fn malformed_json_is_400_and_says_where() {
        let p = body_problem(r#"{"workflow": "etl""#);
        assert_eq!(p.status, 400);
        assert!(p.problem_type.ends_with("/malformed-json"));
        assert!(
            p.detail.starts_with("the body is not valid JSON: "),
            "{}",
            p.detail
        );
        assert!(p.detail.contains("line 1 column"), "{}", p.detail);
        let p = body_problem("");
        assert_eq!(p.status, 400);
        assert_eq!(p.detail, "the body is empty; expected a JSON object");
        // Valid JSON, but deeper than the parser reads: said so, not
        // called malformed.
        let deep = format!(
            r#"{{"workflow":"etl","context":{{"d":{}{}}}}}"#,
            "[".repeat(150),
            "]".repeat(150)
        );
        let p = body_problem(&deep);
        assert_eq!(p.status, 400);
        assert!(
            p.detail
                .starts_with("the body is nested 128 levels deep or more, more than is read"),
            "{}",
            p.detail
        );
    }

    #[test]
    fn context_must_be_an_object() {
        let p = body_problem(r#"{"workflow":"etl","context":"order 42"}"#);
        assert_eq!(p.status, 422);
        assert!(p.problem_type.ends_with("/invalid-body"));
        assert_eq!(p.detail, "context: expected an object, got a string");
        assert_eq!(p.field.as_deref(), Some("context"));
        let p = body_problem(r#"{"workflow":"etl","context":[1,2]}"#);
        assert_eq!(p.detail, "context: expected an object, got an array");
        let p = body_problem(r#"{"workflow":"etl","context":null}"#);
        assert_eq!(p.detail, "context: expected an object, got null");
    }

    #[test]
    fn wrong_field_types_name_the_field() {
        let p = body_problem(r#"{"workflow":42}"#);
        assert_eq!(p.detail, "workflow: expected a string, got an integer");
        assert_eq!(p.field.as_deref(), Some("workflow"));
        let p = body_problem(r#"{"workflow":"etl","idempotency_key":true}"#);
        assert_eq!(
            p.detail,
            "idempotency_key: expected a string, got a boolean"
        );
        let p = body_problem(r#"["etl"]"#);
        assert_eq!(p.status, 422);
        assert_eq!(p.detail, "the body must be a JSON object, got an array");
    }

    #[test]
    fn unknown_and_missing_fields_are_named() {
        let p = body_problem(r#"{"workflo":"etl"}"#);
        assert_eq!(p.status, 422);
        assert_eq!(
            p.detail,
            "unknown field `workflo`, expected one of `workflow`, `context`, `idempotency_key`"
        );
        assert_eq!(p.field.as_deref(), Some("workflo"));
        let p = body_problem(r#"{"context":{}}"#);
        assert_eq!(p.detail, "workflow: missing (a required field)");
        assert_eq!(p.field.as_deref(), Some("workflow"));
    }

    #[test]
    fn a_huge_unknown_field_is_not_echoed_whole() {
        let name = "q".repeat(100_000);
        let p = body_problem(&format!(r#"{{"workflow":"etl","{name}":1}}"#));
        assert!(p.detail.len() < 200, "{} chars", p.detail.len());
        assert!(p.field.unwrap().chars().count() <= 65);
    }

    #[test]
    fn idempotency_keys_are_1_to_255_characters() {
        let p = body_problem(r#"{"workflow":"etl","idempotency_key":""}"#);
        assert_eq!(
            p.detail,
            "idempotency_key: must be 1 to 255 characters, got 0"
        );
        let long = "é".repeat(256);
        let p = body_problem(&format!(
            r#"{{"workflow":"etl","idempotency_key":"{long}"}}"#
        ));
        assert_eq!(
            p.detail,
            "idempotency_key: must be 1 to 255 characters, got 256"
        );
        let ok = "é".repeat(255);
        parse_body::<CreateTaskRequest>(
            format!(r#"{{"workflow":"etl","idempotency_key":"{ok}"}}"#).as_bytes(),
        )
        .unwrap();
        let p = body_problem(r#"{"workflow":""}"#);
        assert_eq!(p.detail, "workflow: must not be empty");
    }

    #[test]
    fn idempotency_keys_hold_no_control_characters() {
        for (key, at) in [
            (r"A-1\n", 4),
            (r"\u0000", 1),
            (r"x\u001b[2J", 2),
            (r"ab\u007f", 3),
        ] {
            let p = body_problem(&format!(
                r#"{{"workflow":"etl","idempotency_key":"{key}"}}"#
            ));
            assert_eq!(
                p.detail,
                format!(
                    "idempotency_key: must not hold control characters, found one at character {at}"
                ),
                "{key}"
            );
            assert_eq!(p.field.as_deref(), Some("idempotency_key"));
        }
        // Anything printable is a key, whatever its script.
        parse_body::<CreateTaskRequest>(
            r#"{"workflow":"etl","idempotency_key":"order A-1 · 注文 ✓"}"#.as_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn content_type_must_be_json() {
        assert!(
            check_json_content_type(Some(&HeaderValue::from_static("application/json"))).is_ok()
        );
        assert!(check_json_content_type(Some(&HeaderValue::from_static(
            "Application/JSON; charset=utf-8"
        )))
        .is_ok());
        assert!(check_json_content_type(Some(&HeaderValue::from_static(
            "application/merge-patch+json"
        )))
        .is_ok());
        assert!(check_json_content_type(Some(&HeaderValue::from_static(
            "application/json; charset=UTF-8"
        )))
        .is_ok());
        let latin = check_json_content_type(Some(&HeaderValue::from_static(
            "application/json;charset=latin1",
        )))
        .unwrap_err();
        assert_eq!(latin.status, 415);
        assert!(latin.detail.contains("UTF-8"), "{}", latin.detail);
        let p = check_json_content_type(Some(&HeaderValue::from_static("text/plain"))).unwrap_err();
        assert_eq!(p.status, 415);
        assert_eq!(
            p.detail,
            "Content-Type: expected application/json, got `text/plain`"
        );
        let p = check_json_content_type(None).unwrap_err();
        assert_eq!(
            p.detail,
            "Content-Type: expected application/json, got none"
        );
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn list_query_becomes_a_filter() {
        let query = parse_list_query(&pairs(&[
            ("status", "failed"),
            ("workflow", "etl"),
            ("created_since", "2026-05-01T02:00:00+02:00"),
            ("limit", "10"),
            ("cursor", "77"),
        ]))
        .unwrap();
        let filter = filter_of(&query).unwrap();
        assert_eq!(filter.status, Some(TaskState::Failed));
        assert_eq!(filter.workflow.as_deref(), Some("etl"));
        assert_eq!(
            filter.created_since.unwrap().to_rfc3339(),
            "2026-05-01T00:00:00+00:00"
        );
        assert_eq!(filter.limit, 10);
        assert_eq!(filter.before_id, Some(77));
        let filter = filter_of(&parse_list_query(&[]).unwrap()).unwrap();
        assert_eq!(filter, TaskFilter::default());
        // An unencoded `+` arrives as a space.
        let query =
            parse_list_query(&pairs(&[("created_since", "2026-05-01T02:00:00 02:00")])).unwrap();
        assert_eq!(
            query.created_since.unwrap().to_rfc3339(),
            "2026-05-01T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_list_parameters_are_400_naming_them() {
        let cases = [
            (("limit", "0"), "limit: expected an integer from 1 to 1000, got `0`"),
            (("limit", "1001"), "limit: expected an integer from 1 to 1000, got `1001`"),
            (("limit", "ten"), "limit: expected an integer from 1 to 1000, got `ten`"),
            (
                ("status", "done"),
                "status: expected one of `running`, `complete`, `failed`, `cancelled`, got `done`",
            ),
            (
                ("created_since", "yesterday"),
                "created_since: expected an RFC 3339 time such as 2026-05-01T00:00:00Z, got `yesterday`",
            ),
            (
                ("statsu", "failed"),
                "unknown query parameter `statsu`, expected one of `status`, `workflow`, \
                 `created_since`, `limit`, `cursor`",
            ),
        ];
        for ((name, value), detail) in cases {
            let p = parse_list_query(&pairs(&[(name, value)])).unwrap_err();
            assert_eq!(p.status, 400);
            assert!(p.problem_type.ends_with("/invalid-parameter"));
            assert_eq!(p.detail, detail);
            assert_eq!(p.field.as_deref(), Some(name));
        }
        let p = parse_list_query(&pairs(&[("limit", "5"), ("limit", "6")])).unwrap_err();
        assert_eq!(p.detail, "limit: given more than once");
        let query = parse_list_query(&pairs(&[("cursor", "abc")])).unwrap();
        let p = filter_of(&query).unwrap_err();
        assert_eq!(
            p.detail,
            "cursor: expected the `next_cursor` of a previous page, got `abc`"
        );
    }

    #[test]
    fn wait_is_seconds_up_to_a_minute() {
        assert_eq!(parse_wait_query(&[]).unwrap(), None);
        assert_eq!(
            parse_wait_query(&pairs(&[("wait", "2.5")])).unwrap(),
            Some(std::time::Duration::from_millis(2500))
        );
        for bad in ["-1", "61", "NaN", "inf", "soon", ""] {
            let problem = parse_wait_query(&pairs(&[("wait", bad)])).unwrap_err();
            assert_eq!(problem.field.as_deref(), Some("wait"), "{bad}");
            assert_eq!(problem.status, 400);
        }
        let problem = parse_wait_query(&pairs(&[("timeout", "5")])).unwrap_err();
        assert_eq!(problem.field.as_deref(), Some("timeout"));
        assert!(problem.detail.contains("`wait`"), "{}", problem.detail);
    }

    #[test]
    fn task_ids_are_positive_integers() {
        assert_eq!(parse_task_id("42").unwrap(), 42);
        for raw in ["0", "-3", "abc", "1.5", "99999999999999999999"] {
            let p = parse_task_id(raw).unwrap_err();
            assert_eq!(p.status, 400);
            assert_eq!(
                p.detail,
                format!("id: expected a task id (a positive integer), got `{raw}`")
            );
        }
    }

    #[test]
    fn list_parameters_match_the_documented_query() {
        let schema = schemars::schema_for!(ListTasksQuery);
        let names: Vec<&str> = schema
            .get("properties")
            .and_then(|p| p.as_object())
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = LIST_PARAMETERS.to_vec();
        let mut names_sorted = names.clone();
        expected.sort_unstable();
        names_sorted.sort_unstable();
        assert_eq!(names_sorted, expected);
    }
}
