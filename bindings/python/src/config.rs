//! Configuration: every path goes through `TaskerConfig::resolve`, the one
//! resolution shared by all bindings (file section, then `TASKER_*`
//! variables, then keyword options); its errors become `ConfigError` with
//! the Rust message unchanged. Also the API address a client derives from
//! a configuration (`api_base_url`, `parse_api_url`), so that every SDK
//! derives it alike.

use std::collections::BTreeMap;
use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use serde_json::Value;
use tasker_config::{ConfigError, Sources, TaskerConfig};

use crate::{convert, errors};

/// A dict of keyword options as the JSON values `Sources::options` takes.
/// `None` values are left out (in Python, "not given").
fn options(dict: &Bound<'_, PyDict>) -> PyResult<BTreeMap<String, Value>> {
    let mut options = BTreeMap::new();
    for (key, value) in dict.iter() {
        let key: String = match key.extract() {
            Ok(key) => key,
            Err(_) => {
                return Err(errors::config(ConfigError::UnknownKey {
                    origin: "option".into(),
                    key: key.repr().map(|r| r.to_string()).unwrap_or_default(),
                    suggestion: None,
                }))
            }
        };
        if value.is_none() {
            continue;
        }
        let value = convert::from_py(&value, convert::MAX_DEPTH).map_err(|e| {
            errors::config(ConfigError::Option {
                key: key.clone(),
                message: e.to_string(),
            })
        })?;
        options.insert(key, value);
    }
    Ok(options)
}

/// Resolves a configuration and returns it as a dict of every key.
///
/// With `path`, the file's section for `environment` (default: `TASKER_ENV`,
/// else `development`); without, the built-in defaults. `TASKER_<KEY>`
/// environment variables apply in both cases, then `options` (config keys
/// such as `endpoint` or `worker_capacity`, to plain values). Raises
/// `ConfigError` naming the bad key or value.
#[pyfunction]
#[pyo3(signature = (path=None, environment=None, options=None))]
fn load_config<'py>(
    py: Python<'py>,
    path: Option<PathBuf>,
    environment: Option<String>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut sources = Sources::new();
    sources.path = path;
    sources.environment = environment;
    if let Some(dict) = options {
        sources.options = self::options(dict)?;
    }
    let config = TaskerConfig::resolve(&sources).map_err(errors::config)?;
    to_py(py, &config)
}

fn to_py<'py>(py: Python<'py>, config: &TaskerConfig) -> PyResult<Bound<'py, PyAny>> {
    let value =
        serde_json::to_value(config).map_err(|e| errors::ConfigError::new_err(e.to_string()))?;
    convert::to_py(py, &value)
}

/// The configuration a complete dict (as `load_config` returns, possibly
/// edited) describes: resolved from that dict alone, as options over the
/// built-in defaults, without the file or the environment (already applied
/// when it was loaded).
pub fn from_dict(config: &Bound<'_, PyDict>) -> PyResult<TaskerConfig> {
    let mut sources = Sources::new();
    sources.vars = Some(Vec::new());
    sources.options = options(config)?;
    TaskerConfig::resolve(&sources).map_err(errors::config)
}

/// Where a client reaches the API for the configuration `config` (a dict
/// as `load_config` returns) describes, without a trailing slash:
/// `api_url`, else `http://` + `api_listen` with an unspecified address
/// reached on loopback (`TaskerConfig::api_base_url`). `ConfigError` when
/// neither gives a usable URL (`ftp://`, port 0, ...).
#[pyfunction]
fn api_base_url(config: &Bound<'_, PyDict>) -> PyResult<String> {
    from_dict(config)?.api_base_url().map_err(errors::config)
}

/// `url` as an API base URL without a trailing slash
/// (`tasker_config::parse_api_url`: `http://HOST:PORT`, or
/// `https://HOST[:PORT]` for a TLS proxy, with an optional path prefix).
/// `ConfigError` naming `url` otherwise.
#[pyfunction]
fn parse_api_url(url: &str) -> PyResult<String> {
    tasker_config::parse_api_url(url).map_err(|message| {
        errors::ConfigError::new_err(format!("invalid value for url: {message}"))
    })
}

/// Adds `load_config`, `api_base_url`, `parse_api_url` and `CONFIG_KEYS`
/// (every key, in file order).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CONFIG_KEYS", PyTuple::new(m.py(), tasker_config::KEYS)?)?;
    m.add_function(wrap_pyfunction!(load_config, m)?)?;
    m.add_function(wrap_pyfunction!(api_base_url, m)?)?;
    m.add_function(wrap_pyfunction!(parse_api_url, m)?)?;
    Ok(())
}
