//! Embeds the orchestrator and a Rust worker in one program and runs a small
//! order batch end to end over real ZeroMQ sockets (tcp loopback).
//!
//! Run with `cargo run -p tasker-example-embedded` (or `./scripts/demo.sh`).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use serde_json::json;
use tasker_config::TaskerConfig;
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::{StepBatchRequest, StepExecutionRequest};
use tasker_worker::{HandlerError, Worker};

fn order_step(id: i64, name: &str, handler: &str, amount: f64) -> StepExecutionRequest {
    let mut step = StepExecutionRequest::new(id, 1000 + id, name, handler, 5_000);
    step.task_context = json!({ "order_id": 1000 + id, "amount": amount, "customer": "Zoë" });
    step
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    // An ephemeral loopback port, so the example never clashes with anything.
    let config = TaskerConfig {
        endpoint: "tcp://127.0.0.1:0".into(),
        ..TaskerConfig::default()
    };
    let executor = ZmqPubSubExecutor::start(&config)?;
    println!("orchestrator bound to {}", executor.endpoint());

    // One ZeroMQ context for both ends: one libzmq I/O thread carries the
    // connection instead of two handing every message to each other.
    let context = executor.zmq_context().context("the executor stopped")?;
    let worker = Worker::new(TaskerConfig {
        endpoint: executor.endpoint().to_string(),
        ..config
    })
    .zmq_context(context)
    .worker_id("rust-example")
    .capacity(4)
    .handler("validate_order", |step| {
        let amount = step.task_context["amount"].as_f64().unwrap_or(0.0);
        if amount <= 0.0 {
            return Err(HandlerError::permanent("amount must be positive"));
        }
        Ok(json!({ "valid": true, "amount": amount }))
    })
    .async_handler("charge_card", |step| async move {
        // Stands in for a call to a payment gateway.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let amount = step.task_context["amount"].as_f64().unwrap_or(0.0);
        Ok(json!({ "charged": amount, "receipt": format!("r-{}", step.task_id) }))
    })
    .spawn()?;
    ensure!(
        executor.wait_for_workers(1, Duration::from_secs(10)).await,
        "the worker did not connect"
    );
    println!("worker {} connected", worker.worker_id());

    let mut batch = StepBatchRequest::new(
        "orders-1",
        vec![
            order_step(1, "validate", "validate_order", 25.0),
            order_step(2, "validate", "validate_order", -3.0),
            order_step(3, "charge", "charge_card", 25.0),
            order_step(4, "charge", "charge_card", 99.5),
            order_step(5, "ship", "ship_parcel", 10.0), // no worker serves this one
        ],
    );
    batch.steps[4].metadata.timeout_ms = 300;

    let batch_handlers = batch
        .steps
        .iter()
        .map(|s| (s.step_id, s.handler_class.clone()))
        .collect();
    let started = Instant::now();
    let mut handle = executor.submit(batch).await?;
    println!("\n{:<6} {:<16} {:<10} detail", "step", "handler", "status");
    let handlers: std::collections::HashMap<i64, String> = batch_handlers;
    while let Some(result) = handle.next().await {
        let detail = match (&result.output, &result.error) {
            (Some(output), _) => output.to_string(),
            (_, Some(e)) => format!(
                "{}: {} (retryable: {})",
                e.error_type, e.message, e.retryable
            ),
            _ => String::new(),
        };
        let status = format!("{:?}", result.status).to_lowercase();
        println!(
            "{:<6} {:<16} {:<10} {detail}",
            result.step_id, handlers[&result.step_id], status
        );
    }
    let m = executor.metrics();
    println!(
        "\n5 steps in {:.0} ms: {} completed, {} failed, {} timed out; {} malformed messages",
        started.elapsed().as_secs_f64() * 1000.0,
        m.completed,
        m.failed,
        m.timed_out,
        m.malformed_messages
    );
    ensure!(
        m.completed == 3 && m.failed == 2,
        "unexpected outcome: {m:?}"
    );
    ensure!(
        m.completed + m.failed + m.timed_out == 5,
        "a step lacks a result"
    );

    worker.stop();
    let report = executor.shutdown(Duration::from_secs(5)).await;
    ensure!(
        worker.join(Duration::from_secs(5)),
        "the worker did not stop cleanly"
    );
    println!(
        "stopped cleanly; {} steps abandoned",
        report.abandoned.len()
    );
    Ok(())
}
