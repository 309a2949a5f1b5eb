//! Task templates: a workflow's steps, their handlers and dependencies, and
//! how each is retried, loaded from YAML and checked before anything runs.
//!
//! ```
//! use tasker_engine::TaskTemplate;
//!
//! let template = TaskTemplate::from_yaml_str(r#"
//! name: greet
//! steps:
//!   - name: fetch
//!     handler: echo
//!   - name: greet
//!     handler: echo
//!     depends_on: [fetch]
//!     retry: { max_attempts: 5 }
//! "#).unwrap();
//! assert_eq!(template.steps[1].retry.max_attempts, 5);
//!
//! let err = TaskTemplate::from_yaml_str("name: t\nsteps:\n  - name: a\n    handler: h\n    depends_on: [b]\n")
//!     .unwrap_err();
//! assert_eq!(err.to_string(), "step `a`, field `depends_on`: unknown step `b`");
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::retry::RetryPolicy;

/// A workflow: named steps forming a directed acyclic graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    /// The workflow's name, shown in reports.
    #[schemars(length(min = 1), regex(pattern = r"\S"))]
    pub name: String,
    /// What the workflow does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Settings every step takes unless it sets its own.
    #[serde(default)]
    pub defaults: StepDefaults,
    /// The steps, in any order; `depends_on` sets the order they run in.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepTemplate>,
}

/// Per-template defaults for steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// Step timeout in ms (default 30 000, at most 30 days).
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1, max = tasker_protocol::MAX_TIMEOUT_MS))]
    pub timeout_ms: u64,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryPolicy,
}

impl Default for StepDefaults {
    fn default() -> Self {
        Self {
            timeout_ms: default_timeout_ms(),
            retry: RetryPolicy::default(),
        }
    }
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepTemplate {
    /// Unique within the template; the key of this step's output in its
    /// dependents' `previous_results`.
    #[schemars(length(min = 1), regex(pattern = r"\S"))]
    pub name: String,
    /// The handler that runs it (`handler_class` on the wire); at most 255
    /// characters, as a worker's handler names are.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"\S"))]
    pub handler: String,
    /// Steps that must complete before this one starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Passed to the handler as `handler_config`.
    #[serde(default = "empty_object")]
    pub handler_config: Value,
    /// Timeout of each attempt, in ms (default: the template's
    /// `defaults.timeout_ms`; at most 30 days).
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1, max = tasker_protocol::MAX_TIMEOUT_MS))]
    pub timeout_ms: u64,
    /// How failed attempts are retried; keys left out take the template's
    /// `defaults.retry`.
    #[serde(default)]
    pub retry: RetryPolicy,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// A step as written, before the template's defaults fill it in.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSource {
    name: String,
    handler: String,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default = "empty_object")]
    handler_config: Value,
    timeout_ms: Option<u64>,
    retry: Option<serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateSource {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    defaults: Option<serde_norway::Value>,
    steps: Vec<serde_norway::Value>,
}

/// What is wrong with a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateErrorKind {
    /// The file could not be read.
    Io,
    /// Not valid YAML, or the top level is not a template.
    Syntax,
    /// A key the format does not have (often a misspelling).
    UnknownKey,
    /// A value of the wrong type or out of range.
    BadValue,
    /// Two steps share a name.
    DuplicateName,
    /// `depends_on` names a step that does not exist.
    UnknownDependency,
    /// The steps' dependencies form a cycle.
    Cycle,
}

