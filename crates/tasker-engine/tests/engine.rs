//! The engine over real sockets: an in-process executor and Rust workers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_engine::{StepOutcome, TaskEvent, TaskStatus, TaskTemplate, WorkflowEngine};
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_worker::{HandlerError, RunningWorker, Worker};

/// Every handler invocation: (step name, attempt, when).
type Calls = Arc<Mutex<Vec<(String, u32, Instant)>>>;

struct Rig {
    engine: WorkflowEngine,
    executor: Arc<ZmqPubSubExecutor>,
    calls: Calls,
    workers: Vec<RunningWorker>,
}

fn config() -> TaskerConfig {
    TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        heartbeat_interval_ms: 200,
        liveness: 5,
        ..TaskerConfig::default()
    }
}

fn worker(endpoint: &str, calls: &Calls) -> RunningWorker {
    let record = |calls: &Calls| {
        let calls = Arc::clone(calls);
        move |step: &tasker_protocol::StepExecutionRequest| {
            calls.lock().unwrap().push((
                step.step_name.clone(),
                step.metadata.attempt,
                Instant::now(),
            ));
        }
    };
    let config = TaskerConfig {
        endpoint: endpoint.to_string(),
        ..config()
    };
    let (r1, r2, r3, r4, r5) = (
        record(calls),
        record(calls),
        record(calls),
        record(calls),
        record(calls),
    );
    Worker::new(config)
        .capacity(64)
        .threads(8)
        .handler("echo", move |step| {
            r1(step);
            Ok(json!({
                "step": step.step_name,
                "previous": step.previous_results,
                "context": step.task_context,
            }))
        })
        .handler("fail_permanent", move |step| {
            r2(step);
            Err(HandlerError::permanent("card declined").with_type("CardDeclined"))
        })
        .handler("flaky", move |step| {
            r3(step);
            let succeed_on = step.handler_config["succeed_on"].as_u64().unwrap_or(2) as u32;
            if step.metadata.attempt < succeed_on {
                Err(HandlerError::retryable(format!(
                    "attempt {} failed",
                    step.metadata.attempt
                )))
            } else {
                Ok(json!({
                    "attempt": step.metadata.attempt,
                    "retry_limit": step.metadata.retry_limit,
                }))
            }
        })
        .handler("slow", move |step| {
            r4(step);
            let ms = step.handler_config["ms"].as_u64().unwrap_or(200);
            std::thread::sleep(Duration::from_millis(ms));
            Ok(json!("slept"))
        })
        .handler("slow_first", move |step| {
            r5(step);
            if step.metadata.attempt == 1 {
                std::thread::sleep(Duration::from_millis(
                    step.handler_config["ms"].as_u64().unwrap_or(1000),
                ));
            }
            Ok(json!({ "attempt": step.metadata.attempt }))
        })
        .spawn()
        .unwrap()
}

/// Reads `events` (at most 5 s each) until one that `wanted` accepts.
async fn until_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<TaskEvent>,
    what: &str,
    wanted: impl Fn(&TaskEvent) -> bool,
) {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(event)) if wanted(&event) => return,
            Ok(Some(_)) => continue,
            other => panic!("{what}: {other:?}"),
        }
    }
}

async fn rig() -> Rig {
    let executor = Arc::new(ZmqPubSubExecutor::start(&config()).unwrap());
    let calls: Calls = Arc::default();
    let w = worker(executor.endpoint(), &calls);
    assert!(executor.wait_for_workers(1, Duration::from_secs(10)).await);
    Rig {
        engine: WorkflowEngine::new(executor.clone()),
        executor,
        calls,
        workers: vec![w],
    }
}

impl Rig {
    fn order_of(&self, name: &str) -> usize {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .position(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("{name} never ran"))
    }

