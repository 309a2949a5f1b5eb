//! The worker runtime as a binding sees it, against a raw ROUTER socket
//! playing the orchestrator: hello contents, batched pulls, wake-ups,
//! drain and goodbye.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_protocol::*;
use tasker_worker::{RuntimeState, WorkerError, WorkerOptions, WorkerRuntime};

struct FakeOrchestrator {
    socket: zmq::Socket,
    endpoint: String,
    _context: zmq::Context,
}

impl FakeOrchestrator {
    fn bind() -> Self {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::ROUTER).unwrap();
        socket.set_linger(0).unwrap();
        socket.bind("tcp://127.0.0.1:0").unwrap();
        let endpoint = socket.get_last_endpoint().unwrap().unwrap();
        Self {
            socket,
            endpoint,
            _context: context,
        }
    }

    /// Next worker message that is not a heartbeat, with its routing id.
    fn recv(&self, timeout: Duration) -> Option<(Vec<u8>, WorkerMessage)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as i64;
            if left == 0 || self.socket.poll(zmq::POLLIN, left).unwrap() == 0 {
                return None;
            }
            let mut frames = self.socket.recv_multipart(0).unwrap();
            let id = frames.remove(0);
            let message: WorkerMessage = codec::decode(&frames, usize::MAX).unwrap();
            if !matches!(message, WorkerMessage::Heartbeat(_)) {
                return Some((id, message));
            }
        }
    }

    fn send(&self, id: &[u8], message: &OrchestratorMessage) {
        let [h, b] = codec::encode(message).unwrap();
        self.socket.send_multipart([id.to_vec(), h, b], 0).unwrap();
    }

    fn welcome(&self, id: &[u8]) {
        self.send(
            id,
            &OrchestratorMessage::Welcome(Welcome {
                heartbeat_interval_ms: 100,
                liveness: 3,
                max_message_bytes: 1 << 20,
            }),
        );
    }
}

fn runtime(endpoint: &str, capacity: u32) -> WorkerRuntime {
    WorkerRuntime::start(options(endpoint, capacity)).unwrap()
}

fn options(endpoint: &str, capacity: u32) -> WorkerOptions {
    let config = TaskerConfig {
        endpoint: endpoint.into(),
        heartbeat_interval_ms: 100,
        shutdown_timeout_ms: 2_000,
        ..TaskerConfig::default()
    };
    let mut options = WorkerOptions::new(config, vec!["echo".into(), "sleep".into()]);
    options.capacity = Some(capacity);
    options.worker_id = Some("w-test".into());
    options.language = "test".into();
    options
}

fn batch(ids: std::ops::Range<i64>) -> OrchestratorMessage {
    OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(
        "b:1",
        ids.map(|i| StepExecutionRequest::new(i, 1, "s", "echo", 5_000))
            .collect(),
    ))
}

#[test]
fn hello_announces_handlers_capacity_and_language() {
    let orchestrator = FakeOrchestrator::bind();
    let rt = runtime(&orchestrator.endpoint, 7);
    let (id, message) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    let WorkerMessage::Hello(hello) = message else {
        panic!("{message:?}")
    };
    assert_eq!(hello.worker_id, "w-test");
    assert_eq!(hello.handlers, vec!["echo", "sleep"]);
    assert_eq!(hello.capacity, 7);
    assert_eq!(hello.language.as_deref(), Some("test"));
    assert_eq!(hello.pid, Some(std::process::id()));
    assert_eq!(rt.state(), RuntimeState::Connecting);
    orchestrator.welcome(&id);
    let deadline = Instant::now() + Duration::from_secs(2);
    while rt.state() != RuntimeState::Connected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rt.state(), RuntimeState::Connected);
}

