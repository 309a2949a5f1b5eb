//! The executor's guarantees, each proved over real ZeroMQ sockets (tcp
//! loopback on ephemeral ports, and ipc). Process-level failures (kill -9,
//! SIGSTOP) are in the `tasker-cli` crate's tests, which run real worker
//! processes.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tasker_config::{SubmitPolicy, TaskerConfig};
use tasker_orchestrator::ExecutorError;
use tasker_protocol::*;
use tasker_worker::{HandlerError, Worker};

const LONG: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_each_step_runs_on_exactly_one_of_several_workers() {
    let executor = start(&config());
    let runs: Arc<Mutex<HashMap<StepId, Vec<String>>>> = Default::default();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let runs = Arc::clone(&runs);
            let id = format!("w{i}");
            let me = id.clone();
            Worker::new(worker_config(&executor))
                .worker_id(id)
                .capacity(4)
                .handler("record", move |step| {
                    runs.lock()
                        .unwrap()
                        .entry(step.step_id)
                        .or_default()
                        .push(me.clone());
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(json!(step.step_id))
                })
                .spawn()
                .unwrap()
        })
        .collect();
    assert!(executor.wait_for_workers(3, LONG).await);

    let results = executor
        .execute_step_batch(StepBatchRequest::new("b1", steps(0..300, "record", 10_000)))
        .await
        .unwrap();

    assert_eq!(results.len(), 300);
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 300, "every step ran");
    assert!(runs.values().all(|w| w.len() == 1), "no step ran twice");
    let mut per_worker: HashMap<&str, usize> = HashMap::new();
    for w in runs.values() {
        *per_worker.entry(w[0].as_str()).or_default() += 1;
    }
    assert_eq!(
        per_worker.len(),
        3,
        "all three workers shared the load: {per_worker:?}"
    );
    // The result names the worker that ran the step.
    for r in &results {
        assert_eq!(runs[&r.step_id][0], r.metadata.worker_id);
    }
    for w in workers {
        assert!(w.join(LONG));
    }
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_batch_submitted_before_any_worker_is_delivered_when_one_arrives() {
    let executor = start(&config());
    let handle = executor
        .submit(StepBatchRequest::new("early", steps(0..20, "echo", 10_000)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(executor.metrics().dispatched, 0);
    let worker = Worker::new(worker_config(&executor))
        .handler("echo", |step| Ok(json!(step.step_id)))
        .spawn()
        .unwrap();
    let results = handle.collect().await;
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.status, StepStatus::Completed);
        assert_eq!(r.output, Some(json!(i)));
    }
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_step_with_no_worker_for_its_handler_fails_at_its_timeout() {
    let executor = start(&config());
    let _worker = Worker::new(worker_config(&executor))
        .handler("echo", |_| Ok(json!(null)))
        .spawn()
        .unwrap();
    let started = Instant::now();
    let results = executor
        .execute_step_batch(StepBatchRequest::new(
            "orphan",
            steps(0..1, "nobody_serves_this", 300),
        ))
        .await
        .unwrap();
    let r = &results[0];
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, StepStatus::Failed);
    let error = r.error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::NO_WORKER_FOR_HANDLER);
    assert!(error.retryable);
    assert!(error.message.contains("nobody_serves_this"));
    assert!(!error.message.contains("did you mean"), "{}", error.message);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_a_handler_no_worker_serves_is_named_with_the_served_one_it_is_a_typo_of() {
    let executor = start(&config());
    let _worker = Worker::new(worker_config(&executor))
        .handler("rb_prepare", |_| Ok(json!(null)))
        .spawn()
        .unwrap();
    let results = executor
        .execute_step_batch(StepBatchRequest::new("typo", steps(0..1, "rb_prepar", 300)))
        .await
        .unwrap();
    let error = results[0].error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::NO_WORKER_FOR_HANDLER);
    assert!(
        error.message.ends_with("; did you mean \"rb_prepare\"?"),
        "{}",
        error.message
    );
    executor.shutdown(LONG).await;
}