    fn attempts_of(&self, name: &str) -> Vec<(u32, Instant)> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, a, t)| (*a, *t))
            .collect()
    }

    /// Waits (at most 5 s) until step `name`'s handler has been called.
    async fn until_handler_runs(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.attempts_of(name).is_empty() {
            assert!(
                Instant::now() < deadline,
                "step {name} never reached its handler"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn close(self) {
        self.executor.shutdown(Duration::from_secs(2)).await;
        for w in self.workers {
            w.stop();
            w.join(Duration::from_secs(5));
        }
    }
}

fn template(yaml: &str) -> TaskTemplate {
    TaskTemplate::from_yaml_str(yaml).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linear_chain_runs_in_order_with_previous_results() {
    let rig = rig().await;
    let t = template(
        "name: chain\nsteps:\n  - {name: a, handler: echo}\n  - {name: b, handler: echo, depends_on: [a]}\n  - {name: c, handler: echo, depends_on: [b], handler_config: {k: v}}\n",
    );
    let report = rig
        .engine
        .run(&t, json!({"order_id": 7, "note": "ünïcode ✓"}))
        .await;
    assert_eq!(report.status, TaskStatus::Complete, "{report:#?}");
    assert!(rig.order_of("a") < rig.order_of("b"));
    assert!(rig.order_of("b") < rig.order_of("c"));
    let c = report.step("c").unwrap();
    assert_eq!(c.outcome, StepOutcome::Completed);
    assert_eq!(c.attempts, 1);
    let out = c.output.as_ref().unwrap();
    // Direct dependencies only, keyed by step name, carrying their outputs.
    assert_eq!(out["previous"].as_object().unwrap().len(), 1);
    assert_eq!(out["previous"]["b"]["step"], "b");
    assert_eq!(out["previous"]["b"]["previous"]["a"]["step"], "a");
    assert_eq!(out["context"]["note"], "ünïcode ✓");
    assert!(c.worker_id.as_deref().unwrap().starts_with("rust-"));
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diamond_runs_branches_together_and_joins_their_outputs() {
    let rig = rig().await;
    let t = template(
        "name: diamond\nsteps:\n  - {name: a, handler: echo}\n  - {name: b, handler: echo, depends_on: [a]}\n  - {name: c, handler: echo, depends_on: [a]}\n  - {name: d, handler: echo, depends_on: [b, c]}\n",
    );
    let mut task = rig.engine.start(t, json!({}));
    let mut events = task.events().unwrap();
    let report = task.wait().await;
    assert_eq!(report.status, TaskStatus::Complete);
    let mut dispatches = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let TaskEvent::Dispatched { steps } = e {
            dispatches.push(steps.into_iter().map(|(n, _)| n).collect::<Vec<_>>());
        }
    }
    assert_eq!(
        dispatches,
        vec![
            vec!["a".to_string()],
            vec!["b".into(), "c".into()],
            vec!["d".into()]
        ]
    );
    let d = report.step("d").unwrap().output.clone().unwrap();
    assert_eq!(d["previous"]["b"]["step"], "b");
    assert_eq!(d["previous"]["c"]["step"], "c");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_fan_out_of_a_thousand_steps() {
    let rig = rig().await;
    let mut yaml = String::from("name: fan\nsteps:\n  - {name: root, handler: echo}\n");
    for i in 0..1000 {
        yaml.push_str(&format!(
            "  - {{name: leaf{i}, handler: echo, depends_on: [root]}}\n"
        ));
    }
    let leaves: Vec<String> = (0..1000).map(|i| format!("leaf{i}")).collect();
    yaml.push_str(&format!(
        "  - {{name: join, handler: echo, depends_on: [{}]}}\n",
        leaves.join(", ")
    ));
    let report = rig.engine.run(&template(&yaml), json!({})).await;
    assert_eq!(report.status, TaskStatus::Complete);
    assert_eq!(report.steps.len(), 1002);
    let join = report.step("join").unwrap().output.clone().unwrap();
    assert_eq!(join["previous"].as_object().unwrap().len(), 1000);
    assert_eq!(join["previous"]["leaf999"]["step"], "leaf999");
    assert_eq!(rig.calls.lock().unwrap().len(), 1002, "each step ran once");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_back_off_within_bounds_then_succeed() {
    let rig = rig().await;
    let t = template(
        "name: retry\nsteps:\n  - name: flaky\n    handler: flaky\n    handler_config: {succeed_on: 3}\n    retry: {max_attempts: 3, initial_ms: 150, multiplier: 2, max_ms: 1000, jitter: 0.5}\n",
    );
    let mut task = rig.engine.start(t, json!({}));
    let mut events = task.events().unwrap();
    let report = task.wait().await;
    let flaky = report.step("flaky").unwrap();
    assert_eq!(report.status, TaskStatus::Complete);
    assert_eq!(flaky.attempts, 3);
    assert_eq!(flaky.output.as_ref().unwrap()["attempt"], 3);
    // The wire's retry_limit counts retries after the first attempt (SPEC
    // §4.2): max_attempts 3 is 2 (it was sent as 3).
    assert_eq!(flaky.output.as_ref().unwrap()["retry_limit"], 2);

    let mut delays = Vec::new();
    while let Ok(e) = events.try_recv() {
        if let TaskEvent::Retrying {
            delay,
            attempt,
            error,
            ..
        } = e
        {
            assert!(error.retryable);
            delays.push((attempt, delay));
        }
    }
    // Backoff 150 ms then 300 ms, each cut by at most half for jitter.
    assert_eq!(delays.len(), 2);
    let (d1, d2) = (delays[0].1, delays[1].1);
    assert!(
        d1 >= Duration::from_millis(75) && d1 <= Duration::from_millis(150),
        "{d1:?}"
    );
    assert!(
        d2 >= Duration::from_millis(150) && d2 <= Duration::from_millis(300),
        "{d2:?}"
    );
    // The worker saw the attempts no sooner than the backoff allows.
    let seen = rig.attempts_of("flaky");
    assert_eq!(
        seen.iter().map(|(a, _)| *a).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let gap1 = seen[1].1 - seen[0].1;
    let gap2 = seen[2].1 - seen[1].1;
    assert!(gap1 >= d1, "{gap1:?} < {d1:?}");
    assert!(gap2 >= d2, "{gap2:?} < {d2:?}");
    // Loose upper bound: a retry is not forgotten (a loaded CI box adds ms, not seconds).
    assert!(gap1 < d1 + Duration::from_secs(1), "{gap1:?}");
    assert!(gap2 < d2 + Duration::from_secs(1), "{gap2:?}");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_attempts_fail_the_step_with_its_last_error() {
    let rig = rig().await;
    let t = template(
        "name: spent\nsteps:\n  - name: flaky\n    handler: flaky\n    handler_config: {succeed_on: 9}\n    retry: {max_attempts: 2, initial_ms: 10, jitter: 0}\n",
    );
    let report = rig.engine.run(&t, json!({})).await;
    assert_eq!(report.status, TaskStatus::Failed);
    let flaky = report.step("flaky").unwrap();
    assert_eq!(flaky.outcome, StepOutcome::Failed);
    assert_eq!(flaky.attempts, 2);
    let error = flaky.error.as_ref().unwrap();
    assert!(error.retryable);
    assert_eq!(error.message, "attempt 2 failed");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_blocks_dependents_while_independent_branch_completes() {
    let rig = rig().await;
    let t = template(
        r#"
name: blocked
steps:
  - {name: fetch, handler: echo}
  - {name: charge, handler: fail_permanent, depends_on: [fetch], retry: {max_attempts: 5}}
  - {name: ship, handler: echo, depends_on: [charge]}
  - {name: notify, handler: echo, depends_on: [ship, audit]}
  - {name: audit, handler: slow, depends_on: [fetch], handler_config: {ms: 100}}
"#,
    );
    let report = rig.engine.run(&t, json!({})).await;
    assert_eq!(report.status, TaskStatus::Failed);
    let charge = report.step("charge").unwrap();
    assert_eq!(charge.outcome, StepOutcome::Failed);
    assert_eq!(charge.attempts, 1, "a permanent failure is not retried");
    assert_eq!(charge.error.as_ref().unwrap().error_type, "CardDeclined");
    for name in ["ship", "notify"] {
        let s = report.step(name).unwrap();
        assert_eq!(s.outcome, StepOutcome::Blocked, "{name}");
        assert_eq!(s.blocked_by.as_deref(), Some("charge"));
        assert_eq!(s.attempts, 0);
    }
    assert_eq!(
        report.step("audit").unwrap().outcome,
        StepOutcome::Completed
    );
    assert!(rig.attempts_of("ship").is_empty() && rig.attempts_of("notify").is_empty());
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_retried() {
    let rig = rig().await;
    let t = template(
        "name: timeout\nsteps:\n  - name: slow\n    handler: slow_first\n    timeout_ms: 300\n    handler_config: {ms: 1500}\n    retry: {max_attempts: 2, initial_ms: 10, jitter: 0}\n",
    );
    let mut task = rig.engine.start(t, json!({}));
    let mut events = task.events().unwrap();
    let report = task.wait().await;
    assert_eq!(report.status, TaskStatus::Complete, "{report:#?}");
    let slow = report.step("slow").unwrap();
    assert_eq!(slow.attempts, 2);
    assert_eq!(slow.output.as_ref().unwrap()["attempt"], 2);
    let retried_for = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        TaskEvent::Retrying { error, .. } => Some(error.error_type),
        _ => None,
    });
    assert_eq!(retried_for.as_deref(), Some("TimedOut"));
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_dispatch_and_lets_running_steps_finish() {
    let rig = rig().await;
    let t = template(
        "name: cancel\nsteps:\n  - {name: a, handler: slow, handler_config: {ms: 400}}\n  - {name: b, handler: echo, depends_on: [a]}\n  - {name: c, handler: echo, depends_on: [b]}\n",
    );
    let mut task = rig.engine.start(t, json!({}));
    let mut events = task.events().unwrap();
    // Cancel once the first step runs at the worker: a step still queued
    // in the executor would be withdrawn instead (the next test).
    until_event(&mut events, "no dispatch", |e| {
        matches!(e, TaskEvent::Dispatched { .. })
    })
    .await;
    rig.until_handler_runs("a").await;
    task.cancel();
    let report = task.wait().await;
    assert_eq!(report.status, TaskStatus::Cancelled);
    assert_eq!(report.step("a").unwrap().outcome, StepOutcome::Completed);
    for name in ["b", "c"] {
        let s = report.step(name).unwrap();
        assert_eq!(s.outcome, StepOutcome::Cancelled);
        assert_eq!(s.attempts, 0);
    }
    assert!(rig.attempts_of("b").is_empty());
    rig.close().await;
}

/// A step that failed for good decides the task: a cancel pressed after a
/// payment was declined, while another branch still ran, ended the task
/// `cancelled`, and whoever looked for failed tasks missed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancelled_after_a_step_failed_for_good_ends_failed() {
    let rig = rig().await;
    let t = template(
        "name: declined\nsteps:\n  - {name: charge, handler: fail_permanent}\n  - {name: ship, handler: echo, depends_on: [charge]}\n  - {name: load, handler: echo}\n  - {name: audit, handler: slow, handler_config: {ms: 400}, depends_on: [load]}\n  - {name: archive, handler: echo, depends_on: [audit]}\n",
    );
    // `audit` goes in a batch after the failure's: a worker may send a
    // batch's results together, and the failure would arrive with audit's.
    let mut task = rig.engine.start(t, json!({}));
    let mut events = task.events().unwrap();
    until_event(
        &mut events,
        "charge never failed",
        |e| matches!(e, TaskEvent::Failed { step, .. } if step == "charge"),
    )
    .await;
    rig.until_handler_runs("audit").await;
    task.cancel();
    let report = task.wait().await;
    assert_eq!(report.status, TaskStatus::Failed, "{report:#?}");
    let outcome = |name: &str| report.step(name).unwrap().outcome;
    assert_eq!(outcome("charge"), StepOutcome::Failed);
    assert_eq!(outcome("ship"), StepOutcome::Blocked);
    assert_eq!(outcome("audit"), StepOutcome::Completed);
    assert_eq!(outcome("archive"), StepOutcome::Cancelled, "{report:#?}");
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_withdraws_a_step_no_worker_has_taken_at_once() {
    let rig = rig().await;
    // No worker serves `nobody`: its step waits in the executor's queue.
    let t = template(
        "name: stuck\nsteps:\n  - {name: a, handler: nobody, timeout_ms: 30000}\n  - {name: b, handler: echo, depends_on: [a]}\n",
    );
    let mut task = rig.engine.start(t, json!({}));
    let mut events = task.events().unwrap();
    until_event(&mut events, "no dispatch", |e| {
        matches!(e, TaskEvent::Dispatched { .. })
    })
    .await;
    let cancelled_at = Instant::now();
    task.cancel();
    let report = task.wait().await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(2),
        "ended at the cancel, not at the step's 30 s timeout"
    );
    assert_eq!(report.status, TaskStatus::Cancelled);
    let a = report.step("a").unwrap();
    assert_eq!(a.outcome, StepOutcome::Cancelled);
    assert_eq!(
        a.error.as_ref().map(|e| e.error_type.as_str()),
        Some("Withdrawn")
    );
    assert_eq!(report.step("b").unwrap().outcome, StepOutcome::Cancelled);
    rig.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_share_one_executor_without_mixing_results() {
    let rig = rig().await;
    let t = template(
        "name: pair\nsteps:\n  - {name: a, handler: echo}\n  - {name: b, handler: echo, depends_on: [a]}\n",
    );
    let runs: Vec<_> = (0..20)
        .map(|i| rig.engine.start(t.clone(), json!({ "n": i })))
        .collect();
    for (i, task) in runs.into_iter().enumerate() {
        let report = task.wait().await;
        assert_eq!(report.status, TaskStatus::Complete);
        let b = report.step("b").unwrap().output.clone().unwrap();
        assert_eq!(b["context"]["n"], i as u64);
        assert_eq!(b["previous"]["a"]["context"]["n"], Value::from(i as u64));
    }
    rig.close().await;
}
