//! CURVE (RFC 26) and the ZAP handler (RFC 27), over real sockets: who may
//! connect, what a refused worker sees, and what the wire shows.
//!
//! These tests never skip: a build whose libzmq lacks CURVE fails them.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_orchestrator::{ExecutorError, ZmqPubSubExecutor};
use tasker_protocol::*;
use tasker_transport::curve::KeyPair;
use tasker_worker::{RunningWorker, Worker, WorkerError};

const LONG: Duration = Duration::from_secs(10);

/// Key files in a temporary folder: the orchestrator's pair, the admitted
/// workers' public keys in `authorized/`, every secret key in `keys/`.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Self {
        let keys = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(keys.path("authorized")).unwrap();
        std::fs::create_dir(keys.path("keys")).unwrap();
        keys.make("orchestrator", false);
        keys
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key pair NAME in `keys/`; `admit` copies NAME.pub into
    /// `authorized/`.
    fn make(&self, name: &str, admit: bool) -> KeyPair {
        let pair = KeyPair::generate().unwrap();
        pair.write(&self.path("keys"), name).unwrap();
        if admit {
            self.admit(name);
        }
        pair
    }

    fn admit(&self, name: &str) {
        std::fs::copy(
            self.path(&format!("keys/{name}.pub")),
            self.path(&format!("authorized/{name}.pub")),
        )
        .unwrap();
    }

    fn revoke(&self, name: &str) {
        std::fs::remove_file(self.path(&format!("authorized/{name}.pub"))).unwrap();
    }

    fn file(&self, name: &str) -> String {
        self.path(&format!("keys/{name}"))
            .to_string_lossy()
            .into_owned()
    }

    fn orchestrator_config(&self) -> TaskerConfig {
        TaskerConfig {
            curve_secret_key_file: self.file("orchestrator.key"),
            curve_authorized_keys_dir: self.path("authorized").to_string_lossy().into_owned(),
            ..config()
        }
    }

    /// A worker of `executor` holding key `name`, trusting server key
    /// `server` (a `.pub` file in `keys/`).
    fn worker_config(
        &self,
        executor: &ZmqPubSubExecutor,
        name: &str,
        server: &str,
    ) -> TaskerConfig {
        TaskerConfig {
            curve_authorized_keys_dir: String::new(),
            curve_secret_key_file: self.file(&format!("{name}.key")),
            curve_server_public_key_file: self.file(&format!("{server}.pub")),
            ..worker_config(executor)
        }
    }
}

/// A worker whose `echo` handler returns the step's context and counts
/// its runs.
fn echo_worker(config: TaskerConfig, id: &str, runs: &Arc<AtomicUsize>) -> RunningWorker {
    let runs = Arc::clone(runs);
    Worker::new(config)
        .worker_id(id)
        .handler("echo", move |step| {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(step.task_context.clone())
        })
        .spawn()
        .expect("worker starts")
}

