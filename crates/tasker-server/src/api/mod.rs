//! The HTTP API (axum): tasks, workflows and workers under `/v1`, health
//! at `/healthz` and `/readyz`, the OpenAPI document at
//! `/v1/openapi.json`. Every error is an RFC 9457 problem document
//! ([`types::Problem`], `application/problem+json`), axum's own rejections
//! (unknown route, wrong method, body too large) included.

mod auth;
mod drain;
mod extract;
mod openapi;
mod problem;
pub mod types;

use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tasker_store::{TaskDetail, TaskPage};

pub use auth::{Tokens, TokensError, MIN_TOKEN_CHARS};
pub use extract::{
    parse_body, parse_list_query, parse_task_id, parse_wait_query, Validate, MAX_WAIT_SECONDS,
};
pub use openapi::{openapi, render_openapi, OPENAPI_PATH};
pub use problem::{ProblemKind, MAX_QUOTED_CHARS, PROBLEM_BASE, PROBLEM_CONTENT_TYPE};

use crate::Service;
use extract::{ApiJson, ListQuery, NoQuery, TaskIdPath, WaitQuery, WorkersQuery};
use problem::quote;
pub(crate) use problem::say_held_back_store_refusals;
use types::{CreateTaskRequest, Health, HealthStatus, Journal, Problem, WorkerList, WorkflowList};

/// Largest request body accepted, in bytes (1 MiB); a larger one is a 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The routes, shared with the OpenAPI table so the two cannot disagree.
pub(crate) mod paths {
    pub const TASKS: &str = "/v1/tasks";
    pub const TASK: &str = "/v1/tasks/{id}";
    pub const TASK_CANCEL: &str = "/v1/tasks/{id}/cancel";
    pub const TASK_JOURNAL: &str = "/v1/tasks/{id}/journal";
    pub const THROUGHPUT: &str = "/v1/throughput";
    pub const METRICS: &str = "/metrics";
    pub const WORKFLOWS: &str = "/v1/workflows";
    pub const WORKERS: &str = "/v1/workers";
    pub const OPENAPI: &str = "/v1/openapi.json";
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
}

/// The API's routes over `service`, behind its bearer tokens when it has
/// some.
pub fn router(service: Arc<Service>) -> axum::Router {
    let tokens = service.tokens().cloned();
    let trusted_network = service.config().api_trusted_network;
    let unauthorized = service.unauthorized_counter();
    let router = Router::new()
        .route(paths::TASKS, post(create_task).get(list_tasks))
        .route(paths::TASK, get(get_task))
        .route(paths::TASK_CANCEL, post(cancel_task))
        .route(paths::TASK_JOURNAL, get(task_journal))
        .route(paths::THROUGHPUT, get(throughput))
        .route(paths::METRICS, get(metrics))
        .route(paths::WORKFLOWS, get(workflows))
        .route(paths::WORKERS, get(workers))
        .route(paths::OPENAPI, get(openapi_document))
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::READYZ, get(readyz))
        .merge(crate::dashboard::routes())
        .layer(middleware::from_fn(problem_for_bare_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service);
    let router = match tokens {
        Some(tokens) => router.layer(middleware::from_fn_with_state(
            (tokens, unauthorized),
            auth::require_token,
        )),
        None if trusted_network => router.layer(middleware::from_fn(auth::note_unchecked_token)),
        None => router
            .layer(middleware::from_fn(auth::note_unchecked_token))
            .layer(middleware::from_fn(auth::require_local_host)),
    };
    // Outermost, so that every refusal, the token's included, is read.
    router.layer(middleware::from_fn(drain::drain_unread_body))
}

type Shared = State<Arc<Service>>;

async fn create_task(
    State(service): Shared,
    NoQuery: NoQuery,
    ApiJson(request): ApiJson<CreateTaskRequest>,
) -> Result<Response, Problem> {
    let (task, new) = service
        .create_task(
            &request.workflow,
            Value::Object(request.context),
            request.idempotency_key,
        )
        .await?;
    Ok(if new {
        let location = format!("{}/{}", paths::TASKS, task.task_id);
        (
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(task),
        )
            .into_response()
    } else {
        Json(task).into_response()
    })
}

