//! Per-handler limits (SPEC §4.2 `handler_limits`, §6.2): the orchestrator
//! never has more of a limited handler's steps out at a connection than its
//! limit, the worker's other handlers get the rest of its capacity, a bad
//! limit is refused like any bad hello, and the steps a worker lists on
//! reconnecting count against the limit (another orchestrator's, whose
//! handler is unknown, against every limit). Real sockets, a real Rust
//! worker.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tasker_orchestrator::{BatchHandle, ZmqPubSubExecutor};
use tasker_protocol::*;
use tasker_worker::{HandlerOptions, Worker};

const LONG: Duration = Duration::from_secs(10);

/// How many run at once, and the most that ever did.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Gauge {
    fn run(&self, how_long: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(how_long);
        self.now.fetch_sub(1, Ordering::SeqCst);
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

fn limits(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
    entries.iter().map(|(h, n)| (h.to_string(), *n)).collect()
}

/// Every step delivered to `peer` until it has been sent nothing for
/// `quiet`.
fn delivered_until_quiet(peer: &RawPeer, quiet: Duration) -> Vec<StepExecutionRequest> {
    let mut steps = Vec::new();
    while let Some(message) = peer.recv_skipping_heartbeats(quiet) {
        match message {
            OrchestratorMessage::StepBatchRequest(batch) => steps.extend(batch.steps),
            other => panic!("unexpected {other:?}"),
        }
    }
    steps
}

/// Submits steps `ids` of `handler` as a batch named after it, with a
/// timeout these tests never reach.
async fn submit(
    executor: &ZmqPubSubExecutor,
    handler: &str,
    ids: std::ops::Range<i64>,
) -> BatchHandle {
    executor
        .submit(StepBatchRequest::new(handler, steps(ids, handler, 20_000)))
        .await
        .unwrap()
}

fn completed(step: &StepExecutionRequest, worker_id: &str) -> StepExecutionResult {
    StepExecutionResult::completed(step.step_ref(), json!("ok"), worker_id, 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_handler_never_runs_above_its_limit_and_the_others_get_the_rest() {
    let executor = start(&config());
    let limited = Arc::new(Gauge::default());
    let free = Arc::new(Gauge::default());
    let (l, f) = (Arc::clone(&limited), Arc::clone(&free));
    let worker = Worker::new(worker_config(&executor))
        .capacity(8)
        .threads(8)
        .handler_with(
            "rate_limited",
            HandlerOptions::new().concurrency(2),
            move |_| {
                l.run(Duration::from_millis(100));
                Ok(json!("limited"))
            },
        )
        .handler("free", move |_| {
            f.run(Duration::from_millis(300));
            Ok(json!("free"))
        })
        .spawn()
        .unwrap();
    assert!(executor.wait_for_workers(1, LONG).await);
    let mut batch = steps(0..16, "rate_limited", 20_000);
    batch.extend(steps(100..124, "free", 20_000));
    let handle = executor
        .submit(StepBatchRequest::new("limits", batch))
        .await
        .unwrap();
    let results = handle.collect().await;
    assert_eq!(results.len(), 40);
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    assert_eq!(
        limited.most(),
        2,
        "a handler limited to 2 ran {} at once",
        limited.most()
    );
    // The other handler used the worker's remaining capacity: more than
    // half of it, though never the slots the limited handler held.
    assert!(
        (5..=6).contains(&free.most()),
        "the unlimited handler ran at most {} at once beside the limited one (capacity 8)",
        free.most()
    );
    worker.stop();
    worker.join(LONG);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_a_bad_limit_is_refused_and_a_limit_at_capacity_limits_nothing() {
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    for (bad, reason) in [
        (limits(&[("echo", 0)]), "at least 1"),
        (limits(&[("missing", 1)]), "not one of handlers"),
    ] {
        let mut hello = WorkerHello::new("picky", vec!["echo".into()], 4);
        hello.handler_limits = bad;
        peer.send(&WorkerMessage::Hello(hello));
        match peer.recv_skipping_heartbeats(Duration::from_secs(3)) {
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(e.code, ProtocolErrorCode::InvalidMessage);
                assert!(e.message.contains(reason), "{}", e.message);
            }
            other => panic!("expected invalid_message, got {other:?}"),
        }
    }
    assert!(
        executor.workers().await.is_empty(),
        "a refused hello registers nothing"
    );

    // A limit at the capacity or above is no limit: all 4 go at once.
    let mut hello = WorkerHello::new("picky", vec!["echo".into()], 4);
    hello.handler_limits = limits(&[("echo", 9)]);
    peer.send_hello(hello);
    let handle = executor
        .submit(StepBatchRequest::new("wide", steps(0..4, "echo", 10_000)))
        .await
        .unwrap();
    let held = delivered_until_quiet(&peer, Duration::from_millis(300));
    assert_eq!(held.len(), 4);
    peer.respond(held.iter().map(|s| completed(s, "picky")).collect());
    assert_eq!(handle.collect().await.len(), 4);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_steps_count_against_the_limit_after_a_reconnect_and_a_hello_again() {
    let executor = start(&config());
    let hello = |in_progress: Vec<HeldStep>| {
        let mut hello = WorkerHello::new("careful", vec!["slow".into(), "fast".into()], 6);
        hello.handler_limits = limits(&[("slow", 2)]);
        hello.in_progress = in_progress;
        hello
    };
    let old = RawPeer::connect(executor.endpoint());
    old.send_hello(hello(Vec::new()));
    let handle = submit(&executor, "slow", 0..6).await;
    let held = delivered_until_quiet(&old, Duration::from_millis(300));
    assert_eq!(held.len(), 2, "the limit holds on the first connection");
    let orchestrator_id = old.orchestrator_id.borrow().clone();
    let in_progress: Vec<HeldStep> = held
        .iter()
        .map(|s| HeldStep {
            step_id: s.step_id,
            attempt: 1,
            orchestrator_id: orchestrator_id.clone(),
        })
        .collect();

    // The worker reconnects: its hello lists the two steps it still runs.
    drop(old);
    let new = RawPeer::connect(executor.endpoint());
    let mut welcomed = false;
    for _ in 0..50 {
        new.send(&WorkerMessage::Hello(hello(in_progress.clone())));
        match new.recv_skipping_heartbeats(Duration::from_secs(3)) {
            Some(OrchestratorMessage::Welcome(w)) => {
                *new.orchestrator_id.borrow_mut() = w.orchestrator_id;
                welcomed = true;
                break;
            }
            Some(OrchestratorMessage::ProtocolError(e)) => {
                assert_eq!(e.code, ProtocolErrorCode::WorkerIdInUse);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(welcomed);
    // 4 slots are free, but both of `slow`'s are held: nothing goes out.
    let extra = delivered_until_quiet(&new, Duration::from_millis(500));
    assert!(
        extra.is_empty(),
        "the new connection was sent {} more steps of a handler at its limit",
        extra.len()
    );
    // Its other handler still gets the rest of the capacity.
    let other = submit(&executor, "fast", 100..110).await;
    let fast = delivered_until_quiet(&new, Duration::from_millis(300));
    assert_eq!(
        fast.len(),
        4,
        "the free slots went to the unlimited handler"
    );
    assert!(fast.iter().all(|s| s.handler_class == "fast"));
    new.respond(fast.iter().map(|s| completed(s, "careful")).collect());

    // A hello again on the same connection, listing the same two steps,
    // counts them once: still no room for `slow`.
    new.send(&WorkerMessage::Hello(hello(in_progress.clone())));
    let mut fast_later = Vec::new();
    loop {
        match new.recv_skipping_heartbeats(Duration::from_millis(500)) {
            Some(OrchestratorMessage::Welcome(_)) => {}
            Some(OrchestratorMessage::StepBatchRequest(batch)) => {
                fast_later.extend(batch.steps);
            }
            None => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        fast_later.iter().all(|s| s.handler_class == "fast"),
        "a step of `slow` went out while 2 were held"
    );
    new.respond(fast_later.iter().map(|s| completed(s, "careful")).collect());
    let mut fast_done = fast.len() + fast_later.len();

    // Each answer of `slow` frees one of its slots: the next goes out, and
    // never more than 2 are out.
    let mut slow_out = held.clone();
    let (mut slow_done, mut most_slow) = (0, 0);
    for _ in 0..100 {
        if slow_done == 6 && fast_done == 10 {
            break;
        }
        if !slow_out.is_empty() {
            let step = slow_out.remove(0);
            new.respond(vec![completed(&step, "careful")]);
            slow_done += 1;
        }
        for step in delivered_until_quiet(&new, Duration::from_millis(200)) {
            if step.handler_class == "slow" {
                slow_out.push(step);
            } else {
                new.respond(vec![completed(&step, "careful")]);
                fast_done += 1;
            }
        }
        most_slow = most_slow.max(slow_out.len());
        assert!(
            slow_out.len() <= 2,
            "{} steps of `slow` out with a limit of 2",
            slow_out.len()
        );
    }
    assert_eq!((slow_done, fast_done), (6, 10));
    assert_eq!(most_slow, 2, "a freed slot of `slow` was refilled");
    let results = handle.collect().await;
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    assert_eq!(other.collect().await.len(), 10);
    assert_eq!(executor.metrics().worker_lost, 0);
    executor.shutdown(LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_orchestrators_step_counts_against_every_limit_until_it_is_answered() {
    // A worker that ran a `slow` step for the orchestrator before a restart
    // lists it on connecting; the orchestrator cannot know its handler, so
    // it must not send `slow` more work than the limit of 1 allows.
    let executor = start(&config());
    let peer = RawPeer::connect(executor.endpoint());
    let earlier = HeldStep {
        step_id: 7,
        attempt: 1,
        orchestrator_id: "the-orchestrator-before-the-restart".into(),
    };
    let mut hello = WorkerHello::new("survivor", vec!["slow".into(), "fast".into()], 4);
    hello.handler_limits = limits(&[("slow", 1)]);
    hello.in_progress = vec![earlier.clone()];
    peer.send_hello(hello);

    let slow = submit(&executor, "slow", 0..3).await;
    let early = delivered_until_quiet(&peer, Duration::from_millis(500));
    assert!(
        early.is_empty(),
        "{} steps of `slow` (limit 1) went out while a step of unknown handler was held",
        early.len()
    );
    // The held step takes one slot of four; the unlimited handler gets
    // the other three.
    let fast = submit(&executor, "fast", 100..103).await;
    let fast_out = delivered_until_quiet(&peer, Duration::from_millis(300));
    assert_eq!(fast_out.len(), 3);
    assert!(fast_out.iter().all(|s| s.handler_class == "fast"));
    peer.respond(fast_out.iter().map(|s| completed(s, "survivor")).collect());
    assert_eq!(fast.collect().await.len(), 3);
    let still = delivered_until_quiet(&peer, Duration::from_millis(300));
    assert!(still.is_empty(), "free slots are not room for `slow`");

    // The earlier orchestrator's step is answered: `slow` has its one
    // slot, and never more than one step out.
    peer.send(&WorkerMessage::StepBatchResponse(StepBatchResponse::new(
        "late",
        earlier.orchestrator_id.clone(),
        vec![StepExecutionResult::completed(
            earlier.step_ref(),
            json!("done before the restart"),
            "survivor",
            1,
        )],
    )));
    let mut done = 0;
    while done < 3 {
        let out = delivered_until_quiet(&peer, Duration::from_millis(300));
        assert_eq!(
            out.len(),
            1,
            "steps of `slow` out at once with a limit of 1"
        );
        peer.respond(vec![completed(&out[0], "survivor")]);
        done += 1;
    }
    let results = slow.collect().await;
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r.status == StepStatus::Completed));
    executor.shutdown(LONG).await;
}
