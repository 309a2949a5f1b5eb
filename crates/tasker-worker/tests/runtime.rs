//! The worker runtime as a binding sees it, against a raw ROUTER socket
//! playing the orchestrator: hello contents, batched pulls, wake-ups,
//! drain and goodbye.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_protocol::*;
use tasker_worker::event_loop::{self, EventLoopHost};
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
        self.welcome_as(id, ORCHESTRATOR);
    }

    fn welcome_as(&self, id: &[u8], orchestrator_id: &str) {
        self.send(id, &OrchestratorMessage::Welcome(welcome(orchestrator_id)));
    }

    /// Next worker message of any kind, heartbeats included.
    fn recv_any(&self, timeout: Duration) -> Option<(Vec<u8>, WorkerMessage)> {
        let timeout_ms = timeout.as_millis() as i64;
        if self.socket.poll(zmq::POLLIN, timeout_ms).unwrap() == 0 {
            return None;
        }
        let mut frames = self.socket.recv_multipart(0).unwrap();
        let id = frames.remove(0);
        Some((id, codec::decode(&frames, usize::MAX).unwrap()))
    }
}

/// The `orchestrator_id` the fake orchestrator welcomes with.
const ORCHESTRATOR: &str = "orch-A";

fn welcome(orchestrator_id: &str) -> Welcome {
    Welcome {
        heartbeat_interval_ms: 100,
        liveness: 3,
        max_message_bytes: 1 << 20,
        orchestrator_id: orchestrator_id.into(),
        max_json_depth: MAX_JSON_DEPTH,
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
    // Each run of a worker draws its own incarnation: the orchestrator
    // tells a process started again under the same id by it (SPEC §6.3).
    let incarnation = hello.incarnation.expect("an incarnation");
    assert!((1..=64).contains(&incarnation.len()), "{incarnation:?}");
    let again = runtime(&orchestrator.endpoint, 7);
    let deadline = Instant::now() + Duration::from_secs(5);
    let second = loop {
        assert!(Instant::now() < deadline, "no hello from the second run");
        if let Some((from, WorkerMessage::Hello(hello))) = orchestrator.recv(Duration::from_secs(1))
        {
            assert_ne!(from, id);
            break hello;
        }
    };
    assert_eq!(second.worker_id, "w-test");
    assert_ne!(second.incarnation, Some(incarnation));
    again.stop();
    rt.stop();
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
            // W8: each with the orchestrator that delivered it.
            assert!(d.returned.iter().all(|s| s.orchestrator_id == ORCHESTRATOR));
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

/// Context switches this thread has made by blocking, from `/proc`.
fn voluntary_switches_of_this_thread() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The thread that waits for a worker's end (`tasker worker`'s, each SDK's
/// `run`) sleeps while steps come and go. It used to wait on the pullers'
/// condition variable and woke for every batch, only to sleep again.
#[test]
fn a_thread_waiting_in_join_sleeps_while_steps_come_and_go() {
    const BATCHES: i64 = 200;
    let (orchestrator, rt, id) = welcomed(false);
    let rt = Arc::new(rt);
    let joiner = {
        let rt = Arc::clone(&rt);
        std::thread::spawn(move || {
            let before = voluntary_switches_of_this_thread();
            let joined = rt.join(Duration::from_secs(60));
            (joined, voluntary_switches_of_this_thread() - before)
        })
    };
    for i in 0..BATCHES {
        orchestrator.send(&id, &batch(i..i + 1));
        let steps = rt.next_steps(1, Some(Duration::from_secs(5))).unwrap();
        rt.complete_many(steps.iter().map(done).collect());
        match orchestrator.recv(Duration::from_secs(5)) {
            Some((_, WorkerMessage::StepBatchResponse(r))) => assert_eq!(r.results.len(), 1),
            other => panic!("expected a result, got {other:?}"),
        }
    }
    rt.stop();
    let (joined, switches) = joiner.join().unwrap();
    assert!(joined, "the runtime stopped");
    assert!(
        switches < 20,
        "the joining thread woke {switches} times for {BATCHES} batches"
    );
}

/// Pullers blocked together share a batch: each is woken in turn until
/// the batch is taken, though a delivery wakes only one of them.
#[test]
fn every_blocked_puller_gets_a_share_of_one_batch() {
    const PULLERS: i64 = 4;
    let (orchestrator, rt, id) = welcomed(false);
    let rt = Arc::new(rt);
    let (tx, rx) = std::sync::mpsc::channel();
    let pullers: Vec<_> = (0..PULLERS)
        .map(|_| {
            let (rt, tx) = (Arc::clone(&rt), tx.clone());
            std::thread::spawn(move || tx.send(rt.next_steps(1, None)).unwrap())
        })
        .collect();
    // Let them all block before the batch comes.
    std::thread::sleep(Duration::from_millis(200));
    orchestrator.send(&id, &batch(0..PULLERS));
    let mut ids = Vec::new();
    for _ in 0..PULLERS {
        let steps = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("every puller gets a step")
            .unwrap();
        ids.extend(steps.iter().map(|s| s.step_id));
    }
    ids.sort();
    assert_eq!(ids, (0..PULLERS).collect::<Vec<_>>());
    for p in pullers {
        p.join().unwrap();
    }
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
    // What the orchestrator would refuse in the hello (SPEC §4.2) is refused
    // before connecting, by name.
    let many: Vec<String> = (0..=tasker_protocol::MAX_HANDLERS)
        .map(|i| format!("h{i}"))
        .collect();
    let err = WorkerRuntime::start(WorkerOptions::new(config.clone(), many)).unwrap_err();
    assert!(
        err.to_string()
            .contains("1025 handlers registered; a worker serves at most 1024"),
        "{err}"
    );
    let long = "é".repeat(256);
    let err = WorkerRuntime::start(WorkerOptions::new(config.clone(), vec![long])).unwrap_err();
    assert!(
        err.to_string().contains("longer than 255 characters"),
        "{err}"
    );
    for (id, reason) in [
        ("w".repeat(256), "longer than 255"),
        (String::new(), "empty"),
    ] {
        let mut options = WorkerOptions::new(config.clone(), vec!["a".into()]);
        options.worker_id = Some(id);
        let err = WorkerRuntime::start(options).unwrap_err();
        assert!(err.to_string().contains(reason), "{err}");
    }
    for (handler, limit, reason) in [("a", 0, "at least 1"), ("b", 2, "not registered")] {
        let mut options = WorkerOptions::new(config.clone(), vec!["a".into()]);
        options.handler_limits.insert(handler.into(), limit);
        let err = WorkerRuntime::start(options).unwrap_err();
        assert!(matches!(err, WorkerError::InvalidOptions(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains(&format!("handler {handler:?}")), "{text}");
        assert!(text.contains(reason), "{text}");
    }
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
            max_message_bytes: limit,
            ..welcome(ORCHESTRATOR)
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
    if raw_steps {
        event_loop::keep_raw_steps(&mut options);
    }
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

/// Sends one batch of two `echo` steps: step 2 with a `task_context`
/// nested deeper than serde_json builds values, then step 1, fine.
fn send_too_deep_then_fine(orchestrator: &FakeOrchestrator, id: &[u8]) {
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
                id.to_vec(),
                PROTOCOL_HEADER.as_bytes().to_vec(),
                body.into_bytes(),
            ],
            0,
        )
        .unwrap();
}

fn too_deep(raw_steps: bool) {
    let (orchestrator, rt, id) = welcomed(raw_steps);
    send_too_deep_then_fine(&orchestrator, &id);
    let steps = rt.next_steps(10, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(steps.iter().map(|s| s.step_id).collect::<Vec<_>>(), vec![1]);
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no failure reported")
    };
    let error = failed_for_good(&response.results[0], 2, error_types::INVALID_STEP);
    assert!(
        error.message.contains("recursion limit"),
        "{}",
        error.message
    );
    assert_eq!(rt.in_hand(), 1);
}

/// libzmq bounds a frame's size, not how many frames a message has: a
/// message of very many is refused with its count, its frames not held,
/// and the next batch is served.
#[test]
fn a_message_of_many_frames_is_refused_with_its_count_and_the_next_batch_is_served() {
    let (orchestrator, rt, id) = welcomed(false);
    const FRAMES: usize = 100_000;
    orchestrator.socket.send(&id[..], zmq::SNDMORE).unwrap();
    for i in 0..FRAMES {
        let flags = if i + 1 < FRAMES { zmq::SNDMORE } else { 0 };
        orchestrator.socket.send(&b""[..], flags).unwrap();
    }
    let Some((_, WorkerMessage::ProtocolError(refusal))) =
        orchestrator.recv(Duration::from_secs(5))
    else {
        panic!("no refusal")
    };
    assert_eq!(refusal.code, ProtocolErrorCode::MalformedFrames);
    assert!(
        refusal.message.ends_with(&format!("got {FRAMES}")),
        "{}",
        refusal.message
    );
    orchestrator.send(&id, &batch(0..2));
    let steps = rt.next_steps(10, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(steps.len(), 2);
}

/// A host event loop in miniature: wait for the driver's descriptor or its
/// deadline, then drive.
fn drive_for(driver: &mut event_loop::Driver, time: Duration) -> event_loop::Drive {
    let until = Instant::now() + time;
    loop {
        let state = driver.drive();
        let event_loop::Drive::Running { wake_at } = state else {
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
    let (rt, mut driver) = event_loop::start(options).unwrap();
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
    // orchestrator hears from it at least every interval (and it hears the
    // orchestrator's, so the connection stays up).
    let beats_from = Instant::now();
    let mut beats = 0;
    while beats_from.elapsed() < Duration::from_millis(600) {
        drive_for(&mut driver, Duration::from_millis(50));
        while orchestrator.socket.poll(zmq::POLLIN, 0).unwrap() > 0 {
            let frames = orchestrator.socket.recv_multipart(0).unwrap();
            let message: WorkerMessage = codec::decode(&frames[1..], usize::MAX).unwrap();
            if matches!(message, WorkerMessage::Heartbeat(_)) {
                beats += 1;
                orchestrator.send(&frames[0], &OrchestratorMessage::Heartbeat(Heartbeat {}));
            }
        }
    }
    assert!(
        beats >= 3,
        "{beats} heartbeats in 600 ms at a 100 ms interval"
    );

    rt.stop();
    let state = drive_for(&mut driver, Duration::from_secs(5));
    assert_eq!(state, event_loop::Drive::Closed);
    assert_eq!(rt.state(), RuntimeState::Stopped);
    assert!(driver.fd().is_none());
    let mut saw_goodbye = false;
    while let Some((_, message)) = orchestrator.recv(Duration::from_millis(500)) {
        saw_goodbye |= matches!(message, WorkerMessage::Goodbye(_));
    }
    assert!(saw_goodbye);
}

// ---------------------------------------------------------------------
// The worker rules of SPEC §5 (W1-W8): which orchestrator a step answers,
// when results may go out, what a hello lists, a full pipe, refused
// hellos, late turns, outputs the orchestrator would refuse.
// ---------------------------------------------------------------------

/// Options of a worker that waits long for a welcome (so it does not give
/// up on a fake orchestrator that is slow to answer) and reconnects fast.
fn patient(endpoint: &str, capacity: u32) -> WorkerOptions {
    let mut options = options(endpoint, capacity);
    options.config.liveness = 50;
    options.config.reconnect_initial_ms = 50;
    options
}

/// A welcome whose expiry (5 s) outlasts a test that sends no heartbeats.
fn patient_welcome(orchestrator_id: &str) -> OrchestratorMessage {
    OrchestratorMessage::Welcome(Welcome {
        liveness: 50,
        ..welcome(orchestrator_id)
    })
}

/// Pulls until `n` steps are in hand.
fn pull(rt: &WorkerRuntime, n: usize) -> Vec<StepExecutionRequest> {
    let mut steps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while steps.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} steps",
            steps.len()
        );
        steps.extend(
            rt.next_steps(n - steps.len(), Some(Duration::from_millis(100)))
                .unwrap(),
        );
    }
    steps
}

fn done(step: &StepExecutionRequest) -> StepExecutionResult {
    StepExecutionResult::completed(step.step_ref(), json!(step.step_id), "w-test", 0)
}

/// A worker welcomed by orchestrator A, holding steps 0..4 of A (0 and 1
/// pulled, 2 and 3 waiting), whose orchestrator said goodbye; step 0 was
/// completed after that, with no connection. Returns the hello it sent on
/// reconnecting (not answered yet) and its routing id.
fn reconnected_holding_steps_of_a() -> (
    FakeOrchestrator,
    WorkerRuntime,
    Vec<StepExecutionRequest>,
    Vec<u8>,
    WorkerHello,
) {
    let orchestrator = FakeOrchestrator::bind();
    let rt = WorkerRuntime::start(patient(&orchestrator.endpoint, 10)).unwrap();
    let (id, first) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    let WorkerMessage::Hello(first) = first else {
        panic!("expected a hello, got {first:?}")
    };
    orchestrator.send(&id, &patient_welcome("orch-A"));
    orchestrator.send(&id, &batch(0..4));
    let pulled = pull(&rt, 2);
    orchestrator.send(
        &id,
        &OrchestratorMessage::Goodbye(Goodbye::new("orchestrator shutting down")),
    );
    // Completed while the worker has no connection (it waits out its
    // reconnect backoff, or it is connecting and not welcomed yet).
    let deadline = Instant::now() + Duration::from_secs(5);
    while rt.state() == RuntimeState::Connected {
        assert!(Instant::now() < deadline, "the goodbye was not taken");
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.complete(done(&pulled[0]));
    let (new_id, message) = orchestrator
        .recv(Duration::from_secs(5))
        .expect("a new hello");
    let WorkerMessage::Hello(hello) = message else {
        panic!("expected a hello, got {message:?}")
    };
    assert_ne!(new_id, id, "a new connection");
    assert!(first.incarnation.is_some());
    assert_eq!(
        hello.incarnation, first.incarnation,
        "a reconnection is the same run"
    );
    (orchestrator, rt, pulled, new_id, hello)
}

/// W1, W3: the hello on a new connection lists every step received and not
/// answered, each with the orchestrator whose welcome it came under:
/// running, waiting to be pulled, and completed with its result not sent.
#[test]
fn w3_a_reconnect_hello_lists_every_unanswered_step_with_the_orchestrator_that_sent_it() {
    let (_orchestrator, rt, _pulled, _id, hello) = reconnected_holding_steps_of_a();
    let held = |step_id| HeldStep {
        step_id,
        attempt: 1,
        orchestrator_id: "orch-A".into(),
    };
    let mut listed = hello.in_progress.clone();
    listed.sort();
    assert_eq!(
        listed,
        vec![held(0), held(1), held(2), held(3)],
        "0: result not sent, 1: running, 2 and 3: waiting"
    );
    rt.stop();
}

/// W2: results wait for a welcome (none goes out after a bare hello) and
/// each message names the orchestrator whose steps it answers, also when
/// that is an earlier one; results of two orchestrators never share one.
#[test]
fn w2_results_wait_for_a_welcome_and_name_the_orchestrator_whose_steps_they_answer() {
    let (orchestrator, rt, pulled, id, _hello) = reconnected_holding_steps_of_a();
    rt.complete(done(&pulled[1]));
    // Not welcomed yet on this connection: nothing but heartbeats.
    if let Some((_, message)) = orchestrator.recv(Duration::from_millis(400)) {
        panic!("sent before any welcome: {message:?}");
    }
    // Another orchestrator (a restart) welcomes the worker.
    orchestrator.send(&id, &patient_welcome("orch-B"));
    let mut by_orchestrator: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    let collect = |want: usize, by: &mut std::collections::BTreeMap<String, Vec<i64>>| {
        while by.values().map(Vec::len).sum::<usize>() < want {
            let Some((_, message)) = orchestrator.recv(Duration::from_secs(2)) else {
                panic!("results missing: {by:?}")
            };
            let WorkerMessage::StepBatchResponse(response) = message else {
                panic!("{message:?}")
            };
            by.entry(response.orchestrator_id)
                .or_default()
                .extend(response.results.iter().map(|r| r.step_id));
        }
    };
    collect(2, &mut by_orchestrator);
    assert_eq!(
        by_orchestrator,
        [("orch-A".to_string(), vec![0, 1])].into(),
        "results of A's steps go to B tagged with A's id"
    );
    // B's own steps, completed together with A's last two.
    orchestrator.send(
        &id,
        &OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(
            "b:2",
            (10..12)
                .map(|i| StepExecutionRequest::new(i, 1, "s", "echo", 5_000))
                .collect(),
        )),
    );
    let rest = pull(&rt, 4);
    rt.complete_many(rest.iter().map(done).collect());
    by_orchestrator.clear();
    collect(4, &mut by_orchestrator);
    for ids in by_orchestrator.values_mut() {
        ids.sort();
    }
    assert_eq!(
        by_orchestrator,
        [
            ("orch-A".to_string(), vec![2, 3]),
            ("orch-B".to_string(), vec![10, 11])
        ]
        .into()
    );
    rt.stop();
}

/// W1: a new orchestrator may number its steps as an earlier one did. A
/// step with the same `(step_id, attempt)` as one of the earlier
/// orchestrator's still held is not handed to the host (which knows steps
/// by that pair only) until the earlier one is answered, and each result
/// goes to the orchestrator of its own step.
#[test]
fn w1_a_new_orchestrators_step_with_a_held_steps_id_and_attempt_waits_and_each_result_keeps_its_orchestrator(
) {
    let (orchestrator, rt, pulled, id, _hello) = reconnected_holding_steps_of_a();
    orchestrator.send(&id, &patient_welcome("orch-B"));
    // B's step 1, attempt 1: A's step 1 is still running.
    orchestrator.send(
        &id,
        &OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(
            "b:B",
            vec![StepExecutionRequest::new(1, 1, "s", "echo", 5_000)],
        )),
    );
    // A's waiting steps 2 and 3 come out; B's step 1 does not.
    let waiting = pull(&rt, 2);
    assert_eq!(
        waiting.iter().map(|s| s.step_id).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(rt
        .next_steps(10, Some(Duration::from_millis(300)))
        .unwrap()
        .is_empty());
    let mut tags = Vec::new();
    let take = |n: usize, tags: &mut Vec<(String, i64, Option<serde_json::Value>)>| {
        while tags.len() < n {
            let Some((_, WorkerMessage::StepBatchResponse(r))) =
                orchestrator.recv(Duration::from_secs(2))
            else {
                panic!("results missing: {tags:?}")
            };
            for result in r.results {
                tags.push((r.orchestrator_id.clone(), result.step_id, result.output));
            }
        }
    };
    take(1, &mut tags); // step 0 of A, completed before
    rt.complete(StepExecutionResult::completed(
        pulled[1].step_ref(),
        json!("A's step 1"),
        "w-test",
        0,
    ));
    take(2, &mut tags);
    assert_eq!(tags[1], ("orch-A".into(), 1, Some(json!("A's step 1"))));
    // Now B's step 1 is handed over, and its result goes to B.
    let next = pull(&rt, 1);
    assert_eq!(next[0].step_id, 1);
    rt.complete(StepExecutionResult::completed(
        next[0].step_ref(),
        json!("B's step 1"),
        "w-test",
        0,
    ));
    take(3, &mut tags);
    assert_eq!(tags[2], ("orch-B".into(), 1, Some(json!("B's step 1"))));
    rt.complete_many(waiting.iter().map(done).collect());
    take(5, &mut tags);
    rt.stop();
}

/// W4: a results message ZeroMQ refuses (the high-water mark: the
/// orchestrator does not read) is kept, in order, and sent once there is
/// room; nothing is lost, nothing sent twice. With the I/O thread and
/// driven by a host's loop.
#[test]
fn w4_results_refused_by_a_full_pipe_are_kept_and_all_arrive_once_the_orchestrator_reads() {
    for driven in [false, true] {
        full_pipe(driven);
    }
}

fn full_pipe(driven: bool) {
    const STEPS: i64 = 400;
    // Unix sockets buffer far less than loopback TCP: the pipe fills sooner.
    let path = std::env::temp_dir().join(format!("tasker-w4-{}-{driven}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let endpoint = format!("ipc://{}", path.display());
    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER).unwrap();
    router.set_linger(0).unwrap();
    router.set_rcvhwm(1).unwrap();
    router.bind(&endpoint).unwrap();
    let orchestrator = FakeOrchestrator {
        socket: router,
        endpoint: endpoint.clone(),
        _context: context,
    };
    let mut options = patient(&endpoint, STEPS as u32);
    options.config.send_hwm = 1;
    if driven {
        event_loop::keep_raw_steps(&mut options);
    }
    let (rt, mut driver) = if driven {
        let (rt, driver) = event_loop::start(options).unwrap();
        (rt, Some(driver))
    } else {
        (WorkerRuntime::start(options).unwrap(), None)
    };
    let mut turn = |time: Duration| match driver.as_mut() {
        Some(driver) => {
            drive_for(driver, time);
        }
        None => std::thread::sleep(time),
    };
    turn(Duration::from_millis(20));
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    orchestrator.send(
        &id,
        &OrchestratorMessage::Welcome(Welcome {
            // Long enough that the worker keeps the connection while the
            // orchestrator does not read.
            heartbeat_interval_ms: 1_000,
            liveness: 10,
            // One result per message: many messages.
            max_message_bytes: 4_096,
            ..welcome(ORCHESTRATOR)
        }),
    );
    orchestrator.send(&id, &batch(0..STEPS));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut steps = Vec::new();
    while steps.len() < STEPS as usize {
        assert!(Instant::now() < deadline, "steps missing");
        turn(Duration::from_millis(10));
        steps.extend(rt.next_raw_steps(1_000, Some(Duration::ZERO)).unwrap());
    }
    let output = json!("x".repeat(3_000));
    rt.complete_many(
        steps
            .iter()
            .map(|s| StepExecutionResult::completed(s.step_ref(), output.clone(), "w-test", 0))
            .collect(),
    );
    // The orchestrator does not read for a while: the pipe fills.
    turn(Duration::from_millis(500));
    let mut seen = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(20);
    while (seen.len() as i64) < STEPS && Instant::now() < until {
        turn(Duration::from_millis(5));
        while orchestrator.socket.poll(zmq::POLLIN, 5).unwrap() > 0 {
            let frames = orchestrator.socket.recv_multipart(0).unwrap();
            let message: WorkerMessage = codec::decode(&frames[1..], usize::MAX).unwrap();
            if let WorkerMessage::StepBatchResponse(response) = message {
                for result in response.results {
                    assert_eq!(result.status, StepStatus::Completed);
                    assert!(seen.insert(result.step_id), "step {} twice", result.step_id);
                }
            }
        }
    }
    assert_eq!(
        seen.len() as i64,
        STEPS,
        "results lost (driven: {driven}); missing e.g. {:?}",
        (0..STEPS).find(|i| !seen.contains(i))
    );
    rt.stop();
    drop(driver);
    let _ = std::fs::remove_file(&path);
}

/// Nested `depth` arrays deep around 7.
fn nested(depth: usize) -> serde_json::Value {
    serde_json::from_str(&format!("{}7{}", "[".repeat(depth), "]".repeat(depth))).unwrap()
}

/// W7: an output nested deeper than the welcome's `max_json_depth` is not
/// sent (the orchestrator would refuse it); the step fails as
/// `SerializationError`, not retryable, naming the limit. One at the limit
/// goes through.
#[test]
fn w7_an_output_nested_deeper_than_max_json_depth_fails_as_serialization_error() {
    let (orchestrator, rt, id) = welcomed(false);
    orchestrator.send(&id, &batch(0..2));
    let steps = pull(&rt, 2);
    let depth = MAX_JSON_DEPTH as usize;
    rt.complete_many(vec![
        StepExecutionResult::completed(steps[0].step_ref(), nested(depth), "w-test", 0),
        StepExecutionResult::completed(steps[1].step_ref(), nested(depth + 1), "w-test", 0),
    ]);
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no results")
    };
    let results: std::collections::BTreeMap<_, _> = response
        .results
        .into_iter()
        .map(|r| (r.step_id, r))
        .collect();
    assert_eq!(results[&0].status, StepStatus::Completed);
    assert_eq!(results[&0].output, Some(nested(depth)));
    let failed = &results[&1];
    let error = failed_for_good(failed, 1, error_types::SERIALIZATION_ERROR);
    assert!(!failed.metadata.retryable);
    assert!(error.message.contains("100"), "{}", error.message);
    assert!(error.message.contains("deep"), "{}", error.message);
    rt.stop();
}

/// W7: the limit is the welcome's, for output handed over as JSON text too.
#[test]
fn w7_the_depth_limit_is_the_welcomes_also_for_output_given_as_json_text() {
    let orchestrator = FakeOrchestrator::bind();
    let rt = runtime(&orchestrator.endpoint, 10);
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    orchestrator.send(
        &id,
        &OrchestratorMessage::Welcome(Welcome {
            max_json_depth: 3,
            ..welcome(ORCHESTRATOR)
        }),
    );
    orchestrator.send(&id, &batch(0..2));
    let steps = rt.next_raw_steps(2, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(steps.len(), 2);
    let now = chrono::Utc::now();
    let output = |text: &str| serde_json::value::RawValue::from_string(text.into()).unwrap();
    rt.complete_encoded(vec![
        raw::EncodedResult::completed(
            steps[0].step_ref(),
            &output(r#"{"a":[[7]]}"#),
            "w-test",
            1,
            now,
        ),
        raw::EncodedResult::completed(
            steps[1].step_ref(),
            &output(r#"{"a":[[[7]]]}"#),
            "w-test",
            1,
            now,
        ),
    ]);
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no results")
    };
    assert_eq!(response.results[0].status, StepStatus::Completed);
    assert_eq!(response.results[1].status, StepStatus::Failed);
    let error = response.results[1].error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::SERIALIZATION_ERROR);
    assert!(error.message.contains("at most 3"), "{}", error.message);
    rt.stop();
}

/// W7: output handed over as JSON text (as the Node SDK does) holding a
/// lone UTF-16 surrogate escape, which `JSON.stringify` writes for a
/// string cut mid-character, is not sent; the step fails as
/// `SerializationError`. A proper pair goes through.
#[test]
fn w7_a_raw_output_with_a_lone_surrogate_escape_fails_as_serialization_error() {
    let (orchestrator, rt, id) = welcomed(true);
    orchestrator.send(&id, &batch(0..2));
    let steps = rt.next_raw_steps(2, Some(Duration::from_secs(5))).unwrap();
    assert_eq!(steps.len(), 2);
    let now = chrono::Utc::now();
    let output = |text: &str| serde_json::value::RawValue::from_string(text.into()).unwrap();
    rt.complete_encoded(vec![
        raw::EncodedResult::completed(
            steps[0].step_ref(),
            &output(r#"{"name":"caf\udce9"}"#),
            "w-test",
            1,
            now,
        ),
        raw::EncodedResult::completed(
            steps[1].step_ref(),
            &output(r#"{"name":"caf\u00e9 \ud83c\udf89"}"#),
            "w-test",
            1,
            now,
        ),
    ]);
    // The fake orchestrator decodes the whole message as the real one
    // does: a lone surrogate anywhere in it would fail the decode.
    let Some((_, WorkerMessage::StepBatchResponse(response))) =
        orchestrator.recv(Duration::from_secs(2))
    else {
        panic!("no results")
    };
    let error = failed_for_good(&response.results[0], 0, error_types::SERIALIZATION_ERROR);
    assert!(error.message.contains("surrogate"), "{}", error.message);
    assert_eq!(response.results[1].status, StepStatus::Completed);
    assert_eq!(response.results[1].output, Some(json!({"name": "café 🎉"})));
    rt.stop();
}

/// W6: a hello refused because the worker id is in use (or the registry
/// is full) is sent again on the same socket after the reconnect backoff,
/// which doubles; in between the worker sends nothing (a heartbeat would
/// only earn `unknown_worker`). A welcome then registers it.
#[test]
fn w6_a_refused_hello_is_sent_again_on_the_same_socket_after_a_growing_backoff() {
    let orchestrator = FakeOrchestrator::bind();
    let mut options = options(&orchestrator.endpoint, 4);
    options.config.reconnect_initial_ms = 300;
    options.config.reconnect_max_ms = 5_000;
    let rt = WorkerRuntime::start(options).unwrap();
    let (id, hello) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    assert!(matches!(hello, WorkerMessage::Hello(_)));
    let mut waits = Vec::new();
    for code in [
        ProtocolErrorCode::WorkerIdInUse,
        ProtocolErrorCode::RegistryFull,
    ] {
        orchestrator.send(
            &id,
            &OrchestratorMessage::ProtocolError(ProtocolError {
                code,
                message: "refused".into(),
            }),
        );
        let refused_at = Instant::now();
        let (again_id, message) = orchestrator
            .recv_any(Duration::from_secs(5))
            .expect("a hello again");
        assert!(
            matches!(message, WorkerMessage::Hello(_)),
            "after {code:?}, the next message is {message:?}"
        );
        assert_eq!(again_id, id, "on the same socket");
        waits.push(refused_at.elapsed());
    }
    assert!(
        waits[0] >= Duration::from_millis(280) && waits[1] >= Duration::from_millis(580),
        "waited {waits:?} (backoff 300 ms, doubling)"
    );
    orchestrator.welcome(&id);
    let deadline = Instant::now() + Duration::from_secs(2);
    while rt.state() != RuntimeState::Connected {
        assert!(Instant::now() < deadline, "not registered");
        std::thread::sleep(Duration::from_millis(5));
    }
    rt.stop();
}

/// W5: a turn that comes later than planned, by less than the expiry (the
/// worker itself was held up: stopped, or its host's loop was busy), is no
/// evidence that the orchestrator went silent: what it sent may not even
/// have reached the socket yet. The worker does not give up on the
/// connection for it.
#[test]
fn w5_a_turn_that_runs_late_does_not_count_as_orchestrator_silence() {
    let orchestrator = FakeOrchestrator::bind();
    let config = TaskerConfig {
        endpoint: orchestrator.endpoint.clone(),
        heartbeat_interval_ms: 100,
        ..TaskerConfig::default()
    };
    let (rt, mut driver) =
        event_loop::start(WorkerOptions::new(config, vec!["echo".into()])).unwrap();
    drive_for(&mut driver, Duration::from_millis(20));
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    // Expiry: 100 ms × 10.
    orchestrator.send(
        &id,
        &OrchestratorMessage::Welcome(Welcome {
            liveness: 10,
            ..welcome(ORCHESTRATOR)
        }),
    );
    drive_for(&mut driver, Duration::from_millis(50));
    assert_eq!(rt.state(), RuntimeState::Connected);
    // The orchestrator says nothing for 700 ms, then the host's loop is
    // held up for 500 ms: 1.2 s without a word by the time it runs again.
    drive_for(&mut driver, Duration::from_millis(700));
    std::thread::sleep(Duration::from_millis(500));
    // It runs again; the orchestrator beats as usual from now on.
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        drive_for(&mut driver, Duration::from_millis(50));
        orchestrator.send(&id, &OrchestratorMessage::Heartbeat(Heartbeat {}));
        if let Some((from, message)) = orchestrator.recv(Duration::from_millis(1)) {
            panic!("the worker gave up on the connection: {message:?} from {from:?}");
        }
    }
    assert_eq!(rt.state(), RuntimeState::Connected);
    rt.stop();
    drive_for(&mut driver, Duration::from_secs(2));
}

/// W5b: held up for longer than the expiry, the worker has likely been
/// declared dead and its steps ended `WorkerLost` and given to another
/// worker. It starts none of the steps not handed to its host yet, nor
/// reads what came meanwhile: it reconnects at once and its hello lists
/// only what the host had started. (Resuming from a pause, a worker ran
/// steps of tasks that had already failed.)
#[test]
fn w5b_a_turn_late_past_expiry_reconnects_and_starts_nothing_that_waited() {
    let orchestrator = FakeOrchestrator::bind();
    let mut options = options(&orchestrator.endpoint, 10);
    options.config.heartbeat_interval_ms = 100;
    let (rt, mut driver) = event_loop::start(options).unwrap();
    drive_for(&mut driver, Duration::from_millis(20));
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    // Expiry: 100 ms × 3.
    orchestrator.welcome(&id);
    orchestrator.send(&id, &batch(0..2));
    drive_for(&mut driver, Duration::from_millis(50));
    let started = rt.next_steps(1, Some(Duration::from_secs(1))).unwrap();
    assert_eq!(started.len(), 1);
    // Held up for over three expiries, while one more step comes.
    orchestrator.send(&id, &batch(2..3));
    std::thread::sleep(Duration::from_millis(1_000));
    drive_for(&mut driver, Duration::from_millis(50));
    let (again, message) = orchestrator.recv(Duration::from_secs(2)).expect("a hello");
    let WorkerMessage::Hello(hello) = message else {
        panic!("{message:?}")
    };
    assert_ne!(again, id, "on a new connection");
    let listed: Vec<i64> = hello.in_progress.iter().map(|s| s.step_id).collect();
    assert_eq!(listed, [started[0].step_id], "only the step the host had");
    assert_eq!(
        rt.next_steps(10, Some(Duration::from_millis(200))).unwrap(),
        [],
        "nothing that waited is handed to the host"
    );
    rt.stop();
    drive_for(&mut driver, Duration::from_secs(2));
}

/// The error of `result`, after checking it is step `step_id` failed for
/// good with `kind`.
fn failed_for_good(result: &StepExecutionResult, step_id: i64, kind: &str) -> StepExecutionError {
    assert_eq!(result.step_id, step_id);
    assert_eq!(result.status, StepStatus::Failed);
    let error = result.error.clone().expect("a failed result has an error");
    assert_eq!(error.error_type, kind);
    assert!(!error.retryable);
    error
}

/// A Rust worker with two handlers for steps of [`handler_batch`]: `echo`
/// inline, which runs `echo` and records the thread it ran on, and
/// `sleep` on the handler threads; welcomed by a fake orchestrator.
fn inline_worker(
    echo: impl Fn(&StepExecutionRequest) -> tasker_worker::HandlerResult + Send + Sync + 'static,
) -> (
    FakeOrchestrator,
    tasker_worker::RunningWorker,
    Vec<u8>,
    Arc<std::sync::Mutex<Vec<String>>>,
) {
    let orchestrator = FakeOrchestrator::bind();
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&threads);
    let config = options(&orchestrator.endpoint, 10).config;
    let worker = tasker_worker::Worker::new(config)
        .capacity(10)
        .threads(1)
        .handler_with(
            "echo",
            tasker_worker::HandlerOptions::new().inline(),
            move |step| {
                let name = std::thread::current().name().unwrap_or("").to_string();
                seen.lock().unwrap().push(name);
                echo(step)
            },
        )
        .handler("sleep", |_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(json!("slept"))
        })
        .spawn()
        .unwrap();
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    orchestrator.welcome(&id);
    (orchestrator, worker, id, threads)
}

fn handler_batch(steps: &[(i64, &str)]) -> OrchestratorMessage {
    OrchestratorMessage::StepBatchRequest(StepBatchRequest::new(
        "b:1",
        steps
            .iter()
            .map(|(id, handler)| StepExecutionRequest::new(*id, 1, "s", *handler, 5_000))
            .collect(),
    ))
}

/// The next `n` results the fake orchestrator receives, by step id (each
/// message within 5 s).
fn results_received(orchestrator: &FakeOrchestrator, n: usize) -> Vec<StepExecutionResult> {
    let mut out = Vec::new();
    while out.len() < n {
        match orchestrator.recv(Duration::from_secs(5)) {
            Some((_, WorkerMessage::StepBatchResponse(response))) => out.extend(response.results),
            Some(_) => {}
            None => panic!("{} of {n} results arrived", out.len()),
        }
    }
    out.sort_by_key(|r| r.step_id);
    out
}

#[test]
fn an_inline_handler_runs_on_the_io_thread_beside_handlers_on_threads() {
    let (orchestrator, worker, id, threads) = inline_worker(|step| Ok(json!(step.step_id)));
    orchestrator.send(
        &id,
        &handler_batch(&[(1, "echo"), (2, "sleep"), (3, "echo"), (4, "echo")]),
    );
    // The inline steps did not wait for the slow one on the only handler
    // thread: their results went out first, together.
    let Some((_, WorkerMessage::StepBatchResponse(first))) =
        orchestrator.recv(Duration::from_secs(5))
    else {
        panic!("no results")
    };
    let first: Vec<_> = first.results.iter().map(|r| r.step_id).collect();
    assert_eq!(first, [1, 3, 4]);
    let slow = results_received(&orchestrator, 1);
    assert_eq!(slow[0].output, Some(json!("slept")));
    assert_eq!(*threads.lock().unwrap(), ["tasker-worker-io"; 3]);
    worker.stop();
    assert!(worker.join(Duration::from_secs(5)));
}

/// Results carry the wall-clock time they completed at, on the I/O thread
/// (inline) and on the handler threads alike, though neither reads the
/// wall clock for each step.
#[test]
fn each_result_says_when_it_completed_by_the_wall_clock() {
    let (orchestrator, worker, id, _) = inline_worker(|step| Ok(json!(step.step_id)));
    let before = chrono::Utc::now();
    orchestrator.send(
        &id,
        &handler_batch(&[(1, "echo"), (2, "sleep"), (3, "echo")]),
    );
    let results = results_received(&orchestrator, 3);
    let after = chrono::Utc::now();
    for result in &results {
        let at = result.metadata.completed_at;
        assert!(
            before <= at && at <= after,
            "{at} not within {before}..{after}"
        );
    }
    // The sleeping step ran 20 ms on a handler thread before it completed.
    assert!(results[1].metadata.completed_at >= before + chrono::TimeDelta::milliseconds(19));
    worker.join(Duration::from_secs(5));
}

/// The orchestrator keeps two batches in flight per worker so that one
/// crosses the wire while the other runs. Two batches read in one turn
/// must still go back one by one: answered together, the orchestrator
/// gets no credit back until both have run, and its window collapses into
/// stop-and-wait.
#[test]
fn two_batches_read_in_one_turn_are_answered_one_by_one() {
    let orchestrator = FakeOrchestrator::bind();
    let (started_tx, started) = std::sync::mpsc::channel();
    let started_tx = std::sync::Mutex::new(started_tx);
    let worker = tasker_worker::Worker::new(options(&orchestrator.endpoint, 64).config)
        .capacity(64)
        .threads(1)
        .handler_with(
            "block",
            tasker_worker::HandlerOptions::new().inline(),
            move |_| {
                started_tx.lock().unwrap().send(()).unwrap();
                // Holds the I/O thread while both batches arrive.
                std::thread::sleep(Duration::from_millis(100));
                Ok(json!("unblocked"))
            },
        )
        .handler_with(
            "echo",
            tasker_worker::HandlerOptions::new().inline(),
            |step| Ok(json!(step.step_id)),
        )
        .spawn()
        .unwrap();
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).unwrap();
    orchestrator.welcome(&id);
    orchestrator.send(&id, &handler_batch(&[(1, "block")]));
    started.recv_timeout(Duration::from_secs(5)).unwrap();
    let a: Vec<(i64, &str)> = (100..120).map(|i| (i, "echo")).collect();
    let b: Vec<(i64, &str)> = (200..220).map(|i| (i, "echo")).collect();
    orchestrator.send(&id, &handler_batch(&a));
    orchestrator.send(&id, &handler_batch(&b));
    let mut messages = Vec::new();
    while messages.iter().map(Vec::len).sum::<usize>() < 41 {
        match orchestrator.recv(Duration::from_secs(5)) {
            Some((_, WorkerMessage::StepBatchResponse(response))) => messages.push(
                response
                    .results
                    .iter()
                    .map(|r| r.step_id)
                    .collect::<Vec<_>>(),
            ),
            Some(_) => {}
            None => panic!("results missing; got {messages:?}"),
        }
    }
    let expected: Vec<Vec<i64>> = vec![vec![1], (100..120).collect(), (200..220).collect()];
    assert_eq!(messages, expected);
    worker.stop();
    assert!(worker.join(Duration::from_secs(5)));
}

#[test]
fn an_inline_handler_that_runs_past_its_limit_moves_to_the_handler_threads() {
    let (orchestrator, worker, id, threads) = inline_worker(|step| {
        if step.step_id == 1 {
            std::thread::sleep(Duration::from_millis(30));
        }
        Ok(json!(step.step_id))
    });
    orchestrator.send(&id, &handler_batch(&[(1, "echo")]));
    assert_eq!(results_received(&orchestrator, 1)[0].output, Some(json!(1)));
    orchestrator.send(&id, &handler_batch(&[(2, "echo"), (3, "echo")]));
    let later = results_received(&orchestrator, 2);
    assert!(later.iter().all(|r| r.status == StepStatus::Completed));
    assert_eq!(
        *threads.lock().unwrap(),
        ["tasker-worker-io", "tasker-worker-0", "tasker-worker-0"]
    );
    worker.stop();
    assert!(worker.join(Duration::from_secs(5)));
}

#[test]
fn an_inline_handler_that_panics_fails_its_step_and_the_worker_serves_on() {
    let (orchestrator, worker, id, _) = inline_worker(|step| {
        assert!(step.step_id != 1, "step 1 is refused");
        Ok(json!(step.step_id))
    });
    orchestrator.send(&id, &handler_batch(&[(1, "echo"), (2, "echo")]));
    let results = results_received(&orchestrator, 2);
    let error = failed_for_good(&results[0], 1, error_types::PANIC);
    assert!(error.message.contains("step 1 is refused"), "{error:?}");
    assert_eq!(results[1].output, Some(json!(2)));
    // The connection lives on: a later batch is answered too.
    orchestrator.send(&id, &handler_batch(&[(3, "echo")]));
    assert_eq!(results_received(&orchestrator, 1)[0].output, Some(json!(3)));
    worker.stop();
    assert!(worker.join(Duration::from_secs(5)));
}

#[test]
fn an_async_handler_cannot_be_inline() {
    let error = tasker_worker::Worker::new(TaskerConfig::default())
        .async_handler_with(
            "fetch",
            tasker_worker::HandlerOptions::new().inline(),
            |_| async { Ok(json!(null)) },
        )
        .spawn()
        .err()
        .expect("refused");
    assert!(
        matches!(&error, WorkerError::InvalidOptions(m) if m.contains("\"fetch\"") && m.contains("inline")),
        "{error}"
    );
}

#[test]
fn an_inline_step_too_deep_to_decode_fails_as_invalid_step_and_the_rest_are_served() {
    let (orchestrator, worker, id, threads) = inline_worker(|step| Ok(json!(step.step_id)));
    send_too_deep_then_fine(&orchestrator, &id);
    let results = results_received(&orchestrator, 2);
    assert_eq!(results[0].output, Some(json!(1)));
    let error = failed_for_good(&results[1], 2, error_types::INVALID_STEP);
    assert!(error.message.contains("recursion limit"), "{error:?}");
    assert_eq!(*threads.lock().unwrap(), ["tasker-worker-io"]);
    worker.stop();
    assert!(worker.join(Duration::from_secs(5)));
}

/// W9: results ZeroMQ took on a connection the worker then closes may
/// have gone with its queue. A worker that resumed from a pause sent its
/// results with its orchestrator's goodbye still unread, closed the socket,
/// and said hello without them: the steps were lost, or, taken for never
/// received, run again as the same attempt. The latest results are held
/// again: the next hello lists them and they go out after the welcome (an
/// answer the orchestrator already has it drops).
#[test]
fn w9_results_sent_just_before_a_reconnect_are_listed_again_and_sent_again() {
    sent_again(Then::Goodbye, false);
    sent_again(Then::Goodbye, true);
    // The connection under the socket was replaced (the orchestrator
    // restarted): it answers `unknown_worker`, and the worker says hello on
    // the same socket, listing them too.
    sent_again(Then::UnknownWorker, false);
}

/// What the fake orchestrator does after it read the results.
#[derive(PartialEq)]
enum Then {
    Goodbye,
    UnknownWorker,
}

fn sent_again(then: Then, stop_unwelcomed: bool) {
    let orchestrator = FakeOrchestrator::bind();
    let rt = WorkerRuntime::start(patient(&orchestrator.endpoint, 2)).unwrap();
    let (id, _) = orchestrator.recv(Duration::from_secs(5)).expect("hello");
    orchestrator.send(&id, &patient_welcome("orch-A"));
    orchestrator.send(&id, &batch(0..2));
    let pulled = pull(&rt, 2);
    rt.complete_many(pulled.iter().map(done).collect());
    let mut answered = 0;
    while answered < 2 {
        match orchestrator.recv(Duration::from_secs(5)) {
            Some((_, WorkerMessage::StepBatchResponse(r))) => answered += r.results.len(),
            other => panic!("{other:?}"),
        }
    }
    let message = match then {
        Then::Goodbye => OrchestratorMessage::Goodbye(Goodbye::new("orchestrator shutting down")),
        Then::UnknownWorker => OrchestratorMessage::ProtocolError(ProtocolError {
            code: ProtocolErrorCode::UnknownWorker,
            message: "no hello on this connection (or declared dead): send hello".into(),
        }),
    };
    orchestrator.send(&id, &message);
    let (new_id, hello) = orchestrator
        .recv(Duration::from_secs(5))
        .expect("a new hello");
    let WorkerMessage::Hello(hello) = hello else {
        panic!("expected a hello, got {hello:?}")
    };
    assert_eq!(
        new_id == id,
        then == Then::UnknownWorker,
        "the same socket after unknown_worker"
    );
    let held: Vec<(i64, String)> = hello
        .in_progress
        .iter()
        .map(|h| (h.step_id, h.orchestrator_id.clone()))
        .collect();
    assert_eq!(held, [(0, "orch-A".into()), (1, "orch-A".into())]);
    if stop_unwelcomed {
        // Most such results reached the orchestrator: a stop with no
        // orchestrator to welcome it does not wait to send them again.
        let asked = Instant::now();
        rt.stop();
        assert!(rt.join(Duration::from_secs(1)), "still stopping after 1 s");
        assert!(asked.elapsed() < Duration::from_secs(1));
        return;
    }
    orchestrator.send(&new_id, &patient_welcome("orch-A"));
    let Some((_, WorkerMessage::StepBatchResponse(again))) =
        orchestrator.recv(Duration::from_secs(5))
    else {
        panic!("the results were not sent again")
    };
    let mut ids: Vec<i64> = again.results.iter().map(|r| r.step_id).collect();
    ids.sort_unstable();
    assert_eq!(
        (ids, again.orchestrator_id.as_str()),
        (vec![0, 1], "orch-A")
    );
    rt.stop();
}
