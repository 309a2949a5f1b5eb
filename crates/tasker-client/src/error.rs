//! The client's errors (CLIENT.md §4): one variant per kind of failure,
//! decided by the problem document's `type`, with its `detail` as the
//! message.

use serde::Deserialize;
use tasker_protocol::api::{TaskDetail, TaskState};

/// Where problem type URIs live; the rest of `type` is the kind's slug.
pub(crate) const PROBLEM_BASE: &str = "https://tasker-core.dev/problems/";

/// Longest piece of an unexpected answer quoted in an error.
const MAX_QUOTED: usize = 200;

/// An RFC 9457 problem document as the server sends it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProblemDetails {
    /// The kind's URI, `https://tasker-core.dev/problems/SLUG`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A summary of the kind.
    #[serde(default)]
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What was wrong with this request.
    pub detail: String,
    /// The request field or parameter at fault.
    #[serde(default)]
    pub field: Option<String>,
    /// The task concerned.
    #[serde(default)]
    pub task_id: Option<i64>,
    /// The state of a task that has ended.
    #[serde(default)]
    pub task_status: Option<TaskState>,
    /// For an unknown workflow: those loaded.
    #[serde(default)]
    pub known_workflows: Option<Vec<String>>,
    /// For an unknown workflow: the closest loaded one.
    #[serde(default)]
    pub closest: Option<String>,
}

impl ProblemDetails {
    /// The slug of [`problem_type`](Self::problem_type), e.g. `task-not-found`.
    pub fn slug(&self) -> &str {
        self.problem_type
            .strip_prefix(PROBLEM_BASE)
            .unwrap_or(&self.problem_type)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was refused as invalid (`malformed-json`,
    /// `invalid-body`, `invalid-parameter`, `unsupported-media-type`,
    /// `body-too-large`); `field` names the part at fault.
    #[error("{}", .0.detail)]
    Validation(Box<ProblemDetails>),
    /// No workflow of that name is loaded (`unknown-workflow`); the
    /// problem lists the known ones and the closest.
    #[error("{}", .0.detail)]
    UnknownWorkflow(Box<ProblemDetails>),
    /// No task has that id (`task-not-found`).
    #[error("{}", .0.detail)]
    TaskNotFound(Box<ProblemDetails>),
    /// The idempotency key was used with another workflow or context.
    #[error("{}", .0.detail)]
    IdempotencyConflict(Box<ProblemDetails>),
    /// The task has ended, so it cannot be cancelled (`task-ended`).
    #[error("{}", .0.detail)]
    TaskEnded(Box<ProblemDetails>),
    /// The server requires a bearer token and this one is missing or
    /// wrong (`unauthorized`).
    #[error("{}", .0.detail)]
    Unauthorized(Box<ProblemDetails>),
    /// No answer (connection refused or reset, timeout), or a 5xx, after
    /// the retries the call was allowed.
    #[error("{message}")]
    ServerUnavailable {
        /// What happened, naming the URL.
        message: String,
        /// The last answer's status, when there was one (a 5xx).
        status: Option<u16>,
    },
    /// The wait's deadline passed before the task ended.
    #[error("task {} ({}) did not end within the wait's timeout; it is {}", .task.task_id, .task.workflow, .task.status)]
    WaitTimeout {
        /// The task as last seen.
        task: Box<TaskDetail>,
    },
    /// Any other problem the server answered.
    #[error("{}", .0.detail)]
    Api(Box<ProblemDetails>),
    /// An answer that is not what the API sends (not JSON, or not a
    /// problem document on an error status).
    #[error("{0}")]
    UnexpectedAnswer(String),
    /// The client was given a URL it cannot use.
    #[error("{0}")]
    InvalidUrl(String),
    /// The client was given a token no HTTP header can carry (a line
    /// break or a space inside it, a character other than ASCII); never
    /// sent, and never quoted.
    #[error("invalid value for api_token: {0}")]
    InvalidToken(String),
}

impl Error {
    /// The problem document the server answered, when there was one.
    pub fn problem(&self) -> Option<&ProblemDetails> {
        match self {
            Error::Validation(p)
            | Error::UnknownWorkflow(p)
            | Error::TaskNotFound(p)
            | Error::IdempotencyConflict(p)
            | Error::TaskEnded(p)
            | Error::Unauthorized(p)
            | Error::Api(p) => Some(p),
            _ => None,
        }
    }

    /// The HTTP status answered, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::ServerUnavailable { status, .. } => *status,
            other => other.problem().map(|p| p.status),
        }
    }

    /// The request field or parameter at fault, for a validation error.
    pub fn field(&self) -> Option<&str> {
        self.problem().and_then(|p| p.field.as_deref())
    }

    /// The error for a problem document.
    pub(crate) fn from_problem(problem: ProblemDetails) -> Error {
        let problem = Box::new(problem);
        match problem.slug() {
            "malformed-json"
            | "invalid-body"
            | "invalid-parameter"
            | "unsupported-media-type"
            | "body-too-large" => Error::Validation(problem),
            "unknown-workflow" => Error::UnknownWorkflow(problem),
            "task-not-found" => Error::TaskNotFound(problem),
            "idempotency-conflict" => Error::IdempotencyConflict(problem),
            "task-ended" => Error::TaskEnded(problem),
            "unauthorized" => Error::Unauthorized(problem),
            _ => Error::Api(problem),
        }
    }

    /// The error for an error status whose body is not a problem
    /// document.
    pub(crate) fn unexpected(base: &str, status: u16, body: &[u8]) -> Error {
        Error::UnexpectedAnswer(format!(
            "{base} answered {status}: {}",
            quote(String::from_utf8_lossy(body).trim())
        ))
    }
}

/// `text` cut to [`MAX_QUOTED`] characters.
pub(crate) fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}
