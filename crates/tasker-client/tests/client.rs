//! The Rust client against a real `tasker serve` (the server in process,
//! a SQLite file, real HTTP) and, where steps must run, a real Python
//! worker process: the steps run in another language than the client.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_client::{Client, Error, ListTasks, RetryPolicy, StepOutcome, TaskState};
use tasker_config::TaskerConfig;

const DOUBLE: &str = "\
name: double
steps:
  - name: double
    handler: double
  - name: describe
    handler: describe
    depends_on: [double]
";

const SLOW: &str = "\
name: slow
steps:
  - name: slow
    handler: slow
  - name: describe
    handler: describe
    depends_on: [slow]
";

const REFUSE: &str = "\
name: refuse
steps:
  - name: refuse
    handler: refuse
";

const WORKER: &str = r#"
import logging, time
from tasker_core import PermanentError, Worker

logging.basicConfig(level="WARNING")
worker = Worker()

class OutOfStock(PermanentError):
    pass

@worker.handler("double")
def double(step):
    return {"value": step.task_context["n"] * 2, "language": "python"}

@worker.handler("describe")
def describe(step):
    return {"text": f"n={step.task_context['n']}"}

@worker.handler("slow")
def slow(step):
    time.sleep(1.5)
    return {"slept": True}

@worker.handler("refuse")
def refuse(step):
    raise OutOfStock("sku 42 is out of stock")

worker.start()
worker.run()
"#;

/// A `tasker serve` in this process: its service, API and stop switch.
struct Serve {
    url: String,
    endpoint: String,
    service: std::sync::Arc<tasker_server::Service>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    run: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Serve {
    async fn start(tweak: impl FnOnce(&mut TaskerConfig, &Path)) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let workflows = dir.path().join("workflows");
        std::fs::create_dir(&workflows).unwrap();
        std::fs::write(workflows.join("double.yaml"), DOUBLE).unwrap();
        std::fs::write(workflows.join("refuse.yaml"), REFUSE).unwrap();
        std::fs::write(workflows.join("slow.yaml"), SLOW).unwrap();
        let mut config = TaskerConfig {
            endpoint: "tcp://127.0.0.1:0".into(),
            store: format!("sqlite:{}", dir.path().join("tasker.db").display()),
            api_listen: "127.0.0.1:0".into(),
            workflows_dir: workflows.display().to_string(),
            heartbeat_interval_ms: 200,
            shutdown_timeout_ms: 1000,
            ..TaskerConfig::default()
        };
        tweak(&mut config, dir.path());
        let server = tasker_server::Server::bind(&config)
            .await
            .expect("serve starts");
        let url = format!("http://{}", server.local_addr());
        let service = std::sync::Arc::clone(server.service());
        let endpoint = service.endpoint().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(async move {
            server
                .run(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("serve runs");
        });
        Serve {
            url,
            endpoint,
            service,
            stop: Some(stop),
            run,
            _dir: dir,
        }
    }

    /// A server whose API takes one bearer token, `token`.
    async fn with_token(token: &str) -> Serve {
        let line = format!("app: {token}\n");
        Serve::start(move |config, dir| {
            let path = dir.join("tokens.yaml");
            std::fs::write(&path, line).unwrap();
            config.api_tokens_file = path.display().to_string();
        })
        .await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.run).await;
    }
}

/// A Python worker process serving `double`, `describe` and `refuse`.
struct PythonWorker(Child);

impl PythonWorker {
    fn start(endpoint: &str, dir: &Path) -> PythonWorker {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = root.join("bindings/python/.venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `bash bindings/python/build.sh` first (scripts/test.sh does)",
            python.display()
        );
        let script = dir.join("worker.py");
        std::fs::write(&script, WORKER).unwrap();
        let child = Command::new(python)
            .arg(&script)
            .env("TASKER_ENDPOINT", endpoint)
            .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
            .env_remove("TASKER_CONFIG")
            .stdin(Stdio::null())
            .spawn()
            .expect("python starts");
        PythonWorker(child)
    }
}

