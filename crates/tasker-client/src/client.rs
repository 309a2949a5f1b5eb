//! The client: requests, retries and the long-poll wait (CLIENT.md §2–§6).

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_protocol::api::{TaskDetail, TaskPage, TaskState, WorkflowInfo};
use tokio::time::Instant;

use crate::error::{quote, Error, ProblemDetails, PROBLEM_BASE};
use crate::retry::RetryPolicy;

pub use tasker_protocol::api::ListTasksQuery as ListTasks;

/// Longest single long-poll; a longer wait asks again.
const WAIT_CHUNK: Duration = Duration::from_secs(20);
/// Read timeout beyond a long-poll's own wait.
const WAIT_SLACK: Duration = Duration::from_secs(10);
/// How far past its deadline a wait may run while the server does not
/// answer (CLIENT.md §3): its tries are cut to end by then.
const DEADLINE_GRACE: Duration = Duration::from_secs(2);
/// Read timeout of every other call, unless [`Client::with_timeout`] says.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one `tasker serve`. Cheap to clone; safe to share between
/// tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), tasker_client::Error> {
/// let config = tasker_config::TaskerConfig::discover(None, None).expect("config");
/// let client = tasker_client::Client::from_config(&config)?;
/// let page = client.list(&Default::default()).await?;
/// for task in page.tasks {
///     println!("{} {} {}", task.task_id, task.workflow, task.status);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    /// The token as sent, or why it cannot be (told at the first call).
    token: Option<Result<String, String>>,
    retry: RetryPolicy,
    timeout: Duration,
    http: reqwest::Client,
}

/// A task this client submitted: its id, whether this call created it,
/// the task as the server answered, and the calls about it.
#[derive(Debug, Clone)]
pub struct TaskHandle {
    client: Client,
    /// The task's id.
    pub id: i64,
    /// False when an idempotency key returned a task created before.
    pub created: bool,
    /// The task as the submit's answer showed it.
    pub task: TaskDetail,
}

impl TaskHandle {
    /// The task as it is now.
    pub async fn get(&self) -> Result<TaskDetail, Error> {
        self.client.get(self.id).await
    }

    /// Waits for the task to end; see [`Client::wait`].
    pub async fn wait(&self, timeout: Option<Duration>) -> Result<TaskDetail, Error> {
        self.client.wait(self.id, timeout).await
    }

    /// Cancels the task; see [`Client::cancel`].
    pub async fn cancel(&self) -> Result<TaskDetail, Error> {
        self.client.cancel(self.id).await
    }
}

impl Client {
    /// A client of the API at `url`: `http://HOST:PORT` (`HOST:PORT` is
    /// taken as `http://`), or `https://HOST[:PORT]` for a TLS-terminating
    /// proxy in front of `tasker serve`. HTTPS trusts the system's CA
    /// certificates; `SSL_CERT_FILE` names another bundle (a private CA).
    pub fn new(url: &str) -> Result<Client, Error> {
        let base = tasker_config::parse_api_url(url).map_err(Error::InvalidUrl)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Under the 30 s after which `tasker serve` closes an idle
            // connection: reusing one it is closing could lose a submit.
            .pool_idle_timeout(Duration::from_secs(20))
            .user_agent(concat!("tasker-client-rust/", env!("CARGO_PKG_VERSION")))
            // The API never redirects; a redirect is someone else's answer,
            // as it is to the other languages' clients.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidUrl(format!("building the HTTP client: {e}")))?;
        Ok(Client {
            base,
            token: None,
            retry: RetryPolicy::default(),
            timeout: CALL_TIMEOUT,
            http,
        })
    }

    /// A client configured like a worker: `api_url` (else `api_listen`)
    /// and `api_token`.
    pub fn from_config(config: &TaskerConfig) -> Result<Client, Error> {
        let url = config
            .api_base_url()
            .map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let client = Client::new(&url)?;
        Ok(match config.api_token.as_str() {
            "" => client,
            token => client.with_token(token),
        })
    }