/// A template that cannot run, naming the step and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct TemplateError {
    /// The kind of problem.
    pub kind: TemplateErrorKind,
    /// The step at fault, when one is.
    pub step: Option<String>,
    /// The field at fault (dotted, e.g. `retry.max_attempts`), when one is.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.step, &self.field) {
            (Some(step), Some(field)) => write!(f, "step `{step}`, field `{field}`: ")?,
            (Some(step), None) => write!(f, "step `{step}`: ")?,
            (None, Some(field)) => write!(f, "field `{field}`: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl TemplateError {
    pub(crate) fn new(
        kind: TemplateErrorKind,
        step: Option<&str>,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            step: step.map(str::to_string),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// Classifies a decoding error from a part of the template, at `path`
    /// within it (empty: the part itself).
    fn from_serde(
        step: Option<&str>,
        prefix: Option<&str>,
        path: &str,
        e: &serde_norway::Error,
    ) -> Self {
        let message = e.to_string();
        let path = (!path.is_empty() && path != ".").then(|| path.to_string());
        let kind = if message.starts_with("unknown field") {
            TemplateErrorKind::UnknownKey
        } else {
            TemplateErrorKind::BadValue
        };
        let field = match (prefix, path) {
            (Some(p), Some(path)) => Some(format!("{p}.{path}")),
            (Some(p), None) => Some(p.to_string()),
            (None, path) => path,
        };
        Self::new(kind, step, field.as_deref(), message)
    }
}

impl TaskTemplate {
    /// Reads and checks a template file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TemplateError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            TemplateError::new(
                TemplateErrorKind::Io,
                None,
                None,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Self::from_yaml_str(&text)
    }

    /// Parses and checks a template.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, TemplateError> {
        let syntax =
            |message: String| TemplateError::new(TemplateErrorKind::Syntax, None, None, message);
        let mut document: serde_norway::Value =
            serde_norway::from_str(yaml).map_err(|e| syntax(e.to_string()))?;
        if document.is_null() {
            return Err(syntax(
                "the file is empty: a workflow needs a `name` and its `steps`".into(),
            ));
        }
        // `<<: *anchor` merge keys, for steps that share settings; top-level
        // keys starting `x-` hold what the anchors name, and are not read
        // (as in a Compose file).
        document.apply_merge().map_err(|e| syntax(e.to_string()))?;
        if let serde_norway::Value::Mapping(top) = &mut document {
            top.retain(|key, _| !key.as_str().is_some_and(|k| k.starts_with("x-")));
        }
        let source: TemplateSource = decode(document, None, None).map_err(|mut err| {
            if err.kind == TemplateErrorKind::BadValue && err.field.is_none() {
                err.kind = TemplateErrorKind::Syntax;
            }
            err
        })?;
        let max_written = source
            .defaults
            .as_ref()
            .and_then(|d| d.get("retry"))
            .is_some_and(|r| r.get("max_ms").is_some());
        let defaults: StepDefaults = match source.defaults {
            None => StepDefaults::default(),
            Some(written) => {
                let mut defaults: StepDefaults = decode(written.clone(), None, Some("defaults"))?;
                if let Some(retry) = written.get("retry") {
                    defaults.retry.widen_unset_max(retry);
                }
                defaults
            }
        };
        check_timeout(None, "defaults.timeout_ms", defaults.timeout_ms)?;
        defaults
            .retry
            .check()
            .map_err(|(field, msg)| bad(None, &format!("defaults.retry.{field}"), msg))?;
        let mut steps = Vec::with_capacity(source.steps.len());
        for (i, raw) in source.steps.into_iter().enumerate() {
            steps.push(step_from(raw, i, &defaults, max_written)?);
        }
        let template = TaskTemplate {
            name: source.name,
            description: source.description,
            defaults,
            steps,
        };
        template.check()?;
        Ok(template)
    }

    /// Checks names, dependencies and values; [`from_yaml_str`](Self::from_yaml_str)
    /// calls it, and so should code that builds a template by hand.
    pub fn check(&self) -> Result<(), TemplateError> {
        if self.name.trim().is_empty() {
            return Err(bad(None, "name", "must not be empty"));
        }
        if self.steps.is_empty() {
            return Err(bad(None, "steps", "a template needs at least one step"));
        }
        let mut seen = HashSet::new();
        for (position, step) in self.steps.iter().enumerate() {
            let name = step.name.as_str();
            if name.trim().is_empty() {
                let label = format!("#{}", position + 1);
                return Err(bad(Some(&label), "name", "a step name must not be empty"));
            }
            if !seen.insert(name) {
                return Err(TemplateError::new(
                    TemplateErrorKind::DuplicateName,
                    Some(name),
                    Some("name"),
                    "another step has this name",
                ));
            }
            if step.handler.trim().is_empty() {
                return Err(bad(Some(name), "handler", "must not be empty"));
            }
            if step.handler.chars().count() > tasker_protocol::MAX_NAME_CHARS {
                // No worker could announce it (SPEC §4.2): its steps would
                // only ever wait for one.
                return Err(bad(
                    Some(name),
                    "handler",
                    "must be at most 255 characters, as a worker's handler names are",
                ));
            }
            check_timeout(Some(name), "timeout_ms", step.timeout_ms)?;
            step.retry
                .check()
                .map_err(|(field, msg)| bad(Some(name), &format!("retry.{field}"), msg))?;
        }
        for step in &self.steps {
            let mut deps = HashSet::new();
            for dep in &step.depends_on {
                if !seen.contains(dep.as_str()) {
                    return Err(TemplateError::new(
                        TemplateErrorKind::UnknownDependency,
                        Some(&step.name),
                        Some("depends_on"),
                        format!("unknown step `{dep}`"),
                    ));
                }
                if !deps.insert(dep.as_str()) {
                    return Err(bad(
                        Some(&step.name),
                        "depends_on",
                        format!("`{dep}` is listed twice"),
                    ));
                }
            }
        }
        if let Some(cycle) = self.find_cycle() {
            return Err(TemplateError::new(
                TemplateErrorKind::Cycle,
                Some(&cycle[0]),
                Some("depends_on"),
                format!("dependency cycle: {}", cycle.join(" -> ")),
            ));
        }
        Ok(())
    }

    /// The index of each step by name.
    pub(crate) fn index(&self) -> HashMap<&str, usize> {
        self.steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.as_str(), i))
            .collect()
    }

    /// A cycle as step names, first repeated at the end, if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let index = self.index();
        let mut marks = vec![Mark::New; self.steps.len()];
        // Iterative DFS: a 1,000-step chain must not overflow the stack.
        for root in 0..self.steps.len() {
            if marks[root] != Mark::New {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            marks[root] = Mark::Open;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let deps = &self.steps[node].depends_on;
                if *next == deps.len() {
                    marks[node] = Mark::Done;
                    stack.pop();
                    continue;
                }
                let dep = index[deps[*next].as_str()];
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Open;
                        stack.push((dep, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        // The stack runs from dependent to dependency; a
                        // reader follows "a depends on b", so keep that order.
                        let mut cycle: Vec<String> = stack[from..]
                            .iter()
                            .map(|&(n, _)| self.steps[n].name.clone())
                            .collect();
                        cycle.push(self.steps[dep].name.clone());
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            }
        }
        None
    }
}

