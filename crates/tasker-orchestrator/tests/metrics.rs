//! The Prometheus metrics, over a real orchestrator and a real Rust
//! worker: what `/metrics` shows is what the steps did, labels stay
//! bounded whatever workers send, and `metrics: false` turns the
//! per-handler recording off without touching the plain counters.

mod common;

use std::time::Duration;

use common::*;
use prometheus_client::registry::Registry;
use serde_json::json;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::{ProtocolErrorCode, StepBatchRequest, StepStatus, PROTOCOL_HEADER};
use tasker_worker::{HandlerError, Worker};

/// The executor's metrics in the Prometheus text format.
fn exposition(executor: &ZmqPubSubExecutor) -> String {
    let mut registry = Registry::with_prefix("tasker");
    executor.prometheus().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    text
}

/// The value of the sample `name` (labels as printed), if present.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn worker(executor: &ZmqPubSubExecutor) -> tasker_worker::RunningWorker {
    Worker::new(worker_config(executor))
        .handler("ok", |_| Ok(json!({ "ok": true })))
        .handler("declined", |_| {
            Err(HandlerError::permanent("card declined").with_type("CardDeclined"))
        })
        .handler("slow", |_| {
            std::thread::sleep(Duration::from_millis(1500));
            Ok(json!(null))
        })
        // A worker reporting a new error type for every step.
        .handler("chatty", |step| {
            Err(HandlerError::permanent("no").with_type(format!("Error{}", step.step_id)))
        })
        .spawn()
        .expect("worker starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_handlers_steps_by_outcome_and_refused_messages_by_code() {
    let executor = start(&config());
    let worker = worker(&executor);
    assert!(executor.wait_for_workers(1, Duration::from_secs(10)).await);

    let mut batch = steps(1..6, "ok", 10_000);
    batch.extend(steps(6..9, "declined", 10_000));
    batch.extend(steps(9..10, "slow", 300));
    let results = executor
        .execute_step_batch(StepBatchRequest::new("mixed", batch))
        .await
        .unwrap();
    let count = |status| results.iter().filter(|r| r.status == status).count();
    assert_eq!(
        (
            count(StepStatus::Completed),
            count(StepStatus::Failed),
            count(StepStatus::TimedOut)
        ),
        (5, 3, 1)
    );

    // A peer sending something that is not JSON gets a protocol error.
    let peer = RawPeer::connect(executor.endpoint());
    peer.send_raw(vec![
        PROTOCOL_HEADER.as_bytes().to_vec(),
        b"{not json".to_vec(),
    ]);
    assert!(
        peer.recv(Duration::from_secs(5)).is_some(),
        "a protocol error reply"
    );

    let text = exposition(&executor);
    let at = |name: &str| sample(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"));
    assert_eq!(at(r#"tasker_steps_completed_total{handler="ok"}"#), 5.0);
    assert_eq!(at(r#"tasker_steps_dispatched_total{handler="ok"}"#), 5.0);
    assert_eq!(
        at(r#"tasker_steps_failed_total{handler="declined",error_type="CardDeclined"}"#),
        3.0
    );
    assert_eq!(at(r#"tasker_steps_timed_out_total{handler="slow"}"#), 1.0);
    assert_eq!(
        at(r#"tasker_steps_worker_lost_total{handler="declined"}"#),
        0.0
    );
    // Run times come from the workers' results: the timed-out step has none.
    assert_eq!(at(r#"tasker_step_run_seconds_count{handler="ok"}"#), 5.0);
    assert_eq!(
        at(r#"tasker_step_run_seconds_count{handler="declined"}"#),
        3.0
    );
    assert_eq!(
        at(r#"tasker_step_queue_seconds_count{handler="slow"}"#),
        1.0
    );
    assert_eq!(at("tasker_steps_submitted_total"), 9.0);
    assert_eq!(
        at(r#"tasker_protocol_errors_total{code="malformed_json"}"#),
        1.0,
        "{text}"
    );
    for code in ProtocolErrorCode::ALL {
        let name = format!(
            r#"tasker_protocol_errors_total{{code="{}"}}"#,
            code.as_str()
        );
        assert!(
            sample(&text, &name).is_some(),
            "every code is listed: {name}"
        );
    }

    // Error types are the workers' choice: their label values are capped.
    let chatty = steps(100..300, "chatty", 10_000);
    executor
        .execute_step_batch(StepBatchRequest::new("chatty", chatty))
        .await
        .unwrap();
    let text = exposition(&executor);
    let chatty_rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(r#"tasker_steps_failed_total{handler="chatty""#))
        .collect();
    assert!(
        chatty_rows.len() <= 64,
        "{} label values",
        chatty_rows.len()
    );
    let total: f64 = chatty_rows
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(
        total, 200.0,
        "every failure is counted, past the cap under _other"
    );
    assert!(
        sample(
            &text,
            r#"tasker_steps_failed_total{handler="chatty",error_type="_other"}"#
        )
        .is_some_and(|n| n > 0.0),
        "{text}"
    );

    worker.stop();
    worker.join(Duration::from_secs(10));
    executor.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_metrics_off_no_handler_is_recorded_but_the_plain_counters_still_count() {
    let executor = start(&tasker_config::TaskerConfig {
        metrics: false,
        ..config()
    });
    let worker = worker(&executor);
    assert!(executor.wait_for_workers(1, Duration::from_secs(10)).await);
    executor
        .execute_step_batch(StepBatchRequest::new("ok", steps(1..4, "ok", 10_000)))
        .await
        .unwrap();
    let text = exposition(&executor);
    assert!(!text.contains(r#"handler="ok""#), "{text}");
    assert_eq!(sample(&text, "tasker_steps_submitted_total"), Some(3.0));
    assert_eq!(executor.metrics().completed, 3);
    worker.stop();
    worker.join(Duration::from_secs(10));
    executor.shutdown(Duration::from_secs(2)).await;
}