    /// Sends `token` as `Authorization: Bearer` with every request,
    /// without the whitespace around it (a token read from a file ends in
    /// a line break). A token holding what no header carries makes every
    /// call fail [`Error::InvalidToken`] at once (it was retried as a
    /// server that could not be reached).
    pub fn with_token(mut self, token: impl Into<String>) -> Client {
        self.token = Some(tasker_config::parse_api_token(&token.into()));
        self
    }

    /// Waits at most `timeout` for each try's answer (30 s by default); a
    /// long-poll waits its own wait and 10 s more. With the default
    /// retries, a server that takes connections and never answers costs
    /// five of these (CLIENT.md §5).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Retries idempotent calls by `policy` instead of the default.
    pub fn with_retry(mut self, policy: RetryPolicy) -> Client {
        self.retry = policy;
        self
    }

    /// The API's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Starts a task of `workflow` with `context` (a JSON object). With an
    /// `idempotency_key`, submitting again returns the same task
    /// (`created` false) and the call is retried like a read; without
    /// one, it is tried once.
    pub async fn submit(
        &self,
        workflow: &str,
        context: Value,
        idempotency_key: Option<&str>,
    ) -> Result<TaskHandle, Error> {
        let mut body = json!({ "workflow": workflow, "context": context });
        if let Some(key) = idempotency_key {
            body["idempotency_key"] = json!(key);
        }
        let answer = self
            .call(Call {
                method: Method::POST,
                path: "/v1/tasks".into(),
                query: Vec::new(),
                body: Some(body),
                idempotent: idempotency_key.is_some(),
                timeout: self.timeout,
                deadline: None,
            })
            .await?;
        let created = answer.status == StatusCode::CREATED;
        let task: TaskDetail = self.decode(&answer)?;
        Ok(TaskHandle {
            client: self.clone(),
            id: task.task_id,
            created,
            task,
        })
    }

    /// The task `task_id` as it is now.
    pub async fn get(&self, task_id: i64) -> Result<TaskDetail, Error> {
        self.read(format!("/v1/tasks/{task_id}"), Vec::new(), self.timeout)
            .await
    }