impl PythonWorker {
    /// Waits until `serve` has the worker registered; fails at once if the
    /// process exits first (a broken build, say) rather than at a timeout.
    async fn connected(&mut self, serve: &Serve) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while serve.service.workers().await.is_empty() {
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("the Python worker exited before connecting: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the Python worker never connected"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submitted_from_rust_runs_on_a_python_worker_and_its_report_comes_back() {
    let serve = Serve::start(|_, _| {}).await;
    let scratch = tempfile::tempdir().unwrap();
    let mut worker = PythonWorker::start(&serve.endpoint, scratch.path());
    worker.connected(&serve).await;
    let client = Client::new(&serve.url).unwrap();

    let handle = client
        .submit("double", json!({ "n": 21 }), Some("order-21"))
        .await
        .unwrap();
    assert!(handle.created);
    assert_eq!(handle.task.status, TaskState::Running);
    let task = handle.wait(Some(Duration::from_secs(60))).await.unwrap();
    assert_eq!(task.status, TaskState::Complete, "{task:?}");
    assert_eq!(
        task.steps[0].output,
        Some(json!({ "value": 42, "language": "python" }))
    );
    assert_eq!(task.steps[1].output, Some(json!({ "text": "n=21" })));
    assert!(task
        .steps
        .iter()
        .all(|s| s.outcome == Some(StepOutcome::Completed)
            && s.worker_id
                .as_deref()
                .is_some_and(|w| w.starts_with("python-"))));

    // The same key and body: the same task, not a second one.
    let again = client
        .submit("double", json!({ "n": 21 }), Some("order-21"))
        .await
        .unwrap();
    assert_eq!((again.id, again.created), (handle.id, false));
    // The same key with another body is a conflict naming the key.
    let conflict = client
        .submit("double", json!({ "n": 22 }), Some("order-21"))
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, Error::IdempotencyConflict(_)),
        "{conflict:?}"
    );
    assert_eq!(conflict.field(), Some("idempotency_key"));
    assert_eq!(conflict.problem().unwrap().task_id, Some(handle.id));

    // A handler's error comes back with its class and message.
    let failed = client
        .submit("refuse", json!({}), None)
        .await
        .unwrap()
        .wait(Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(failed.status, TaskState::Failed);
    let error = failed.steps[0].error.as_ref().expect("an error");
    assert_eq!(error.error_type, "OutOfStock");
    assert_eq!(error.message, "sku 42 is out of stock");
    assert!(!error.retryable);

    let page = client
        .list(&ListTasks {
            status: Some(TaskState::Complete),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<i64> = page.tasks.iter().map(|t| t.task_id).collect();
    assert_eq!(ids, [handle.id]);

    // Cancelled while its first step runs: that step finishes, the next
    // never starts.
    let slow = client
        .submit("slow", json!({ "n": 3 }), None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while slow.get().await.unwrap().steps[0].worker_id.is_none()
        && slow.get().await.unwrap().steps[0].attempts == 0
    {
        assert!(Instant::now() < deadline, "the slow step never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slow.cancel().await.unwrap().cancel_requested);
    let cancelled = slow.wait(Some(Duration::from_secs(30))).await.unwrap();
    assert_eq!(cancelled.status, TaskState::Cancelled, "{cancelled:?}");
    assert_eq!(cancelled.steps[1].outcome, Some(StepOutcome::Cancelled));
    let again = slow.cancel().await.unwrap_err();
    assert!(matches!(again, Error::TaskEnded(_)), "{again:?}");
    assert_eq!(
        again.problem().unwrap().task_status,
        Some(TaskState::Cancelled)
    );
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_is_its_own_error_with_the_servers_message() {
    let serve = Serve::start(|_, _| {}).await;
    let client = Client::new(&serve.url).unwrap();

    let missing = client.get(987_654).await.unwrap_err();
    assert!(matches!(missing, Error::TaskNotFound(_)), "{missing:?}");
    assert_eq!(missing.to_string(), "no task has id 987654");
    assert_eq!(missing.status(), Some(404));

    let unknown = client.submit("dubble", json!({}), None).await.unwrap_err();
    let Error::UnknownWorkflow(problem) = &unknown else {
        panic!("{unknown:?}")
    };
    assert_eq!(problem.closest.as_deref(), Some("double"));
    assert_eq!(unknown.field(), Some("workflow"));

    // Over the server's 1 MiB: refused here, before any upload, as the
    // server would refuse it. Sent, a body far over the limit met a server
    // that closes unread, and failed as a broken pipe, "not reachable"
    // (retried five times with a key), with the server up.
    for size in [(1 << 20) + 1, 20 << 20] {
        let big = json!({ "blob": "x".repeat(size) });
        let refused = client
            .submit("double", big, Some("big-one"))
            .await
            .unwrap_err();
        let Error::Validation(problem) = &refused else {
            panic!("{refused:?}")
        };
        assert_eq!(problem.slug(), "body-too-large");
        assert_eq!(refused.status(), Some(413));
        assert!(
            refused.to_string().contains("nothing was sent"),
            "{refused}"
        );
    }
    let none = client.list(&ListTasks::default()).await.unwrap();
    assert!(none.tasks.is_empty(), "{:?}", none.tasks);

    let bad_limit = client
        .list(&ListTasks {
            limit: Some(0),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(bad_limit, Error::Validation(_)), "{bad_limit:?}");
    assert_eq!(bad_limit.field(), Some("limit"));

    let long_key = "k".repeat(300);
    let bad_key = client
        .submit("double", json!({}), Some(&long_key))
        .await
        .unwrap_err();
    assert_eq!(bad_key.field(), Some("idempotency_key"), "{bad_key:?}");

    // No worker: the task runs until cancelled; a wait ends at its timeout.
    let handle = client
        .submit("double", json!({ "n": 1 }), None)
        .await
        .unwrap();
    let started = Instant::now();
    let timeout = handle
        .wait(Some(Duration::from_millis(500)))
        .await
        .unwrap_err();
    let Error::WaitTimeout { task } = &timeout else {
        panic!("{timeout:?}")
    };
    assert_eq!(task.task_id, handle.id);
    assert_eq!(task.status, TaskState::Running);
    assert_eq!(
        timeout.to_string(),
        format!(
            "task {} (double) did not end within the wait's timeout; it is running",
            handle.id
        )
    );
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(3));

    // Cancelled while its step waits for a worker: the step is withdrawn,
    // so the task ends now, not at the step's timeout.
    let started = Instant::now();
    assert!(handle.cancel().await.unwrap().cancel_requested);
    let ended = handle.wait(Some(Duration::from_secs(5))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(ended.status, TaskState::Cancelled);
    let withdrawn = ended.steps[0].error.as_ref().expect("the step's reason");
    assert_eq!(withdrawn.error_type, "Withdrawn");
    assert!(ended
        .steps
        .iter()
        .all(|s| s.outcome == Some(StepOutcome::Cancelled)));
    let again = handle.cancel().await.unwrap_err();
    assert!(matches!(again, Error::TaskEnded(_)), "{again:?}");
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_tokens_refuses_a_client_without_the_right_one() {
    let serve = Serve::with_token("ci-token-0123456789abcdef").await;
    for client in [
        Client::new(&serve.url).unwrap(),
        Client::new(&serve.url)
            .unwrap()
            .with_token("not-the-token-0123456789"),
    ] {
        let refused = client.workflows().await.unwrap_err();
        assert!(matches!(refused, Error::Unauthorized(_)), "{refused:?}");
        assert_eq!(refused.status(), Some(401));
    }
    // Configured like a worker: api_url and api_token.
    let config = TaskerConfig {
        api_url: serve.url.clone(),
        api_token: "ci-token-0123456789abcdef".into(),
        ..TaskerConfig::default()
    };
    let client = Client::from_config(&config).unwrap();
    let names = workflow_names(&client).await;
    assert_eq!(names, ["double", "refuse", "slow"]);
    // A token read from a file ends in a line break: not the token's.
    let client = Client::new(&serve.url)
        .unwrap()
        .with_token("ci-token-0123456789abcdef\n");
    assert_eq!(workflow_names(&client).await, ["double", "refuse", "slow"]);
    // One with a line break inside goes into no header: refused at once,
    // not retried as a server that cannot be reached, and not quoted.
    let client = Client::new(&serve.url)
        .unwrap()
        .with_token("ci-token-0123\r\nX-Injected: 1");
    let started = Instant::now();
    let refused = client.workflows().await.unwrap_err();
    assert!(matches!(refused, Error::InvalidToken(_)), "{refused:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    let message = refused.to_string();
    assert!(
        message.contains("api_token") && message.contains("a line break"),
        "{message}"
    );
    assert!(!message.contains("ci-token"), "{message}");
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_is_server_unavailable_after_the_retries_and_at_once_for_a_keyless_submit() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::new(&format!("127.0.0.1:{port}")).unwrap();

    let started = Instant::now();
    let error = client.get(1).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, Error::ServerUnavailable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("is not reachable"), "{error}");
    assert!(error.to_string().contains("tried 5 times"), "{error}");
    // 0.2 + 0.4 + 0.8 + 1.6 s, each ±20%.
    assert!(
        took >= Duration::from_millis(2400) && took < Duration::from_secs(6),
        "{took:?}"
    );

    let started = Instant::now();
    let error = client.submit("double", json!({}), None).await.unwrap_err();
    assert!(
        matches!(error, Error::ServerUnavailable { .. }),
        "{error:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(500));

    let client = client.with_retry(RetryPolicy::none());
    let started = Instant::now();
    assert!(client.get(1).await.is_err());
    assert!(started.elapsed() < Duration::from_millis(500));

    assert!(matches!(
        Client::new("ftp://tasks.example.com"),
        Err(Error::InvalidUrl(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_a_zeromq_endpoint_fails_at_once_saying_so() {
    // What a user gets who copies the orchestrator's endpoint for the API's:
    // each try failed with "received unexpected message from connection",
    // five times over.
    let serve = Serve::start(|_, _| {}).await;
    let client = Client::new(&serve.endpoint.replace("tcp://", "http://")).unwrap();
    for keyed in [None, Some("z")] {
        let started = Instant::now();
        let error = match keyed {
            None => client.get(1).await.unwrap_err(),
            Some(key) => client
                .submit("double", json!({}), Some(key))
                .await
                .unwrap_err(),
        };
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(error, Error::ServerUnavailable { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        assert!(
            text.contains("ZeroMQ endpoint") && !text.contains("tried"),
            "{text}"
        );
    }
    let error = client.submit("double", json!({}), None).await.unwrap_err();
    assert!(error.to_string().contains("no task was created"), "{error}");
    serve.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_end_is_refused_at_its_limit_not_read_into_memory() {
    // A server that streamed 2 GB took the CLI to 4 GB of memory.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut streamed = 0usize;
        for declared in [false, true] {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            if declared {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                            Content-Length: 1000000000000\r\n\r\n";
                let _ = socket.write_all(head.as_bytes()).await;
                continue;
            }
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                        Transfer-Encoding: chunked\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            let chunk = format!("100000\r\n{}\r\n", "7".repeat(1 << 20));
            while socket.write_all(chunk.as_bytes()).await.is_ok() {
                streamed += 1 << 20;
                assert!(streamed < 1 << 30, "the client read a GiB");
            }
        }
        streamed
    });
    let client = Client::new(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_retry(RetryPolicy::none());
    for _ in 0..2 {
        let error = client.get(1).await.unwrap_err();
        assert!(matches!(error, Error::UnexpectedAnswer(_)), "{error:?}");
        assert!(error.to_string().contains("more than 256 MiB"), "{error}");
    }
    let streamed = server.await.unwrap();
    assert!(streamed < 300 << 20, "{streamed} bytes");
}

/// Each try was held for the wait plus 10 s, five times over: against a
/// server whose PostgreSQL store is down, a 3 s wait gave up after most of
/// a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waits_timeout_bounds_it_against_a_server_that_holds_every_request() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let error = client
        .wait(1, Some(Duration::from_secs(1)))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(error, Error::ServerUnavailable { .. }),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("did not answer by the wait's deadline (no answer in time"),
        "{error}"
    );
    assert!(
        !error.to_string().contains("is tasker serve running"),
        "{error}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(1 + 2 + 1),
        "{took:?}"
    );
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopping_during_a_wait_ends_it_with_server_unavailable_not_a_hang() {
    let serve = Serve::start(|_, _| {}).await;
    let client = Client::new(&serve.url).unwrap();
    // No worker: the task would run forever.
    let handle = client
        .submit("double", json!({ "n": 1 }), None)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move { handle.wait(None).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished());
    let started = Instant::now();
    serve.stop().await;
    let error = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("the wait ends")
        .unwrap()
        .unwrap_err();
    let Error::ServerUnavailable { message, status } = &error else {
        panic!("{error:?}");
    };
    if status.is_none() {
        // Refused after it answered shutting-down: said as a stop, not as
        // a server that may never have run.
        assert!(
            message.contains("shut down (it answered shutting-down)"),
            "{message}"
        );
        assert!(!message.contains("is tasker serve running"), "{message}");
    }
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// The names of the workflows the server behind `client` offers.
async fn workflow_names(client: &Client) -> Vec<String> {
    client
        .workflows()
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.name)
        .collect()
}

/// A TLS-terminating proxy in front of `upstream` (`HOST:PORT`), as Caddy
/// or nginx would be, with a self-signed certificate for `localhost`;
/// returns its port and the certificate (PEM).
async fn tls_proxy(upstream: String) -> (u16, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = cert.cert.pem();
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der())
            .unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_tls_proxy_the_client_speaks_https_and_checks_the_certificate() {
    let serve = Serve::with_token("https-only-token-0123456789").await;
    let (port, pem) = tls_proxy(serve.url.trim_start_matches("http://").to_string()).await;
    let url = format!("https://localhost:{port}");
    let quick = RetryPolicy::none();

    // A certificate nobody vouches for is refused, token or not.
    let untrusted = Client::new(&url)
        .unwrap()
        .with_token("https-only-token-0123456789")
        .with_retry(quick.clone());
    let error = untrusted.workflows().await.unwrap_err();
    assert!(
        matches!(error, Error::ServerUnavailable { .. }),
        "{error:?}"
    );

    // Trusted through SSL_CERT_FILE, as a private CA would be.
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pem).unwrap();
    std::env::set_var("SSL_CERT_FILE", ca.path());
    let client = Client::new(&url)
        .unwrap()
        .with_token("https-only-token-0123456789")
        .with_retry(quick);
    let names = workflow_names(&client).await;
    assert!(names.contains(&"double".to_string()), "{names:?}");
    let handle = client
        .submit("double", json!({ "n": 2 }), None)
        .await
        .unwrap();
    assert_eq!(client.get(handle.id).await.unwrap().task_id, handle.id);
    assert_eq!(client.base_url(), url);
    // Kept: other tests of this binary build clients that read it.
    std::mem::forget(ca);
    serve.stop().await;
}
