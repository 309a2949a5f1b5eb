//! The committed JSON Schema must be exactly what the types generate.

use std::path::PathBuf;

#[test]
fn committed_schema_matches_the_types() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../protocol/schema");
    let stale = tasker_protocol::schema::stale(&dir);
    assert!(
        stale.is_empty(),
        "protocol/schema is out of date for {stale:?}: run `cargo run -p tasker-cli -- schema`"
    );
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        on_disk,
        tasker_protocol::schema::all().len(),
        "stray files in {dir:?}"
    );
}

#[test]
fn schemas_are_draft_2020_12_and_cover_every_message_type() {
    let all = tasker_protocol::schema::all();
    for (name, schema) in &all {
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
    }
    let worker = &all
        .iter()
        .find(|(n, _)| *n == "worker-message.schema.json")
        .unwrap()
        .1;
    let text = worker.to_string();
    for t in <tasker_protocol::WorkerMessage as tasker_protocol::codec::WireMessage>::TYPES {
        assert!(
            text.contains(&format!("\"{t}\"")),
            "worker schema lacks {t}"
        );
    }
    let orchestrator = &all
        .iter()
        .find(|(n, _)| *n == "orchestrator-message.schema.json")
        .unwrap()
        .1;
    let text = orchestrator.to_string();
    for t in <tasker_protocol::OrchestratorMessage as tasker_protocol::codec::WireMessage>::TYPES {
        assert!(
            text.contains(&format!("\"{t}\"")),
            "orchestrator schema lacks {t}"
        );
    }
}