    /// Waits until the task has ended and returns it; with a `timeout`,
    /// [`Error::WaitTimeout`] (carrying the task) once it passes. Uses the
    /// API's long-poll, so the answer comes as the task ends. A server that
    /// stops answering ends it with [`Error::ServerUnavailable`]: after the
    /// retries, or with a `timeout` by then and 2 s more.
    pub async fn wait(&self, task_id: i64, timeout: Option<Duration>) -> Result<TaskDetail, Error> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let chunk = match deadline {
                None => WAIT_CHUNK,
                Some(deadline) => {
                    WAIT_CHUNK.min(deadline.saturating_duration_since(Instant::now()))
                }
            };
            let answer = self
                .call(Call {
                    method: Method::GET,
                    path: format!("/v1/tasks/{task_id}"),
                    query: vec![("wait", format!("{:.3}", chunk.as_secs_f64()))],
                    body: None,
                    idempotent: true,
                    timeout: chunk + WAIT_SLACK,
                    deadline,
                })
                .await?;
            let task: TaskDetail = self.decode(&answer)?;
            if task.status != TaskState::Running {
                return Ok(task);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::WaitTimeout {
                    task: Box::new(task),
                });
            }
        }
    }

    /// Cancels the task: nothing more of it is dispatched, running steps
    /// finish, then it ends `cancelled` (`failed` if a step failed for
    /// good, before the cancel or after it). [`Error::TaskEnded`] if it
    /// had ended.
    pub async fn cancel(&self, task_id: i64) -> Result<TaskDetail, Error> {
        let answer = self
            .call(Call {
                method: Method::POST,
                path: format!("/v1/tasks/{task_id}/cancel"),
                query: Vec::new(),
                body: None,
                idempotent: true,
                timeout: self.timeout,
                deadline: None,
            })
            .await?;
        self.decode(&answer)
    }

    /// One page of tasks, newest first; pass the page's `next_cursor` as
    /// `cursor` for the next.
    pub async fn list(&self, query: &ListTasks) -> Result<TaskPage, Error> {
        let mut pairs = Vec::new();
        if let Some(status) = query.status {
            pairs.push(("status", status.to_string()));
        }
        if let Some(workflow) = &query.workflow {
            pairs.push(("workflow", workflow.clone()));
        }
        if let Some(since) = query.created_since {
            pairs.push(("created_since", since.to_rfc3339()));
        }
        if let Some(limit) = query.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &query.cursor {
            pairs.push(("cursor", cursor.clone()));
        }
        self.read("/v1/tasks".into(), pairs, self.timeout).await
    }

    /// The workflows the server has loaded.
    pub async fn workflows(&self) -> Result<Vec<WorkflowInfo>, Error> {
        #[derive(serde::Deserialize)]
        struct List {
            workflows: Vec<WorkflowInfo>,
        }
        let list: List = self
            .read("/v1/workflows".into(), Vec::new(), self.timeout)
            .await?;
        Ok(list.workflows)
    }

    async fn read<T: DeserializeOwned>(
        &self,
        path: String,
        query: Vec<(&'static str, String)>,
        timeout: Duration,
    ) -> Result<T, Error> {
        let answer = self
            .call(Call {
                method: Method::GET,
                path,
                query,
                body: None,
                idempotent: true,
                timeout,
                deadline: None,
            })
            .await?;
        self.decode(&answer)
    }

    fn decode<T: DeserializeOwned>(&self, answer: &Answer) -> Result<T, Error> {
        serde_json::from_slice(&answer.body).map_err(|e| {
            Error::UnexpectedAnswer(format!(
                "{} answered {} with a body that is not what the API sends ({e}): {}",
                self.base,
                answer.status.as_u16(),
                quote(String::from_utf8_lossy(&answer.body).trim())
            ))
        })
    }

    /// Sends `call`, retrying it by the policy when it is idempotent and
    /// got no answer or a 5xx; a 2xx answer, or the error.
    async fn call(&self, call: Call) -> Result<Answer, Error> {
        let url = format!("{}{}", self.base, call.path);
        let token = match &self.token {
            Some(Err(why)) => return Err(Error::InvalidToken(why.clone())),
            Some(Ok(token)) => Some(token),
            None => None,
        };
        // Encoded once for every try, and measured before the first: a
        // server refuses a body far over its limit unread and closes, and
        // the upload then failed as a broken pipe, a server "not reachable"
        // (retried, with a key), where the server was up and took nothing.
        let body = match &call.body {
            Some(body) => {
                let bytes = serde_json::to_vec(body).expect("a JSON value encodes");
                if bytes.len() > MAX_BODY_BYTES {
                    return Err(body_too_large(bytes.len()));
                }
                Some(bytes)
            }
            None => None,
        };
        let mut retries = 0;
        let mut shut_down = false;
        loop {
            let timeout = match call.deadline {
                // A server holding each try (a PostgreSQL store down holds
                // a read 10 s) took a 3 s wait most of a minute to give up.
                Some(deadline) => call.timeout.min(
                    (deadline + DEADLINE_GRACE)
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(50)),
                ),
                None => call.timeout,
            };
            let mut request = self
                .http
                .request(call.method.clone(), &url)
                .timeout(timeout)
                .header(ACCEPT, "application/json");
            if !call.query.is_empty() {
                request = request.query(&call.query);
            }
            if let Some(token) = token {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            if let Some(body) = &body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let failure = match send(request).await {
                Ok(answer) if answer.too_large => {
                    return Err(Error::UnexpectedAnswer(format!(
                        "{} answered {} with more than {} MiB, more than any answer of the API; \
                         stopped reading",
                        self.base,
                        answer.status.as_u16(),
                        MAX_ANSWER_BYTES >> 20
                    )));
                }
                Ok(answer) if answer.status.is_success() => return Ok(answer),
                Ok(answer) if answer.status.is_server_error() => Failure::ServerError(answer),
                Ok(answer) => return Err(self.refusal(&answer)),
                Err(e) if !e.is_connect() && !e.is_timeout() && greets_in_zeromq(&url).await => {
                    return Err(self.not_http(call.idempotent));
                }
                Err(e) => Failure::NoAnswer(e),
            };
            shut_down |=
                matches!(&failure, Failure::ServerError(answer) if says_shutting_down(answer));
            let delay = if call.idempotent {
                self.retry.delay(retries)
            } else {
                None
            };
            let Some(delay) = delay else {
                return Err(self.unavailable(failure, call.idempotent, retries, shut_down));
            };
            if call
                .deadline
                .is_some_and(|deadline| Instant::now() + delay >= deadline)
            {
                return Err(self.unavailable_by_deadline(failure, retries));
            }
            tracing::debug!(
                url = %url,
                retry = retries + 1,
                delay_ms = delay.as_millis() as u64,
                "retrying after {}",
                failure.describe(&self.base)
            );
            retries += 1;
            tokio::time::sleep(delay).await;
        }
    }

    /// The error for a 4xx answer.
    fn refusal(&self, answer: &Answer) -> Error {
        match serde_json::from_slice::<ProblemDetails>(&answer.body) {
            Ok(problem) => Error::from_problem(problem),
            Err(_) => Error::unexpected(&self.base, answer.status.as_u16(), &answer.body),
        }
    }

    /// The error for a URL that names an orchestrator's ZeroMQ endpoint:
    /// trying again cannot help, and the peer acted on nothing it was sent.
    fn not_http(&self, idempotent: bool) -> Error {
        let mut message = format!(
            "the tasker server at {} is not reachable (it answered in ZeroMQ's protocol, not \
             HTTP: that is an orchestrator's ZeroMQ endpoint; the API is the `api http://...` \
             address tasker serve prints)",
            self.base
        );
        if !idempotent {
            message.push_str("; no task was created");
        }
        Error::ServerUnavailable {
            message,
            status: None,
        }
    }

    /// A wait's deadline came before an answer. Silent then, the server
    /// may be up and its store down: no hint to start it.
    fn unavailable_by_deadline(&self, failure: Failure, retries: usize) -> Error {
        let tries = retries + 1;
        let (message, status) = match &failure {
            Failure::NoAnswer(e) => (
                format!(
                    "the tasker server at {} did not answer by the wait's deadline ({}; tried {tries} times)",
                    self.base,
                    if e.is_timeout() {
                        "no answer in time".to_string()
                    } else {
                        root_cause(e)
                    }
                ),
                None,
            ),
            Failure::ServerError(answer) => (
                format!(
                    "the tasker server at {} was unavailable until the wait's deadline ({}; \
                     tried {tries} times)",
                    self.base,
                    answered(answer)
                ),
                Some(answer.status.as_u16()),
            ),
        };
        Error::ServerUnavailable { message, status }
    }

    fn unavailable(
        &self,
        failure: Failure,
        idempotent: bool,
        retries: usize,
        shut_down: bool,
    ) -> Error {
        let mut message = match &failure {
            // Refused after it answered `shutting-down`: the server gone,
            // not a server never started.
            Failure::NoAnswer(e) if shut_down && !e.is_timeout() => format!(
                "the tasker server at {} shut down (it answered shutting-down) and has not \
                 answered since ({})",
                self.base,
                root_cause(e)
            ),
            _ => failure.describe(&self.base),
        };
        if retries > 0 {
            message.push_str(&format!(" (tried {} times)", retries + 1));
        }
        let status = match &failure {
            Failure::ServerError(answer) => Some(answer.status.as_u16()),
            Failure::NoAnswer(_) => None,
        };
        let maybe_sent =
            matches!(&failure, Failure::NoAnswer(e) if !e.is_connect()) || status.is_some();
        if !idempotent && maybe_sent {
            message.push_str(
                "; the task may or may not have been created: submit with an idempotency key to \
                 retry safely",
            );
        }
        Error::ServerUnavailable { message, status }
    }
}

