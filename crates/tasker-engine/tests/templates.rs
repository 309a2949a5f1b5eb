//! Template loading: every shipped example loads, and each kind of mistake
//! is rejected with the step and field named.

use tasker_engine::{TaskTemplate, TemplateErrorKind};

fn reject(yaml: &str) -> tasker_engine::TemplateError {
    TaskTemplate::from_yaml_str(yaml).expect_err("template should be rejected")
}

#[test]
fn shipped_examples_load() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/workflows");
    let mut loaded = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            TaskTemplate::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            loaded += 1;
        }
    }
    assert!(loaded >= 2, "expected the example workflows in {dir}");
}

#[test]
fn defaults_fill_in_and_steps_override_single_retry_keys() {
    let t = TaskTemplate::from_yaml_str(
        r#"
name: t
defaults:
  timeout_ms: 1234
  retry: { max_attempts: 4, initial_ms: 50 }
steps:
  - name: a
    handler: h
  - name: b
    handler: h
    depends_on: [a]
    timeout_ms: 99
    retry: { jitter: 0.5 }
"#,
    )
    .unwrap();
    assert_eq!(t.steps[0].timeout_ms, 1234);
    assert_eq!(t.steps[0].retry.max_attempts, 4);
    assert_eq!(t.steps[1].timeout_ms, 99);
    assert_eq!(t.steps[1].retry.max_attempts, 4);
    assert_eq!(t.steps[1].retry.initial_ms, 50);
    assert_eq!(t.steps[1].retry.jitter, 0.5);
    assert_eq!(t.steps[0].handler_config, serde_json::json!({}));
}

#[test]
fn cycles_are_rejected_with_the_path() {
    let e = reject(
        "name: t\nsteps:\n  - {name: a, handler: h, depends_on: [c]}\n  - {name: b, handler: h, depends_on: [a]}\n  - {name: c, handler: h, depends_on: [b]}\n",
    );
    assert_eq!(e.kind, TemplateErrorKind::Cycle);
    assert_eq!(e.field.as_deref(), Some("depends_on"));
    assert_eq!(
        e.to_string(),
        "step `a`, field `depends_on`: dependency cycle: a -> c -> b -> a"
    );

    let e = reject("name: t\nsteps:\n  - {name: a, handler: h, depends_on: [a]}\n");
    assert_eq!(e.kind, TemplateErrorKind::Cycle);
    assert!(e.to_string().contains("a -> a"), "{e}");
}

#[test]
fn unknown_dependencies_are_rejected() {
    let e = reject("name: t\nsteps:\n  - {name: a, handler: h}\n  - {name: b, handler: h, depends_on: [a, z]}\n");
    assert_eq!(e.kind, TemplateErrorKind::UnknownDependency);
    assert_eq!(
        e.to_string(),
        "step `b`, field `depends_on`: unknown step `z`"
    );
}

#[test]
fn duplicate_names_are_rejected() {
    let e = reject("name: t\nsteps:\n  - {name: a, handler: h}\n  - {name: a, handler: g}\n");
    assert_eq!(e.kind, TemplateErrorKind::DuplicateName);
    assert_eq!(e.step.as_deref(), Some("a"));
}

#[test]
fn unknown_keys_are_rejected_where_they_are() {
    let e = reject("name: t\nsteps:\n  - {name: a, handler: h, retires: 3}\n");
    assert_eq!(e.kind, TemplateErrorKind::UnknownKey);
    assert_eq!(e.step.as_deref(), Some("a"));
    assert!(e.message.contains("unknown field `retires`"), "{e}");

    let e = reject("name: t\nsteps:\n  - {name: a, handler: h, retry: {max_attempt: 3}}\n");
    assert_eq!(e.kind, TemplateErrorKind::UnknownKey);
    assert_eq!(e.step.as_deref(), Some("a"));
    assert_eq!(e.field.as_deref(), Some("retry"));
    assert!(e.message.contains("max_attempt"), "{e}");

    let e = reject("name: t\nversion: 2\nsteps:\n  - {name: a, handler: h}\n");
    assert_eq!(e.kind, TemplateErrorKind::UnknownKey);
    assert!(e.message.contains("`version`"), "{e}");
}

#[test]
fn bad_values_are_rejected_with_step_and_field() {
    let cases = [
        (
            "{name: a, handler: h, retry: {max_attempts: 0}}",
            "retry.max_attempts",
        ),
        (
            "{name: a, handler: h, retry: {jitter: 1.5}}",
            "retry.jitter",
        ),
        (
            "{name: a, handler: h, retry: {multiplier: 0.5}}",
            "retry.multiplier",
        ),
        (
            "{name: a, handler: h, retry: {initial_ms: 500, max_ms: 100}}",
            "retry.max_ms",
        ),
        ("{name: a, handler: h, timeout_ms: 0}", "timeout_ms"),
        ("{name: a, handler: ''}", "handler"),
    ];
    for (step, field) in cases {
        let e = reject(&format!("name: t\nsteps:\n  - {step}\n"));
        assert_eq!(e.kind, TemplateErrorKind::BadValue, "{step}: {e}");
        assert_eq!(e.step.as_deref(), Some("a"), "{step}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{step}: {e}");
    }

    // No worker can announce a longer handler name (SPEC §4.2).
    let e = reject(&format!(
        "name: t\nsteps:\n  - {{name: a, handler: {}}}\n",
        "h".repeat(256)
    ));
    assert_eq!(e.kind, TemplateErrorKind::BadValue, "{e}");
    assert_eq!(e.field.as_deref(), Some("handler"), "{e}");
    assert!(e.to_string().contains("at most 255 characters"), "{e}");

    let e = reject("name: t\nsteps:\n  - {name: a, handler: h, timeout_ms: soon}\n");
    assert_eq!(e.kind, TemplateErrorKind::BadValue);
    assert_eq!(e.step.as_deref(), Some("a"));
    assert!(e.message.contains("invalid type"), "{e}");

    let e = reject("name: t\nsteps:\n  - {handler: h}\n");
    assert_eq!(e.step.as_deref(), Some("#1"));
    assert!(e.message.contains("missing field `name`"), "{e}");

    let e = reject("name: t\nsteps: []\n");
    assert_eq!(e.field.as_deref(), Some("steps"));
}

#[test]
fn syntax_errors_and_missing_files_are_reported() {
    let e = reject("name: 'unterminated\nsteps: []\n");
    assert_eq!(e.kind, TemplateErrorKind::Syntax, "{e:?}");
    assert!(e.message.contains("line"), "{e}");
    let e = reject("- a list, not a template\n");
    assert_eq!(e.kind, TemplateErrorKind::Syntax, "{e:?}");
    let e = TaskTemplate::load("/nonexistent/workflow.yaml").unwrap_err();
    assert_eq!(e.kind, TemplateErrorKind::Io);
    assert!(e.to_string().contains("/nonexistent/workflow.yaml"));
}

#[test]
fn the_schema_describes_the_format() {
    let schema = tasker_engine::template_schema();
    let text = schema.to_string();
    for key in [
        "depends_on",
        "handler_config",
        "max_attempts",
        "jitter",
        "timeout_ms",
    ] {
        assert!(text.contains(key), "schema lacks {key}");
    }
}

#[test]
fn the_committed_schema_is_current() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/workflows/workflow.schema.json"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == tasker_engine::render_template_schema(),
        "{path} is out of date: run `tasker schema`"
    );
}