#[test]
fn pulls_return_up_to_max_steps_and_results_go_back_together() {
    let orchestrator = FakeOrchestrator::bind();
    let rt = runtime(&orchestrator.endpoint, 10);
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    orchestrator.welcome(&id);
    orchestrator.send(&id, &batch(0..10));
    let first = rt.next_steps(4, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        first.iter().map(|s| s.step_id).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let rest = rt.next_steps(100, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(rest.len(), 6);
    assert_eq!(rt.in_hand(), 10);
    let results: Vec<_> = first
        .iter()
        .chain(&rest)
        .map(|s| StepExecutionResult::completed(s.step_ref(), json!(s.step_id), "w-test", 0))
        .collect();
    rt.complete_many(results);
    assert_eq!(rt.in_hand(), 0);
    let mut answered = Vec::new();
    while answered.len() < 10 {
        match orchestrator.recv(Duration::from_secs(2)) {
            Some((_, WorkerMessage::StepBatchResponse(r))) => {
                assert_eq!(r.batch_id, "b:1");
                answered.extend(r.results.into_iter().map(|r| r.output.unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(answered, (0..10).map(|i| json!(i)).collect::<Vec<_>>());
}

#[test]
fn wake_interrupts_a_blocked_pull_without_steps() {
    let orchestrator = FakeOrchestrator::bind();
    let rt = Arc::new(runtime(&orchestrator.endpoint, 2));
    let puller = {
        let rt = Arc::clone(&rt);
        std::thread::spawn(move || {
            let started = Instant::now();
            let got = rt.next_steps(10, None);
            (got, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    rt.wake();
    let (got, waited) = puller.join().unwrap();
    assert_eq!(got.unwrap().len(), 0);
    assert!(waited < Duration::from_secs(2));
    // A timeout also returns empty.
    let started = Instant::now();
    assert!(rt
        .next_steps(1, Some(Duration::from_millis(50)))
        .unwrap()
        .is_empty());
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn stop_gives_back_unpulled_steps_waits_for_pulled_ones_then_says_goodbye() {
    let orchestrator = FakeOrchestrator::bind();
    let rt = Arc::new(runtime(&orchestrator.endpoint, 5));
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    orchestrator.welcome(&id);
    orchestrator.send(&id, &batch(0..5));
    let pulled = rt.next_steps(2, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(pulled.len(), 2);
    rt.stop();
    assert_eq!(rt.next_steps(10, None), Err(WorkerError::Stopped));
    match orchestrator.recv(Duration::from_secs(2)) {
        Some((_, WorkerMessage::Drain(d))) => {
            let ids: Vec<_> = d.returned.iter().map(|s| s.step_id).collect();
            assert_eq!(ids, vec![2, 3, 4]);
        }
        other => panic!("expected drain, got {other:?}"),
    }
    // Still holding two: no goodbye yet.
    assert!(!rt.join(Duration::from_millis(200)));
    rt.complete_many(
        pulled
            .iter()
            .map(|s| StepExecutionResult::completed(s.step_ref(), json!(null), "w-test", 0))
            .collect(),
    );
    match orchestrator.recv(Duration::from_secs(2)) {
        Some((_, WorkerMessage::StepBatchResponse(r))) => {
            assert_eq!(r.results.len(), 2);
            assert_eq!(r.results[0].output, Some(json!(null)));
        }
        other => panic!("expected results, got {other:?}"),
    }
    assert!(matches!(
        orchestrator.recv(Duration::from_secs(2)),
        Some((_, WorkerMessage::Goodbye(_)))
    ));
    assert!(rt.join(Duration::from_secs(2)));
    assert_eq!(rt.state(), RuntimeState::Stopped);
}

#[test]
fn bad_options_are_refused_with_the_reason() {
    let config = TaskerConfig::default();
    let err = WorkerRuntime::start(WorkerOptions::new(config.clone(), vec![])).unwrap_err();
    assert!(err.to_string().contains("no handlers"), "{err}");
    let mut options = WorkerOptions::new(config.clone(), vec!["a".into()]);
    options.capacity = Some(0);
    assert!(WorkerRuntime::start(options)
        .unwrap_err()
        .to_string()
        .contains("capacity"));
    let options = WorkerOptions::new(
        TaskerConfig {
            endpoint: "inproc://nope".into(),
            ..config
        },
        vec!["a".into()],
    );
    assert!(WorkerRuntime::start(options)
        .unwrap_err()
        .to_string()
        .contains("endpoint"));
}

#[test]
fn a_shorter_heartbeat_from_welcome_takes_effect_at_once() {
    let orchestrator = FakeOrchestrator::bind();
    let config = TaskerConfig {
        endpoint: orchestrator.endpoint.clone(),
        // Far longer than the orchestrator's 100 ms × 3 liveness.
        heartbeat_interval_ms: 30_000,
        ..TaskerConfig::default()
    };
    let rt = WorkerRuntime::start(WorkerOptions::new(config, vec!["echo".into()])).unwrap();
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    orchestrator.welcome(&id);
    let welcomed = Instant::now();
    // The fake orchestrator sends no heartbeats, so after 300 ms of silence
    // the worker reconnects with a new hello. A worker that kept its own
    // 30 s schedule says nothing before that; one that adopted 100 ms beats
    // first.
    assert!(
        orchestrator.socket.poll(zmq::POLLIN, 5_000).unwrap() > 0,
        "the worker went silent"
    );
    let mut frames = orchestrator.socket.recv_multipart(0).unwrap();
    frames.remove(0);
    let message: WorkerMessage = codec::decode(&frames, usize::MAX).unwrap();
    assert!(
        matches!(message, WorkerMessage::Heartbeat(_)),
        "expected a heartbeat {:?} after welcome, got {message:?}",
        welcomed.elapsed()
    );
    rt.stop();
}

#[test]
fn stop_while_waiting_to_reconnect_does_not_wait_out_the_backoff() {
    // Nothing listens here: the worker hears no welcome, gives up after
    // heartbeat × liveness, and backs off for 10 s before trying again.
    let endpoint = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", probe.local_addr().unwrap())
    };
    let config = TaskerConfig {
        endpoint,
        heartbeat_interval_ms: 50,
        liveness: 2,
        reconnect_initial_ms: 10_000,
        reconnect_max_ms: 10_000,
        linger_ms: 0,
        ..TaskerConfig::default()
    };
    let rt = WorkerRuntime::start(WorkerOptions::new(config, vec!["echo".into()])).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let asked = Instant::now();
    rt.stop();
    assert!(rt.join(Duration::from_secs(5)), "runtime did not stop");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "stop took {:?}",
        asked.elapsed()
    );
}

#[test]
fn results_are_split_to_fit_the_orchestrators_message_limit() {
    let orchestrator = FakeOrchestrator::bind();
    let rt = runtime(&orchestrator.endpoint, 20);
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    let limit = 4_096;
    orchestrator.send(
        &id,
        &OrchestratorMessage::Welcome(Welcome {
            heartbeat_interval_ms: 100,
            liveness: 3,
            max_message_bytes: limit,
        }),
    );
    orchestrator.send(&id, &batch(0..11));
    let mut steps = Vec::new();
    while steps.len() < 11 {
        steps.extend(rt.next_steps(100, Some(Duration::from_secs(5))).unwrap());
    }
    // Ten results of ~1 KB each: one message would be ~10 KB. Step 10's
    // output alone is larger than the limit.
    let results: Vec<_> = steps
        .iter()
        .map(|s| {
            let size = if s.step_id == 10 { 8_000 } else { 1_000 };
            StepExecutionResult::completed(s.step_ref(), json!("x".repeat(size)), "w-test", 0)
        })
        .collect();
    rt.complete_many(results);
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 11 {
        let Some((_, message)) = orchestrator.recv(Duration::from_secs(2)) else {
            panic!("only {} of 11 results arrived", answered.len());
        };
        let WorkerMessage::StepBatchResponse(response) = message else {
            panic!("{message:?}")
        };
        let [_, body] = codec::encode(&WorkerMessage::StepBatchResponse(response.clone())).unwrap();
        assert!(
            body.len() <= limit as usize,
            "a {}-byte message",
            body.len()
        );
        for r in response.results {
            assert!(
                answered.insert(r.step_id, r).is_none(),
                "a result arrived twice"
            );
        }
    }
    for id in 0..10 {
        assert_eq!(answered[&id].status, StepStatus::Completed);
    }
    let too_large = &answered[&10];
    assert_eq!(too_large.status, StepStatus::Failed);
    let error = too_large.error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::OUTPUT_TOO_LARGE);
    assert!(!error.retryable);
    assert!(error.message.contains("4096"), "{}", error.message);
}

/// A runtime of capacity 10, steps kept raw or not, welcomed by a fake
/// orchestrator; with the routing id of its connection.
fn welcomed(raw_steps: bool) -> (FakeOrchestrator, WorkerRuntime, Vec<u8>) {
    let orchestrator = FakeOrchestrator::bind();
    let mut options = options(&orchestrator.endpoint, 10);
    options.raw_steps = raw_steps;
    let rt = WorkerRuntime::start(options).unwrap();
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    orchestrator.welcome(&id);
    (orchestrator, rt, id)
}

/// The path of hosts that parse and write JSON themselves: steps come out
/// as the text the orchestrator sent, output text goes back unparsed.
#[test]
fn raw_pulls_give_the_steps_as_sent_and_encoded_results_go_out_as_given() {
    for raw_steps in [true, false] {
        raw_round_trip(raw_steps);
    }
}

fn raw_round_trip(raw_steps: bool) {
    let (orchestrator, rt, id) = welcomed(raw_steps);
    let OrchestratorMessage::StepBatchRequest(sent) = batch(0..3) else {
        unreachable!()
    };
    orchestrator.send(&id, &OrchestratorMessage::StepBatchRequest(sent.clone()));
    let steps = rt.next_raw_steps(10, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(steps.len(), 3);
    for (raw, step) in steps.iter().zip(&sent.steps) {
        assert_eq!(&raw.decode().unwrap(), step);
        assert_eq!(raw.fields().handler_class, r#""echo""#);
        assert_eq!(raw.fields().task_context, "{}");
    }
    assert_eq!(rt.in_hand(), 3);
    let output = serde_json::value::RawValue::from_string(r#"{"ok":"jä ✓"}"#.into()).unwrap();
    let now = chrono::Utc::now();
    rt.complete_encoded(
        steps
            .iter()
            .map(|s| raw::EncodedResult::completed(s.step_ref(), &output, "w-test", 2, now))
            .collect(),
    );
    assert_eq!(rt.in_hand(), 0);
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no results")
    };
    assert_eq!(response.batch_id, "b:1");
    assert_eq!(response.results.len(), 3);
    for result in &response.results {
        assert_eq!(result.status, StepStatus::Completed);
        assert_eq!(result.output, Some(json!({"ok": "jä ✓"})));
        assert_eq!(result.metadata.execution_time_ms, 2);
        assert_eq!(result.metadata.completed_at, now);
    }
}

/// A step the typed decode cannot build (nested deeper than serde_json
/// goes) is failed for good; the rest of its batch is served.
#[test]
fn a_step_too_deep_to_decode_fails_as_invalid_step_and_the_rest_are_served() {
    for raw_steps in [false, true] {
        too_deep(raw_steps);
    }
}

fn too_deep(raw_steps: bool) {
    let (orchestrator, rt, id) = welcomed(raw_steps);
    let fine = serde_json::to_string(&StepExecutionRequest::new(1, 1, "s", "echo", 5_000)).unwrap();
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let too_deep = serde_json::to_string(&StepExecutionRequest::new(2, 1, "s", "echo", 5_000))
        .unwrap()
        .replace(r#""task_context":{}"#, &format!(r#""task_context":{deep}"#));
    let body = format!(
        r#"{{"type":"step_batch_request","batch_id":"b:deep","protocol_version":"1.0","steps":[{too_deep},{fine}]}}"#
    );
    orchestrator
        .socket
        .send_multipart(
            [
                id.clone(),
                PROTOCOL_HEADER.as_bytes().to_vec(),
                body.into_bytes(),
            ],
            0,
        )
        .unwrap();
    let steps = rt.next_steps(10, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(steps.iter().map(|s| s.step_id).collect::<Vec<_>>(), vec![1]);
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no failure reported")
    };
    let failed = &response.results[0];
    assert_eq!(failed.step_id, 2);
    assert_eq!(failed.status, StepStatus::Failed);
    let error = failed.error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::INVALID_STEP);
    assert!(!error.retryable);
    assert!(
        error.message.contains("recursion limit"),
        "{}",
        error.message
    );
    assert_eq!(rt.in_hand(), 1);
}

/// A host event loop in miniature: wait for the driver's descriptor or its
/// deadline, then drive.
fn drive_for(driver: &mut tasker_worker::Driver, time: Duration) -> tasker_worker::Drive {
    let until = Instant::now() + time;
    loop {
        let state = driver.drive();
        let tasker_worker::Drive::Running { wake_at } = state else {
            return state;
        };
        let now = Instant::now();
        if now >= until {
            return state;
        }
        let wait = wake_at.map_or(until, |at| at.min(until)) - now.min(until);
        let wait_ms = (wait.as_millis() as i64).max(1);
        match driver.fd() {
            Some(fd) => {
                let mut items = [zmq::PollItem::from_fd(fd.fd, zmq::POLLIN)];
                zmq::poll(&mut items, wait_ms).unwrap();
            }
            None => std::thread::sleep(Duration::from_millis(wait_ms as u64)),
        }
    }
}

/// Without an I/O thread: the host's loop drives the connection, the
/// waker tells it of steps, results go out when it drives after completing,
/// heartbeats keep the connection alive, and stop ends in goodbye and
/// `Closed`.
#[test]
fn a_driven_runtime_serves_steps_from_the_hosts_own_loop() {
    let orchestrator = FakeOrchestrator::bind();
    let config = TaskerConfig {
        endpoint: orchestrator.endpoint.clone(),
        heartbeat_interval_ms: 100,
        ..TaskerConfig::default()
    };
    let mut options = WorkerOptions::new(config, vec!["echo".into()]);
    options.capacity = Some(10);
    let (rt, mut driver) = WorkerRuntime::start_driven(options).unwrap();
    let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&woken);
    assert!(rt.set_waker(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }));
    // The hello goes out on the first drive.
    drive_for(&mut driver, Duration::from_millis(20));
    let (id, hello) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    assert!(matches!(hello, WorkerMessage::Hello(_)));
    orchestrator.welcome(&id);
    orchestrator.send(&id, &batch(0..4));
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.in_hand() + rt.next_raw_steps(10, Some(Duration::ZERO)).unwrap().len() == 0 {
        assert!(Instant::now() < deadline, "no steps");
        drive_for(&mut driver, Duration::from_millis(20));
    }
    assert!(woken.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(rt.state(), RuntimeState::Connected);
    assert_eq!(rt.in_hand(), 4);
    let output = serde_json::value::RawValue::from_string("7".into()).unwrap();
    let encoder = raw::CompletedEncoder::new(rt.worker_id(), chrono::Utc::now());
    rt.complete_encoded(
        (0..4)
            .map(|i| {
                encoder.encode(
                    StepRef {
                        step_id: i,
                        attempt: 1,
                    },
                    &output,
                    1,
                )
            })
            .collect(),
    );
    driver.drive();
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no results")
    };
    assert_eq!(response.results.len(), 4);
    assert!(response.results.iter().all(|r| r.output == Some(json!(7))));

    // Driven only by its deadlines for a while: it beats, so the
    // orchestrator hears from it at least every interval.
    let beats_from = Instant::now();
    let mut beats = 0;
    while beats_from.elapsed() < Duration::from_millis(600) {
        drive_for(&mut driver, Duration::from_millis(50));
        while orchestrator.socket.poll(zmq::POLLIN, 0).unwrap() > 0 {
            let frames = orchestrator.socket.recv_multipart(0).unwrap();
            let message: WorkerMessage = codec::decode(&frames[1..], usize::MAX).unwrap();
            if matches!(message, WorkerMessage::Heartbeat(_)) {
                beats += 1;
            }
        }
    }
    assert!(
        beats >= 3,
        "{beats} heartbeats in 600 ms at a 100 ms interval"
    );

    rt.stop();
    let state = drive_for(&mut driver, Duration::from_secs(5));
    assert_eq!(state, tasker_worker::Drive::Closed);
    assert_eq!(rt.state(), RuntimeState::Stopped);
    assert!(driver.fd().is_none());
    let mut saw_goodbye = false;
    while let Some((_, message)) = orchestrator.recv(Duration::from_millis(500)) {
        saw_goodbye |= matches!(message, WorkerMessage::Goodbye(_));
    }
    assert!(saw_goodbye);
}
