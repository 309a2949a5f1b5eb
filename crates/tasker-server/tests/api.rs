//! The HTTP API over real HTTP, against a real service (SQLite store in a
//! temporary folder, orchestrator on an ephemeral port) and, where a task
//! must run, a real in-process Rust worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ALLOW, CONTENT_TYPE, LOCATION};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_server::api::{openapi, router, MAX_BODY_BYTES};
use tasker_server::Service;

const ECHO_TWICE: &str = "\
name: echo_twice
description: Two echo steps, one after the other.
steps:
  - name: first
    handler: echo
  - name: second
    handler: echo
    depends_on: [first]
";

const SLOW_THEN_ECHO: &str = "\
name: slow_then_echo
steps:
  - name: slow
    handler: slow
  - name: after
    handler: echo
    depends_on: [slow]
";

/// A service with its API on an ephemeral port.
struct Api {
    service: Arc<Service>,
    base: String,
    http: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn start() -> Api {
        Api::start_with(|_, _| {}).await
    }

    /// A service whose config `tweak` adjusts (given the temporary folder).
    async fn start_with(tweak: impl FnOnce(&mut TaskerConfig, &std::path::Path)) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let workflows = dir.path().join("workflows");
        std::fs::create_dir(&workflows).unwrap();
        std::fs::write(workflows.join("echo_twice.yaml"), ECHO_TWICE).unwrap();
        std::fs::write(workflows.join("slow_then_echo.yaml"), SLOW_THEN_ECHO).unwrap();
        let config = TaskerConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            store: format!("sqlite:{}", dir.path().join("tasker.db").display()),
            api_listen: "127.0.0.1:0".into(),
            workflows_dir: workflows.display().to_string(),
            heartbeat_interval_ms: 200,
            ..TaskerConfig::default()
        };
        let mut config = config;
        tweak(&mut config, dir.path());
        let service = Service::start(&config).await.expect("service starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(Arc::clone(&service));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Api {
            service,
            base,
            http: reqwest::Client::new(),
            server,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.server.abort();
        self.service.shutdown().await;
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        answer(
            self.http
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The body of `GET path`, as text.
    async fn text(&self, path: &str) -> String {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        response.text().await.unwrap()
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.post(self.url(path)).send().await.unwrap()).await
    }

    /// Polls the task until `done` holds of it.
    async fn wait_for(&self, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, task) = self.get(&format!("/v1/tasks/{id}")).await;
            assert_eq!(status, StatusCode::OK, "{task}");
            if done(&task) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {id} never {what}: {task}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Rust worker serving `echo` and `slow` (1 s), connected.
    async fn worker(&self) -> tasker_worker::RunningWorker {
        let config = TaskerConfig {
            endpoint: self.service.endpoint().to_string(),
            heartbeat_interval_ms: 200,
            ..TaskerConfig::default()
        };
        let worker = tasker_worker::Worker::new(config)
            .handler("echo", |step| Ok(step.task_context.clone()))
            .handler("slow", |_| {
                std::thread::sleep(Duration::from_secs(1));
                Ok(json!({ "slept_ms": 1000 }))
            })
            .spawn()
            .expect("worker starts");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (_, workers) = self.get("/v1/workers").await;
            if workers["workers"].as_array().is_some_and(|w| !w.is_empty()) {
                return worker;
            }
            assert!(Instant::now() < deadline, "the worker never connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Status and JSON body, checking that an error is a problem document
/// whose `status` is the response's.
async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body: Value = response.json().await.expect("a JSON body");
    if status.is_client_error() || status.is_server_error() {
        assert_eq!(content_type, "application/problem+json", "{status} {body}");
        assert_eq!(body["status"], status.as_u16(), "{body}");
        assert!(body["title"].is_string(), "{body}");
        assert!(
            body["type"]
                .as_str()
                .unwrap()
                .starts_with("https://tasker-core.dev/problems/"),
            "{body}"
        );
    } else {
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
    }
    (status, body)
}

fn assert_problem(
    (status, body): &(StatusCode, Value),
    want_status: u16,
    slug: &str,
    detail: &str,
    field: Option<&str>,
) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(
        body["type"],
        format!("https://tasker-core.dev/problems/{slug}"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains(detail),
        "detail {:?} lacks {detail:?}",
        body["detail"]
    );
    match field {
        Some(field) => assert_eq!(body["field"], field, "{body}"),
        None => assert!(body.get("field").is_none(), "{body}"),
    }
}

async fn send_raw(
    api: &Api,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut request = api.http.post(api.url("/v1/tasks")).body(body);
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    answer(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_that_name_the_field_and_store_nothing() {
    let api = Api::start().await;
    const JSON: Option<&str> = Some("application/json");

    let unknown = api
        .post_json("/v1/tasks", &json!({ "workflow": "echo_twcie" }))
        .await;
    assert_problem(
        &unknown,
        422,
        "unknown-workflow",
        "workflow: unknown workflow `echo_twcie`; did you mean `echo_twice`?",
        Some("workflow"),
    );
    assert_eq!(unknown.1["closest"], "echo_twice");
    assert_eq!(
        unknown.1["known_workflows"],
        json!(["echo_twice", "slow_then_echo"])
    );

    // A compressed body was read as JSON text and refused as malformed.
    let gzipped = api
        .http
        .post(api.url("/v1/tasks"))
        .header(CONTENT_TYPE, "application/json")
        .header("content-encoding", "gzip")
        .body(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_problem(
        &answer(gzipped).await,
        415,
        "unsupported-media-type",
        "Content-Encoding: the body must be sent uncompressed, got gzip",
        Some("Content-Encoding"),
    );
    assert_problem(
        &send_raw(&api, JSON, r#"{"workflow": "echo_twice", "context": {"#).await,
        400,
        "malformed-json",
        "the body is not valid JSON: EOF while parsing an object at line 1 column",
        None,
    );
    // A repeated key, read as the last value by serde_json and as the
    // first by other parsers, is refused at any depth, not read either way.
    for body in [
        r#"{"workflow": "slow_then_echo", "workflow": "echo_twice"}"#,
        r#"{"workflow": "echo_twice", "context": {"order": {"amount": 1, "amount": 1e9}}}"#,
    ] {
        let key = if body.contains("amount") {
            "amount"
        } else {
            "workflow"
        };
        assert_problem(
            &send_raw(&api, JSON, body).await,
            400,
            "malformed-json",
            &format!("the body repeats the key `{key}` in one object at line 1 column"),
            None,
        );
    }
    assert_problem(
        &api.post_json(
            "/v1/tasks",
            &json!({ "workflow": "echo_twice", "context": "order 42" }),
        )
        .await,
        422,
        "invalid-body",
        "context: expected an object, got a string",
        Some("context"),
    );
    assert_problem(
        &api.post_json("/v1/tasks", &json!({ "workflow": 42 })).await,
        422,
        "invalid-body",
        "workflow: expected a string, got an integer",
        Some("workflow"),
    );
    assert_problem(
        &api.post_json(
            "/v1/tasks",
            &json!({ "workflow": "echo_twice", "idempotency_key": 7 }),
        )
        .await,
        422,
        "invalid-body",
        "idempotency_key: expected a string, got an integer",
        Some("idempotency_key"),
    );
    assert_problem(
        &api.post_json("/v1/tasks", &json!({ "workflo": "echo_twice" }))
            .await,
        422,
        "invalid-body",
        "unknown field `workflo`, expected one of `workflow`, `context`, `idempotency_key`",
        Some("workflo"),
    );
    assert_problem(
        &api.post_json("/v1/tasks", &json!({ "context": {} })).await,
        422,
        "invalid-body",
        "workflow: missing",
        Some("workflow"),
    );
    let padding = "x".repeat(MAX_BODY_BYTES);
    let oversized = json!({ "workflow": "echo_twice", "context": { "pad": padding } }).to_string();
    assert_problem(
        &send_raw(&api, JSON, oversized).await,
        413,
        "body-too-large",
        "larger than the limit of 1048576 bytes",
        None,
    );
    assert_problem(
        &send_raw(&api, Some("text/plain"), r#"{"workflow":"echo_twice"}"#).await,
        415,
        "unsupported-media-type",
        "Content-Type: expected application/json, got `text/plain`",
        Some("Content-Type"),
    );
    assert_problem(
        &send_raw(&api, None, r#"{"workflow":"echo_twice"}"#).await,
        415,
        "unsupported-media-type",
        "got none",
        Some("Content-Type"),
    );
    assert_problem(
        &api.get("/v1/tasks?limit=0").await,
        400,
        "invalid-parameter",
        "limit: expected an integer from 1 to 1000, got `0`",
        Some("limit"),
    );
    assert_problem(
        &api.get("/v1/tasks?status=done").await,
        400,
        "invalid-parameter",
        "status: expected one of `running`, `complete`, `failed`, `cancelled`, got `done`",
        Some("status"),
    );
    assert_problem(
        &api.get("/v1/tasks?created_since=yesterday").await,
        400,
        "invalid-parameter",
        "created_since: expected an RFC 3339 time",
        Some("created_since"),
    );
    assert_problem(
        &api.get("/v1/tasks?colour=red").await,
        400,
        "invalid-parameter",
        "unknown query parameter `colour`",
        Some("colour"),
    );
    let missing = api.get("/v1/tasks/987654").await;
    assert_problem(
        &missing,
        404,
        "task-not-found",
        "no task has id 987654",
        None,
    );
    assert_eq!(missing.1["task_id"], 987654);
    assert_problem(
        &api.get("/v1/tasks/abc").await,
        400,
        "invalid-parameter",
        "id: expected a task id (a positive integer), got `abc`",
        Some("id"),
    );
    assert_problem(
        &api.post("/v1/tasks/987654/cancel").await,
        404,
        "task-not-found",
        "no task has id 987654",
        None,
    );
    assert_problem(
        &api.get("/v2/nothing").await,
        404,
        "not-found",
        "no route for GET /v2/nothing",
        None,
    );
    let response = api.http.delete(api.url("/v1/tasks")).send().await.unwrap();
    let allow = response.headers()[ALLOW].to_str().unwrap().to_string();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    assert_problem(
        &answer(response).await,
        405,
        "method-not-allowed",
        "/v1/tasks does not take DELETE",
        None,
    );

    // A route without parameters names one given rather than ignoring it: an
    // idempotency key in the query would otherwise protect nothing.
    assert_problem(
        &api.post_json(
            "/v1/tasks?idempotency_key=A-1",
            &json!({ "workflow": "echo_twice" }),
        )
        .await,
        400,
        "invalid-parameter",
        "unknown query parameter `idempotency_key`: POST /v1/tasks takes none",
        Some("idempotency_key"),
    );
    for path in [
        "/v1/tasks/987654/journal?limit=10",
        "/v1/throughput?limit=10",
        "/v1/workflows?limit=10",
    ] {
        let route = path.split('?').next().unwrap();
        assert_problem(
            &api.get(path).await,
            400,
            "invalid-parameter",
            &format!("unknown query parameter `limit`: GET {route} takes none"),
            Some("limit"),
        );
    }
    for (path, detail, field) in [
        (
            "/v1/workers?offset=10",
            "unknown query parameter `offset`, expected `limit`",
            "offset",
        ),
        (
            "/v1/workers?limit=1001",
            "limit: expected an integer from 0 to 1000, got `1001`",
            "limit",
        ),
        (
            "/v1/workers?limit=-1",
            "limit: expected an integer from 0 to 1000, got `-1`",
            "limit",
        ),
        (
            "/v1/workers?limit=1&limit=2",
            "limit: given more than once",
            "limit",
        ),
    ] {
        assert_problem(
            &api.get(path).await,
            400,
            "invalid-parameter",
            detail,
            Some(field),
        );
    }
    assert_problem(
        &api.post("/v1/tasks/987654/cancel?force=true").await,
        400,
        "invalid-parameter",
        "unknown query parameter `force`",
        Some("force"),
    );
    // The operators' routes leave parameters to the tools that add them.
    for path in ["/healthz?probe=1", "/metrics?x=1", "/v1/openapi.json?v=2"] {
        let response = api.http.get(api.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }

    // A name of a megabyte is not echoed back whole.
    let long = "w".repeat(500_000);
    let (_, body) = api
        .post_json("/v1/tasks", &json!({ "workflow": long }))
        .await;
    assert!(
        body.to_string().len() < 2_000,
        "{} bytes",
        body.to_string().len()
    );

    let (status, page) = api.get("/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["tasks"], json!([]), "a bad request stored a task");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_resubmit_returns_the_same_task_and_another_body_conflicts() {
    let api = Api::start().await;
    let request = json!({
        "workflow": "echo_twice",
        "context": { "order_id": 42 },
        "idempotency_key": "order-42"
    });
    let response = api
        .http
        .post(api.url("/v1/tasks"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()[LOCATION].to_str().unwrap().to_string();
    let (_, created) = answer(response).await;
    let id = created["task_id"].as_i64().unwrap();
    assert_eq!(location, format!("/v1/tasks/{id}"));
    assert_eq!(created["workflow"], "echo_twice");
    assert_eq!(created["idempotency_key"], "order-42");
    assert_eq!(created["context"], json!({ "order_id": 42 }));
    assert_eq!(created["steps"].as_array().unwrap().len(), 2);

    let (status, again) = api.post_json("/v1/tasks", &request).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["task_id"], id);

    let other = json!({
        "workflow": "echo_twice",
        "context": { "order_id": 43 },
        "idempotency_key": "order-42"
    });
    let conflict = api.post_json("/v1/tasks", &other).await;
    assert_problem(
        &conflict,
        409,
        "idempotency-conflict",
        &format!("`order-42` was used for task {id} with a different workflow or context"),
        Some("idempotency_key"),
    );
    assert_eq!(conflict.1["task_id"], id);

    let (_, fetched) = api.get(&location).await;
    assert_eq!(fetched["task_id"], id);
    let (_, page) = api.get("/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_come_back_as_they_were_sent_to_the_last_digit() {
    // Without correctly rounded parsing about one double in ten with 16 or
    // 17 significant digits came back one unit in the last place off (an
    // epoch time with a fraction, 2^70), in the context and in outputs.
    let api = Api::start().await;
    let _worker = api.worker().await;
    let numbers = [
        "922.6231292488831",
        "1700000000.1786277",
        "1.1805916207174113e+21",
        "-1.5432835417340557e+88",
        "0.1",
    ];
    let body = format!(
        r#"{{"workflow":"echo_twice","context":{{"n":[{}]}}}}"#,
        numbers.join(",")
    );
    let response = api
        .http
        .post(api.url("/v1/tasks"))
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["task_id"].as_i64().unwrap();
    api.wait_for(id, "complete", |task| task["status"] == "complete")
        .await;
    let text = api.text(&format!("/v1/tasks/{id}")).await;
    let printed = format!("[{}]", numbers.join(","));
    // The context, and each echoing step's output.
    assert_eq!(text.matches(&printed).count(), 3, "{printed} in {text}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_lets_the_running_step_finish_and_an_ended_task_cannot_be_cancelled() {
    let api = Api::start().await;
    let worker = api.worker().await;

    let (status, task) = api
        .post_json("/v1/tasks", &json!({ "workflow": "slow_then_echo" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["task_id"].as_i64().unwrap();
    api.wait_for(id, "ran its slow step", |t| {
        t["steps"][0]["state"] == "running"
    })
    .await;
    let (status, cancelled) = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{cancelled}");
    assert_eq!(cancelled["cancel_requested"], true);
    let ended = api
        .wait_for(id, "ended", |t| t["status"] != "running")
        .await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert_eq!(ended["steps"][0]["state"], "completed", "{ended}");
    assert_eq!(ended["steps"][0]["output"], json!({ "slept_ms": 1000 }));
    assert_eq!(ended["steps"][1]["state"], "cancelled", "{ended}");
    assert_eq!(ended["steps"][1]["attempts"], 0, "{ended}");

    let again = api.post(&format!("/v1/tasks/{id}/cancel")).await;
    assert_problem(
        &again,
        409,
        "task-ended",
        &format!("task {id} has already ended (cancelled)"),
        None,
    );
    assert_eq!(again.1["task_status"], "cancelled");

    let (_, done) = api
        .post_json(
            "/v1/tasks",
            &json!({ "workflow": "echo_twice", "context": { "n": 1 } }),
        )
        .await;
    let done_id = done["task_id"].as_i64().unwrap();
    let complete = api
        .wait_for(done_id, "completed", |t| t["status"] != "running")
        .await;
    assert_eq!(complete["status"], "complete", "{complete}");
    assert_eq!(complete["steps"][1]["output"], json!({ "n": 1 }));
    let ended = api.post(&format!("/v1/tasks/{done_id}/cancel")).await;
    assert_problem(
        &ended,
        409,
        "task-ended",
        &format!("task {done_id} has already ended (complete)"),
        None,
    );

    let (_, page) = api.get("/v1/tasks?status=complete").await;
    let ids: Vec<i64> = page["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![done_id]);

    worker.stop();
    worker.join(Duration::from_secs(10));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_step_names_the_worker_it_is_out_at_and_none_while_it_waits_for_one() {
    // An operator asking "who runs this step?" was shown the worker of an
    // earlier result, or nothing, for a step out at a worker and for one
    // that no worker had taken alike.
    let api = Api::start().await;
    let (status, task) = api
        .post_json("/v1/tasks", &json!({ "workflow": "slow_then_echo" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["task_id"].as_i64().unwrap();
    let queued = api
        .wait_for(id, "queued its slow step", |t| {
            t["steps"][0]["state"] == "running"
        })
        .await;
    assert!(queued["steps"][0].get("worker_id").is_none(), "{queued}");

    let worker = api.worker().await;
    let name = worker.worker_id().to_string();
    let held = api
        .wait_for(id, "sent its slow step to the worker", |t| {
            t["steps"][0].get("worker_id").is_some()
        })
        .await;
    assert_eq!(held["steps"][0]["state"], "running", "{held}");
    assert_eq!(held["steps"][0]["worker_id"], name.as_str(), "{held}");

    let ended = api
        .wait_for(id, "ended", |t| t["status"] != "running")
        .await;
    assert_eq!(ended["steps"][0]["worker_id"], name.as_str(), "{ended}");
    worker.stop();
    worker.join(Duration::from_secs(10));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_the_cursor() {
    let api = Api::start().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (status, task) = api
            .post_json(
                "/v1/tasks",
                &json!({ "workflow": "echo_twice", "context": { "n": n } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        ids.push(task["task_id"].as_i64().unwrap());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/v1/tasks?limit=2&workflow=echo_twice".to_string();
    for _ in 0..5 {
        let (status, page) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["task_id"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/tasks?limit=2&workflow=echo_twice&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids, "newest first, each task once");
    let (_, none) = api.get("/v1/tasks?workflow=slow_then_echo").await;
    assert_eq!(none["tasks"], json!([]));
    let (_, future) = api
        .get("/v1/tasks?created_since=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(future["tasks"], json!([]));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_its_document_health_workflows_workers_and_every_documented_route() {
    let api = Api::start().await;
    let (status, document) = api.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(document, openapi());

    let (status, health) = api.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health, json!({ "status": "ok" }));
    let (status, ready) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["store"], true);

    let (_, workflows) = api.get("/v1/workflows").await;
    let echo = &workflows["workflows"][0];
    assert_eq!(echo["name"], "echo_twice");
    assert_eq!(echo["description"], "Two echo steps, one after the other.");
    assert_eq!(echo["steps"][1]["depends_on"], json!(["first"]));

    let worker = api.worker().await;
    let (_, workers) = api.get("/v1/workers").await;
    let listed = &workers["workers"][0];
    assert_eq!(listed["language"], "rust", "{workers}");
    let mut handlers: Vec<&str> = listed["handlers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap())
        .collect();
    handlers.sort_unstable();
    assert_eq!(handlers, ["echo", "slow"]);
    assert_eq!(listed["handlers_total"], 2);
    assert!(listed["capacity"].as_u64().unwrap() > 0);
    assert_eq!(workers["total"], 1);
    assert_eq!(workers["capacity"], listed["capacity"]);
    assert_eq!(workers["in_flight"], 0);
    // The totals alone, as the dashboard's task list asks.
    let (_, totals) = api.get("/v1/workers?limit=0").await;
    assert_eq!(totals["workers"], json!([]));
    assert_eq!(
        (&totals["total"], &totals["capacity"]),
        (&workers["total"], &workers["capacity"])
    );

    // Each documented operation is routed: whatever it answers, it is not
    // the router's own "no such route" or "wrong method".
    for (path, item) in document["paths"].as_object().unwrap() {
        let path = path.replace("{id}", "987654");
        for method in item.as_object().unwrap().keys() {
            let request = match method.as_str() {
                "get" => api.http.get(api.url(&path)),
                "post" => api.http.post(api.url(&path)).json(&json!({})),
                other => panic!("undocumented method {other}"),
            };
            let response = request.send().await.unwrap();
            if path == "/metrics" {
                assert_eq!(response.status(), StatusCode::OK, "{path}");
                continue;
            }
            let (_, body) = answer(response).await;
            let kind = body["type"].as_str().unwrap_or("");
            assert!(
                !kind.ends_with("/not-found") && !kind.ends_with("/method-not-allowed"),
                "{method} {path} is not routed: {body}"
            );
        }
    }

    worker.stop();
    worker.join(Duration::from_secs(10));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_as_soon_as_the_task_ends_or_when_its_wait_is_over() {
    let api = Api::start().await;
    let _worker = api.worker().await;
    let (status, task) = api
        .post_json("/v1/tasks", &json!({ "workflow": "slow_then_echo" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["task_id"].as_i64().unwrap();

    // The slow step takes 1 s: a 0.3 s wait ends first, with the task running.
    let started = Instant::now();
    let (status, task) = api.get(&format!("/v1/tasks/{id}?wait=0.3")).await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "running", "{task}");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(900),
        "waited {waited:?}"
    );

    // A long wait answers when the task ends, not when the wait is over.
    let started = Instant::now();
    let (status, task) = api.get(&format!("/v1/tasks/{id}?wait=30")).await;
    assert_eq!(status, StatusCode::OK, "{task}");
    assert_eq!(task["status"], "complete", "{task}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(task["steps"][1]["state"], "completed", "{task}");

    // An ended task answers at once.
    let started = Instant::now();
    let (_, again) = api.get(&format!("/v1/tasks/{id}?wait=30")).await;
    assert_eq!(again["status"], "complete");
    assert!(started.elapsed() < Duration::from_secs(1));

    assert_problem(
        &api.get(&format!("/v1/tasks/{id}?wait=61")).await,
        400,
        "invalid-parameter",
        "from 0 to 60",
        Some("wait"),
    );
    assert_problem(
        &api.get("/v1/tasks/987654?wait=1").await,
        404,
        "task-not-found",
        "987654",
        None,
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_answered_503_once_the_service_has_drained() {
    let api = Api::start().await;
    // No worker: the task stays running.
    let (_, task) = api
        .post_json("/v1/tasks", &json!({ "workflow": "echo_twice" }))
        .await;
    let id = task["task_id"].as_i64().unwrap();
    let url = api.url(&format!("/v1/tasks/{id}?wait=30"));
    let http = api.http.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move { answer(http.get(url).send().await.unwrap()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll waits while the task runs"
    );
    let service = Arc::clone(&api.service);
    let stopping = tokio::spawn(async move { service.shutdown().await });
    let answered = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the long-poll is answered when the drain is over (no step is out)")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_problem(&answered, 503, "shutting-down", "shutting down", None);
    stopping.await.unwrap();
    api.server.abort();
}

/// A server that is not ready answers a problem document like any error,
/// which still says which part is not ready (the error-to-problem layer
/// once replaced that with "GET /readyz failed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_503_not_ready_with_its_readiness_once_the_service_stops() {
    let api = Api::start().await;
    api.service.shutdown().await;
    let (status, problem) = api.get("/readyz").await;
    assert_problem(
        &(status, problem.clone()),
        503,
        "not-ready",
        "shutting down",
        None,
    );
    // The readiness is beside the problem's members, as in a 200's body.
    assert_eq!(problem["ready"], false, "{problem}");
    assert_eq!(problem["shutting_down"], true, "{problem}");
    assert_eq!(problem["store"], false, "{problem}");
    assert_eq!(problem["workers"], 0, "{problem}");
    api.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_every_route_but_healthz_needs_a_listed_bearer_token() {
    let api = Api::start_with(|config, dir| {
        let path = dir.join("tokens.yaml");
        std::fs::write(
            &path,
            "ci: ci-token-0123456789abcdef\nops: ops-token-0123456789abcdef\n",
        )
        .unwrap();
        config.api_tokens_file = path.display().to_string();
    })
    .await;
    let get = |token: Option<&'static str>, path: &'static str| {
        let mut request = api.http.get(api.url(path));
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        request.send()
    };

    let (status, _) = answer(get(None, "/healthz").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "/healthz is open to probes");

    for path in [
        "/v1/tasks",
        "/v1/workflows",
        "/readyz",
        "/v1/no-such-route",
        "/metrics",
        "/v1/throughput",
        "/v1/tasks/1/journal",
    ] {
        let response = get(None, path).await.unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"tasker\""
        );
        assert_problem(
            &answer(response).await,
            401,
            "unauthorized",
            "requires a bearer token: send `Authorization: Bearer TOKEN` (tasker's clients and CLI send their `api_token` setting, `TASKER_API_TOKEN`)",
            None,
        );
    }
    let wrong = get(Some("Bearer ci-token-0123456789abcdeX"), "/v1/tasks")
        .await
        .unwrap();
    assert_eq!(
        wrong.headers()["www-authenticate"],
        "Bearer realm=\"tasker\", error=\"invalid_token\"",
        "RFC 6750: a refused token says so"
    );
    assert_problem(
        &answer(wrong).await,
        401,
        "unauthorized",
        "not one this server accepts (a client's `api_token`, `TASKER_API_TOKEN`",
        None,
    );
    assert_problem(
        &answer(
            get(Some("Bearer Bearer ci-token-0123456789abcdef"), "/v1/tasks")
                .await
                .unwrap(),
        )
        .await,
        401,
        "unauthorized",
        "it begins with `Bearer ` again",
        None,
    );
    let basic = get(Some("Basic Y2k6Y2k="), "/v1/tasks").await.unwrap();
    assert_eq!(
        basic.headers()["www-authenticate"],
        "Bearer realm=\"tasker\", error=\"invalid_request\""
    );
    assert_problem(
        &answer(basic).await,
        401,
        "unauthorized",
        "Bearer TOKEN",
        None,
    );
    // A header of bytes no token has (a token of accented letters, sent as
    // UTF-8) is named for what it is, not "must be `Bearer TOKEN`".
    let accented = api
        .http
        .get(api.url("/v1/tasks"))
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes("Bearer éééééééééééééééé".as_bytes()).unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_problem(
        &answer(accented).await,
        401,
        "unauthorized",
        "characters other than printable ASCII",
        None,
    );
    // Two headers, a good one first: refused, not read as the first.
    let mut headers = reqwest::header::HeaderMap::new();
    for value in [
        "Bearer ci-token-0123456789abcdef",
        "Bearer wrong-token-0123456789",
    ] {
        headers.append("authorization", value.parse().unwrap());
    }
    let twice = api
        .http
        .get(api.url("/v1/workflows"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    assert_problem(
        &answer(twice).await,
        401,
        "unauthorized",
        "send one Authorization header, not several",
        None,
    );
    // The scheme in any case (RFC 9110 §11.1): `BEARER` was refused.
    for token in [
        "Bearer ci-token-0123456789abcdef",
        "Bearer ops-token-0123456789abcdef",
        "BEARER ci-token-0123456789abcdef",
        "bEaReR ops-token-0123456789abcdef",
    ] {
        let (status, body) = answer(get(Some(token), "/v1/workflows").await.unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The dashboard's files hold no data: the page asks for a token.
    for path in ["/", "/dashboard/app.js", "/dashboard/style.css"] {
        let response = get(None, path).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    let response = get(Some("Bearer ops-token-0123456789abcdef"), "/metrics")
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Every refusal above is counted, for an alert on a misconfigured
    // client or on guessing.
    let refused = sample(
        &response.text().await.unwrap(),
        "tasker_api_requests_unauthorized_total",
    );
    assert!(refused >= 10.0, "{refused}");
    // A POST without a token creates nothing.
    let (status, _) = api
        .post_json("/v1/tasks", &json!({ "workflow": "echo_twice" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, page) = answer(
        get(Some("Bearer ci-token-0123456789abcdef"), "/v1/tasks")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["tasks"], json!([]), "{page}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_requests_for_localhost_or_an_ip_address_are_answered() {
    // A web page whose domain the attacker points at 127.0.0.1 (DNS
    // rebinding) reached the tokenless API as its own origin: its requests
    // name that domain in Host.
    let api = Api::start().await;
    for (host, status) in [
        ("attacker.example", StatusCode::MISDIRECTED_REQUEST),
        ("attacker.example:8080", StatusCode::MISDIRECTED_REQUEST),
        ("localhost:8080", StatusCode::OK),
        ("127.0.0.1:8080", StatusCode::OK),
        ("[::1]:8080", StatusCode::OK),
    ] {
        let response = api
            .http
            .get(api.url("/v1/tasks"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{host}");
        if status != StatusCode::OK {
            assert_problem(
                &answer(response).await,
                421,
                "http-error",
                "answers only requests addressed to localhost or an IP address, not `attacker.example",
                None,
            );
        }
    }
    // Without a Host there was nothing to check, and it was answered.
    let addr = api.base.trim_start_matches("http://").to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /v1/tasks HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("must carry a Host header"), "{answer}");
    api.stop().await;
}

#[tokio::test]
async fn a_server_other_machines_can_reach_needs_tokens_or_a_trusted_network() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, "ci: ci-token-0123456789abcdef\n").unwrap();
    let workflows = dir.path().join("workflows");
    std::fs::create_dir(&workflows).unwrap();
    let config = |listen: &str| TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        store: format!("sqlite:{}", dir.path().join("tasker.db").display()),
        workflows_dir: workflows.display().to_string(),
        api_listen: listen.into(),
        ..TaskerConfig::default()
    };
    let refused = tasker_server::Server::bind(&config("0.0.0.0:0"))
        .await
        .err()
        .expect("an open server is refused")
        .to_string();
    assert!(
        refused.contains("0.0.0.0:0") && refused.contains("api_tokens_file"),
        "{refused}"
    );
    assert!(refused.contains("api_trusted_network"), "{refused}");
    for config in [
        TaskerConfig {
            api_tokens_file: tokens.display().to_string(),
            ..config("0.0.0.0:0")
        },
        TaskerConfig {
            api_trusted_network: true,
            ..config("0.0.0.0:0")
        },
        config("127.0.0.1:0"),
    ] {
        let server = tasker_server::Server::bind(&config)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", config.api_listen));
        server.service().shutdown().await;
    }
}

#[tokio::test]
async fn a_bad_tokens_file_stops_the_start_naming_the_file_not_the_token() {
    // Too short; and of characters no HTTP header carries as text, which
    // started the server with a token that could never be presented.
    for token in ["tooshort", "éééééééééééééééééé"] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, format!("ci: \"{token}\"\n")).unwrap();
        let config = TaskerConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            store: format!("sqlite:{}", dir.path().join("tasker.db").display()),
            workflows_dir: dir.path().display().to_string(),
            api_tokens_file: path.display().to_string(),
            ..TaskerConfig::default()
        };
        let error = Service::start(&config)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("tokens.yaml")
                && error.contains("`ci`")
                && error.contains("printable ASCII"),
            "{error}"
        );
        assert!(!error.contains(token), "{error}");
    }
}

/// The value of the sample `name` (with its labels, as printed) in a
/// Prometheus text exposition; panics if it is absent.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_steps_a_task_ran_by_handler_and_the_tasks_by_status() {
    let api = Api::start().await;
    let worker = api.worker().await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, task) = api
            .post_json(
                "/v1/tasks",
                &json!({ "workflow": "echo_twice", "context": { "n": n } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{task}");
        ids.push(task["task_id"].as_i64().unwrap());
    }
    for id in &ids {
        api.wait_for(*id, "completed", |t| t["status"] == "complete")
            .await;
    }

    let response = api.http.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert_eq!(
        sample(&text, r#"tasker_steps_completed_total{handler="echo"}"#),
        6.0
    );
    assert_eq!(
        sample(&text, r#"tasker_steps_dispatched_total{handler="echo"}"#),
        6.0
    );
    assert_eq!(
        sample(&text, r#"tasker_step_run_seconds_count{handler="echo"}"#),
        6.0
    );
    assert_eq!(
        sample(&text, r#"tasker_step_queue_seconds_count{handler="echo"}"#),
        6.0
    );
    assert_eq!(sample(&text, "tasker_steps_submitted_total"), 6.0);
    assert_eq!(sample(&text, r#"tasker_tasks{status="complete"}"#), 3.0);
    assert_eq!(sample(&text, r#"tasker_tasks{status="running"}"#), 0.0);
    assert_eq!(
        sample(&text, r#"tasker_workers_connected{language="rust"}"#),
        1.0
    );
    assert_eq!(sample(&text, "tasker_steps_in_flight"), 0.0);
    assert_eq!(sample(&text, "tasker_steps_queued"), 0.0);
    // Which build answers: one upgrade's two sides were both `0.1.0`.
    let build = format!(
        r#"tasker_build_info{{version="{}",commit="{}"}}"#,
        env!("CARGO_PKG_VERSION"),
        tasker_server::BUILD_COMMIT
    );
    assert_eq!(sample(&text, &build), 1.0, "{text}");
    assert!(sample(&text, "tasker_worker_credit") > 0.0);
    // Each task: a create, then a commit per transition group.
    assert!(sample(&text, "tasker_store_commit_seconds_count") >= 3.0);
    assert!(sample(&text, "tasker_store_commit_operations_sum") >= 9.0);
    assert_eq!(
        sample(
            &text,
            r#"tasker_protocol_errors_total{code="malformed_json"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(&text, r#"tasker_results_dropped_total{reason="late"}"#),
        0.0
    );

    worker.stop();
    worker.join(Duration::from_secs(10));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tasks_journal_lists_each_attempt_and_its_steps_carry_their_edges() {
    let api = Api::start().await;
    let (status, body) = api.get("/v1/tasks/424242/journal").await;
    assert_problem(
        &(status, body),
        404,
        "task-not-found",
        "no task has id 424242",
        None,
    );

    let worker = api.worker().await;
    let (_, task) = api
        .post_json("/v1/tasks", &json!({ "workflow": "echo_twice" }))
        .await;
    assert_eq!(task["steps"][1]["depends_on"], json!(["first"]), "{task}");
    let id = task["task_id"].as_i64().unwrap();
    let task = api
        .wait_for(id, "completed", |t| t["status"] == "complete")
        .await;
    assert_eq!(task["steps"][0]["depends_on"], json!([]), "{task}");
    assert_eq!(task["steps"][1]["depends_on"], json!(["first"]), "{task}");

    let (status, journal) = api.get(&format!("/v1/tasks/{id}/journal")).await;
    assert_eq!(status, StatusCode::OK, "{journal}");
    let entries = journal["entries"].as_array().unwrap();
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {journal}"
    );
    let moves = |step: &Value| -> Vec<(String, String)> {
        entries
            .iter()
            .filter(|e| e["step_id"] == *step)
            .map(|e| {
                (
                    e["from_state"].as_str().unwrap().to_string(),
                    e["to_state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    for step in task["steps"].as_array().unwrap() {
        let want = [("waiting", "running"), ("running", "completed")]
            .map(|(a, b)| (a.to_string(), b.to_string()));
        assert_eq!(moves(&step["step_id"]), want, "{journal}");
    }
    let task_rows: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("step_id").is_none())
        .collect();
    assert_eq!(
        task_rows.first().unwrap()["to_state"],
        "running",
        "{journal}"
    );
    assert_eq!(
        task_rows.last().unwrap()["to_state"],
        "complete",
        "{journal}"
    );

    worker.stop();
    worker.join(Duration::from_secs(10));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_from_the_binary_with_a_strict_content_policy() {
    let api = Api::start().await;
    for (path, media) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let response = api.http.get(api.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert!(
            headers[CONTENT_TYPE].to_str().unwrap().starts_with(media),
            "{path}: {headers:?}"
        );
        // Task contexts and outputs are untrusted: no inline script runs;
        // and no other site frames the page's buttons.
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{path}");
        assert!(policy.contains("frame-ancestors 'none'"), "{path}");
        assert!(!response.text().await.unwrap().is_empty(), "{path}");
    }
    let index = api.text("/").await;
    assert!(index.contains("/dashboard/app.js"), "{index}");
    let (status, _) = api.get("/dashboard/nothing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, throughput) = api.get("/v1/throughput").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(throughput["interval_seconds"], 2, "{throughput}");
    assert!(throughput["points"].is_array(), "{throughput}");
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_does_not_keep_the_server_from_stopping() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let config = TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        store: format!("sqlite:{}", dir.path().join("tasker.db").display()),
        workflows_dir: dir.path().display().to_string(),
        api_listen: "127.0.0.1:0".into(),
        ..TaskerConfig::default()
    };
    let server = tasker_server::Server::bind(&config).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let (status, _) = answer(
        reqwest::get(format!("http://{addr}/v1/tasks"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // A client that sends half a request and waits: it used to hold the
    // server's stop for good.
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /v1/tasks HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the server stops within its grace period")
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(1), half.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the half-sent request's connection is closed: {read:?}"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}

/// A body whose HTTP framing is broken is the client's HTTP at fault, not
/// its JSON: 400 `http-error` in hyper's words, not `malformed-json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_with_broken_chunked_framing_is_a_400_http_error_naming_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start().await;
    let mut stream = tokio::net::TcpStream::connect(api.base.trim_start_matches("http://"))
        .await
        .unwrap();
    stream
        .write_all(
            b"POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body["type"], "https://tasker-core.dev/problems/http-error",
        "{body}"
    );
    assert!(body["detail"].as_str().unwrap().contains("chunk"), "{body}");
    api.stop().await;
}

/// A client sends the whole body before it reads the answer. A body over
/// the limit (declared, or found so while reading a chunked one) is read
/// to its end before the 413, so the client reads the problem rather than
/// a reset connection (Python's and Node's clients saw a broken pipe and
/// took the server for gone, in most tries over 2 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_answered_413_after_the_client_has_sent_it_all() {
    use std::io::{Read, Write};
    let api = Api::start().await;
    let addr = api.base.trim_start_matches("http://").to_string();
    for (size, chunked) in [(2 << 20, false), (8 << 20, false), (3 << 20, true)] {
        let addr = addr.clone();
        let answer = tokio::task::spawn_blocking(move || {
            let padding = "x".repeat(size);
            let body = format!(r#"{{"workflow":"echo_twice","context":{{"pad":"{padding}"}}}}"#);
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                format!("Content-Length: {}", body.len())
            };
            let head = format!(
                "POST /v1/tasks HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                 {framing}\r\nConnection: close\r\n\r\n"
            );
            stream
                .write_all(head.as_bytes())
                .map_err(|e| e.to_string())?;
            if chunked {
                for piece in body.as_bytes().chunks(64 << 10) {
                    write!(stream, "{:X}\r\n", piece.len()).map_err(|e| e.to_string())?;
                    stream.write_all(piece).map_err(|e| e.to_string())?;
                    stream.write_all(b"\r\n").map_err(|e| e.to_string())?;
                }
                stream.write_all(b"0\r\n\r\n").map_err(|e| e.to_string())?;
            } else {
                stream
                    .write_all(body.as_bytes())
                    .map_err(|e| e.to_string())?;
            }
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
            Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{size} bytes, chunked {chunked}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 413"), "{size}: {answer}");
        let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body["type"], "https://tasker-core.dev/problems/body-too-large",
            "{body}"
        );
    }
    api.stop().await;
}

/// A worker may announce 1,024 handlers of 255 characters, and 871 such
/// workers made every `GET /v1/workers` 228 MB (the dashboard asks every two
/// seconds): a listed worker names its first 64 handlers and says how many
/// it serves, and at most `limit` workers are listed (100 by default),
/// the first by id, with the totals over all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_list_is_bounded_however_many_handlers_and_workers_announce() {
    let api = Api::start().await;
    let config = TaskerConfig {
        endpoint: api.service.endpoint().to_string(),
        heartbeat_interval_ms: 200,
        ..TaskerConfig::default()
    };
    let mut running = Vec::new();
    for id in ["w-b", "w-a", "w-c"] {
        let mut worker = tasker_worker::Worker::new(config.clone()).worker_id(id);
        for n in 0..100 {
            worker = worker.handler(format!("h{n:03}"), |_| Ok(json!(null)));
        }
        running.push(worker.spawn().expect("worker starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let (_, listed) = api.get("/v1/workers?limit=2").await;
        if listed["total"] == 3 {
            break listed;
        }
        assert!(Instant::now() < deadline, "{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ids: Vec<&str> = listed["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w-a", "w-b"]);
    for worker in listed["workers"].as_array().unwrap() {
        assert_eq!(worker["handlers"].as_array().unwrap().len(), 64, "{worker}");
        assert_eq!(worker["handlers_total"], 100);
    }
    drop(running);
    api.stop().await;
}

/// Workers announce their own `language`: bounded per scrape only, one
/// announcing a new language each time made Prometheus keep a new series
/// each (215 in a minute). The first 32 seen keep their label for the
/// process's life; the rest count under `_other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_languages_take_at_most_32_label_values_however_many_come_and_go() {
    use tasker_protocol::{codec, WorkerHello, WorkerMessage};
    let api = Api::start().await;
    let context = zmq::Context::new();
    let mut seen = std::collections::BTreeSet::new();
    for n in 0..40 {
        let peer = context.socket(zmq::DEALER).unwrap();
        peer.set_linger(0).unwrap();
        peer.connect(api.service.endpoint()).unwrap();
        let mut hello = WorkerHello::new(format!("churn-{n}"), vec!["echo".into()], 1);
        hello.language = Some(format!("lang-{n:02}"));
        peer.send_multipart(codec::encode(&WorkerMessage::Hello(hello)).unwrap(), 0)
            .unwrap();
        peer.set_rcvtimeo(5_000).unwrap();
        peer.recv_multipart(0).expect("welcomed");
        let text = api.text("/metrics").await;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("tasker_workers_connected{language=\"") {
                seen.insert(rest.split('"').next().unwrap().to_string());
            }
        }
        peer.send_multipart(
            codec::encode(&WorkerMessage::Goodbye(tasker_protocol::Goodbye::new(
                "done",
            )))
            .unwrap(),
            0,
        )
        .unwrap();
    }
    assert_eq!(seen.len(), 33, "{seen:?}");
    assert!(seen.contains("_other") && seen.contains("lang-31") && !seen.contains("lang-32"));
    api.stop().await;
}

/// Sends `head` with a body of `size` bytes on a new connection, reads the
/// answer, then asks `GET /healthz` on the same connection: the status
/// lines of both, or what went wrong (a reset while the body was still
/// being written, the connection closed after the first answer).
fn refused_then_healthz(addr: &str, head: &str, size: usize) -> Result<(String, String), String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let request = format!("{head}Content-Length: {size}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(&vec![b'x'; size]))
        .map_err(|e| format!("writing the body: {e}"))?;
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut read_answer = || -> Result<String, String> {
        let mut status = String::new();
        reader
            .read_line(&mut status)
            .map_err(|e| format!("reading the answer: {e}"))?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).map_err(|e| e.to_string())?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok(status.trim_end().to_string())
    };
    let first = read_answer()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("asking again: {e}"))?;
    let second = read_answer()?;
    if second.is_empty() {
        return Err(format!("{first}, then the connection was closed"));
    }
    Ok((first, second))
}

/// A client sends its body right after the head. Refused from the head
/// alone (no route, wrong method, wrong content type, a bad query, a wrong
/// token) with the body left unread, the connection was closed under the
/// client while it still wrote: it saw a broken pipe, not the answer, and
/// reported a server it could not reach. Now the body is read first, the
/// answer arrives, and the connection stays open for the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_decided_from_the_head_reads_the_body_first_so_its_answer_arrives() {
    let api = Api::start_with(|config, dir| {
        let path = dir.join("tokens.yaml");
        std::fs::write(&path, "ci: ci-token-0123456789abcdef\n").unwrap();
        config.api_tokens_file = path.display().to_string();
    })
    .await;
    let addr = api.base.trim_start_matches("http://").to_string();
    let token = "Authorization: Bearer ci-token-0123456789abcdef\r\n";
    let cases = [
        (
            "POST /v1/tasks HTTP/1.1\r\nAuthorization: Bearer wrong-token-0123456789\r\n",
            "401",
        ),
        ("POST /v1/nope HTTP/1.1\r\n", "404"),
        ("POST /v1/workflows HTTP/1.1\r\n", "405"),
        (
            "POST /v1/tasks HTTP/1.1\r\nContent-Type: text/plain\r\n",
            "415",
        ),
        (
            "POST /v1/tasks?x=1 HTTP/1.1\r\nContent-Type: application/json\r\n",
            "400",
        ),
    ];
    for (head, status) in cases {
        for round in 0..5 {
            let head = format!("{head}Host: localhost\r\n");
            let head = if status == "401" {
                head
            } else {
                format!("{head}{token}")
            };
            let addr = addr.clone();
            let answers =
                tokio::task::spawn_blocking(move || refused_then_healthz(&addr, &head, 900 * 1024))
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{status}, round {round}: {e}"));
            assert!(
                answers.0.starts_with(&format!("HTTP/1.1 {status}")),
                "round {round}: {answers:?}"
            );
            assert!(answers.1.starts_with("HTTP/1.1 200"), "{answers:?}");
        }
    }
    api.stop().await;
}

/// Another process holding the SQLite file's write lock (a `sqlite3` shell
/// in a transaction) held every create for 30 s, as long as a client's
/// default timeout: it gave up not knowing whether its task existed. A
/// create now gets its 503 `store-unavailable` within seconds, is not
/// stored, and creates work again once the lock is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_locked_by_another_process_answers_503_long_before_a_clients_timeout() {
    let mut db = None;
    let api = Api::start_with(|_, dir| db = Some(dir.join("tasker.db"))).await;
    let db = db.unwrap();
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv();
        conn.execute_batch("COMMIT").unwrap();
    });
    locked.recv().unwrap();
    let asked = std::time::Instant::now();
    let create = api
        .http
        .post(api.url("/v1/tasks"))
        .json(&json!({ "workflow": "echo_twice" }))
        .send();
    let create = tokio::spawn(async move { answer(create.await.unwrap()).await });
    // While the create waits on the lock, no write goes through: a load
    // balancer asking /readyz then should send creates elsewhere.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ready, readiness) = api.get("/readyz").await;
    assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE, "{readiness}");
    let refused = create.await.unwrap();
    let took = asked.elapsed();
    assert_problem(&refused, 503, "store-unavailable", "", None);
    assert!(took < Duration::from_secs(15), "answered after {took:?}");
    release.send(()).unwrap();
    holder.join().unwrap();
    let (status, task) = api
        .post_json("/v1/tasks", &json!({ "workflow": "echo_twice" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let (_, page) = api.get("/v1/tasks").await;
    assert_eq!(page["tasks"].as_array().unwrap().len(), 1, "{page}");
    let (ready, readiness) = api.get("/readyz").await;
    assert_eq!(ready, StatusCode::OK, "{readiness}");
    api.stop().await;
}