/// One request, as sent on every try.
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    idempotent: bool,
    timeout: Duration,
    /// A wait's: no retry starts after it, and each try ends by it and
    /// [`DEADLINE_GRACE`] more.
    deadline: Option<Instant>,
}

/// Most bytes of a request body `tasker serve` takes (`body-too-large`,
/// CLIENT.md §2).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The refusal of a body over [`MAX_BODY_BYTES`], made here as the server
/// would make it, before anything is sent.
fn body_too_large(len: usize) -> Error {
    Error::Validation(Box::new(ProblemDetails {
        problem_type: format!("{PROBLEM_BASE}body-too-large"),
        title: "Request body too large".into(),
        status: StatusCode::PAYLOAD_TOO_LARGE.as_u16(),
        detail: format!(
            "the body is {len} bytes, larger than the server's limit of {MAX_BODY_BYTES} bytes \
             (1 MiB); nothing was sent"
        ),
        field: None,
        task_id: None,
        task_status: None,
        known_workflows: None,
        closest: None,
    }))
}

/// Most bytes of an answer read: a task with every step's output is far
/// smaller. A server that streams without end (hostile, or not tasker)
/// would otherwise take the caller's memory.
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// An answer, read whole.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    /// Longer than [`MAX_ANSWER_BYTES`]: `body` is left empty.
    too_large: bool,
}

