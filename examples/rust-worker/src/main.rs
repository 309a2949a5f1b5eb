//! The demo's Rust worker: serves `reserve_inventory` for the
//! order-fulfilment workflow (examples/workflows/order_fulfillment.yaml).
//!
//! It reads `config/zeromq.yaml` when run from the repository root (or the
//! file in `TASKER_CONFIG`), then `TASKER_*` variables, so `tasker run
//! --spawn` points it at its orchestrator with `TASKER_ENDPOINT`. SIGINT or
//! SIGTERM drains it: running steps finish, unstarted ones go back.
//!
//! ```text
//! cargo run -p tasker-example-rust-worker
//! ```

use anyhow::Result;
use serde_json::{json, Value};
use tasker_config::TaskerConfig;
use tasker_worker::{HandlerError, HandlerResult, Worker};

/// Reserves every line of the order in the configured warehouse. An order
/// line without a positive quantity cannot be reserved, ever: permanent.
fn reserve_inventory(step: &tasker_protocol::StepExecutionRequest) -> HandlerResult {
    let warehouse = step.handler_config["warehouse"]
        .as_str()
        .unwrap_or("default");
    let items = step.task_context["items"]
        .as_array()
        .ok_or_else(|| HandlerError::permanent("task_context.items must be a list"))?;
    let mut lines = Vec::with_capacity(items.len());
    for item in items {
        let sku = item["sku"].as_str().unwrap_or("?");
        let qty = item["qty"].as_u64().unwrap_or(0);
        if qty == 0 {
            return Err(HandlerError::permanent(format!(
                "cannot reserve {sku}: quantity must be positive"
            ))
            .with_type("InvalidQuantity"));
        }
        lines
            .push(json!({ "sku": sku, "qty": qty, "bin": format!("{warehouse}/{}", bin_of(sku)) }));
    }
    let order_id = &step.task_context["order_id"];
    Ok(json!({
        "reservation_id": format!("RSV-{}-{}", order_id_text(order_id), step.step_id),
        "warehouse": warehouse,
        "lines": lines,
    }))
}

fn order_id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A stable shelf number for a SKU, so the output is the same on every run.
fn bin_of(sku: &str) -> u32 {
    sku.bytes()
        .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
        % 100
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = TaskerConfig::discover(None, None)?;
    let worker = Worker::new(config)
        .handler("reserve_inventory", reserve_inventory)
        .spawn()?;
    tracing::info!(
        worker_id = worker.worker_id(),
        "order worker serving reserve_inventory"
    );
    if !worker.serve_until_signal()? {
        tracing::warn!("stopped with steps unfinished");
    }
    Ok(())
}