/// The error the worker stopped with, waiting for it to stop.
fn refusal(worker: &RunningWorker) -> String {
    assert!(
        worker.runtime().join(LONG),
        "a refused worker stops by itself instead of waiting"
    );
    match worker.runtime().failure() {
        Some(WorkerError::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn run_echo(
    executor: &ZmqPubSubExecutor,
    ids: std::ops::Range<i64>,
    timeout_ms: u64,
) -> Vec<StepExecutionResult> {
    let steps = ids
        .map(|id| {
            with_context(
                steps(id..id + 1, "echo", timeout_ms).remove(0),
                json!({ "n": id }),
            )
        })
        .collect();
    executor
        .execute_step_batch(StepBatchRequest::new(format!("b-{}", next_batch()), steps))
        .await
        .unwrap()
}

fn next_batch() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Steps that no worker may take end at their timeout, with no worker
/// for their handler, and the refused worker ran none of them.
async fn assert_no_step_reaches(executor: &ZmqPubSubExecutor, runs: &AtomicUsize) {
    let results = run_echo(executor, 0..3, 1_500).await;
    assert!(
        results.iter().all(|r| r.status != StepStatus::Completed),
        "{results:?}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the refused worker ran nothing"
    );
    assert!(executor.workers().await.is_empty(), "nobody registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_an_admitted_worker_serves_steps_over_curve() {
    let keys = Keys::new();
    keys.make("w1", true);
    let executor = start(&keys.orchestrator_config());
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = echo_worker(
        keys.worker_config(&executor, "w1", "orchestrator"),
        "w1",
        &runs,
    );
    assert!(executor.wait_for_workers(1, LONG).await);

    let results = run_echo(&executor, 0..50, 10_000).await;
    assert_eq!(results.len(), 50);
    for result in &results {
        assert_eq!(result.status, StepStatus::Completed, "{result:?}");
        assert_eq!(result.output, Some(json!({ "n": result.step_id })));
    }
    assert_eq!(runs.load(Ordering::SeqCst), 50);
    let metrics = executor.metrics();
    assert_eq!((metrics.keys_refused, metrics.handshakes_failed), (0, 0));
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c2_a_worker_with_an_unlisted_key_is_refused_gets_no_step_and_names_its_key() {
    let keys = Keys::new();
    let stranger = keys.make("stranger", false);
    let executor = start(&keys.orchestrator_config());
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = echo_worker(
        keys.worker_config(&executor, "stranger", "orchestrator"),
        "stranger",
        &runs,
    );

    let message = refusal(&worker);
    assert!(
        message.contains("refused this worker's CURVE key"),
        "{message}"
    );
    assert!(
        message.contains(&stranger.public().to_string()),
        "{message}"
    );
    assert!(message.contains("curve_authorized_keys_dir"), "{message}");
    assert!(matches!(
        worker.runtime().next_steps(1, Some(Duration::ZERO)),
        Err(WorkerError::Refused(_))
    ));
    assert_no_step_reaches(&executor, &runs).await;
    assert!(executor.metrics().keys_refused >= 1);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c3_a_worker_holding_a_wrong_server_key_is_refused_and_gets_no_step() {
    let keys = Keys::new();
    keys.make("w1", true);
    keys.make("impostor", false);
    let executor = start(&keys.orchestrator_config());
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = echo_worker(keys.worker_config(&executor, "w1", "impostor"), "w1", &runs);

    let message = refusal(&worker);
    assert!(
        message.contains("curve_server_public_key_file"),
        "{message}"
    );
    assert!(message.contains("impostor.pub"), "{message}");
    assert_no_step_reaches(&executor, &runs).await;
    assert!(executor.metrics().handshakes_failed >= 1);
    executor.shutdown(LONG).await;
}

#[test]
fn c4_a_worker_dialling_a_port_that_is_not_an_orchestrator_is_told_so_not_only_about_curve() {
    // What an HTTP server (tasker serve's API port) does with a ZeroMQ
    // greeting: answers 400 and closes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let runs = Arc::new(AtomicUsize::new(0));
    let config = TaskerConfig {
        endpoint: endpoint.clone(),
        reconnect_initial_ms: 20,
        reconnect_max_ms: 50,
        ..TaskerConfig::default()
    };
    let worker = echo_worker(config, "lost", &runs);
    let message = refusal(&worker);
    assert!(message.contains(&endpoint), "{message}");
    assert!(
        message.contains("not a tasker orchestrator") && message.contains("requires CURVE"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c4_a_plaintext_worker_is_refused_by_a_curve_orchestrator_and_told_curve_is_required() {
    let keys = Keys::new();
    let executor = start(&keys.orchestrator_config());
    let runs = Arc::new(AtomicUsize::new(0));
    let plain = TaskerConfig {
        curve_secret_key_file: String::new(),
        curve_authorized_keys_dir: String::new(),
        ..worker_config(&executor)
    };
    let worker = echo_worker(plain, "plain", &runs);

    let message = refusal(&worker);
    assert!(message.contains("requires CURVE"), "{message}");
    assert_no_step_reaches(&executor, &runs).await;

    // A raw peer that ignores every rule gets no welcome either.
    let peer = RawPeer::connect(executor.endpoint());
    peer.send(&WorkerMessage::Hello(WorkerHello::new(
        "raw",
        vec!["echo".into()],
        1,
    )));
    assert!(peer.recv(Duration::from_millis(800)).is_none());
    assert!(executor.workers().await.is_empty());
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c5_a_curve_worker_against_a_plaintext_orchestrator_fails_saying_so() {
    let keys = Keys::new();
    keys.make("w1", false);
    let executor = start(&config());
    let runs = Arc::new(AtomicUsize::new(0));
    let worker = echo_worker(
        keys.worker_config(&executor, "w1", "orchestrator"),
        "w1",
        &runs,
    );

    let message = refusal(&worker);
    assert!(message.contains("does not use CURVE"), "{message}");
    assert_no_step_reaches(&executor, &runs).await;
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c6_keys_are_admitted_and_revoked_through_the_folder_without_a_restart() {
    let keys = Keys::new();
    keys.make("steady", true);
    keys.make("w1", true);
    keys.make("w1-new", false);
    let executor = start(&keys.orchestrator_config());
    let runs = Arc::new(AtomicUsize::new(0));
    let steady = echo_worker(
        keys.worker_config(&executor, "steady", "orchestrator"),
        "steady",
        &runs,
    );
    let old = echo_worker(
        keys.worker_config(&executor, "w1", "orchestrator"),
        "w1",
        &runs,
    );
    assert!(executor.wait_for_workers(2, LONG).await);

    // Rotate w1's key: admit the new one, restart w1 with it, revoke the
    // old one. The steady worker is never touched.
    keys.admit("w1-new");
    old.join(LONG);
    // Counting is not enough here: two workers can still be steady and the
    // old w1 whose goodbye is not yet read. Wait for the old one to go, then
    // for the new one by name.
    wait_for_worker_ids(&executor, &["steady"]).await;
    let new = echo_worker(
        keys.worker_config(&executor, "w1-new", "orchestrator"),
        "w1",
        &runs,
    );
    keys.revoke("w1");
    wait_for_worker_ids(&executor, &["steady", "w1"]).await;

    let stale = echo_worker(
        keys.worker_config(&executor, "w1", "orchestrator"),
        "stale",
        &Arc::default(),
    );
    let message = refusal(&stale);
    assert!(
        message.contains("refused this worker's CURVE key"),
        "{message}"
    );

    let results = run_echo(&executor, 0..20, 10_000).await;
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    steady.join(LONG);
    new.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c7_under_curve_the_wire_carries_no_payload_in_clear_text() {
    const SECRET: &str = "card-4111111111111111";
    for curve in [false, true] {
        let keys = Keys::new();
        keys.make("w1", true);
        let orchestrator = if curve {
            keys.orchestrator_config()
        } else {
            config()
        };
        let executor = start(&orchestrator);
        let relay = Relay::start(executor.endpoint());
        let mut worker = if curve {
            keys.worker_config(&executor, "w1", "orchestrator")
        } else {
            worker_config(&executor)
        };
        worker.endpoint = relay.endpoint.clone();
        let runs = Arc::new(AtomicUsize::new(0));
        let worker = echo_worker(worker, "w1", &runs);
        assert!(executor.wait_for_workers(1, LONG).await);

        let step = with_context(
            steps(1..2, "echo", 10_000).remove(0),
            json!({ "card": SECRET }),
        );
        let results = executor
            .execute_step_batch(StepBatchRequest::new("secret", vec![step]))
            .await
            .unwrap();
        assert_eq!(results[0].output, Some(json!({ "card": SECRET })));
        worker.join(LONG);
        executor.shutdown(LONG).await;

        let wire = relay.captured();
        let seen = |text: &str| wire.windows(text.len()).any(|w| w == text.as_bytes());
        if curve {
            assert!(
                !seen(SECRET),
                "the card number crossed the wire in clear text"
            );
            assert!(
                !seen("step_batch_request") && !seen("echo"),
                "message types are hidden too"
            );
        } else {
            // The control: the same capture does see a plaintext run.
            assert!(seen(SECRET), "the relay captured the plaintext run");
        }
    }
}

#[test]
fn c8_curve_misconfigured_fails_at_start_naming_the_key() {
    let keys = Keys::new();
    let no_secret = TaskerConfig {
        curve_secret_key_file: String::new(),
        ..keys.orchestrator_config()
    };
    let error = ZmqPubSubExecutor::start(&no_secret).err().unwrap();
    assert!(matches!(error, ExecutorError::Curve(_)));
    assert!(
        error.to_string().contains("curve_secret_key_file"),
        "{error}"
    );

    let no_folder = TaskerConfig {
        curve_authorized_keys_dir: keys.path("missing").to_string_lossy().into_owned(),
        ..keys.orchestrator_config()
    };
    let error = ZmqPubSubExecutor::start(&no_folder)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("curve_authorized_keys_dir"), "{error}");
    assert!(error.contains("missing"), "{error}");

    // A public key where the secret belongs.
    let swapped = TaskerConfig {
        curve_secret_key_file: keys.file("orchestrator.pub"),
        ..keys.orchestrator_config()
    };
    let error = ZmqPubSubExecutor::start(&swapped)
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("public key only"), "{error}");

    let worker = TaskerConfig {
        curve_server_public_key_file: keys.file("orchestrator.pub"),
        curve_authorized_keys_dir: String::new(),
        curve_secret_key_file: String::new(),
        ..config()
    };
    let error = Worker::new(worker)
        .handler("echo", |_| Ok(json!(null)))
        .spawn()
        .err()
        .unwrap();
    assert!(matches!(error, WorkerError::InvalidOptions(_)), "{error:?}");
    assert!(
        error.to_string().contains("curve_secret_key_file"),
        "{error}"
    );
}

/// A TCP relay between workers and the orchestrator that keeps a copy of
/// every byte, both ways: what anyone on the network path would see.
struct Relay {
    endpoint: String,
    wire: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    fn start(upstream: &str) -> Self {
        let upstream = upstream.trim_start_matches("tcp://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        let wire: Arc<Mutex<Vec<u8>>> = Arc::default();
        let copy = Arc::clone(&wire);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    &copy,
                );
                pump(server, client, &copy);
            }
        });
        Self { endpoint, wire }
    }

    fn captured(&self) -> Vec<u8> {
        self.wire.lock().unwrap().clone()
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, wire: &Arc<Mutex<Vec<u8>>>) {
    let wire = Arc::clone(wire);
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            wire.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Waits until the registered workers are exactly `ids` (in any order).
async fn wait_for_worker_ids(executor: &ZmqPubSubExecutor, ids: &[&str]) {
    let mut want: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    want.sort();
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let mut have: Vec<String> = executor
            .workers()
            .await
            .into_iter()
            .map(|w| w.worker_id)
            .collect();
        have.sort();
        if have == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers {have:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A CURVE peer of key `name` (in `keys/`), trusting the orchestrator's.
fn curve_peer(keys: &Keys, executor: &ZmqPubSubExecutor, name: &str) -> RawPeer {
    let client = tasker_transport::curve::ClientCurve {
        keys: KeyPair::load(&keys.path(&format!("keys/{name}.key")), "key").unwrap(),
        server: tasker_transport::curve::read_public_key(
            &keys.path("keys/orchestrator.pub"),
            "key",
        )
        .unwrap(),
    };
    RawPeer::connect_with(executor.endpoint(), |socket| client.apply(socket).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c9_a_workers_steps_pass_only_to_a_connection_of_its_own_key() {
    // An admitted peer of another key said hello under the id of a worker
    // that had just died, listed its running step and answered it: the
    // forged output was recorded as that worker's. The id is held by its
    // key until the dead connection is removed; the worker itself, back on
    // a new connection with its key, takes its step over as before.
    let keys = Keys::new();
    keys.make("honest", true);
    keys.make("evil", true);
    let executor = start(&keys.orchestrator_config());
    let honest = curve_peer(&keys, &executor, "honest");
    let mut hello = WorkerHello::new("w", vec!["echo".into()], 1);
    hello.incarnation = Some("run-1".into());
    honest.send_hello(hello.clone());
    let mut handle = executor
        .submit(StepBatchRequest::new("b", steps(1..2, "echo", 10_000)))
        .await
        .unwrap();
    let step = match honest.recv_skipping_heartbeats(LONG) {
        Some(OrchestratorMessage::StepBatchRequest(batch)) => batch.steps[0].step_ref(),
        other => panic!("expected the step, got {other:?}"),
    };
    let orchestrator_id = honest.orchestrator_id.borrow().clone();
    drop(honest);
    hello.in_progress = vec![HeldStep {
        step_id: step.step_id,
        attempt: step.attempt,
        orchestrator_id: orchestrator_id.clone(),
    }];

    let evil = curve_peer(&keys, &executor, "evil");
    for _ in 0..3 {
        evil.send(&WorkerMessage::Hello(hello.clone()));
        match evil.recv_skipping_heartbeats(LONG) {
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(e.code, ProtocolErrorCode::WorkerIdInUse, "{e:?}");
                assert!(e.message.contains("another CURVE key"), "{}", e.message);
            }
            other => panic!("another key's hello as `w` was not refused: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *evil.orchestrator_id.borrow_mut() = orchestrator_id;
    let mut forged = StepExecutionResult::completed(step, json!({ "forged": true }), "w", 1);
    forged.metadata.attempt = step.attempt;
    evil.respond(vec![forged]);

    let back = curve_peer(&keys, &executor, "honest");
    back.send_hello(hello);
    back.respond(vec![StepExecutionResult::completed(
        step,
        json!({ "honest": true }),
        "w",
        1,
    )]);
    let result = handle.next().await.unwrap();
    assert_eq!(result.status, StepStatus::Completed, "{result:?}");
    assert_eq!(result.output, Some(json!({ "honest": true })));
    executor.shutdown(LONG).await;
}
