//! Guarantees that need real worker processes: a worker killed with
//! SIGKILL mid-batch, a worker frozen with SIGSTOP whose results arrive
//! after it was declared dead, a worker draining on SIGINT, and the
//! `tasker dispatch` command driving a worker from a shell.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::free_endpoint;
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::{error_types, StepBatchRequest, StepExecutionRequest, StepStatus};

const LONG: Duration = Duration::from_secs(15);

fn config() -> TaskerConfig {
    TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        heartbeat_interval_ms: 200,
        liveness: 3,
        linger_ms: 0,
        ..TaskerConfig::default()
    }
}

/// A `tasker worker` process connected to `endpoint`.
fn spawn_worker(endpoint: &str, id: &str, capacity: u32) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["worker", "--endpoint", endpoint, "--worker-id", id])
        .args([
            "--capacity",
            &capacity.to_string(),
            "--handlers",
            "sleep,echo",
        ])
        .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
        .env("TASKER_RECONNECT_INITIAL_MS", "50")
        .env_remove("TASKER_CONFIG")
        .env_remove("TASKER_ENV")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("tasker worker starts")
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sleep_steps(ids: std::ops::Range<i64>, ms: u64, timeout_ms: u64) -> Vec<StepExecutionRequest> {
    ids.map(|id| {
        let mut s = StepExecutionRequest::new(id, 1, format!("s{id}"), "sleep", timeout_ms);
        s.handler_config = json!({ "ms": ms });
        s
    })
    .collect()
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

struct Reaper(Vec<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_executor() -> ZmqPubSubExecutor {
    ZmqPubSubExecutor::start(&config()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g4_worker_killed_mid_batch_every_step_still_ends_exactly_once() {
    let executor = start_executor();
    let mut reaper = Reaper(vec![
        spawn_worker(executor.endpoint(), "victim", 2),
        spawn_worker(executor.endpoint(), "survivor", 2),
    ]);
    assert!(executor.wait_for_workers(2, LONG).await);
    let handle = executor
        .submit(StepBatchRequest::new(
            "kill",
            sleep_steps(0..8, 400, 10_000),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    reaper.0[0].kill().unwrap(); // SIGKILL
    reaper.0[0].wait().unwrap();
    let results = handle.collect().await;

    assert_eq!(results.len(), 8, "every step has a result");
    let lost: Vec<_> = results
        .iter()
        .filter(|r| {
            r.error
                .as_ref()
                .is_some_and(|e| e.error_type == error_types::WORKER_LOST)
        })
        .collect();
    assert_eq!(lost.len(), 2, "the two steps the victim held were lost");
    assert!(lost
        .iter()
        .all(|r| r.status == StepStatus::Failed && r.is_retryable()));
    let completed: Vec<_> = results
        .iter()
        .filter(|r| r.status == StepStatus::Completed)
        .collect();
    assert_eq!(completed.len(), 6);
    assert!(completed.iter().all(|r| r.metadata.worker_id == "survivor"));
    let m = executor.metrics();
    assert_eq!(m.workers_lost, 1);
    assert_eq!(m.completed + m.failed, 8);
    executor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g5_a_stopped_worker_is_declared_dead_and_its_late_results_are_dropped() {
    let executor = start_executor();
    let reaper = Reaper(vec![spawn_worker(executor.endpoint(), "frozen", 2)]);
    assert!(executor.wait_for_workers(1, LONG).await);
    let handle = executor
        .submit(StepBatchRequest::new(
            "stop",
            sleep_steps(0..2, 300, 10_000),
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&reaper.0[0], "-STOP");
    let results = handle.collect().await;
    for r in &results {
        assert_eq!(
            r.error.as_ref().unwrap().error_type,
            error_types::WORKER_LOST
        );
    }
    signal(&reaper.0[0], "-CONT");
    let deadline = Instant::now() + LONG;
    while executor.metrics().late_results_dropped < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = executor.metrics();
    // Each is dropped once as sent, and may be once more: told it is
    // unknown, the worker lists the results it sent lately in its hello
    // and sends them again after the welcome (SPEC §5 rule 18).
    assert!((2..=4).contains(&m.late_results_dropped), "{m:?}");
    assert_eq!(m.completed, 0, "a late result is never applied");
    // The thawed worker registers again and serves new work.
    assert!(executor.wait_for_workers(1, LONG).await);
    let again = executor
        .execute_step_batch(StepBatchRequest::new(
            "again",
            sleep_steps(10..11, 1, 5_000),
        ))
        .await
        .unwrap();
    assert_eq!(again[0].status, StepStatus::Completed);
    executor.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_a_worker_its_running_steps_complete_and_it_exits_cleanly() {
    let executor = start_executor();
    let mut reaper = Reaper(vec![spawn_worker(executor.endpoint(), "polite", 2)]);
    assert!(executor.wait_for_workers(1, LONG).await);
    let handle = executor
        .submit(StepBatchRequest::new("int", sleep_steps(0..2, 400, 10_000)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&reaper.0[0], "-INT");
    let results = handle.collect().await;
    assert!(
        results.iter().all(|r| r.status == StepStatus::Completed),
        "{results:?}"
    );
    let status = wait_exit(&mut reaper.0[0], Duration::from_secs(5)).expect("worker exits");
    assert!(status.success(), "{status:?}");
    // It said goodbye: no longer registered, nothing counted as lost.
    let deadline = Instant::now() + Duration::from_secs(2);
    while executor.metrics().workers_connected > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(executor.metrics().workers_connected, 0);
    assert_eq!(executor.metrics().workers_lost, 0);
    executor.shutdown(Duration::from_secs(1)).await;
}

#[test]
fn dispatch_command_round_trips_nested_unicode_output_through_a_worker() {
    let endpoint = free_endpoint();
    let _reaper = Reaper(vec![spawn_worker(&endpoint, "shell", 4)]);
    let mut dispatch = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args([
            "dispatch",
            "-",
            "--endpoint",
            &endpoint,
            "--workers",
            "1",
            "--wait",
            "10",
        ])
        .env_remove("TASKER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let context = json!({ "name": "Zoë 🚀", "items": [{ "sku": "ß-1", "qty": 2 }], "nested": { "deep": [null, true, 1.5] } });
    let input = json!({ "batch_id": "shell-1", "steps": [
        { "step_id": 1, "handler_class": "echo", "task_context": context },
        { "step_id": 2, "handler_class": "nope", "metadata": { "timeout_ms": 200 } }
    ]});
    write_stdin(&mut dispatch, &input);
    let out = dispatch.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["batch_id"], "shell-1");
    let results = printed["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "completed");
    assert_eq!(results[0]["output"]["task_context"], context);
    assert_eq!(results[0]["metadata"]["worker_id"], "shell");
    assert_eq!(results[1]["status"], "failed");
    assert_eq!(results[1]["error"]["error_type"], "NoWorkerForHandler");
}

#[test]
fn dispatch_names_the_problem_in_bad_input() {
    let mut dispatch = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["dispatch", "-", "--endpoint", "tcp://127.0.0.1:0"])
        .env_remove("TASKER_CONFIG")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    dispatch
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"steps":[{"step_id":1,"handler":"echo"}]}"#)
        .unwrap();
    let out = dispatch.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown field `handler`"), "{stderr}");
}

/// Hands `input` to `child` as its whole standard input.
fn write_stdin(child: &mut Child, input: &Value) {
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(input.to_string().as_bytes()).unwrap();
}

/// A free loopback port for a process that binds it itself.

#[test]
fn g4_a_stalled_orchestrator_declares_no_healthy_worker_dead() {
    let endpoint = free_endpoint();
    let mut reaper = Reaper(vec![
        spawn_worker(&endpoint, "steady-1", 4),
        spawn_worker(&endpoint, "steady-2", 4),
    ]);
    let mut dispatch = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["dispatch", "-", "--endpoint", &endpoint])
        .args(["--workers", "2", "--wait", "10", "--metrics"])
        .env("TASKER_HEARTBEAT_INTERVAL_MS", "200")
        .env_remove("TASKER_CONFIG")
        .env_remove("TASKER_ENV")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // 96 steps of 150 ms on 8 slots: about two seconds of work, so the
    // freezes below land while steps run and results are on their way.
    let steps: Vec<Value> = (1..=96)
        .map(|id| {
            json!({ "step_id": id, "handler_class": "sleep",
                          "handler_config": { "ms": 150 }, "metadata": { "timeout_ms": 20_000 } })
        })
        .collect();
    let input = json!({ "batch_id": "stall", "steps": steps });
    write_stdin(&mut dispatch, &input);
    // Wait for work to start, then freeze the orchestrator for twice the
    // workers' expiry (3 × 200 ms), three times.
    std::thread::sleep(Duration::from_millis(400));
    for _ in 0..3 {
        signal(&dispatch, "-STOP");
        std::thread::sleep(Duration::from_millis(1_200));
        signal(&dispatch, "-CONT");
        std::thread::sleep(Duration::from_millis(250));
    }
    let out = dispatch.wait_with_output().unwrap();
    assert!(out.status.success(), "dispatch failed");
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = printed["results"].as_array().unwrap();
    assert_eq!(results.len(), 96);
    let not_completed: Vec<&Value> = results
        .iter()
        .filter(|r| r["status"] != "completed")
        .collect();
    assert!(
        not_completed.is_empty(),
        "healthy workers' steps ended otherwise: {not_completed:?}"
    );
    assert_eq!(printed["metrics"]["worker_lost"], 0);
    assert_eq!(printed["metrics"]["workers_lost"], 0);
    for worker in &mut reaper.0 {
        assert!(worker.try_wait().unwrap().is_none(), "a worker exited");
    }
}
