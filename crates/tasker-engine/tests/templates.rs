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
    assert_eq!(e.field.as_deref(), Some("retry.max_attempt"));
    assert!(e.message.contains("max_attempt"), "{e}");

    // Where it was written, not on the first step that inherits it.
    let e =
        reject("name: t\ndefaults: {retry: {max_atempts: 2}}\nsteps:\n  - {name: a, handler: h}\n");
    assert_eq!(e.kind, TemplateErrorKind::UnknownKey);
    assert_eq!(e.step, None);
    assert_eq!(e.field.as_deref(), Some("defaults.retry.max_atempts"));

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

/// A workflow author writing a value of the wrong type reads which field
/// it is, however deep: the step alone left them guessing.
#[test]
fn a_mistyped_value_is_named_by_its_field() {
    let cases = [
        ("{name: a, handler: h, timeout_ms: -5}", "timeout_ms"),
        ("{name: a, handler: h, depends_on: b}", "depends_on"),
        (
            "{name: a, handler: h, retry: {max_attempts: 2.5}}",
            "retry.max_attempts",
        ),
    ];
    for (step, field) in cases {
        let e = reject(&format!("name: t\nsteps:\n  - {step}\n"));
        assert_eq!(e.kind, TemplateErrorKind::BadValue, "{step}: {e}");
        assert_eq!(e.step.as_deref(), Some("a"), "{step}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{step}: {e}");
    }
    let e = reject("name: t\ndefaults: {timeout_ms: 0}\nsteps:\n  - {name: a, handler: h}\n");
    assert_eq!(
        e.to_string(),
        "field `defaults.timeout_ms`: must be positive"
    );
    let e = reject("name: t\nsteps:\n  - {name: a, handler: h}\n  - {name: '  ', handler: h}\n");
    assert_eq!(
        e.to_string(),
        "step `#2`, field `name`: a step name must not be empty"
    );
}

/// Past 30 days a timeout passed `--check` and then the orchestrator
/// refused the whole batch at run time, failing every step that became
/// ready beside it; a retry wait of 10^19 ms overflowed a date and stopped
/// the task's engine for good. Both are refused where they are written.
#[test]
fn timeouts_and_retry_waits_are_at_most_30_days() {
    let days_30 = 2_592_000_000u64;
    let ok = |step: &str| {
        TaskTemplate::from_yaml_str(&format!("name: t\nsteps:\n  - {step}\n")).unwrap()
    };
    assert_eq!(
        ok(&format!("{{name: a, handler: h, timeout_ms: {days_30}}}")).steps[0].timeout_ms,
        days_30
    );
    let cases = [
        (
            format!("{{name: a, handler: h, timeout_ms: {}}}", days_30 + 1),
            Some("a"),
            "timeout_ms",
        ),
        (
            "{name: a, handler: h, retry: {initial_ms: 1000, max_ms: 18446744073709551615}}".into(),
            Some("a"),
            "retry.max_ms",
        ),
        (
            "{name: a, handler: h, retry: {initial_ms: 18446744073709551615}}".into(),
            Some("a"),
            "retry.initial_ms",
        ),
    ];
    for (step, at, field) in cases {
        let e = reject(&format!("name: t\nsteps:\n  - {step}\n"));
        assert_eq!(e.kind, TemplateErrorKind::BadValue, "{step}: {e}");
        assert_eq!(e.step.as_deref(), at, "{step}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{step}: {e}");
        assert!(e.message.contains("at most 2592000000 (30 days)"), "{e}");
    }
    let e = reject(&format!(
        "name: t\ndefaults: {{timeout_ms: {}}}\nsteps:\n  - {{name: a, handler: h}}\n",
        days_30 + 1
    ));
    assert_eq!(e.field.as_deref(), Some("defaults.timeout_ms"), "{e}");

    // A vast multiplier is capped by max_ms; a policy built by hand past
    // the checks still waits at most 30 days.
    let template = ok("{name: a, handler: h, retry: {max_attempts: 9, multiplier: 1.0e308}}");
    assert_eq!(
        template.steps[0].retry.delay(8, 0.0),
        std::time::Duration::from_millis(10_000)
    );
    let unchecked = tasker_engine::RetryPolicy {
        initial_ms: u64::MAX,
        max_ms: u64::MAX,
        ..Default::default()
    };
    assert_eq!(
        unchecked.delay(3, 0.0),
        std::time::Duration::from_millis(days_30)
    );
}

/// Every key is optional: `initial_ms` alone above the default `max_ms`
/// (10 s) was refused for a value the author never wrote.
#[test]
fn a_max_ms_left_out_is_at_least_initial_ms() {
    let t = TaskTemplate::from_yaml_str(
        "name: t\ndefaults: {retry: {initial_ms: 20000}}\nsteps:\n  - {name: a, handler: h}\n  - {name: b, handler: h, retry: {initial_ms: 60000}}\n  - {name: c, handler: h, retry: {max_attempts: 2}}\n",
    )
    .unwrap();
    let waits: Vec<(u64, u64)> = t
        .steps
        .iter()
        .map(|s| (s.retry.initial_ms, s.retry.max_ms))
        .collect();
    assert_eq!(
        waits,
        [(20_000, 20_000), (60_000, 60_000), (20_000, 20_000)]
    );
    // Written, it still must not be below, in the step or in `defaults`.
    let e = reject(
        "name: t\nsteps:\n  - {name: a, handler: h, retry: {initial_ms: 60000, max_ms: 1000}}\n",
    );
    assert_eq!(e.field.as_deref(), Some("retry.max_ms"), "{e}");
    let e = reject("name: t\ndefaults: {retry: {max_ms: 5000}}\nsteps:\n  - {name: a, handler: h, retry: {initial_ms: 20000}}\n");
    assert_eq!(e.field.as_deref(), Some("retry.max_ms"), "{e}");
}

/// Steps that share settings can say so once, with YAML's merge key.
#[test]
fn merge_keys_share_settings_between_steps() {
    let t = TaskTemplate::from_yaml_str(
        "name: t\nsteps:\n  - &common {name: a, handler: h, timeout_ms: 5000, retry: {max_attempts: 5}}\n  - {<<: *common, name: b, depends_on: [a]}\n",
    )
    .unwrap();
    assert_eq!(t.steps[1].name, "b");
    assert_eq!(t.steps[1].timeout_ms, 5_000);
    assert_eq!(t.steps[1].retry.max_attempts, 5);

    // Or from a top-level `x-` key, which is otherwise not read.
    let t = TaskTemplate::from_yaml_str(
        "name: t\nx-common: &common {handler: h, timeout_ms: 7000}\nsteps:\n  - {<<: *common, name: a}\n",
    )
    .unwrap();
    assert_eq!(
        (t.steps[0].handler.as_str(), t.steps[0].timeout_ms),
        ("h", 7_000)
    );
    let e = reject("name: t\ncommon: {handler: h}\nsteps:\n  - {name: a, handler: h}\n");
    assert_eq!(e.kind, TemplateErrorKind::UnknownKey, "{e}");
}

#[test]
fn syntax_errors_and_missing_files_are_reported() {
    for empty in ["", "\n# only a comment\n"] {
        let e = reject(empty);
        assert_eq!(e.kind, TemplateErrorKind::Syntax, "{e:?}");
        assert!(e.message.contains("the file is empty"), "{e}");
    }
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
