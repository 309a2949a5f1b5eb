//! What a hostile or broken peer cannot do to the orchestrator, each over
//! real sockets: results count only from the connection that holds the
//! step, of the orchestrator that delivered it; a registration is bound to
//! its connection; one bad result costs only its own step; the registry is
//! bounded; a dead I/O thread still ends every step once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_orchestrator::{BatchHandle, ExecutorError, ZmqPubSubExecutor};
use tasker_protocol::*;

const LONG: Duration = Duration::from_secs(10);

/// Waits for the steps of one delivery to `peer`.
fn delivered(peer: &RawPeer) -> Vec<StepExecutionRequest> {
    match peer.recv_skipping_heartbeats(Duration::from_secs(3)) {
        Some(OrchestratorMessage::StepBatchRequest(batch)) => batch.steps,
        other => panic!("expected a delivery, got {other:?}"),
    }
}

/// Says `hello` on `peer` until it is welcomed, as a worker does: until
/// ZeroMQ has seen the worker's old connection close, its id is in use.
fn hello_until_welcomed(peer: &RawPeer, hello: &WorkerHello) {
    for _ in 0..50 {
        peer.send(&WorkerMessage::Hello(hello.clone()));
        match peer.recv_skipping_heartbeats(Duration::from_secs(3)) {
            Some(OrchestratorMessage::Welcome(w)) => {
                *peer.orchestrator_id.borrow_mut() = w.orchestrator_id;
                return;
            }
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(e.code, ProtocolErrorCode::WorkerIdInUse);
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("{other:?}"),
        }
    }
    panic!("hello never welcomed");
}

/// A worker `worker_id` that serves `echo` and holds every step of a new
/// batch of `n`: its connection, the steps, the orchestrator's id (which
/// a later connection of the worker names in its hello) and the batch.
async fn holding(
    executor: &ZmqPubSubExecutor,
    worker_id: &str,
    n: i64,
) -> (RawPeer, Vec<StepExecutionRequest>, String, BatchHandle) {
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello(worker_id, &["echo"], n as u32);
    let handle = executor
        .submit(StepBatchRequest::new(
            worker_id,
            steps(1..n + 1, "echo", 10_000),
        ))
        .await
        .unwrap();
    let held = delivered(&peer);
    assert_eq!(held.len(), n as usize);
    let orchestrator_id = peer.orchestrator_id.borrow().clone();
    (peer, held, orchestrator_id, handle)
}

/// A worker's new connection `peer` says hello as `worker_id`, listing the
/// attempts it still holds (`held`, first attempts of `orchestrator_id`),
/// until it is welcomed; then answers them with `output`.
fn take_over(
    peer: &RawPeer,
    worker_id: &str,
    capacity: u32,
    held: &[StepExecutionRequest],
    orchestrator_id: &str,
    output: Value,
) {
    let mut hello = hello_of(worker_id, vec!["echo".into()], capacity);
    hello.in_progress = held
        .iter()
        .map(|s| HeldStep {
            step_id: s.step_id,
            attempt: 1,
            orchestrator_id: orchestrator_id.to_string(),
        })
        .collect();
    hello_until_welcomed(peer, &hello);
    peer.respond(
        held.iter()
            .map(|s| completed(s, output.clone(), worker_id))
            .collect(),
    );
}

