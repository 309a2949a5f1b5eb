//! Registering handlers on the Rust `Worker` builder (its own test binary:
//! it installs the process's log bridge to read the warning).

use std::time::{Duration, Instant};

use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_worker::log_bridge::{self, LogLevel};
use tasker_worker::{HandlerOptions, Worker};

#[test]
fn registering_a_handler_name_again_replaces_the_first_with_a_warning() {
    let bridge = log_bridge::install(LogLevel::Warn).unwrap();
    let _worker = Worker::new(TaskerConfig::default())
        .handler("charge", |_| Ok(json!("first")))
        .handler("refund", |_| Ok(json!(null)));
    assert!(bridge.take_records(100).is_empty(), "two names, no warning");

    let _worker = Worker::new(TaskerConfig::default())
        .handler("charge", |_| Ok(json!("first")))
        .handler_with("charge", HandlerOptions::default(), |_| Ok(json!("second")));
    let deadline = Instant::now() + Duration::from_secs(2);
    let warnings = loop {
        let records = bridge.take_records(100);
        if !records.is_empty() || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let lines: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        ["handler registered again: this one replaces the first handler=charge"]
    );
}

/// A worker whose id is taken tries again every few seconds for as long as
/// it runs; a warning at each refusal filled its log. It warns once, then
/// at most once a minute, each saying how many refusals there were.
#[test]
fn a_refused_hello_is_warned_of_once_a_minute_not_at_every_try() {
    use tasker_protocol::{codec, OrchestratorMessage, ProtocolError, ProtocolErrorCode};
    let bridge = log_bridge::install(LogLevel::Warn).unwrap();
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let config = TaskerConfig {
        endpoint,
        reconnect_initial_ms: 10,
        reconnect_max_ms: 20,
        ..TaskerConfig::default()
    };
    let worker = Worker::new(config)
        .worker_id("taken")
        .handler("echo", |_| Ok(json!(null)))
        .spawn()
        .unwrap();
    let refusal = codec::encode(&OrchestratorMessage::ProtocolError(ProtocolError {
        code: ProtocolErrorCode::WorkerIdInUse,
        message: "worker_id \"taken\" is in use by a live connection".into(),
    }))
    .unwrap();
    router.set_rcvtimeo(100).unwrap();
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused < 20 && Instant::now() < deadline {
        let Ok(frames) = router.recv_multipart(0) else {
            continue;
        };
        if frames
            .last()
            .is_some_and(|body| body.starts_with(br#"{"type":"hello""#))
        {
            router
                .send_multipart(
                    [frames[0].clone(), refusal[0].clone(), refusal[1].clone()],
                    0,
                )
                .unwrap();
            refused += 1;
        }
    }
    assert_eq!(
        refused, 20,
        "the worker said hello again after each refusal"
    );
    std::thread::sleep(Duration::from_millis(100));
    let warnings: Vec<String> = bridge
        .take_records(1000)
        .iter()
        .map(ToString::to_string)
        .filter(|line| line.contains("refused the hello"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("refusals=1"), "{}", warnings[0]);
    worker.stop();
}

/// Called inside a runtime, `serve_until_signal` panicked with tokio's
/// "Cannot start a runtime from within a runtime", naming neither the call
/// nor what to do instead.
#[tokio::test]
async fn serve_until_signal_inside_a_tokio_runtime_is_an_error_that_says_what_to_do() {
    let worker = Worker::new(TaskerConfig {
        endpoint: "tcp://127.0.0.1:1".into(),
        ..TaskerConfig::default()
    })
    .handler("noop", |_| Ok(json!(null)))
    .spawn()
    .unwrap();
    let error = worker.serve_until_signal().unwrap_err();
    assert!(
        matches!(error, tasker_worker::WorkerError::Setup(_)),
        "{error:?}"
    );
    let said = error.to_string();
    assert!(
        said.contains("serve_until_signal") && said.contains("spawn_blocking"),
        "{said}"
    );
}
