//! JSON Schema (Draft 2020-12) of every message, generated from the types in
//! [`crate::messages`].
//!
//! The committed copies live in `protocol/schema/`; `tasker schema`
//! regenerates them and a test fails when they drift from the types.

use std::io;
use std::path::Path;

use schemars::{JsonSchema, SchemaGenerator};
use serde_json::Value;

use crate::messages::*;

fn schema_of<T: JsonSchema>(id: &str) -> Value {
    let mut schema = SchemaGenerator::default().into_root_schema_for::<T>();
    schema.insert(
        "$id".into(),
        Value::String(format!("https://tasker-core.dev/protocol/1/{id}")),
    );
    schema.to_value()
}

/// Every schema file, as `(file name, schema)`, in a stable order.
///
/// The two direction unions (`worker-message`, `orchestrator-message`) cover
/// every message; the others name the individual message bodies.
pub fn all() -> Vec<(&'static str, Value)> {
    macro_rules! entry {
        ($file:literal, $ty:ty) => {
            ($file, schema_of::<$ty>($file))
        };
    }
    vec![
        entry!("worker-message.schema.json", WorkerMessage),
        entry!("orchestrator-message.schema.json", OrchestratorMessage),
        entry!("step-batch-request.schema.json", StepBatchRequest),
        entry!("step-batch-response.schema.json", StepBatchResponse),
        entry!("step-execution-request.schema.json", StepExecutionRequest),
        entry!("step-execution-result.schema.json", StepExecutionResult),
        entry!("step-execution-error.schema.json", StepExecutionError),
        entry!("worker-hello.schema.json", WorkerHello),
        entry!("welcome.schema.json", Welcome),
        entry!("worker-drain.schema.json", WorkerDrain),
        entry!("goodbye.schema.json", Goodbye),
        entry!("protocol-error.schema.json", ProtocolError),
    ]
}

/// Renders a schema the way it is committed: pretty JSON with a final newline.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema is always serialisable");
    text.push('\n');
    text
}

/// The schema files in `dir` that are missing or differ from what the types
/// generate; empty when the committed schema is current.
pub fn stale(dir: &Path) -> Vec<&'static str> {
    all()
        .into_iter()
        .filter(|(name, schema)| {
            std::fs::read_to_string(dir.join(name)).ok().as_deref() != Some(render(schema).as_str())
        })
        .map(|(name, _)| name)
        .collect()
}

/// Writes every schema file into `dir`, creating it if needed; returns the
/// paths written.
pub fn write_all(dir: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, schema) in all() {
        let path = dir.join(name);
        std::fs::write(&path, render(&schema))?;
        written.push(path);
    }
    Ok(written)
}
