//! `tasker dispatch`: one batch from a shell.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};
use tasker_orchestrator::ZmqPubSubExecutor;
use tasker_protocol::{
    StepBatchRequest, StepExecutionRequest, StepRequestMetadata, PROTOCOL_VERSION,
};

use crate::ConfigArgs;

#[derive(Args, Debug)]
pub struct DispatchArgs {
    /// JSON file with the batch; `-` or nothing reads stdin.
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Wait for this many workers before sending (the batch would wait for
    /// them anyway, up to each step's timeout).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// How long to wait for those workers, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub wait: f64,
    /// Also print the executor's counters under "metrics".
    #[arg(long)]
    pub metrics: bool,
}

/// The input: a full `StepBatchRequest`, or a lenient form in which only
/// `step_id` and `handler_class` are required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchInput {
    #[serde(default)]
    batch_id: Option<String>,
    #[serde(default)]
    protocol_version: Option<String>,
    steps: Vec<StepInput>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepInput {
    step_id: i64,
    #[serde(default)]
    task_id: i64,
    #[serde(default)]
    step_name: Option<String>,
    handler_class: String,
    /// Absent: `{}`; an explicit `null` stays `null`.
    #[serde(default = "empty_object")]
    handler_config: Value,
    /// Absent: `{}`; an explicit `null` stays `null`.
    #[serde(default = "empty_object")]
    task_context: Value,
    #[serde(default)]
    previous_results: BTreeMap<String, Value>,
    #[serde(default)]
    metadata: Option<MetadataInput>,
}

fn empty_object() -> Value {
    json!({})
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MetadataInput {
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(default)]
    retry_limit: Option<u32>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    created_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn parse_batch(text: &str) -> Result<StepBatchRequest> {
    let input: BatchInput = serde_json::from_str(text).context("parsing the batch JSON")?;
    if input.steps.is_empty() {
        bail!("the batch has no steps");
    }
    let steps = input
        .steps
        .into_iter()
        .map(|s| {
            let meta = s.metadata.unwrap_or_default();
            StepExecutionRequest {
                step_id: s.step_id,
                task_id: s.task_id,
                step_name: s.step_name.unwrap_or_else(|| s.handler_class.clone()),
                handler_class: s.handler_class,
                handler_config: s.handler_config,
                task_context: s.task_context,
                previous_results: s.previous_results,
                metadata: StepRequestMetadata {
                    attempt: meta.attempt.unwrap_or(1),
                    retry_limit: meta.retry_limit.unwrap_or(0),
                    timeout_ms: meta.timeout_ms.unwrap_or(0),
                    created_at: meta.created_at.unwrap_or_else(chrono::Utc::now),
                },
            }
        })
        .collect();
    Ok(StepBatchRequest {
        batch_id: input
            .batch_id
            .unwrap_or_else(|| format!("cli-{}", std::process::id())),
        protocol_version: input
            .protocol_version
            .unwrap_or_else(|| PROTOCOL_VERSION.to_string()),
        steps,
    })
}

pub fn run(args: DispatchArgs) -> Result<()> {
    let config = args.config.load()?;
    let text = match &args.file {
        None => read_stdin()?,
        Some(p) if p.as_os_str() == "-" => read_stdin()?,
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
    };
    let batch = parse_batch(&text)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let executor = ZmqPubSubExecutor::start(&config)?;
        if args.workers > 0
            && !executor
                .wait_for_workers(args.workers, Duration::from_secs_f64(args.wait))
                .await
        {
            executor.shutdown(Duration::ZERO).await;
            bail!(
                "fewer than {} workers connected within {} s",
                args.workers,
                args.wait
            );
        }
        let batch_id = batch.batch_id.clone();
        let results = executor.execute_step_batch(batch).await?;
        let metrics = executor.metrics();
        executor.shutdown(Duration::from_secs(1)).await;
        let mut out = json!({
            "batch_id": batch_id,
            "protocol_version": PROTOCOL_VERSION,
            "results": results,
        });
        if args.metrics {
            out["metrics"] = serde_json::to_value(metrics)?;
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        Ok(())
    })
}

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading stdin")?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_input_fills_defaults() {
        let batch = parse_batch(r#"{"steps":[{"step_id":3,"handler_class":"echo"}]}"#).unwrap();
        assert_eq!(batch.steps[0].step_name, "echo");
        assert_eq!(batch.steps[0].metadata.attempt, 1);
        assert_eq!(batch.protocol_version, PROTOCOL_VERSION);
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse_batch(r#"{"steps":[{"step_id":3,"handler":"echo"}]}"#).unwrap_err();
        assert!(format!("{err:#}").contains("handler"), "{err:#}");
    }
}
