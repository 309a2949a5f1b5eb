//! The committed OpenAPI document must be exactly what the types and the
//! route table generate, and must hold together as an OpenAPI 3.1
//! document: every reference resolves, every operation answers, every
//! path parameter is declared.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;
use tasker_server::api::{openapi, render_openapi, OPENAPI_PATH};

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
const JSON_TYPES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "string", "integer",
];

#[test]
fn committed_openapi_matches_the_types() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(OPENAPI_PATH);
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == render_openapi(),
        "{} is out of date (or missing): run `cargo run -p tasker-cli -- schema`",
        path.display()
    );
}

/// Every `$ref` in `value`, with where it is.
fn refs(value: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{at}/{key}");
                if key == "$ref" {
                    out.push((here, child.as_str().expect("$ref is a string").to_string()));
                } else {
                    refs(child, &here, out);
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                refs(child, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_schema_is_used() {
    let doc = openapi();
    let mut found = Vec::new();
    refs(&doc, "", &mut found);
    assert!(!found.is_empty());
    let mut used = BTreeSet::new();
    for (at, target) in &found {
        let pointer = target
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: {target} is not a local reference"));
        assert!(
            pointer.starts_with("/components/schemas/"),
            "{at}: {target} points outside components.schemas"
        );
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: {target} does not resolve"
        );
        used.insert(
            pointer
                .trim_start_matches("/components/schemas/")
                .to_string(),
        );
    }
    let defined: BTreeSet<String> = doc["components"]["schemas"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    // A schema only other schemas use is reached through them; one no
    // reference reaches is dead weight or a forgotten route.
    assert_eq!(
        defined, used,
        "components.schemas and the schemas referenced differ"
    );
}

/// Checks the JSON Schema keywords a generator could get wrong: `type`
/// names, `required` naming declared properties, no leftover `$defs` or
/// `$schema` (definitions belong in components).
fn check_schema(schema: &Value, at: &str) {
    match schema {
        Value::Bool(_) => {}
        Value::Object(map) => {
            assert!(!map.contains_key("$defs"), "{at}: has $defs");
            assert!(!map.contains_key("$schema"), "{at}: has $schema");
            if let Some(kind) = map.get("type") {
                let kinds: Vec<&str> = match kind {
                    Value::String(s) => vec![s.as_str()],
                    Value::Array(a) => a.iter().map(|k| k.as_str().unwrap()).collect(),
                    other => panic!("{at}: type is {other}"),
                };
                for k in kinds {
                    assert!(JSON_TYPES.contains(&k), "{at}: unknown type {k}");
                }
            }
            if let Some(format) = map.get("format").and_then(Value::as_str) {
                assert!(
                    !format.starts_with("uint"),
                    "{at}: format {format} is not one OpenAPI defines"
                );
            }
            if let Some(required) = map.get("required") {
                let properties = map
                    .get("properties")
                    .and_then(Value::as_object)
                    .unwrap_or_else(|| panic!("{at}: required without properties"));
                for name in required.as_array().unwrap() {
                    assert!(
                        properties.contains_key(name.as_str().unwrap()),
                        "{at}: required {name} is not a property"
                    );
                }
            }
            for (key, child) in map {
                if matches!(key.as_str(), "properties" | "$defs" | "patternProperties") {
                    for (name, sub) in child.as_object().unwrap() {
                        check_schema(sub, &format!("{at}/{key}/{name}"));
                    }
                } else if matches!(
                    key.as_str(),
                    "items" | "additionalProperties" | "not" | "if" | "then" | "else"
                ) {
                    check_schema(child, &format!("{at}/{key}"));
                } else if matches!(key.as_str(), "anyOf" | "oneOf" | "allOf" | "prefixItems") {
                    for (i, sub) in child.as_array().unwrap().iter().enumerate() {
                        check_schema(sub, &format!("{at}/{key}/{i}"));
                    }
                }
            }
        }
        other => panic!("{at}: a schema is an object or a boolean, not {other}"),
    }
}

#[test]
fn the_document_is_well_formed_openapi_3_1() {
    let doc = openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string());
    assert!(doc["info"]["version"].is_string());
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        check_schema(schema, &format!("#/components/schemas/{name}"));
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem["required"]
                .as_array()
                .unwrap()
                .contains(&Value::String(field.into())),
            "Problem lacks required {field}"
        );
    }

    let mut operation_ids = BTreeSet::new();
    let paths = doc["paths"].as_object().unwrap();
    assert!(!paths.is_empty());
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        let template_params: BTreeSet<String> = path
            .split('{')
            .skip(1)
            .map(|rest| rest.split('}').next().unwrap().to_string())
            .collect();
        let item = item.as_object().unwrap();
        assert!(!item.is_empty(), "{path} has no operation");
        for (method, op) in item {
            let at = format!("{method} {path}");
            assert!(METHODS.contains(&method.as_str()), "{at}: not a method");
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no operationId"));
            assert!(
                operation_ids.insert(id.to_string()),
                "{at}: operationId {id} twice"
            );

            let params = op
                .get("parameters")
                .map(|p| p.as_array().unwrap().clone())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            let mut path_params = BTreeSet::new();
            for param in &params {
                let name = param["name"].as_str().unwrap().to_string();
                let location = param["in"].as_str().unwrap().to_string();
                assert!(
                    ["query", "path", "header", "cookie"].contains(&location.as_str()),
                    "{at}: parameter {name} in {location}"
                );
                assert!(
                    seen.insert((name.clone(), location.clone())),
                    "{at}: {name} twice"
                );
                check_schema(&param["schema"], &format!("{at} parameter {name}"));
                assert!(
                    param["description"].is_string(),
                    "{at}: {name} undocumented"
                );
                if location == "path" {
                    assert_eq!(param["required"], true, "{at}: path parameter {name}");
                    path_params.insert(name);
                }
            }
            assert_eq!(path_params, template_params, "{at}: path parameters");

            if let Some(body) = op.get("requestBody") {
                let schema = &body["content"]["application/json"]["schema"];
                assert!(schema.get("$ref").is_some(), "{at}: request body schema");
            }

            let responses = op["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{at}: no responses"));
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{at}: no success response"
            );
            for (status, response) in responses {
                let at = format!("{at} -> {status}");
                assert!(response["description"].is_string(), "{at}: no description");
                let content = response["content"].as_object().unwrap();
                let is_error = status == "default" || !status.starts_with('2');
                if status != "default" {
                    let code: u16 = status.parse().unwrap_or_else(|_| panic!("{at}"));
                    assert!((100..600).contains(&code), "{at}");
                }
                if is_error {
                    assert_eq!(
                        content["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{at}: an error is a problem document"
                    );
                } else if path == "/metrics" {
                    assert!(
                        content["text/plain; version=0.0.4; charset=utf-8"]["schema"].is_object(),
                        "{at}: the Prometheus text format"
                    );
                } else {
                    assert!(
                        content["application/json"]["schema"].is_object(),
                        "{at}: JSON body"
                    );
                }
            }
        }
    }
    for expected in [
        "createTask",
        "listTasks",
        "getTask",
        "cancelTask",
        "listWorkflows",
        "listWorkers",
        "health",
        "ready",
        "getOpenApi",
        "getTaskJournal",
        "getThroughput",
        "getMetrics",
    ] {
        assert!(operation_ids.contains(expected), "no operation {expected}");
    }
}

#[test]
fn requests_are_strict_and_pages_carry_a_cursor() {
    let doc = openapi();
    let create = &doc["components"]["schemas"]["CreateTaskRequest"];
    assert_eq!(create["additionalProperties"], false);
    assert_eq!(create["properties"]["context"]["type"], "object");
    assert_eq!(create["properties"]["idempotency_key"]["maxLength"], 255);
    assert_eq!(create["required"], serde_json::json!(["workflow"]));
    let page = &doc["components"]["schemas"]["TaskPage"];
    assert!(page["properties"]["next_cursor"].is_object());
    let list = &doc["paths"]["/v1/tasks"]["get"]["parameters"];
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["status", "workflow", "created_since", "limit", "cursor"]
    );
    let limit = &list[3]["schema"];
    assert_eq!(limit["minimum"], 1);
    assert_eq!(limit["maximum"], 1000);
    let created = &doc["paths"]["/v1/tasks"]["post"]["responses"]["201"];
    assert!(created["headers"]["Location"].is_object());
}
