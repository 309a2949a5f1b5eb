//! After a restart under the same `orchestrator_id` (a store keeps it),
//! steps the earlier run dispatched get exactly one final result: the
//! holding worker's, if it names the step in its hello or answers it,
//! otherwise `WorkerLost` once the grace period ends. Over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::*;

const LONG: Duration = Duration::from_secs(10);
const KEPT_ID: &str = "0123456789abcdef0123456789abcdef";

fn restarted() -> ZmqPubSubExecutor {
    ZmqPubSubExecutor::start_as(&config(), KEPT_ID).expect("orchestrator starts")
}

/// Step `id` as the earlier run dispatched it: attempt 2.
fn dispatched_before(id: i64) -> StepExecutionRequest {
    let mut step = StepExecutionRequest::new(id, 1, format!("step-{id}"), "echo", 10_000);
    step.metadata.attempt = 2;
    step
}

fn held(id: i64, orchestrator_id: &str) -> HeldStep {
    HeldStep {
        step_id: id,
        attempt: 2,
        orchestrator_id: orchestrator_id.into(),
    }
}

fn result(id: i64) -> StepExecutionResult {
    let step = StepRef {
        step_id: id,
        attempt: 2,
    };
    StepExecutionResult::completed(step, json!({ "answered": id }), "survivor", 5)
}