/// The name that failed was suggested as its own correction when its only
/// workers were draining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_a_handler_served_only_by_draining_workers_is_said_to_be() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("leaving", &["rb_prepare"], 2);
    peer.send(&WorkerMessage::Drain(WorkerDrain::default()));
    let deadline = Instant::now() + LONG;
    while !executor.workers().await.iter().all(|w| w.draining) {
        assert!(Instant::now() < deadline, "the drain was never seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let results = executor
        .execute_step_batch(StepBatchRequest::new(
            "late",
            steps(0..1, "rb_prepare", 300),
        ))
        .await
        .unwrap();
    let error = results[0].error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::NO_WORKER_FOR_HANDLER);
    assert!(
        error
            .message
            .ends_with("; the workers serving it are draining or gone"),
        "{}",
        error.message
    );
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g2_a_withdrawn_step_still_queued_ends_cancelled_at_once_and_one_at_a_worker_runs_on() {
    let executor = start(&config());
    // One slot: step 1 goes to the worker, step 2 waits in the queue.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let _worker = Worker::new(TaskerConfig {
        worker_capacity: 1,
        ..worker_config(&executor)
    })
    .handler("slow", move |step| {
        let _ = started_tx.send(step.step_id);
        std::thread::sleep(Duration::from_millis(500));
        Ok(json!({ "ran": step.step_id }))
    })
    .spawn()
    .unwrap();
    let mut handle = executor
        .submit(StepBatchRequest::new(
            "cancelled-task",
            steps(1..3, "slow", 10_000),
        ))
        .await
        .unwrap();
    assert_eq!(started_rx.recv_timeout(LONG).unwrap(), 1);
    let withdrawn_at = Instant::now();
    // Step 2 (queued) and step 1 (at the worker) are both asked for, and a
    // step that is not in flight, and step 2 at an attempt it is not at.
    executor.withdraw(vec![
        StepRef {
            step_id: 2,
            attempt: 2,
        },
        StepRef {
            step_id: 1,
            attempt: 1,
        },
        StepRef {
            step_id: 2,
            attempt: 1,
        },
        StepRef {
            step_id: 99,
            attempt: 1,
        },
    ]);
    let first = handle.next().await.unwrap();
    assert_eq!(first.step_id, 2, "the queued step ends first: {first:?}");
    assert!(withdrawn_at.elapsed() < Duration::from_millis(400));
    assert_eq!(first.status, StepStatus::Cancelled);
    let error = first.error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::WITHDRAWN);
    assert!(error.retryable);
    let second = handle.next().await.unwrap();
    assert_eq!(second.step_id, 1);
    assert_eq!(second.status, StepStatus::Completed, "{second:?}");
    assert_eq!(second.output, Some(json!({ "ran": 1 })));
    assert!(handle.next().await.is_none(), "one result each");
    // The worker never saw step 2.
    assert!(started_rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert_eq!(executor.metrics().cancelled, 1);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_a_worker_never_holds_more_than_its_capacity() {
    let executor = start(&TaskerConfig {
        heartbeat_interval_ms: 1_000,
        ..config()
    });
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("tight", &["echo"], 3);
    let handle = executor
        .submit(StepBatchRequest::new("cap", steps(0..10, "echo", 10_000)))
        .await
        .unwrap();

    let mut held: Vec<StepExecutionRequest> = Vec::new();
    let mut answered = 0;
    let mut max_held = 0;
    while answered < 10 {
        while let Some(message) = peer.recv_skipping_heartbeats(Duration::from_millis(200)) {
            match message {
                OrchestratorMessage::StepBatchRequest(batch) => held.extend(batch.steps),
                other => panic!("unexpected {other:?}"),
            }
        }
        max_held = max_held.max(held.len());
        assert!(
            held.len() <= 3,
            "worker holds {} steps with capacity 3",
            held.len()
        );
        assert!(!held.is_empty(), "steps are waiting but none was delivered");
        // Answer one at a time: the orchestrator must refill, never overfill.
        let step = held.remove(0);
        let result = StepExecutionResult::completed(step.step_ref(), json!("ok"), "tight", 0);
        peer.respond(vec![result]);
        answered += 1;
    }
    assert_eq!(max_held, 3);
    let results = handle.collect().await;
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g3_the_orchestrator_queue_is_bounded_and_submit_pushes_back() {
    // Reject policy: a full queue refuses at once.
    let executor = start(&TaskerConfig {
        queue_bound: 5,
        submit_policy: SubmitPolicy::Reject,
        ..config()
    });
    let first = executor
        .submit(StepBatchRequest::new("a", steps(0..5, "echo", 10_000)))
        .await
        .unwrap();
    let err = executor
        .submit(StepBatchRequest::new("b", steps(5..6, "echo", 10_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecutorError::QueueFull {
                queued: 5,
                bound: 5,
                requested: 1
            }
        ),
        "{err}"
    );
    let err = executor
        .submit(StepBatchRequest::new("c", steps(10..16, "echo", 10_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecutorError::BatchTooLarge {
                requested: 6,
                bound: 5
            }
        ),
        "{err}"
    );
    let worker = Worker::new(worker_config(&executor))
        .handler("echo", |_| Ok(json!(1)))
        .spawn()
        .unwrap();
    assert_eq!(first.collect().await.len(), 5);
    // Room again once the steps ended.
    let again = executor
        .execute_step_batch(StepBatchRequest::new("d", steps(20..25, "echo", 10_000)))
        .await
        .unwrap();
    assert_eq!(again.len(), 5);
    worker.join(LONG);
    executor.shutdown(LONG).await;

    // Wait policy: submit waits until there is room.
    let executor = Arc::new(start(&TaskerConfig {
        queue_bound: 5,
        submit_policy: SubmitPolicy::Wait,
        ..config()
    }));
    let first = executor
        .submit(StepBatchRequest::new("a", steps(0..5, "echo", 10_000)))
        .await
        .unwrap();
    let waiting = {
        let executor = Arc::clone(&executor);
        tokio::spawn(async move {
            executor
                .submit(StepBatchRequest::new("b", steps(5..8, "echo", 10_000)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "submit must wait while the queue is full"
    );
    let worker = Worker::new(worker_config(&executor))
        .handler("echo", |_| Ok(json!(1)))
        .spawn()
        .unwrap();
    assert_eq!(first.collect().await.len(), 5);
    let second = waiting.await.unwrap().unwrap().collect().await;
    assert_eq!(second.len(), 3);
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_a_silent_worker_is_declared_dead_and_its_steps_fail_once_as_worker_lost() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("mute", &["echo"], 2);
    let handle = executor
        .submit(StepBatchRequest::new("lost", steps(0..2, "echo", 10_000)))
        .await
        .unwrap();
    // Take the steps, then go silent: no heartbeats, no results.
    let got = peer.recv(Duration::from_secs(2));
    assert!(
        matches!(got, Some(OrchestratorMessage::StepBatchRequest(_))),
        "{got:?}"
    );
    let started = Instant::now();
    let results = handle.collect().await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "declared dead too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(3),
        "declared dead too late: {waited:?}"
    );
    for r in &results {
        assert_eq!(r.status, StepStatus::Failed);
        let e = r.error.as_ref().unwrap();
        assert_eq!(e.error_type, error_types::WORKER_LOST);
        assert!(e.retryable);
    }
    let m = executor.metrics();
    assert_eq!(m.workers_lost, 1);
    assert_eq!(m.worker_lost, 2);
    assert_eq!(m.workers_connected, 0);
    // A late answer from the dead worker is discarded and counted.
    let late = StepExecutionResult::completed(results[0].step_ref(), json!(1), "mute", 0);
    peer.respond(vec![late]);
    // Skip the heartbeats sent while it was still registered.
    let reply = loop {
        match peer.recv(Duration::from_secs(2)) {
            Some(OrchestratorMessage::Heartbeat(_)) => continue,
            other => break other,
        }
    };
    match reply {
        Some(OrchestratorMessage::ProtocolError(e)) => {
            assert_eq!(e.code, ProtocolErrorCode::UnknownWorker)
        }
        other => panic!("expected unknown_worker, got {other:?}"),
    }
    assert_eq!(executor.metrics().late_results_dropped, 1);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_steps_given_back_by_a_draining_worker_are_redelivered_elsewhere() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("quitter", &["echo"], 5);
    let handle = executor
        .submit(StepBatchRequest::new("drain", steps(0..5, "echo", 10_000)))
        .await
        .unwrap();
    let returned = match peer.recv_skipping_heartbeats(Duration::from_secs(2)) {
        Some(OrchestratorMessage::StepBatchRequest(batch)) => {
            batch.steps.iter().map(|s| s.step_ref()).collect::<Vec<_>>()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(returned.len(), 5);
    let orchestrator_id = peer.orchestrator_id.borrow().clone();
    let returned = returned
        .into_iter()
        .map(|s| HeldStep {
            step_id: s.step_id,
            attempt: s.attempt,
            orchestrator_id: orchestrator_id.clone(),
        })
        .collect();
    peer.send(&WorkerMessage::Drain(WorkerDrain { returned }));
    let worker = Worker::new(worker_config(&executor))
        .worker_id("stayer")
        .handler("echo", |_| Ok(json!("second")))
        .spawn()
        .unwrap();
    let results = handle.collect().await;
    assert!(results
        .iter()
        .all(|r| r.status == StepStatus::Completed && r.metadata.worker_id == "stayer"));
    assert_eq!(executor.metrics().redelivered, 5);
    // The draining worker gets nothing new.
    assert!(peer
        .recv_skipping_heartbeats(Duration::from_millis(300))
        .is_none());
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_step_past_its_timeout_ends_timed_out_and_its_late_result_is_dropped() {
    let executor = start(&config());
    let worker = Worker::new(worker_config(&executor))
        .capacity(2)
        .handler("slow", |_| {
            std::thread::sleep(Duration::from_millis(700));
            Ok(json!("too late"))
        })
        .handler("fast", |_| Ok(json!("in time")))
        .spawn()
        .unwrap();
    assert!(executor.wait_for_workers(1, LONG).await);
    let mut batch = steps(0..1, "slow", 200);
    batch.extend(steps(1..2, "fast", 5_000));
    let started = Instant::now();
    let results = executor
        .execute_step_batch(StepBatchRequest::new("t", batch))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(650),
        "did not wait for the slow handler"
    );
    assert_eq!(results[0].status, StepStatus::TimedOut);
    assert_eq!(
        results[0].error.as_ref().unwrap().error_type,
        error_types::TIMED_OUT
    );
    // The result is the orchestrator's; its message names the worker that
    // held the step, which nothing else recorded does.
    assert_eq!(
        results[0].error.as_ref().unwrap().message,
        format!(
            "no result within timeout_ms = 200 from worker \"{}\"",
            worker.worker_id()
        )
    );
    assert!(results[0].is_retryable());
    assert_eq!(results[1].status, StepStatus::Completed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while executor.metrics().late_results_dropped == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = executor.metrics();
    assert_eq!(m.late_results_dropped, 1);
    assert_eq!(m.timed_out, 1);
    assert_eq!(m.completed, 1);
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_a_duplicate_result_is_dropped_and_counted() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("twice", &["echo"], 4);
    let mut handle = executor
        .submit(StepBatchRequest::new("dup", steps(7..8, "echo", 10_000)))
        .await
        .unwrap();
    let step = match peer.recv_skipping_heartbeats(Duration::from_secs(2)) {
        Some(OrchestratorMessage::StepBatchRequest(b)) => b.steps[0].clone(),
        other => panic!("{other:?}"),
    };
    let first = StepExecutionResult::completed(step.step_ref(), json!("first"), "twice", 1);
    let second = StepExecutionResult::completed(step.step_ref(), json!("second"), "twice", 1);
    let stranger = StepExecutionResult::completed(
        StepRef {
            step_id: 999,
            attempt: 1,
        },
        json!(0),
        "twice",
        1,
    );
    peer.respond(vec![first, second, stranger]);
    let result = handle.next().await.unwrap();
    assert_eq!(result.output, Some(json!("first")));
    assert!(handle.next().await.is_none(), "exactly one result per step");
    let deadline = Instant::now() + Duration::from_secs(2);
    while executor.metrics().duplicate_results_dropped < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(executor.metrics().duplicate_results_dropped, 2);
    assert_eq!(executor.metrics().completed, 1);
    executor.shutdown(LONG).await;
}

/// `collect` hands a batch's results back in the batch's step order,
/// whatever order and however many messages the worker answered in, and
/// with none of them lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g6_collect_returns_results_in_the_batch_order_whatever_order_they_came_in() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("shuffler", &["echo"], 10);
    let answer = |steps: &[StepExecutionRequest]| -> Vec<StepExecutionResult> {
        steps
            .iter()
            .map(|s| StepExecutionResult::completed(s.step_ref(), json!(s.step_id), "shuffler", 1))
            .collect()
    };
    let receive = || match peer.recv_skipping_heartbeats(Duration::from_secs(2)) {
        Some(OrchestratorMessage::StepBatchRequest(b)) => b.steps,
        other => panic!("expected steps, got {other:?}"),
    };
    let submit = |batch_id: &str, ids: std::ops::Range<StepId>| {
        executor.submit(StepBatchRequest::new(batch_id, steps(ids, "echo", 10_000)))
    };

    // In order, in one message.
    let handle = submit("in-order", 1..6).await.unwrap();
    peer.respond(answer(&receive()));
    let ids: Vec<StepId> = handle.collect().await.iter().map(|r| r.step_id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);

    // Backwards, over two messages.
    let handle = submit("shuffled", 11..17).await.unwrap();
    let mut results = answer(&receive());
    results.reverse();
    let later = results.split_off(2);
    peer.respond(results);
    peer.respond(later);
    let results = handle.collect().await;
    let ids: Vec<StepId> = results.iter().map(|r| r.step_id).collect();
    assert_eq!(ids, [11, 12, 13, 14, 15, 16]);
    assert!(results.iter().all(|r| r.output == Some(json!(r.step_id))));

    // Some taken one by one first: collect returns the rest, in order.
    let mut handle = submit("partly", 21..25).await.unwrap();
    let mut results = answer(&receive());
    results.swap(0, 3);
    peer.respond(results);
    let first = handle.next().await.unwrap().step_id;
    let rest: Vec<StepId> = handle.collect().await.iter().map(|r| r.step_id).collect();
    let expected: Vec<StepId> = (21..25).filter(|id| *id != first).collect();
    assert_eq!(rest, expected);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g7_garbage_gets_protocol_errors_and_never_disturbs_other_workers() {
    let executor = start(&TaskerConfig {
        max_message_bytes: 2_048,
        ..config()
    });
    let worker = Worker::new(worker_config(&executor))
        .handler("echo", |step| Ok(step.task_context.clone()))
        .spawn()
        .unwrap();
    assert!(executor.wait_for_workers(1, LONG).await);
    let handle = executor
        .submit(StepBatchRequest::new("calm", steps(0..50, "echo", 10_000)))
        .await
        .unwrap();

    let peer = RawPeer::connect(executor.endpoint());
    let header = PROTOCOL_HEADER.as_bytes().to_vec();
    let cases: Vec<(Vec<Vec<u8>>, ProtocolErrorCode)> = vec![
        (
            vec![b"just one frame".to_vec()],
            ProtocolErrorCode::MalformedFrames,
        ),
        (
            vec![header.clone(), b"{}".to_vec(), b"{}".to_vec()],
            ProtocolErrorCode::MalformedFrames,
        ),
        // Counted, not held: see `tasker_transport::MAX_FRAMES_KEPT`.
        (
            vec![Vec::new(); 100_000],
            ProtocolErrorCode::MalformedFrames,
        ),
        (
            vec![b"MDPW01".to_vec(), b"{}".to_vec()],
            ProtocolErrorCode::UnsupportedVersion,
        ),
        (
            vec![b"tasker/2.0".to_vec(), br#"{"type":"heartbeat"}"#.to_vec()],
            ProtocolErrorCode::UnsupportedVersion,
        ),
        (
            vec![header.clone(), b"\xff\xfe not json".to_vec()],
            ProtocolErrorCode::MalformedJson,
        ),
        (
            vec![header.clone(), br#"{"type":"partial_result"}"#.to_vec()],
            ProtocolErrorCode::UnknownMessageType,
        ),
        (
            vec![
                header.clone(),
                br#"{"type":"hello","capacity":"lots"}"#.to_vec(),
            ],
            ProtocolErrorCode::InvalidMessage,
        ),
        (
            vec![header.clone(), vec![b' '; 4_096]],
            ProtocolErrorCode::MessageTooLarge,
        ),
        (
            vec![header.clone(), br#"{"type":"heartbeat"}"#.to_vec()],
            ProtocolErrorCode::UnknownWorker,
        ),
    ];
    for (frames, expected) in &cases {
        peer.send_raw(frames.clone());
        match peer.recv(Duration::from_secs(2)) {
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(
                    e.code,
                    *expected,
                    "reply to {:?}: {}",
                    &frames[..frames.len().min(2)],
                    e.message
                );
                if *expected == ProtocolErrorCode::MalformedFrames {
                    assert!(
                        e.message.ends_with(&format!("got {}", frames.len())),
                        "{}",
                        e.message
                    );
                }
                assert!(!e.message.is_empty());
            }
            other => panic!(
                "expected a protocol error for {:?}, got {other:?}",
                &frames[..frames.len().min(2)]
            ),
        }
    }
    // A malformed protocol error is counted, never answered: the next
    // reply is the heartbeat's.
    for body in [
        &br#"{"type":"protocol_error","code":"lol","message":"x"}"#[..],
        br#"{"type":"protocol_error"}"#,
    ] {
        peer.send_raw(vec![header.clone(), body.to_vec()]);
    }
    peer.send_raw(vec![header.clone(), br#"{"type":"heartbeat"}"#.to_vec()]);
    match peer.recv(Duration::from_secs(2)) {
        Some(OrchestratorMessage::ProtocolError(e)) => {
            assert_eq!(e.code, ProtocolErrorCode::UnknownWorker, "{}", e.message)
        }
        other => panic!("expected the heartbeat's reply, got {other:?}"),
    }
    let results = handle.collect().await;
    assert_eq!(results.len(), 50);
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    let m = executor.metrics();
    assert_eq!(m.malformed_messages, 11);
    assert_eq!(m.workers_connected, 1);
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8_shutdown_waits_for_steps_in_flight_and_reports_what_it_abandoned() {
    let executor = start(&config());
    let worker = Worker::new(worker_config(&executor))
        .capacity(4)
        .handler("sleep", |step| {
            let ms = step.task_context["ms"].as_u64().unwrap();
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!(ms))
        })
        .spawn()
        .unwrap();
    assert!(executor.wait_for_workers(1, LONG).await);
    let batch: Vec<_> = steps(0..4, "sleep", 10_000)
        .into_iter()
        .map(|s| {
            let ms = if s.step_id < 2 { 100 } else { 3_000 };
            with_context(s, json!({ "ms": ms }))
        })
        .collect();
    let handle = executor
        .submit(StepBatchRequest::new("late", batch))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let started = Instant::now();
    let report = executor.shutdown(Duration::from_millis(600)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(
        report.abandoned,
        vec![
            StepRef {
                step_id: 2,
                attempt: 1
            },
            StepRef {
                step_id: 3,
                attempt: 1
            }
        ]
    );
    assert_eq!(report.finished_during_shutdown, 2);
    let results = handle.collect().await;
    assert_eq!(results[0].status, StepStatus::Completed);
    assert_eq!(results[1].status, StepStatus::Completed);
    assert_eq!(results[2].status, StepStatus::Cancelled);
    assert_eq!(
        results[3].error.as_ref().unwrap().error_type,
        error_types::ABANDONED
    );
    let err = executor
        .submit(StepBatchRequest::new("after", steps(10..11, "sleep", 100)))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecutorError::ShutDown));
    drop(worker);
}

/// A worker's DEALER has `ZMQ_IMMEDIATE` (SPEC §5 rule 1), and libzmq then
/// drops what the socket has not read when its connection closes. Closing
/// at once after the goodbyes lost the goodbye of a worker that reads
/// every 50 ms (a SPEC-only Python worker: 2 to 4 stops of 10); this one
/// reads every 20 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g8b_a_worker_that_reads_a_little_late_still_gets_the_shutdowns_goodbye() {
    for round in 0..3 {
        let executor = start(&config());
        let peer = RawPeer::connect_with(executor.endpoint(), |s| s.set_immediate(true).unwrap());
        peer.hello(&format!("slow-reader-{round}"), &["h"], 1);
        let reader = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                while let Ok(frames) = peer.socket.recv_multipart(zmq::DONTWAIT) {
                    if let Ok(OrchestratorMessage::Goodbye(goodbye)) =
                        codec::decode(&frames, usize::MAX)
                    {
                        return Some(goodbye.reason);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            None
        });
        let report = executor.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.workers_at_close, 1);
        let reason = tokio::task::spawn_blocking(move || reader.join().unwrap())
            .await
            .unwrap();
        assert_eq!(
            reason.as_deref(),
            Some("orchestrator shutting down"),
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipc_transport_carries_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let executor = start(&TaskerConfig {
        endpoint: format!("ipc://{}/tasker.sock", dir.path().display()),
        ..config()
    });
    let worker = Worker::new(worker_config(&executor))
        .async_handler("double", |step| async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(json!(step.task_context["n"].as_i64().unwrap() * 2))
        })
        .spawn()
        .unwrap();
    let batch: Vec<_> = steps(0..10, "double", 5_000)
        .into_iter()
        .map(|s| {
            let n = s.step_id;
            with_context(s, json!({ "n": n }))
        })
        .collect();
    let results = executor
        .execute_step_batch(StepBatchRequest::new("ipc", batch))
        .await
        .unwrap();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.output, Some(json!(i as i64 * 2)));
    }
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

/// A worker in the orchestrator's process may open its socket in the
/// executor's ZeroMQ context; the context must keep serving whichever side
/// is left when the other stops, and end with the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_the_executors_zmq_context_runs_steps_and_may_stop_first() {
    let executor = start(&config());
    let shared = Worker::new(worker_config(&executor))
        .zmq_context(executor.zmq_context().expect("running"))
        .handler("double", |step| {
            Ok(json!(step.task_context["n"].as_i64().unwrap() * 2))
        })
        .spawn()
        .unwrap();
    let batch = |range: std::ops::Range<i64>| {
        let steps = steps(range, "double", 5_000)
            .into_iter()
            .map(|s| {
                let n = s.step_id;
                with_context(s, json!({ "n": n }))
            })
            .collect();
        StepBatchRequest::new("shared", steps)
    };
    let results = executor.execute_step_batch(batch(0..20)).await.unwrap();
    let doubled: Vec<_> = results.iter().map(|r| r.output.clone()).collect();
    let expected: Vec<_> = (0..20).map(|n| Some(json!(n * 2))).collect();
    assert_eq!(doubled, expected);
    assert!(shared.join(LONG), "the sharing worker stops in time");

    // The worker's socket is gone from the context; the executor's still
    // serves a worker of its own context.
    let other = Worker::new(worker_config(&executor))
        .handler("double", |step| {
            Ok(json!(step.task_context["n"].as_i64().unwrap() * 2))
        })
        .spawn()
        .unwrap();
    let results = executor.execute_step_batch(batch(20..25)).await.unwrap();
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    assert!(other.join(LONG));
    let started = Instant::now();
    executor.shutdown(LONG).await;
    assert!(
        started.elapsed() < LONG,
        "the shutdown did not wait on the context"
    );
    assert!(
        executor.zmq_context().is_none(),
        "no context after the shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_in_the_executors_zmq_context_outlives_it_and_serves_the_next() {
    let cfg = config_on_a_fixed_port();
    let first = start(&cfg);
    let worker = Worker::new(cfg.clone())
        .zmq_context(first.zmq_context().expect("running"))
        .handler("echo", |_| Ok(json!("hi")))
        .spawn()
        .unwrap();
    let r = first
        .execute_step_batch(StepBatchRequest::new("one", steps(0..3, "echo", 5_000)))
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.status == StepStatus::Completed));
    let started = Instant::now();
    first.shutdown(LONG).await;
    assert!(
        started.elapsed() < LONG,
        "the shutdown did not wait on the worker"
    );
    drop(first);
    // The first executor's context lives on in the worker's socket, which
    // reconnects through it to the next orchestrator on the same port:
    // free when the shutdown returns, though no context ended.
    let port = cfg.endpoint.trim_start_matches("tcp://");
    drop(std::net::TcpListener::bind(port).expect("the port is free after the shutdown"));
    let second = start(&cfg);
    assert!(second.wait_for_workers(1, LONG).await, "worker came back");
    let r = second
        .execute_step_batch(StepBatchRequest::new("two", steps(3..6, "echo", 5_000)))
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.status == StepStatus::Completed));
    assert!(worker.join(LONG), "the worker stops in time");
    second.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_errors_keep_their_kind_and_retryability() {
    let executor = start(&config());
    let worker = Worker::new(worker_config(&executor))
        .handler("retry", |_| {
            Err(HandlerError::retryable("busy").with_type("GatewayBusy"))
        })
        .handler("fatal", |_| Err(HandlerError::permanent("bad card")))
        .handler("boom", |_| -> tasker_worker::HandlerResult {
            panic!("kaboom")
        })
        .spawn()
        .unwrap();
    let mut batch = steps(0..1, "retry", 5_000);
    batch.extend(steps(1..2, "fatal", 5_000));
    batch.extend(steps(2..3, "boom", 5_000));
    let r = executor
        .execute_step_batch(StepBatchRequest::new("e", batch))
        .await
        .unwrap();
    let e0 = r[0].error.as_ref().unwrap();
    assert_eq!(
        (e0.error_type.as_str(), e0.retryable, e0.message.as_str()),
        ("GatewayBusy", true, "busy")
    );
    let e1 = r[1].error.as_ref().unwrap();
    assert_eq!(
        (e1.error_type.as_str(), e1.retryable),
        ("PermanentError", false)
    );
    let e2 = r[2].error.as_ref().unwrap();
    assert_eq!(
        (e2.error_type.as_str(), e2.retryable),
        (error_types::PANIC, false)
    );
    assert!(e2.message.contains("kaboom"));
    assert!(r.iter().all(|r| r.status == StepStatus::Failed));
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reconnects_when_the_orchestrator_comes_back() {
    let cfg = config_on_a_fixed_port();
    let first = start(&cfg);
    let worker = Worker::new(cfg.clone())
        .handler("echo", |_| Ok(json!("hi")))
        .spawn()
        .unwrap();
    assert!(first.wait_for_workers(1, LONG).await);
    first.shutdown(LONG).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = start(&cfg);
    assert!(second.wait_for_workers(1, LONG).await, "worker came back");
    let r = second
        .execute_step_batch(StepBatchRequest::new("again", steps(0..3, "echo", 5_000)))
        .await
        .unwrap();
    assert!(r.iter().all(|r| r.status == StepStatus::Completed));
    worker.join(LONG);
    second.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_batches_are_refused_with_the_reason() {
    let executor = start(&config());
    let mut twice = steps(0..2, "echo", 100);
    twice[1].step_id = 0;
    let err = executor
        .submit(StepBatchRequest::new("x", twice))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");
    let err = executor
        .submit(StepBatchRequest::new("x", vec![]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no steps"), "{err}");
    let mut old = StepBatchRequest::new("x", steps(0..1, "echo", 100));
    old.protocol_version = "0.9".into();
    let err = executor.submit(old).await.unwrap_err();
    assert!(err.to_string().contains("0.9"), "{err}");
    let _held = executor
        .submit(StepBatchRequest::new("y", steps(5..6, "echo", 5_000)))
        .await
        .unwrap();
    let err = executor
        .submit(StepBatchRequest::new("z", steps(5..6, "echo", 5_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecutorError::DuplicateStep { step_id: 5 }),
        "{err}"
    );
    // `execute_step_batch` does not wait for the I/O thread's answer
    // before the results: a refusal must still come back as the error,
    // not as an empty list of results.
    let err = executor
        .execute_step_batch(StepBatchRequest::new("z", steps(5..6, "echo", 5_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ExecutorError::DuplicateStep { step_id: 5 }),
        "{err}"
    );
    // An attempt this executor ended may still run at a worker: sent again
    // as the same attempt, that run's late result answered it (or not, by
    // a race). A retry is a new attempt.
    let ended = executor
        .execute_step_batch(StepBatchRequest::new("t", steps(8..9, "echo", 100)))
        .await
        .unwrap();
    assert_eq!(ended[0].status, StepStatus::Failed, "{ended:?}"); // NoWorkerForHandler
    let err = executor
        .submit(StepBatchRequest::new("t2", steps(8..9, "echo", 100)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ExecutorError::AttemptEnded {
                step_id: 8,
                attempt: 1
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("resubmit it as attempt 2"),
        "{err}"
    );
    let mut retry = steps(8..9, "echo", 100);
    retry[0].metadata.attempt = 2;
    assert!(executor
        .submit(StepBatchRequest::new("t3", retry))
        .await
        .is_ok());
    executor.shutdown(Duration::ZERO).await;
    let err = executor
        .execute_step_batch(StepBatchRequest::new("late", steps(7..8, "echo", 100)))
        .await
        .unwrap_err();
    assert!(matches!(err, ExecutorError::ShutDown), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_and_results_fit_max_message_bytes_and_an_oversized_step_fails_for_good() {
    let config = TaskerConfig {
        max_message_bytes: 4_096,
        ..config()
    };
    let executor = start(&config);
    let worker = Worker::new(worker_config(&executor))
        .capacity(64)
        .threads(1)
        .handler("echo", |step| Ok(step.handler_config.clone()))
        .spawn()
        .unwrap();
    assert!(executor.wait_for_workers(1, Duration::from_secs(5)).await);
    // Twenty ~600-byte steps: one delivery would be ~14 KB, and so would
    // one response. Step 99 alone is larger than any message may be.
    let mut batch: Vec<StepExecutionRequest> = steps(0..20, "echo", 10_000)
        .into_iter()
        .map(|mut s| {
            s.handler_config = json!({ "pad": "p".repeat(500), "id": s.step_id });
            s
        })
        .collect();
    let mut huge = StepExecutionRequest::new(99, 1, "huge", "echo", 10_000);
    huge.handler_config = json!({ "pad": "h".repeat(6_000) });
    batch.push(huge);
    let results = executor
        .execute_step_batch(StepBatchRequest::new("big", batch))
        .await
        .unwrap();
    assert_eq!(results.len(), 21);
    for r in &results[..20] {
        assert_eq!(r.status, StepStatus::Completed, "{r:?}");
        assert_eq!(r.output.as_ref().unwrap()["id"], r.step_id);
    }
    let too_large = &results[20];
    assert_eq!(too_large.status, StepStatus::Failed);
    let error = too_large.error.as_ref().unwrap();
    assert_eq!(error.error_type, error_types::STEP_TOO_LARGE);
    assert!(!error.retryable);
    let metrics = executor.metrics();
    assert_eq!(metrics.dispatched, 20);
    assert_eq!(metrics.completed, 20);
    executor.shutdown(Duration::from_secs(2)).await;
    worker.join(Duration::from_secs(5));
}
