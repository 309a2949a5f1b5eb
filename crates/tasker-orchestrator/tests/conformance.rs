//! The cross-language conformance scenario (`protocol/conformance/
//! scenario.json`) through a Rust worker and the real orchestrator. The
//! Python, Ruby and Node suites run the same file through their SDKs, so a
//! rule that drifts in one language fails a test.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_protocol::*;
use tasker_worker::{HandlerError, Worker};

const LANGUAGE: &str = "rust";

fn scenario() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../protocol/conformance/scenario.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Nesting of arrays and objects: `7` is 0 deep, `[7]` 1.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn conformance_worker(config: TaskerConfig) -> tasker_worker::RunningWorker {
    Worker::new(config)
        .handler("echo", |step| Ok(step.task_context.clone()))
        .handler("previous", |step| {
            Ok(serde_json::to_value(&step.previous_results).unwrap())
        })
        .handler("fail", |step| {
            let context = &step.task_context;
            let message = context["message"].as_str().unwrap_or_default();
            let error = if context["retryable"] == json!(true) {
                HandlerError::retryable(message)
            } else {
                HandlerError::permanent(message)
            };
            Err(match context["error_type"].as_str() {
                Some(kind) => error.with_type(kind),
                None => error,
            })
        })
        .handler("raise", |step| {
            let message = step.task_context["message"].as_str().unwrap_or_default();
            Err(HandlerError::permanent(message).with_type("RuntimeError"))
        })
        .handler("nest", |step| {
            let mut output = json!(0);
            for _ in 0..step.task_context["depth"].as_u64().unwrap_or(0) {
                output = json!([output]);
            }
            Ok(output)
        })
        .handler("big", |step| {
            let bytes = step.task_context["bytes"].as_u64().unwrap_or(0) as usize;
            Ok(json!("x".repeat(bytes)))
        })
        .handler("bad_text", |_| {
            unreachable!("a Rust String cannot hold text that is not valid Unicode")
        })
        .spawn()
        .unwrap()
}

/// Which fields of `result` differ from `expect`.
fn mismatches(result: &StepExecutionResult, expect: &Value) -> Vec<String> {
    let mut wrong = Vec::new();
    let status = serde_json::to_value(result.status).unwrap();
    if expect["status"] != status {
        wrong.push(format!("status {status} (expected {})", expect["status"]));
    }
    if let Some(output) = expect.get("output") {
        if result.output.as_ref() != Some(output) {
            wrong.push(format!("output {:?}", result.output));
        }
    }
    if let Some(n) = expect.get("output_depth").and_then(Value::as_u64) {
        let got = result.output.as_ref().map(depth);
        if got != Some(n as usize) {
            wrong.push(format!("output depth {got:?} (expected {n})"));
        }
    }
    if let Some(n) = expect.get("output_bytes").and_then(Value::as_u64) {
        let got = result.output.as_ref().and_then(Value::as_str).map(str::len);
        if got != Some(n as usize) {
            wrong.push(format!("output of {got:?} bytes (expected {n})"));
        }
    }
    let error = result.error.as_ref();
    if let Some(kind) = expect.get("error_type") {
        let kind = kind.get(LANGUAGE).unwrap_or(kind);
        let got = error.map(|e| e.error_type.as_str());
        if got != kind.as_str() {
            wrong.push(format!("error_type {got:?} (expected {kind})"));
        }
    }
    if let Some(retryable) = expect.get("retryable").and_then(Value::as_bool) {
        if result.is_retryable() != retryable {
            wrong.push(format!("retryable {}", result.is_retryable()));
        }
    }
    if let Some(part) = expect.get("message_contains").and_then(Value::as_str) {
        if !error.is_some_and(|e| e.message.contains(part)) {
            wrong.push(format!(
                "message {:?} lacks {part:?}",
                error.map(|e| &e.message)
            ));
        }
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_worker_gives_the_results_the_conformance_scenario_expects() {
    let scenario = scenario();
    let limits = &scenario["config"];
    let executor = start(&TaskerConfig {
        max_message_bytes: limits["max_message_bytes"].as_u64().unwrap() as usize,
        ..config()
    });
    let worker = conformance_worker(TaskerConfig {
        default_retryable: limits["default_retryable"].as_bool().unwrap(),
        ..worker_config(&executor)
    });
    assert!(executor.wait_for_workers(1, Duration::from_secs(10)).await);

    let cases: Vec<&Value> = scenario["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|case| {
            !case["skip"]
                .as_array()
                .is_some_and(|skip| skip.contains(&json!(LANGUAGE)))
        })
        .collect();
    assert!(cases.len() >= 10, "the scenario has its cases");
    let steps: Vec<StepExecutionRequest> = cases
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let spec = &case["step"];
            let mut step = StepExecutionRequest::new(
                i as i64 + 1,
                1,
                case["name"].as_str().unwrap(),
                spec["handler_class"].as_str().unwrap(),
                10_000,
            );
            step.task_context = spec.get("task_context").cloned().unwrap_or(Value::Null);
            if let Some(previous) = spec.get("previous_results") {
                step.previous_results = serde_json::from_value(previous.clone()).unwrap();
            }
            step
        })
        .collect();
    let results = executor
        .execute_step_batch(StepBatchRequest::new("conformance", steps))
        .await
        .unwrap();

    let failures: Vec<String> = cases
        .iter()
        .zip(&results)
        .filter_map(|(case, result)| {
            let wrong = mismatches(result, &case["expect"]);
            (!wrong.is_empty()).then(|| format!("{}: {}", case["name"], wrong.join("; ")))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "conformance failures:\n{}",
        failures.join("\n")
    );
    worker.stop();
    worker.join(Duration::from_secs(10));
    executor.shutdown(Duration::from_secs(10)).await;
}