/// Results before a hello are answered "say hello" (and kept, if ours).
fn expect_unknown_worker(peer: &RawPeer) {
    match peer.recv_skipping_heartbeats(Duration::from_secs(3)) {
        Some(OrchestratorMessage::ProtocolError(e)) => {
            assert_eq!(e.code, ProtocolErrorCode::UnknownWorker)
        }
        other => panic!("expected unknown_worker, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r1_a_worker_that_names_a_step_in_its_hello_gives_its_one_result() {
    let executor = restarted();
    let handle = executor
        .resume(
            StepBatchRequest::new("resumed", vec![dispatched_before(41)]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let peer = RawPeer::connect(executor.endpoint());
    let mut hello = WorkerHello::new("survivor", vec!["echo".into()], 4);
    hello.in_progress = vec![held(41, KEPT_ID)];
    let welcome = peer.send_hello(hello);
    assert_eq!(
        welcome.orchestrator_id, KEPT_ID,
        "the id survives the restart"
    );
    peer.respond(vec![result(41)]);
    // Answered twice: the second is a duplicate and changes nothing.
    peer.respond(vec![result(41)]);
    let results = handle.collect().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].status, StepStatus::Completed);
    assert_eq!(results[0].output, Some(json!({ "answered": 41 })));
    let metrics = executor.metrics();
    assert_eq!(metrics.reclaimed, 1);
    // Nothing was sent again: the step ran once.
    assert_eq!(metrics.dispatched, 0);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_a_result_sent_before_the_hello_is_taken_once_the_hello_comes() {
    let executor = restarted();
    let handle = executor
        .resume(
            StepBatchRequest::new("resumed", vec![dispatched_before(42)]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let peer = RawPeer::connect(executor.endpoint());
    *peer.orchestrator_id.borrow_mut() = KEPT_ID.into();
    // A worker whose socket reconnected underneath it sends what it had;
    // the result is credited to the worker_id its hello registers, whatever
    // the result names.
    let mut sent = result(42);
    sent.metadata.worker_id = "someone-else".into();
    peer.respond(vec![sent]);
    expect_unknown_worker(&peer);
    peer.hello("survivor", &["echo"], 4);
    let results = handle.collect().await;
    assert_eq!(results[0].status, StepStatus::Completed);
    assert_eq!(results[0].metadata.worker_id, "survivor");
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_a_step_nobody_reclaims_ends_worker_lost_after_the_grace_period_only() {
    let executor = restarted();
    let grace = Duration::from_millis(800);
    let started = Instant::now();
    let mut handle = executor
        .resume(
            StepBatchRequest::new("resumed", vec![dispatched_before(43)]),
            grace,
        )
        .await
        .unwrap();
    // A worker that holds other things is no claim on this step.
    let peer = RawPeer::connect(executor.endpoint());
    let mut hello = WorkerHello::new("other", vec!["echo".into()], 4);
    hello.in_progress = vec![held(99, KEPT_ID)];
    peer.send_hello(hello);
    let lost = handle.next().await.unwrap();
    assert!(started.elapsed() >= grace, "not before the grace period");
    assert_eq!(lost.status, StepStatus::Failed);
    let error = lost.error.unwrap();
    assert_eq!(error.error_type, error_types::WORKER_LOST);
    assert!(error.retryable, "a new attempt may run");
    executor.shutdown(LONG).await;
}

/// A clean stop is no verdict on a step no worker has reclaimed yet: when
/// its grace ends during the stop it is abandoned (a store keeps it
/// running, for the next start to wait for its worker again), not lost,
/// which would cost an attempt whose worker may still hold its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3b_a_stop_within_the_grace_leaves_an_unreclaimed_step_to_the_next_start() {
    let executor = restarted();
    let grace = Duration::from_millis(800);
    let started = Instant::now();
    let mut handle = executor
        .resume(
            StepBatchRequest::new("resumed", vec![dispatched_before(45)]),
            grace,
        )
        .await
        .unwrap();
    let report = executor.shutdown(LONG).await;
    let ended = handle.next().await.unwrap();
    assert_eq!(ended.status, StepStatus::Cancelled, "{ended:?}");
    assert_eq!(ended.error.unwrap().error_type, error_types::ABANDONED);
    assert_eq!(
        report.abandoned,
        vec![StepRef {
            step_id: 45,
            attempt: 2
        }]
    );
    assert!(started.elapsed() >= grace, "its worker had the grace");
    assert!(
        started.elapsed() < LONG / 2,
        "the stop ends with the grace: {:?}",
        started.elapsed()
    );
    assert_eq!(executor.metrics().worker_lost, 0);
}

/// The same for a task suspended by a stop before the executor's own
/// shutdown begins (`tasker serve` suspends its tasks first, and waits for
/// their steps): its unreclaimed step is abandoned at the grace's end, and
/// a result that comes within the grace is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3c_a_suspended_tasks_unreclaimed_step_is_abandoned_not_lost() {
    let executor = restarted();
    let grace = Duration::from_millis(800);
    let mut handle = executor
        .resume(
            StepBatchRequest::new(
                "resumed",
                vec![dispatched_before(46), dispatched_before(47)],
            ),
            grace,
        )
        .await
        .unwrap();
    executor.suspend(vec![
        StepRef {
            step_id: 46,
            attempt: 2,
        },
        StepRef {
            step_id: 47,
            attempt: 2,
        },
    ]);
    let peer = RawPeer::connect(executor.endpoint());
    let mut hello = WorkerHello::new("survivor", vec!["echo".into()], 4);
    hello.in_progress = vec![held(47, KEPT_ID)];
    peer.send_hello(hello);
    peer.respond(vec![result(47)]);
    let mut ended = [handle.next().await.unwrap(), handle.next().await.unwrap()];
    ended.sort_by_key(|r| r.step_id);
    assert_eq!(ended[0].status, StepStatus::Cancelled, "{:?}", ended[0]);
    assert_eq!(
        ended[0].error.as_ref().unwrap().error_type,
        error_types::ABANDONED
    );
    assert_eq!(ended[1].status, StepStatus::Completed, "{:?}", ended[1]);
    assert_eq!(executor.metrics().worker_lost, 0);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_a_result_tagged_with_another_orchestrator_is_not_the_same_dispatch() {
    let executor = restarted();
    let mut handle = executor
        .resume(
            StepBatchRequest::new("resumed", vec![dispatched_before(44)]),
            Duration::from_millis(800),
        )
        .await
        .unwrap();
    // Same step id and attempt, but from a run that never had this id:
    // before the hello and after it.
    let peer = RawPeer::connect(executor.endpoint());
    *peer.orchestrator_id.borrow_mut() = "ffffffffffffffffffffffffffffffff".into();
    peer.respond(vec![result(44)]);
    expect_unknown_worker(&peer);
    let mut hello = WorkerHello::new("stranger", vec!["echo".into()], 4);
    hello.in_progress = vec![held(44, "ffffffffffffffffffffffffffffffff")];
    peer.send_hello(hello);
    *peer.orchestrator_id.borrow_mut() = "ffffffffffffffffffffffffffffffff".into();
    peer.respond(vec![result(44)]);
    let lost = handle.next().await.unwrap();
    assert_eq!(lost.status, StepStatus::Failed);
    assert_eq!(lost.error.unwrap().error_type, error_types::WORKER_LOST);
    assert_eq!(executor.metrics().foreign_results_dropped, 2);
    assert_eq!(executor.metrics().reclaimed, 0);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r5_a_result_for_a_step_the_hello_did_not_name_is_its_one_result() {
    let executor = restarted();
    let handle = executor
        .resume(
            StepBatchRequest::new("resumed", vec![dispatched_before(45)]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    // A worker whose hello lists nothing it holds (an SDK that keeps no
    // list) answers the step afterwards: the ids say it is the same
    // dispatch, so its result ends the step, once.
    let peer = RawPeer::connect(executor.endpoint());
    let welcome = peer.hello("survivor", &["echo"], 4);
    assert_eq!(welcome.orchestrator_id, KEPT_ID);
    peer.respond(vec![result(45)]);
    peer.respond(vec![result(45)]);
    let results = handle.collect().await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].output, Some(json!({ "answered": 45 })));
    let metrics = executor.metrics();
    assert_eq!(metrics.reclaimed, 1);
    assert_eq!(metrics.dispatched, 0, "nothing was sent again");
    // The second answer changed nothing; counted once it has been read.
    let deadline = Instant::now() + Duration::from_secs(3);
    while executor.metrics().duplicate_results_dropped == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(executor.metrics().duplicate_results_dropped, 1);
    executor.shutdown(LONG).await;
}

/// Only a worker serving a step's handler can claim it after the restart,
/// as only one could have been sent it: a stranger serving another handler,
/// which knew the orchestrator id (any welcome says it) and the step id,
/// took the step with a forged result, by hello, before the hello or after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r6_a_step_is_reclaimed_only_by_a_worker_serving_its_handler() {
    let executor = restarted();
    let handle = executor
        .resume(
            StepBatchRequest::new(
                "resumed",
                vec![dispatched_before(46), dispatched_before(47)],
            ),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let forged = |id| {
        let mut result = result(id);
        result.output = Some(json!("FORGED"));
        result
    };
    // Before its hello: kept for the hello, then judged by what it serves.
    let stranger = RawPeer::connect(executor.endpoint());
    *stranger.orchestrator_id.borrow_mut() = KEPT_ID.into();
    stranger.respond(vec![forged(46)]);
    expect_unknown_worker(&stranger);
    let mut hello = WorkerHello::new("stranger", vec!["nothing_here".into()], 4);
    hello.in_progress = vec![held(47, KEPT_ID)];
    stranger.send_hello(hello);
    stranger.respond(vec![forged(46), forged(47)]);
    let deadline = Instant::now() + Duration::from_secs(3);
    while executor.metrics().unheld_results_dropped < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(executor.metrics().reclaimed, 0, "{:?}", executor.metrics());
    // The worker that held them comes back and answers.
    let peer = RawPeer::connect(executor.endpoint());
    peer.hello("survivor", &["echo"], 4);
    peer.respond(vec![result(46), result(47)]);
    let results = handle.collect().await;
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r.output, Some(json!({ "answered": r.step_id })));
        assert_eq!(r.metadata.worker_id, "survivor");
    }
    executor.shutdown(LONG).await;
}
