//! JSON Schema (Draft 2020-12) of every message, generated from the types in
//! [`crate::messages`].
//!
//! The committed copies live in `protocol/schema/`; `tasker schema`
//! regenerates them and a test fails when they drift from the types.
//!
//! The schemas use standard keywords only, so a strict Draft 2020-12
//! validator compiles them without registering anything but the standard
//! `date-time` format: integers carry `minimum`/`maximum` of their Rust
//! type instead of schemars' `format: int64`/`uint32`/`uint64`.

use std::io;
use std::path::Path;

use schemars::generate::SchemaSettings;
use schemars::transform::{RecursiveTransform, Transform};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use crate::messages::*;

/// Replaces schemars' non-standard integer formats (`int64`, `uint32`,
/// `uint64`, ...) with the `minimum` and `maximum` of the Rust type,
/// keeping a tighter bound set on the field (`range(min = 1)`).
#[derive(Debug, Clone, Copy)]
struct IntegerBounds;

impl Transform for IntegerBounds {
    fn transform(&mut self, schema: &mut Schema) {
        let Some(object) = schema.as_object_mut() else {
            return;
        };
        let (min, max): (Value, Value) = match object.get("format").and_then(Value::as_str) {
            Some("int8") => (json!(i8::MIN), json!(i8::MAX)),
            Some("int16") => (json!(i16::MIN), json!(i16::MAX)),
            Some("int32") => (json!(i32::MIN), json!(i32::MAX)),
            Some("int64" | "int") => (json!(i64::MIN), json!(i64::MAX)),
            Some("uint8") => (json!(0), json!(u8::MAX)),
            Some("uint16") => (json!(0), json!(u16::MAX)),
            Some("uint32") => (json!(0), json!(u32::MAX)),
            Some("uint64" | "uint") => (json!(0), json!(u64::MAX)),
            _ => return,
        };
        object.remove("format");
        // A bound set on the field (`range(min = 1)`) is tighter: keep it.
        let get = |key: &str| object.get(key).and_then(Value::as_f64);
        let keep_min = matches!(get("minimum"), Some(m) if m >= min.as_f64().unwrap_or(f64::MIN));
        let keep_max = matches!(get("maximum"), Some(m) if m <= max.as_f64().unwrap_or(f64::MAX));
        if !keep_min {
            object.insert("minimum".into(), min);
        }
        if !keep_max {
            object.insert("maximum".into(), max);
        }
    }
}

/// The schema of a worker's result status: `completed` or `failed` (the
/// other [`StepStatus`] values are the orchestrator's own verdicts).
pub(crate) fn worker_status(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "enum": ["completed", "failed"]
    })
}

/// A hello's `handler_limits`: an object of handler names to limits of at
/// least 1 (that its keys are among `handlers` JSON Schema cannot say).
pub(crate) fn handler_limits(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {
            "type": "integer",
            "minimum": 1,
            "maximum": u32::MAX
        },
        "propertyNames": { "minLength": 1 },
        "default": {}
    })
}

/// A worker's result carries `error` exactly when its status is `failed`.
/// (`error: true` in `then` names the property beside `required`, as a
/// strict validator such as ajv's `strictRequired` wants; `error: false`
/// in `else` forbids it.)
pub(crate) fn error_iff_failed(schema: &mut Schema) {
    schema.insert(
        "if".into(),
        json!({ "properties": { "status": { "const": "failed" } } }),
    );
    schema.insert(
        "then".into(),
        json!({ "properties": { "error": true }, "required": ["error"] }),
    );
    schema.insert("else".into(), json!({ "properties": { "error": false } }));
}

fn schema_of<T: JsonSchema>(id: &str) -> Value {
    let settings = SchemaSettings::draft2020_12().with_transform(RecursiveTransform(IntegerBounds));
    let mut schema = SchemaGenerator::new(settings).into_root_schema_for::<T>();
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