fn bad(step: Option<&str>, field: &str, message: impl Into<String>) -> TemplateError {
    TemplateError::new(TemplateErrorKind::BadValue, step, Some(field), message)
}

/// A timeout an orchestrator takes: at least 1 ms, at most 30 days. Past
/// that the orchestrator refused the whole batch at run time, and with it
/// every step that became ready beside this one.
fn check_timeout(step: Option<&str>, field: &str, ms: u64) -> Result<(), TemplateError> {
    if ms == 0 {
        return Err(bad(step, field, "must be positive"));
    }
    if ms > tasker_protocol::MAX_TIMEOUT_MS {
        return Err(bad(
            step,
            field,
            format!(
                "must be at most {} (30 days), got {ms}",
                tasker_protocol::MAX_TIMEOUT_MS
            ),
        ));
    }
    Ok(())
}

/// Decodes a part of the template, naming the field at fault by its path
/// within the part (`retry.max_attempts`), after `prefix` when given.
fn decode<T: serde::de::DeserializeOwned>(
    value: serde_norway::Value,
    step: Option<&str>,
    prefix: Option<&str>,
) -> Result<T, TemplateError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        TemplateError::from_serde(step, prefix, &path, e.inner())
    })
}

fn step_from(
    raw: serde_norway::Value,
    position: usize,
    defaults: &StepDefaults,
    max_written: bool,
) -> Result<StepTemplate, TemplateError> {
    // Errors name the step; before its name is known, its position stands in.
    let label = raw
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("#{}", position + 1));
    let source: StepSource = decode(raw, Some(&label), None)?;
    let retry = match source.retry {
        None => defaults.retry.clone(),
        Some(overrides) => defaults
            .retry
            .merged(overrides, max_written)
            .map_err(|(path, e)| {
                TemplateError::from_serde(Some(&label), Some("retry"), &path, &e)
            })?,
    };
    Ok(StepTemplate {
        name: source.name,
        handler: source.handler,
        depends_on: source.depends_on,
        handler_config: source.handler_config,
        timeout_ms: source.timeout_ms.unwrap_or(defaults.timeout_ms),
        retry,
    })
}