async fn get_task(
    State(service): Shared,
    TaskIdPath(id): TaskIdPath,
    WaitQuery(wait): WaitQuery,
) -> Result<Json<TaskDetail>, Problem> {
    Ok(Json(match wait {
        Some(wait) => service.wait_task(id, wait).await?,
        None => service.get_task(id).await?,
    }))
}

async fn list_tasks(
    State(service): Shared,
    ListQuery(filter): ListQuery,
) -> Result<Json<TaskPage>, Problem> {
    Ok(Json(service.list_tasks(&filter).await?))
}

async fn cancel_task(
    State(service): Shared,
    TaskIdPath(id): TaskIdPath,
    NoQuery: NoQuery,
) -> Result<(StatusCode, Json<TaskDetail>), Problem> {
    Ok((StatusCode::ACCEPTED, Json(service.cancel_task(id).await?)))
}

async fn task_journal(
    State(service): Shared,
    TaskIdPath(id): TaskIdPath,
    NoQuery: NoQuery,
) -> Result<Json<Journal>, Problem> {
    Ok(Json(Journal {
        entries: service.journal(id).await?,
    }))
}

async fn throughput(State(service): Shared, NoQuery: NoQuery) -> Json<crate::Throughput> {
    Json(service.throughput())
}

async fn metrics(State(service): Shared) -> Response {
    let text = service.render_metrics().await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response()
}

async fn workflows(State(service): Shared, NoQuery: NoQuery) -> Json<WorkflowList> {
    Json(WorkflowList {
        workflows: service.workflows(),
    })
}

async fn workers(State(service): Shared, WorkersQuery(limit): WorkersQuery) -> Json<WorkerList> {
    let mut workers = service.workers().await;
    let list = WorkerList {
        total: workers.len(),
        capacity: workers.iter().map(|w| u64::from(w.capacity)).sum(),
        in_flight: workers.iter().map(|w| w.in_flight).sum(),
        workers: Vec::new(),
    };
    workers.truncate(limit);
    Json(WorkerList { workers, ..list })
}

async fn openapi_document() -> Json<&'static Value> {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    Json(DOCUMENT.get_or_init(openapi))
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: HealthStatus::Ok,
    })
}

async fn readyz(State(service): Shared) -> Response {
    let readiness = service.readiness().await;
    if readiness.ready {
        return Json(readiness).into_response();
    }
    // An error like any other, with the readiness members beside its own: a probe reads
    // the status, a person the detail.
    let detail = if readiness.shutting_down {
        "the service is shutting down"
    } else {
        "the task store does not answer, or does not take writes (a full disk?)"
    };
    let mut problem = Problem::new(ProblemKind::NotReady, detail);
    problem.readiness = Some(readiness);
    problem.into_response()
}

/// Turns an error answered without a problem document (axum's unknown
/// route, wrong method, a layer's 413) into one, keeping its headers
/// (`Allow` on a 405).
async fn problem_for_bare_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = quote(request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(response.headers()) {
        return response;
    }
    let kind = ProblemKind::for_status(status);
    let detail = match kind {
        ProblemKind::NotFound => format!("no route for {method} {path}"),
        ProblemKind::MethodNotAllowed => {
            let allowed = response
                .headers()
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if allowed.is_empty() {
                format!("{path} does not take {method}")
            } else {
                format!("{path} does not take {method}; it takes {allowed}")
            }
        }
        ProblemKind::BodyTooLarge => extract::body_too_large().detail,
        _ => format!(
            "{method} {path} failed: {}",
            status.canonical_reason().unwrap_or("error")
        ),
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let problem = Problem::new(kind, detail).into_response();
    let (problem_parts, body) = problem.into_parts();
    parts.headers.extend(problem_parts.headers);
    // HEAD answers carry no body, problem or not.
    if method == Method::HEAD {
        return Response::from_parts(parts, axum::body::Body::empty());
    }
    Response::from_parts(parts, body)
}

fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_CONTENT_TYPE))
}