/// The next protocol error `peer` is sent, skipping heartbeats.
fn protocol_error(peer: &RawPeer) -> ProtocolError {
    match peer.recv_skipping_heartbeats(Duration::from_secs(3)) {
        Some(OrchestratorMessage::ProtocolError(e)) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

fn completed(step: &StepExecutionRequest, output: Value, worker_id: &str) -> StepExecutionResult {
    StepExecutionResult::completed(step.step_ref(), output, worker_id, 1)
}

/// `result` with its output replaced by raw JSON text, as a worker that
/// builds JSON by hand would send it.
fn with_raw_output(result: &StepExecutionResult, output: &str) -> String {
    let json = serde_json::to_string(result).unwrap();
    let tagged = serde_json::to_string(&result.output).unwrap();
    json.replacen(
        &format!("\"output\":{tagged}"),
        &format!("\"output\":{output}"),
        1,
    )
}

fn response_frames(orchestrator_id: &str, results: &[String]) -> Vec<Vec<u8>> {
    let body = format!(
        r#"{{"type":"step_batch_response","batch_id":"b","orchestrator_id":"{orchestrator_id}","protocol_version":"1.0","results":[{}]}}"#,
        results.join(",")
    );
    vec![PROTOCOL_HEADER.as_bytes().to_vec(), body.into_bytes()]
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_one_bad_result_fails_only_its_own_step_and_frees_its_slot() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    let welcome = peer.hello("mixed", &["echo"], 3);
    assert_eq!(welcome.max_json_depth, MAX_JSON_DEPTH);
    let handle = executor
        .submit(StepBatchRequest::new("three", steps(1..4, "echo", 10_000)))
        .await
        .unwrap();
    let held = delivered(&peer);
    assert_eq!(held.len(), 3);
    let good = serde_json::to_string(&completed(&held[0], json!("fine"), "mixed")).unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let too_deep = with_raw_output(&completed(&held[1], json!(0), "mixed"), &deep);
    let surrogate = with_raw_output(&completed(&held[2], json!(0), "mixed"), r#""\udce9""#);
    peer.send_raw(response_frames(
        &welcome.orchestrator_id,
        &[good, too_deep, surrogate],
    ));

    let refusal = protocol_error(&peer);
    assert_eq!(refusal.code, ProtocolErrorCode::InvalidMessage);
    assert!(refusal.message.contains("[1, 2]"), "{}", refusal.message);
    let results = handle.collect().await;
    assert_eq!(results[0].status, StepStatus::Completed);
    assert_eq!(results[0].output, Some(json!("fine")));
    for bad in &results[1..] {
        assert_eq!(bad.status, StepStatus::Failed);
        let error = bad.error.as_ref().unwrap();
        assert_eq!(error.error_type, error_types::INVALID_RESULT);
        assert!(!bad.is_retryable());
    }
    // All three slots are free again: three new steps go out at once.
    let handle = executor
        .submit(StepBatchRequest::new("again", steps(4..7, "echo", 10_000)))
        .await
        .unwrap();
    let again = delivered(&peer);
    assert_eq!(again.len(), 3, "the refused results freed their slots");
    peer.respond(
        again
            .iter()
            .map(|s| completed(s, json!(1), "mixed"))
            .collect(),
    );
    assert_eq!(handle.collect().await.len(), 3);
    assert_eq!(executor.metrics().invalid_results, 2);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_a_result_for_an_earlier_orchestrators_step_never_completes_a_step_of_this_one() {
    let executor = start(&config());
    let earlier = "0123456789abcdef0123456789abcdef".to_string();
    // Step 1 of this orchestrator, and a worker still running step 1 of an
    // earlier one (its process restarted and numbered steps from 1 again).
    let handle = executor
        .submit(StepBatchRequest::new(
            "second-run",
            steps(1..2, "echo", 10_000),
        ))
        .await
        .unwrap();
    let peer = RawPeer::connect(executor.endpoint());
    let mut hello = WorkerHello::new("survivor", vec!["echo".into()], 1);
    hello.in_progress = vec![HeldStep {
        step_id: 1,
        attempt: 1,
        orchestrator_id: earlier.clone(),
    }];
    let welcome = peer.send_hello(hello);
    assert_ne!(welcome.orchestrator_id, earlier);
    // Its one slot is taken by the earlier step: nothing is sent yet.
    assert!(
        peer.recv_skipping_heartbeats(Duration::from_millis(400))
            .is_none(),
        "a worker whose capacity is held by an earlier orchestrator's step got work"
    );
    let stale = StepExecutionResult::completed(
        StepRef {
            step_id: 1,
            attempt: 1,
        },
        json!("from the first run"),
        "survivor",
        1,
    );
    peer.send(&WorkerMessage::StepBatchResponse(StepBatchResponse::new(
        "old",
        earlier,
        vec![stale],
    )));
    // The slot is free now, and step 1 of this run goes out.
    let step = delivered(&peer);
    assert_eq!(step[0].step_id, 1);
    peer.respond(vec![completed(
        &step[0],
        json!("from the second run"),
        "survivor",
    )]);
    let results = handle.collect().await;
    assert_eq!(results[0].output, Some(json!("from the second run")));
    assert_eq!(executor.metrics().foreign_results_dropped, 1);
    assert_eq!(executor.metrics().completed, 1);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_only_the_connection_holding_a_step_can_complete_it() {
    let executor = start(&config());
    let holder = RawPeer::connect(executor.endpoint());
    holder.hello("holder", &["echo"], 4);
    let handle = executor
        .submit(StepBatchRequest::new("owned", steps(1..3, "echo", 10_000)))
        .await
        .unwrap();
    let held = delivered(&holder);
    let orchestrator_id = holder.orchestrator_id.borrow().clone();

    // A connection that never said hello.
    let stranger = RawPeer::connect(executor.endpoint());
    stranger.send(&WorkerMessage::StepBatchResponse(StepBatchResponse::new(
        "forged",
        orchestrator_id.clone(),
        held.iter()
            .map(|s| completed(s, json!("forged"), "holder"))
            .collect(),
    )));
    assert_eq!(
        protocol_error(&stranger).code,
        ProtocolErrorCode::UnknownWorker
    );
    // A registered worker answering steps it does not hold.
    let rival = RawPeer::connect(executor.endpoint());
    rival.hello("rival", &["echo"], 4);
    rival.respond(
        held.iter()
            .map(|s| completed(s, json!("forged"), "holder"))
            .collect(),
    );
    wait_until("the rival's results are counted", || {
        executor.metrics().unheld_results_dropped == 2
    })
    .await;
    assert_eq!(executor.metrics().completed, 0);

    holder.respond(
        held.iter()
            .map(|s| completed(s, json!("real"), "holder"))
            .collect(),
    );
    let results = handle.collect().await;
    assert!(results.iter().all(|r| r.output == Some(json!("real"))));
    // The stranger's results waited for a hello that never came, and went.
    tokio::time::sleep(executor.config().peer_expiry() * 2).await;
    assert_eq!(executor.metrics().unheld_results_dropped, 4);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_forged_results_with_a_victims_worker_id_do_not_free_its_slots() {
    let executor = start(&config());
    let victim = RawPeer::connect(executor.endpoint());
    victim.hello("victim", &["echo"], 4);
    let handle = executor
        .submit(StepBatchRequest::new(
            "twelve",
            steps(1..13, "echo", 10_000),
        ))
        .await
        .unwrap();
    let held = delivered(&victim);
    assert_eq!(held.len(), 4);
    let attacker = RawPeer::connect(executor.endpoint());
    attacker.hello("attacker", &["other"], 1);
    attacker.respond(
        held.iter()
            .map(|s| completed(s, json!("x"), "victim"))
            .collect(),
    );
    wait_until("the forged results are counted", || {
        executor.metrics().unheld_results_dropped == 4
    })
    .await;
    // Still four in hand: the victim must not be sent a fifth.
    assert!(
        victim
            .recv_skipping_heartbeats(Duration::from_millis(400))
            .is_none(),
        "the victim was sent more than its capacity"
    );
    let mut answered = 0;
    let mut in_hand = held;
    while answered < 12 {
        assert!(
            in_hand.len() <= 4,
            "victim holds {} of capacity 4",
            in_hand.len()
        );
        victim.respond(
            in_hand
                .iter()
                .map(|s| completed(s, json!("ok"), "victim"))
                .collect(),
        );
        answered += in_hand.len();
        if answered < 12 {
            in_hand = delivered(&victim);
        }
    }
    assert_eq!(handle.collect().await.len(), 12);
    executor.shutdown(LONG).await;
}

/// A result is credited to the worker its connection registered as: the
/// holder naming another (live) worker in its metadata had the API show
/// that worker as the one that ran the step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5b_a_result_is_credited_to_the_worker_that_holds_it_whatever_its_metadata_says() {
    let executor = start(&config());
    let bystander = RawPeer::connect(executor.endpoint());
    bystander.hello("legit", &["other"], 1);
    let (spoofer, held, _, handle) = holding(&executor, "spoofer", 2).await;
    spoofer.respond(
        held.iter()
            .map(|s| completed(s, json!("done"), "legit"))
            .collect(),
    );
    for result in handle.collect().await {
        assert_eq!(result.output, Some(json!("done")));
        assert_eq!(result.metadata.worker_id, "spoofer");
    }
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6_a_hello_reusing_a_live_workers_id_is_refused_and_the_worker_keeps_its_steps() {
    let executor = start(&config());
    let victim = RawPeer::connect(executor.endpoint());
    victim.hello("same-id", &["echo"], 2);
    let handle = executor
        .submit(StepBatchRequest::new("kept", steps(1..3, "echo", 10_000)))
        .await
        .unwrap();
    let held = delivered(&victim);

    let impostor = RawPeer::connect(executor.endpoint());
    impostor.send(&WorkerMessage::Hello(WorkerHello::new(
        "same-id",
        vec!["echo".into()],
        2,
    )));
    assert_eq!(
        protocol_error(&impostor).code,
        ProtocolErrorCode::WorkerIdInUse
    );

    victim.respond(
        held.iter()
            .map(|s| completed(s, json!("ran"), "same-id"))
            .collect(),
    );
    let results = handle.collect().await;
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    assert_eq!(executor.metrics().worker_lost, 0);
    assert_eq!(executor.metrics().hellos_refused, 1);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6_a_worker_that_really_reconnected_takes_its_steps_and_its_old_results_still_count() {
    let executor = start(&config());
    let (old, held, orchestrator_id, handle) = holding(&executor, "phoenix", 4).await;
    // Two results were sent on the old connection, which then closed; the
    // new connection's hello lists the other two.
    old.respond(
        held[..2]
            .iter()
            .map(|s| completed(s, json!("old"), "phoenix"))
            .collect(),
    );
    // Let ZeroMQ send them before the socket closes (linger 0).
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(old);
    let new = RawPeer::connect(executor.endpoint());
    take_over(
        &new,
        "phoenix",
        4,
        &held[2..],
        &orchestrator_id,
        json!("new"),
    );
    let results = handle.collect().await;
    let outputs: Vec<_> = results.iter().map(|r| r.output.clone().unwrap()).collect();
    assert_eq!(
        outputs,
        vec![json!("old"), json!("old"), json!("new"), json!("new")]
    );
    assert_eq!(executor.metrics().worker_lost, 0);
    assert_eq!(executor.metrics().workers_connected, 1);
    executor.shutdown(LONG).await;
}

/// `peer` is delivered exactly the steps `expected`, under the same
/// attempt (1), and answers each with `output`.
fn the_same_attempts_arrive(
    peer: &RawPeer,
    expected: &[StepExecutionRequest],
    output: Value,
    worker_id: &str,
) {
    let again = delivered(peer);
    let ids = |steps: &[StepExecutionRequest]| steps.iter().map(|s| s.step_id).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(expected));
    assert!(
        again.iter().all(|s| s.metadata.attempt == 1),
        "same attempt"
    );
    peer.respond(
        again
            .iter()
            .map(|s| completed(s, output.clone(), worker_id))
            .collect(),
    );
}

/// `new` is delivered exactly the steps `astray` held, under the same
/// attempt; once it answers them the batch completes with its outputs and
/// none of them counts as lost.
async fn the_same_attempts_arrive_and_complete(
    executor: &ZmqPubSubExecutor,
    new: &RawPeer,
    handle: BatchHandle,
    astray: &[StepExecutionRequest],
    worker_id: &str,
) {
    the_same_attempts_arrive(new, astray, json!("arrived"), worker_id);
    let results = handle.collect().await;
    assert!(results.iter().all(|r| r.output == Some(json!("arrived"))));
    let m = executor.metrics();
    assert_eq!((m.worker_lost, m.redelivered), (0, astray.len() as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6b_steps_still_on_their_way_to_a_worker_that_reconnected_go_out_again_same_attempt() {
    // The worker's old connection closed with four steps on their way to
    // it (an orchestrator stopped mid-send, in the soak): its hello on the
    // new connection lists none of them, and none was answered. They are
    // delivered again, same attempt, rather than lost.
    let executor = start(&config());
    let (old, astray, _, handle) = holding(&executor, "wanderer", 4).await;
    drop(old);
    let new = RawPeer::connect(executor.endpoint());
    hello_until_welcomed(&new, &hello_of("wanderer", vec!["echo".into()], 4));
    the_same_attempts_arrive_and_complete(&executor, &new, handle, &astray, "wanderer").await;
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6c2_an_answered_step_listed_again_after_a_reconnect_keeps_its_one_result_and_frees_its_slot(
) {
    // A worker that cannot know whether results it sent just before it
    // reconnected went out lists them again and sends them again (SPEC §5
    // rule 18). The orchestrator already has them: each step keeps its one
    // result, and the slots the hello took are freed by the second answers.
    let executor = start(&config());
    let (old, held, orchestrator_id, handle) = holding(&executor, "again", 2).await;
    old.respond(
        held.iter()
            .map(|s| completed(s, json!("first"), "again"))
            .collect(),
    );
    let results = handle.collect().await;
    assert!(
        results.iter().all(|r| r.output == Some(json!("first"))),
        "{results:?}"
    );
    drop(old);
    let new = RawPeer::connect(executor.endpoint());
    take_over(&new, "again", 2, &held, &orchestrator_id, json!("second"));
    // Both slots are free again: a batch of two goes out to it at once.
    let next = executor
        .submit(StepBatchRequest::new("next", steps(10..12, "echo", 10_000)))
        .await
        .unwrap();
    assert_eq!(
        delivered(&new).len(),
        2,
        "the listed steps' slots were freed"
    );
    new.respond(
        (10..12)
            .map(|id| {
                let step = StepRef {
                    step_id: id,
                    attempt: 1,
                };
                StepExecutionResult::completed(step, json!("next"), "again", 1)
            })
            .collect(),
    );
    assert_eq!(next.collect().await.len(), 2);
    let m = executor.metrics();
    assert_eq!((m.redelivered, m.worker_lost), (0, 0));
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6d_a_worker_process_restarted_under_its_id_within_expiry_loses_its_steps_not_reruns_them()
{
    // A worker killed mid-step and started again at once under the same
    // `worker_id` (a supervisor, a container restart) says hello within
    // the dead process's expiry, listing nothing: it never received those
    // steps, but its predecessor did and may have run them. Taken for a
    // reconnection, they went out again as the same attempt and ran twice
    // (22 of 22 in a chaos run). Another `incarnation`, or none at all,
    // says it is another process: they end `WorkerLost`, retryable, and
    // the new process gets no step of the old one's attempt.
    for (worker_id, incarnation) in [("restarted", Some("second-run")), ("anonymous", None)] {
        let executor = start(&config());
        let (old, started, _, handle) = holding(&executor, worker_id, 3).await;
        drop(old);
        let new = RawPeer::connect(executor.endpoint());
        let mut hello = WorkerHello::new(worker_id, vec!["echo".into()], 3);
        hello.incarnation = incarnation.map(String::from);
        hello_until_welcomed(&new, &hello);
        let results = handle.collect().await;
        assert_eq!(results.len(), started.len());
        for result in &results {
            assert_eq!(result.status, StepStatus::Failed, "{result:?}");
            let error = result.error.as_ref().unwrap();
            assert_eq!(error.error_type, "WorkerLost", "{error:?}");
            assert!(error.retryable);
            assert!(error.message.contains("replaced"), "{}", error.message);
        }
        assert!(
            new.recv_skipping_heartbeats(Duration::from_millis(300))
                .is_none(),
            "the new process was sent a step of the old one's attempt"
        );
        let m = executor.metrics();
        assert_eq!((m.worker_lost, m.redelivered), (3, 0), "{worker_id}");
        executor.shutdown(LONG).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6e_a_step_given_back_over_and_over_still_ends_within_bounds() {
    // A peer takes the step, returns it in a drain, says hello again and
    // takes it again: each return gave it a fresh deadline, and a 2 s step
    // lived as long as the peer went on. After eight returns it ends.
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("boomerang", &["echo"], 1);
    let handle = executor
        .submit(StepBatchRequest::new("b", steps(1..2, "echo", 60_000)))
        .await
        .unwrap();
    let started = Instant::now();
    let orchestrator_id = peer.orchestrator_id.borrow().clone();
    let mut returns = 0;
    loop {
        let step = match peer.recv_skipping_heartbeats(Duration::from_secs(1)) {
            Some(OrchestratorMessage::StepBatchRequest(batch)) => batch.steps[0].step_id,
            Some(OrchestratorMessage::Welcome(_)) => continue,
            None => break,
            other => panic!("{other:?}"),
        };
        peer.send(&WorkerMessage::Drain(WorkerDrain {
            returned: vec![HeldStep {
                step_id: step,
                attempt: 1,
                orchestrator_id: orchestrator_id.clone(),
            }],
        }));
        returns += 1;
        assert!(returns <= 20, "given back without end");
        peer.send(&WorkerMessage::Hello(hello_of(
            "boomerang",
            vec!["echo".into()],
            1,
        )));
    }
    let results = handle.collect().await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        returns, 9,
        "delivered once and again after each of 8 returns"
    );
    assert_eq!(results[0].status, StepStatus::TimedOut);
    let error = results[0].error.as_ref().unwrap();
    assert_eq!(error.error_type, "ScheduleTimeout");
    assert!(
        error.message.contains("given back undone"),
        "{}",
        error.message
    );
    assert_eq!(executor.metrics().redelivered, 8);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h6c_a_retired_connection_closed_just_before_its_expiry_gives_its_steps_back() {
    // The old connection is past its expiry but still open when the
    // worker's hello on a new one arrives, so it is taken over without a
    // probe and retired, not known gone. It closes before the next tick,
    // which judges it silent: its steps, never received by the worker,
    // must go out again rather than fail `WorkerLost`. A longer interval
    // than the other tests': the timing below keeps margins of a quarter
    // and five eighths of it, on a loaded machine too.
    let executor = start(&TaskerConfig {
        heartbeat_interval_ms: 400,
        ..config()
    });
    let interval = executor.config().heartbeat_interval();
    let expiry = executor.config().peer_expiry();
    let (old, unread, _, handle) = holding(&executor, "sleeper", 4).await;
    let heartbeat = || loop {
        match old.recv(Duration::from_secs(3)) {
            Some(OrchestratorMessage::Heartbeat(_)) => return,
            Some(_) => continue,
            None => panic!("no heartbeat on the old connection"),
        }
    };
    // The old connection's last word comes a quarter interval after a
    // tick, so the third tick from then finds it short of its expiry and
    // the fourth judges it: the new hello goes in between.
    heartbeat();
    std::thread::sleep(interval / 4);
    old.send(&WorkerMessage::Heartbeat(Heartbeat {}));
    let last_word = Instant::now();
    for _ in 0..3 {
        heartbeat();
    }
    let past_expiry = last_word + expiry + interval / 8;
    tokio::time::sleep_until(past_expiry.into()).await;
    let new = RawPeer::connect(executor.endpoint());
    new.hello("sleeper", &["echo"], 4);
    drop(old);
    the_same_attempts_arrive_and_complete(&executor, &new, handle, &unread, "sleeper").await;
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7_the_registry_is_bounded_and_a_connection_keeps_its_worker_id() {
    let executor = start(&TaskerConfig {
        max_workers: 5,
        ..config()
    });
    // Many ids on one connection: the first one sticks.
    let flooder = RawPeer::connect(executor.endpoint());
    flooder.hello("first", &["echo"], 1);
    for i in 0..300 {
        flooder.send(&WorkerMessage::Hello(WorkerHello::new(
            format!("id-{i}"),
            vec!["echo".into()],
            1,
        )));
    }
    for _ in 0..300 {
        assert_eq!(
            protocol_error(&flooder).code,
            ProtocolErrorCode::InvalidMessage
        );
    }
    assert_eq!(executor.workers().await.len(), 1);
    // Many connections: at most max_workers registered.
    let peers: Vec<RawPeer> = (0..8)
        .map(|_| RawPeer::connect(executor.endpoint()))
        .collect();
    let mut refused = 0;
    for (i, peer) in peers.iter().enumerate() {
        peer.send(&WorkerMessage::Hello(WorkerHello::new(
            format!("w-{i}"),
            vec!["echo".into()],
            1,
        )));
        match peer.recv_skipping_heartbeats(Duration::from_secs(3)) {
            Some(OrchestratorMessage::Welcome(_)) => {}
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(e.code, ProtocolErrorCode::RegistryFull);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 4, "5 of 9 connections registered");
    assert_eq!(executor.workers().await.len(), 5);
    // Entries go with their connections: silent peers are removed.
    drop(peers);
    drop(flooder);
    let expiry = executor.config().peer_expiry();
    tokio::time::sleep(expiry + executor.config().heartbeat_interval() * 2).await;
    assert_eq!(executor.workers().await.len(), 0);
    let late = RawPeer::connect(executor.endpoint());
    late.hello("room-again", &["echo"], 1);
    executor.shutdown(LONG).await;
}

/// What a hello again lists replaces what the connection held of other
/// orchestrators, and adds of this one's only the steps it adopts: a peer
/// repeating hellos of new steps grew one entry by a hundred thousand steps
/// a hello (three million after 30, 160 MB), far past its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7b_a_hello_again_lists_what_the_worker_holds_and_never_adds_past_its_capacity() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    let ours = peer.hello("repeater", &["echo"], 100).orchestrator_id;
    let held = |round: i64, orchestrator_id: &str| -> Vec<HeldStep> {
        (round * 50..round * 50 + 50)
            .map(|step_id| HeldStep {
                step_id: 1_000_000 + step_id,
                attempt: 1,
                orchestrator_id: orchestrator_id.into(),
            })
            .collect()
    };
    for round in 0..20 {
        // Another orchestrator's steps, and steps this one never sent.
        let mut hello = WorkerHello::new("repeater", vec!["echo".into()], 100);
        hello.in_progress = held(round, "another-orchestrator");
        hello.in_progress.extend(held(round, &ours));
        peer.send_hello(hello);
    }
    let workers = executor.workers().await;
    assert_eq!(workers.len(), 1);
    assert_eq!(
        workers[0].in_flight, 50,
        "the last hello's 50 steps of another orchestrator, none invented"
    );
    // It takes work in the room its last hello left it.
    let handle = executor
        .submit(StepBatchRequest::new("b", steps(1..3, "echo", 10_000)))
        .await
        .unwrap();
    let sent = delivered(&peer);
    assert_eq!(sent.len(), 2);
    peer.respond(
        sent.iter()
            .map(|s| completed(s, json!(1), "repeater"))
            .collect(),
    );
    assert!(handle
        .collect()
        .await
        .iter()
        .all(|r| r.output == Some(json!(1))));
    executor.shutdown(LONG).await;
}

/// A hello listing a step another live worker holds is welcomed, and the
/// step is not counted against it: counted, it took one of its slots for
/// good, since no result of that step comes on its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7d_a_step_another_worker_holds_takes_no_slot_of_a_worker_that_lists_it() {
    let executor = start(&config());
    let (holder, held, ours, first) = holding(&executor, "holder", 1).await;
    let claimer = RawPeer::connect(executor.endpoint());
    let mut hello = WorkerHello::new("claimer", vec!["echo".into()], 1);
    hello.in_progress = vec![HeldStep {
        step_id: held[0].step_id,
        attempt: 1,
        orchestrator_id: ours,
    }];
    claimer.send_hello(hello);
    // Its one slot is free: the next step goes to it.
    let second = executor
        .submit(StepBatchRequest::new("next", steps(10..11, "echo", 10_000)))
        .await
        .unwrap();
    let sent = delivered(&claimer);
    assert_eq!(sent[0].step_id, 10);
    claimer.respond(vec![completed(&sent[0], json!("claimer"), "claimer")]);
    holder.respond(vec![completed(&held[0], json!("holder"), "holder")]);
    assert_eq!(second.collect().await[0].output, Some(json!("claimer")));
    assert_eq!(first.collect().await[0].output, Some(json!("holder")));
    executor.shutdown(LONG).await;
}

/// The hellos of all registered connections hold at most 16 ×
/// `max_message_bytes` (1 MiB here): bounded by `max_workers` alone, a
/// hello of short names costs several times its size (one of 16 MB took
/// 120 MB) and ten thousand of them could be held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h7c_the_registry_holds_a_bounded_number_of_bytes_of_hellos() {
    let executor = start(&TaskerConfig {
        max_message_bytes: 64 * 1024,
        ..config()
    });
    let big = |i: usize| {
        // 1,024 names of 40 characters: 45 KB on the wire.
        let handlers = (0..tasker_protocol::MAX_HANDLERS)
            .map(|h| format!("{h:040}"))
            .collect();
        WorkerMessage::Hello(WorkerHello::new(format!("big-{i}"), handlers, 1))
    };
    let peers: Vec<RawPeer> = (0..30)
        .map(|_| RawPeer::connect(executor.endpoint()))
        .collect();
    let (mut welcomed, mut refused) = (0, 0);
    for (i, peer) in peers.iter().enumerate() {
        peer.send(&big(i));
        match peer.recv_skipping_heartbeats(Duration::from_secs(5)) {
            Some(OrchestratorMessage::Welcome(_)) => welcomed += 1,
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(e.code, ProtocolErrorCode::RegistryFull, "{}", e.message);
                assert!(e.message.contains("1 MiB"), "{}", e.message);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((5..=12).contains(&welcomed), "{welcomed} welcomed");
    assert_eq!(welcomed + refused, 30);
    // The bytes go with the connections: once the big ones have gone
    // silent, a big hello fits again.
    drop(peers);
    let expiry = executor.config().peer_expiry();
    tokio::time::sleep(expiry + executor.config().heartbeat_interval() * 2).await;
    let late = RawPeer::connect(executor.endpoint());
    late.send(&big(99));
    assert!(matches!(
        late.recv_skipping_heartbeats(Duration::from_secs(5)),
        Some(OrchestratorMessage::Welcome(_))
    ));
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h9_attempt_zero_is_an_invalid_message_not_a_duplicate() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("zero", &["echo"], 1);
    let handle = executor
        .submit(StepBatchRequest::new("z", steps(1..2, "echo", 10_000)))
        .await
        .unwrap();
    let step = delivered(&peer).remove(0);
    let zero = StepExecutionResult::completed(
        StepRef {
            step_id: step.step_id,
            attempt: 0,
        },
        json!(0),
        "zero",
        1,
    );
    peer.respond(vec![zero]);
    let error = protocol_error(&peer);
    assert_eq!(error.code, ProtocolErrorCode::InvalidMessage);
    assert!(error.message.contains("attempt"), "{}", error.message);
    assert_eq!(executor.metrics().duplicate_results_dropped, 0);
    peer.respond(vec![completed(&step, json!("one"), "zero")]);
    assert_eq!(handle.collect().await[0].output, Some(json!("one")));
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h11_a_dead_io_thread_ends_every_step_once_and_fails_later_submits() {
    let executor: ZmqPubSubExecutor = start(&TaskerConfig {
        queue_bound: 4,
        ..config()
    });
    let executor = std::sync::Arc::new(executor);
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("holder", &["echo"], 2);
    let handle = executor
        .submit(StepBatchRequest::new("held", steps(1..5, "echo", 10_000)))
        .await
        .unwrap();
    assert_eq!(delivered(&peer).len(), 2);
    // A submit waiting for room in the full queue.
    let waiting = {
        let executor = std::sync::Arc::clone(&executor);
        tokio::spawn(async move {
            executor
                .submit(StepBatchRequest::new(
                    "waits",
                    steps(10..11, "echo", 10_000),
                ))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());

    executor.inject_fault();
    let results = tokio::time::timeout(LONG, handle.collect()).await.unwrap();
    assert_eq!(results.len(), 4, "every step gets its one final result");
    for result in &results {
        assert_eq!(result.status, StepStatus::Cancelled);
        assert_eq!(
            result.error.as_ref().unwrap().error_type,
            error_types::EXECUTOR_STOPPED
        );
        assert!(result.is_retryable());
    }
    let waited = tokio::time::timeout(LONG, waiting).await.unwrap().unwrap();
    assert!(matches!(waited, Err(ExecutorError::ShutDown)), "{waited:?}");
    let later = tokio::time::timeout(
        LONG,
        executor.submit(StepBatchRequest::new(
            "later",
            steps(20..21, "echo", 10_000),
        )),
    )
    .await
    .unwrap();
    assert!(matches!(later, Err(ExecutorError::ShutDown)), "{later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_worker_loses_only_the_steps_it_received_the_rest_go_elsewhere() {
    let executor = start(&config());
    let leaver = RawPeer::connect(executor.endpoint());
    leaver.hello("leaver", &["echo"], 4);
    let handle = executor
        .submit(StepBatchRequest::new("left", steps(1..5, "echo", 10_000)))
        .await
        .unwrap();
    let sent = delivered(&leaver);
    assert_eq!(sent.len(), 4);
    let orchestrator_id = leaver.orchestrator_id.borrow().clone();
    // It says it received (and still runs) steps 1 and 2; 3 and 4 were on
    // their way when it left.
    leaver.send(&WorkerMessage::Drain(WorkerDrain::default()));
    leaver.send(&WorkerMessage::Goodbye(Goodbye {
        reason: "stopping".into(),
        unanswered: sent[..2]
            .iter()
            .map(|s| HeldStep {
                step_id: s.step_id,
                attempt: 1,
                orchestrator_id: orchestrator_id.clone(),
            })
            .collect(),
    }));
    let stayer = RawPeer::connect(executor.endpoint());
    stayer.hello("stayer", &["echo"], 4);
    the_same_attempts_arrive(&stayer, &sent[2..], json!("again"), "stayer");
    let results = handle.collect().await;
    for lost in &results[..2] {
        assert_eq!(
            lost.error.as_ref().unwrap().error_type,
            error_types::WORKER_LOST
        );
    }
    for ok in &results[2..] {
        assert_eq!(ok.output, Some(json!("again")));
    }
    assert_eq!(executor.metrics().redelivered, 2);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_sent_on_a_new_connection_before_its_hello_count_once_it_takes_over() {
    // ZeroMQ re-established the worker's connection underneath it (a new
    // routing id): the worker sends results before it learns it must say
    // hello again.
    let executor = start(&config());
    let (old, held, orchestrator_id, handle) = holding(&executor, "renewed", 3).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let new = RawPeer::connect(executor.endpoint());
    *new.orchestrator_id.borrow_mut() = orchestrator_id.clone();
    new.respond(
        held[..2]
            .iter()
            .map(|s| completed(s, json!("early"), "renewed"))
            .collect(),
    );
    assert_eq!(protocol_error(&new).code, ProtocolErrorCode::UnknownWorker);
    take_over(
        &new,
        "renewed",
        3,
        &held[2..],
        &orchestrator_id,
        json!("late"),
    );
    let results = handle.collect().await;
    let outputs: Vec<_> = results.iter().map(|r| r.output.clone()).collect();
    assert_eq!(
        outputs,
        vec![
            Some(json!("early")),
            Some(json!("early")),
            Some(json!("late"))
        ]
    );
    let m = executor.metrics();
    assert_eq!(
        (m.worker_lost, m.redelivered, m.dispatched),
        (0, 0, 3),
        "none ran twice"
    );
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_before_a_hello_are_kept_once_per_attempt_and_within_four_messages_of_bytes() {
    // A peer that knows steps in flight could otherwise park thousands of
    // results of the largest size for the hello it never sends.
    let executor = start(&TaskerConfig {
        max_message_bytes: 16 * 1024,
        ..config()
    });
    let (old, held, orchestrator_id, handle) = holding(&executor, "renewed", 10).await;
    drop(old);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let new = RawPeer::connect(executor.endpoint());
    *new.orchestrator_id.borrow_mut() = orchestrator_id.clone();
    // About 15 KB each: four fit in four times 16 KiB, the other six not.
    let big = |i: usize| json!(format!("{i}").repeat(15_000));
    for (i, step) in held.iter().enumerate() {
        new.respond(vec![completed(step, big(i), "renewed")]);
    }
    // A second answer to a kept attempt, small enough to fit.
    new.respond(vec![completed(&held[0], json!("again"), "renewed")]);
    for _ in 0..11 {
        assert_eq!(protocol_error(&new).code, ProtocolErrorCode::UnknownWorker);
    }
    wait_until("six refused for bytes and one as a second answer", || {
        executor.metrics().unheld_results_dropped == 7
    })
    .await;

    take_over(
        &new,
        "renewed",
        10,
        &held[4..],
        &orchestrator_id,
        json!("resent"),
    );
    let results = handle.collect().await;
    let outputs: Vec<_> = results.iter().map(|r| r.output.clone().unwrap()).collect();
    let expected: Vec<_> = (0..10)
        .map(|i| if i < 4 { big(i) } else { json!("resent") })
        .collect();
    assert_eq!(
        outputs, expected,
        "the first answer of each kept attempt counts"
    );
    let m = executor.metrics();
    assert_eq!(
        (
            m.worker_lost,
            m.redelivered,
            m.dispatched,
            m.unheld_results_dropped
        ),
        (0, 0, 10, 7),
        "none ran twice"
    );
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h14_an_endpoint_in_use_or_unbindable_is_refused_saying_why() {
    // A second executor on one ipc:// path started without a word and took
    // every new connection from the first (libzmq unlinks and binds anew).
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("ipc://{}", dir.path().join("tasker.sock").display());
    let config = TaskerConfig {
        endpoint: endpoint.clone(),
        ..TaskerConfig::default()
    };
    let first = ZmqPubSubExecutor::start(&config).unwrap();
    match ZmqPubSubExecutor::start(&config) {
        Err(ExecutorError::Bind { source, .. }) => assert_eq!(source, zmq::Error::EADDRINUSE),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a second executor bound {endpoint}"),
    }
    first.shutdown(Duration::from_secs(1)).await;
    // The file a stopped executor leaves is free to take.
    let again = ZmqPubSubExecutor::start(&config).expect("the path is free again");
    again.shutdown(Duration::from_secs(1)).await;

    // libzmq read `localhost` as a network interface and said only "No such device".
    let named = TaskerConfig {
        endpoint: "tcp://localhost:0".into(),
        ..TaskerConfig::default()
    };
    let error = ZmqPubSubExecutor::start(&named).err().expect("refused");
    let text = error.to_string();
    assert!(
        text.contains("not a host name") && text.contains("127.0.0.1"),
        "{text}"
    );

    // An invalid configuration is a ConfigError, not a string.
    let invalid = TaskerConfig {
        heartbeat_interval_ms: 0,
        ..TaskerConfig::default()
    };
    let error = ZmqPubSubExecutor::start(&invalid).err().expect("refused");
    assert!(matches!(error, ExecutorError::Config(_)), "{error:?}");
}

/// A peer that floods malformed messages is not read for a while (its
/// messages dropped unparsed): parsing them used the one I/O thread whole,
/// heartbeats stopped and the workers, judged silent, kept reconnecting.
/// Other peers are read as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h15_a_peer_flooding_malformed_messages_is_dropped_unread_and_the_others_are_served() {
    let executor = start(&config());
    let flood = RawPeer::connect(executor.endpoint());
    let header = PROTOCOL_HEADER.as_bytes().to_vec();
    let deep = format!(
        r#"{{"type":"heartbeat","x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    for _ in 0..400 {
        flood.send_raw(vec![header.clone(), deep.clone().into_bytes()]);
    }
    // Answered until quarantined, then nothing.
    let mut answered = 0;
    while flood.recv(Duration::from_millis(500)).is_some() {
        answered += 1;
    }
    assert!(
        (1..400).contains(&answered),
        "{answered} of 400 malformed messages answered"
    );
    flood.send_raw(vec![header.clone(), br#"{"type":"heartbeat"}"#.to_vec()]);
    assert_eq!(
        flood.recv(Duration::from_millis(500)),
        None,
        "the flooding peer is not read"
    );
    // Each of its messages is counted, those dropped unread too.
    let deadline = Instant::now() + LONG;
    while executor.metrics().malformed_messages < 401 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(executor.metrics().malformed_messages, 401);
    let other = RawPeer::connect(executor.endpoint());
    other.send_raw(vec![header.clone(), br#"{"type":"heartbeat"}"#.to_vec()]);
    match other.recv(LONG) {
        Some(OrchestratorMessage::ProtocolError(e)) => {
            assert_eq!(e.code, ProtocolErrorCode::UnknownWorker)
        }
        reply => panic!("another peer is read as before: {reply:?}"),
    }
    let worker = RawPeer::connect(executor.endpoint());
    worker.hello("calm", &["echo"], 1);
    executor.shutdown(LONG).await;
}

/// Waits until the admission has room for exactly `n` steps of `slow`
/// (the I/O thread tells it within a heartbeat or so).
async fn room_for(admission: &tasker_orchestrator::Admission, n: usize) {
    let deadline = Instant::now() + LONG;
    loop {
        let permits: Vec<_> = (0..4).filter_map(|_| admission.try_admit("slow")).collect();
        if permits.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "room for {} steps, not {n}",
            permits.len()
        );
        drop(permits);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A slot held by a step that timed out where it still runs is no room for
/// a durable caller's admission: counted as room, steps queued behind a
/// hung handler until they too timed out without having run. Its late
/// result frees the slot, and the room comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h16_a_slot_held_by_a_timed_out_step_is_no_room_until_its_result_comes() {
    let executor = start(&config());
    let admission = executor.admission().clone();
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("hung", &["slow"], 1);
    room_for(&admission, 2).await;
    let handle = executor
        .submit(StepBatchRequest::new("hangs", steps(1..2, "slow", 200)))
        .await
        .unwrap();
    let held = delivered(&peer);
    let results = handle.collect().await;
    assert_eq!(results[0].status, StepStatus::TimedOut);
    room_for(&admission, 0).await;
    peer.respond(vec![completed(&held[0], json!("late"), "hung")]);
    room_for(&admission, 2).await;
    executor.shutdown(LONG).await;
}

/// A peer that declared a vast capacity, took steps and never answered was
/// sent every retry of what timed out there: of 298 tasks of a burst, 167
/// failed after three attempts at it while honest workers were busy. After
/// three steps time out at a connection with no result from it in between,
/// it is sent nothing until a result comes from it (a late one will do);
/// then it is sent steps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h17_a_peer_that_lets_steps_time_out_unanswered_is_sent_nothing_until_it_answers() {
    let executor = start(&config());
    let silent = RawPeer::connect(executor.endpoint());
    silent.hello("silent", &["slow"], 1_000);
    let first = executor
        .submit(StepBatchRequest::new("a", steps(1..4, "slow", 200)))
        .await
        .unwrap();
    let held = delivered(&silent);
    assert_eq!(held.len(), 3);
    assert!(first
        .collect()
        .await
        .iter()
        .all(|r| r.status == StepStatus::TimedOut));

    // Six steps, room for four at the honest worker: the other two wait
    // for it rather than go to the peer that answers nothing.
    let honest = RawPeer::connect(executor.endpoint());
    honest.hello("honest", &["slow"], 4);
    let second = executor
        .submit(StepBatchRequest::new("b", steps(4..10, "slow", 10_000)))
        .await
        .unwrap();
    answer_until(&honest, "honest", 0, 6);
    assert!(
        second
            .collect()
            .await
            .iter()
            .all(|r| r.status == StepStatus::Completed && r.metadata.worker_id == "honest"),
        "every step ran at the honest worker"
    );
    match silent.recv_skipping_heartbeats(Duration::from_millis(300)) {
        None => {}
        Some(message) => panic!("the silent peer was sent {message:?}"),
    }

    // Its late result comes: it is sent steps again.
    silent.respond(vec![completed(&held[0], json!("late"), "silent")]);
    std::thread::sleep(Duration::from_millis(100));
    let third = executor
        .submit(StepBatchRequest::new("c", steps(10..16, "slow", 10_000)))
        .await
        .unwrap();
    let to_silent = answer_until(&silent, "silent", 0, 1);
    answer_until(&honest, "honest", to_silent, 6);
    assert_eq!(third.collect().await.len(), 6);
    executor.shutdown(LONG).await;
}

/// Completes what `peer` is delivered until `answered` reaches `n` (or
/// more); how many that made.
fn answer_until(peer: &RawPeer, worker_id: &str, mut answered: usize, n: usize) -> usize {
    while answered < n {
        let steps = delivered(peer);
        answered += steps.len();
        peer.respond(
            steps
                .iter()
                .map(|s| completed(s, json!("done"), worker_id))
                .collect(),
        );
    }
    answered
}

/// A first hello's steps of this orchestrator take slots, known or not
/// (SPEC §6.6 rule 1): 300 peers listing 5,000 invented ones each made the
/// in-flight gauge read 1.5 million with two steps out. The load's figure
/// counts only steps this orchestrator sent and has not seen end; the
/// worker's own report shows the slots its hello took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h18_steps_a_hello_invents_take_its_slots_but_are_not_counted_in_flight() {
    let executor = start(&config());
    let first = RawPeer::connect(executor.endpoint());
    let ours = first.hello("first", &["echo"], 4).orchestrator_id;
    let handle = executor
        .submit(StepBatchRequest::new("a", steps(1..2, "echo", 10_000)))
        .await
        .unwrap();
    let sent = delivered(&first);
    let inventor = RawPeer::connect(executor.endpoint());
    let mut hello = WorkerHello::new("inventor", vec!["echo".into()], 100);
    hello.in_progress = (1_000..1_050)
        .map(|step_id| HeldStep {
            step_id,
            attempt: 1,
            orchestrator_id: ours.clone(),
        })
        .collect();
    inventor.send_hello(hello);
    let load = executor.load().await;
    assert_eq!(load.in_flight, 1, "the one step sent");
    let inventor_held = load
        .workers
        .iter()
        .find(|w| &*w.worker_id == "inventor")
        .map(|w| w.in_flight);
    assert_eq!(inventor_held, Some(50), "its slots are taken all the same");
    first.respond(vec![completed(&sent[0], json!(1), "first")]);
    handle.collect().await;
    assert_eq!(executor.load().await.in_flight, 0);
    executor.shutdown(LONG).await;
}

/// A connection found silent at a heartbeat tick made the I/O thread read
/// until its input paused for 20 ms, for up to a heartbeat interval, before
/// judging it. With another peer sending every few milliseconds that was the
/// whole interval, and nothing was dispatched meanwhile: peers that said
/// hello and went silent, one expiring at each tick, held an honest worker's
/// every step for up to a second (hellos of 400 KB at 105 a second made
/// tasks 50–100 times slower).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h19_peers_going_silent_beside_a_busy_one_do_not_hold_up_dispatch() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // Expiry 3 s, and a catch-up could last a whole second.
    let config = TaskerConfig {
        heartbeat_interval_ms: 1_000,
        ..config()
    };
    let executor = start(&config);
    let endpoint = executor.endpoint().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (endpoint, stop) = (endpoint.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let peer = RawPeer::connect(&endpoint);
            peer.hello("busy", &["other"], 1);
            while !stop.load(Ordering::Relaxed) {
                peer.send(&WorkerMessage::Heartbeat(Default::default()));
                while peer.recv(Duration::ZERO).is_some() {}
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let ghosts = {
        let (endpoint, stop) = (endpoint.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            // Kept open and never answering: each is declared dead at expiry.
            let mut silent = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let peer = RawPeer::connect(&endpoint);
                peer.hello(&format!("ghost-{}", silent.len()), &["other"], 1);
                silent.push(peer);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let honest = {
        let (endpoint, stop) = (endpoint.clone(), Arc::clone(&stop));
        std::thread::spawn(move || {
            let peer = RawPeer::connect(&endpoint);
            peer.hello("honest", &["echo"], 4);
            while !stop.load(Ordering::Relaxed) {
                if let Some(OrchestratorMessage::StepBatchRequest(batch)) =
                    peer.recv_skipping_heartbeats(Duration::from_millis(50))
                {
                    let results = batch
                        .steps
                        .iter()
                        .map(|s| completed(s, json!("done"), "honest"))
                        .collect();
                    peer.respond(results);
                }
            }
        })
    };
    // The first ghosts expire from about 3 s on, one or more at every
    // tick: steps one after another through three ticks of that.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(4);
    for id in 1.. {
        if Instant::now() > until {
            break;
        }
        let started = Instant::now();
        let handle = executor
            .submit(StepBatchRequest::new(
                format!("b{id}"),
                steps(id..id + 1, "echo", 10_000),
            ))
            .await
            .unwrap();
        let results = handle.collect().await;
        assert_eq!(results[0].status, StepStatus::Completed);
        slowest = slowest.max(started.elapsed());
    }
    let lost = executor.metrics().workers_lost;
    stop.store(true, Ordering::Relaxed);
    for thread in [busy, ghosts, honest] {
        thread.join().unwrap();
    }
    assert!(lost >= 3, "ghosts were declared dead meanwhile ({lost})");
    // Each step waited a whole catch-up (about a second) before.
    assert!(
        slowest < Duration::from_millis(400),
        "a step took {slowest:?} with peers going silent"
    );
    executor.shutdown(LONG).await;
}