enum Failure {
    NoAnswer(reqwest::Error),
    ServerError(Answer),
}

impl Failure {
    fn describe(&self, base: &str) -> String {
        match self {
            Failure::NoAnswer(e) if e.is_timeout() => {
                format!("the tasker server at {base} did not answer in time")
            }
            Failure::NoAnswer(e) => format!(
                "the tasker server at {base} is not reachable ({}); is tasker serve running?",
                root_cause(e)
            ),
            Failure::ServerError(answer) => {
                format!("the tasker server at {base} {}", answered(answer))
            }
        }
    }
}

/// Whether a 5xx answer is the server saying it is stopping.
fn says_shutting_down(answer: &Answer) -> bool {
    serde_json::from_slice::<ProblemDetails>(&answer.body)
        .is_ok_and(|p| p.problem_type.ends_with("/shutting-down"))
}

/// `answered 503: DETAIL`, the detail of a problem document or the body
/// quoted.
fn answered(answer: &Answer) -> String {
    let detail = serde_json::from_slice::<ProblemDetails>(&answer.body)
        .map(|p| p.detail)
        .unwrap_or_else(|_| quote(String::from_utf8_lossy(&answer.body).trim()));
    format!("answered {}: {detail}", answer.status.as_u16())
}

async fn send(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let mut response = request.send().await?;
    let status = response.status();
    let too_large = Answer {
        status,
        body: Vec::new(),
        too_large: true,
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Ok(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status,
        body,
        too_large: false,
    })
}

/// Whether what listens at `url` greets in ZeroMQ's protocol: ten bytes
/// starting with 0xFF, sent on connect before anything is asked. Asked only
/// after a try connected and got no HTTP answer, where the HTTP client's
/// own error says only that the answer was malformed ("received unexpected
/// message from connection") and each retry would say it again. An HTTP
/// server sends nothing first, so the look ends at its short wait.
async fn greets_in_zeromq(url: &str) -> bool {
    const LOOK: Duration = Duration::from_millis(500);
    let Ok(url) = reqwest::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    if url.scheme() != "http" {
        // Over TLS such a peer fails the handshake instead.
        return false;
    }
    let look = async {
        let stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
        let mut first = [0u8; 1];
        stream.peek(&mut first).await?;
        Ok::<_, std::io::Error>(first[0] == 0xFF)
    };
    matches!(tokio::time::timeout(LOOK, look).await, Ok(Ok(true)))
}

/// The innermost cause, e.g. "Connection refused (os error 111)".
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
