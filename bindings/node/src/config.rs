//! Configuration: resolved by [`TaskerConfig::resolve`] only, the call
//! every binding makes. The options of a `Worker` (any config key, in
//! camelCase) become [`Sources::options`] as JSON values; the file section,
//! the `TASKER_*` variables, unknown keys and bad values are all Rust's to
//! judge, and its error is thrown (code
//! [`CONFIG_ERROR_CODE`](crate::errors::CONFIG_ERROR_CODE)) naming an
//! option as the caller wrote it.
//!
//! The one thing done here is idiom: JavaScript spells a key
//! `heartbeatIntervalMs` where the config says `heartbeat_interval_ms`, and
//! has only one kind of number.

use std::collections::BTreeMap;
use std::path::PathBuf;

use napi::bindgen_prelude::{Env, JsObjectValue, Object};
use napi_derive::napi;
use serde_json::{Map, Number, Value};
use tasker_config::{ConfigError, Sources, TaskerConfig};

use crate::errors::{BindingError, Result};

/// The config keys (`tasker_config::KEYS`, snake_case, in file order). The
/// package's TypeScript `Config` type lists them in camelCase for its
/// users; the test suite checks that the two agree.
#[napi]
pub fn config_keys() -> Vec<&'static str> {
    tasker_config::KEYS.to_vec()
}

/// A resolved configuration, as a `NativeWorker` takes it.
#[napi]
pub struct NativeConfig {
    pub(crate) config: TaskerConfig,
}

#[napi]
impl NativeConfig {
    /// Resolves a configuration: `path`'s section named by `environment`,
    /// else `TASKER_ENV` (default `development`), or without a path the
    /// built-in defaults; then the `TASKER_*` variables; then `options`,
    /// config keys in camelCase. Throws an error (code `TaskerConfigError`)
    /// naming the bad key, variable, value or file.
    #[napi(factory)]
    pub fn resolve(
        path: Option<String>,
        #[napi(ts_arg_type = "Record<string, unknown> | undefined | null")] options: Option<Object>,
        environment: Option<String>,
    ) -> Result<Self> {
        let mut sources = Sources::new();
        sources.path = path.map(PathBuf::from);
        sources.environment = environment;
        let mut given_as = BTreeMap::new();
        if let Some(options) = options {
            (sources.options, given_as) =
                config_options(read_options(&options)?).map_err(BindingError::from)?;
        }
        let config = TaskerConfig::resolve(&sources)
            .map_err(|e| in_callers_words(e, &given_as))
            .map_err(BindingError::from)?;
        Ok(Self { config })
    }

    /// The values, by config key in camelCase, in file order.
    #[napi(ts_return_type = "Record<string, unknown>")]
    pub fn values<'env>(&self, env: &'env Env) -> Result<Object<'env>> {
        let map = match serde_json::to_value(&self.config) {
            Ok(Value::Object(map)) => map,
            _ => unreachable!("a config serialises to an object"),
        };
        let mut values = Object::new(env).map_err(BindingError::from)?;
        for key in tasker_config::KEYS {
            let value = map.get(*key).cloned().unwrap_or(Value::Null);
            values
                .set_named_property(&camel_case(key), to_js_number(value))
                .map_err(BindingError::from)?;
        }
        Ok(values)
    }

    /// The API's base URL for a client (`Client`), without a trailing
    /// slash: `apiUrl`, else `http://` + `apiListen` with an unspecified
    /// address reached on loopback ([`TaskerConfig::api_base_url`]).
    /// Throws an error (code `TaskerConfigError`) naming the key when
    /// neither gives a usable URL (an `ftp://` URL, port 0, ...).
    #[napi]
    pub fn api_base_url(&self) -> Result<String> {
        Ok(self.config.api_base_url().map_err(BindingError::from)?)
    }
}

/// The own enumerable properties of `options` as JSON values (`undefined`
/// ones left out); a value with no JSON form is an error naming its key.
fn read_options(options: &Object) -> Result<Map<String, Value>> {
    let mut values = Map::new();
    for name in Object::keys(options).map_err(BindingError::from)? {
        let value: Option<Value> = options
            .get(&name)
            .map_err(|e| ConfigError::Option {
                key: name.clone(),
                message: e.reason.clone(),
            })
            .map_err(BindingError::from)?;
        if let Some(value) = value {
            values.insert(name, value);
        }
    }
    Ok(values)
}

/// Options by config key, and each key's name as the caller wrote it.
type Converted = (BTreeMap<String, Value>, BTreeMap<String, String>);

/// Options of a JavaScript caller as `Sources::options`: keys to snake_case,
/// integral numbers as integers (a JavaScript number above 2^32 arrives as
/// a float, which no integer key would take); and each key's name as the
/// caller wrote it, for [`in_callers_words`].
fn config_options(options: Map<String, Value>) -> std::result::Result<Converted, ConfigError> {
    let mut converted = BTreeMap::new();
    let mut given_as: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in options {
        let key = snake_case(&name);
        if let Some(first) = given_as.insert(key.clone(), name.clone()) {
            return Err(ConfigError::Option {
                message: format!("given twice, as `{first}` and as `{name}`"),
                key: name,
            });
        }
        converted.insert(key, from_js_number(value));
    }
    Ok((converted, given_as))
}

/// An error about an option named as the caller wrote it, with a
/// suggestion in camelCase: `workerCapcity` came back as `worker_capcity`
/// with `worker_capacity` suggested, names a Node caller never wrote and
/// that would not have worked as they were. Errors about the file or a
/// `TASKER_*` variable keep the file's snake_case.
fn in_callers_words(e: ConfigError, given_as: &BTreeMap<String, String>) -> ConfigError {
    let as_given = |key: &str| given_as.get(key).cloned();
    match e {
        ConfigError::UnknownKey {
            origin,
            key,
            suggestion,
        } if origin == "option" => ConfigError::UnknownKey {
            origin,
            key: as_given(&key).unwrap_or(key),
            suggestion: suggestion.map(|s| camel_case(&s)),
        },
        ConfigError::Option { key, message } => ConfigError::Option {
            key: as_given(&key).unwrap_or(key),
            message,
        },
        ConfigError::Invalid { key, message } => match as_given(key) {
            Some(name) => ConfigError::Option { key: name, message },
            None => ConfigError::Invalid { key, message },
        },
        other => other,
    }
}

/// `heartbeatIntervalMs` → `heartbeat_interval_ms`; a snake_case key is
/// left as it is.
fn snake_case(name: &str) -> String {
    let mut key = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            key.push('_');
            key.push(c.to_ascii_lowercase());
        } else {
            key.push(c);
        }
    }
    key
}

/// `heartbeat_interval_ms` → `heartbeatIntervalMs`.
fn camel_case(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            name.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            name.push(c);
        }
    }
    name
}

/// An integral float (all a JavaScript number is) as an integer.
fn from_js_number(value: Value) -> Value {
    const LIMIT: f64 = 9_223_372_036_854_775_808.0; // 2^63
    match &value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            if f.fract() == 0.0 && (0.0..LIMIT).contains(&f) {
                Value::Number((f as u64).into())
            } else if f.fract() == 0.0 && (-LIMIT..0.0).contains(&f) {
                Value::Number((f as i64).into())
            } else {
                value
            }
        }
        _ => value,
    }
}

/// A number as a JavaScript number: Node-API would make an integer beyond
/// `Number.MAX_SAFE_INTEGER` a `BigInt`.
fn to_js_number(value: Value) -> Value {
    const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
    match &value {
        Value::Number(n)
            if !n.is_f64()
                && !n
                    .as_i64()
                    .is_some_and(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER) =>
        {
            n.as_f64()
                .and_then(Number::from_f64)
                .map_or(value, Value::Number)
        }
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_key_round_trips_through_camel_case() {
        for key in tasker_config::KEYS {
            let name = camel_case(key);
            assert!(!name.contains('_'), "{name}");
            assert_eq!(snake_case(&name), *key);
        }
        assert_eq!(camel_case("heartbeat_interval_ms"), "heartbeatIntervalMs");
        assert_eq!(snake_case("sendHwm"), "send_hwm");
    }

    fn resolve(options: Value) -> std::result::Result<TaskerConfig, String> {
        let Value::Object(options) = options else {
            panic!("options are an object")
        };
        let mut sources = Sources::with_vars(Vec::new());
        let given_as;
        (sources.options, given_as) = config_options(options).map_err(|e| e.to_string())?;
        TaskerConfig::resolve(&sources).map_err(|e| in_callers_words(e, &given_as).to_string())
    }

    #[test]
    fn options_reach_every_key_including_the_socket_marks() {
        let config = resolve(json!({
            "sendHwm": 7, "recvHwm": 9, "workerCapacity": 3, "shutdownTimeoutMs": 5e9
        }))
        .unwrap();
        assert_eq!((config.send_hwm, config.recv_hwm), (7, 9));
        assert_eq!(config.worker_capacity, 3);
        assert_eq!(config.shutdown_timeout_ms, 5_000_000_000);
    }

    #[test]
    fn a_bad_option_is_named_as_written_and_the_key_it_resembles_in_camel_case() {
        let error = resolve(json!({ "workerCapcity": 3 })).unwrap_err();
        assert_eq!(
            error,
            "unknown config key `workerCapcity` (option); did you mean `workerCapacity`?"
        );
        let error = resolve(json!({ "heartbeatIntervalMS": 5 })).unwrap_err();
        assert!(error.contains("`heartbeatIntervalMS`"), "{error}");
        let error = resolve(json!({ "batchSize": 2.5 })).unwrap_err();
        assert!(
            error.starts_with("invalid value for option `batchSize`"),
            "{error}"
        );
        let error = resolve(json!({ "batchSize": 2, "batch_size": 3 })).unwrap_err();
        assert!(error.contains("given twice"), "{error}");
        // Checked once every source is in (validate): still the option's name.
        let error = resolve(json!({ "heartbeatIntervalMs": 0 })).unwrap_err();
        assert!(error.contains("`heartbeatIntervalMs`"), "{error}");
    }

    #[test]
    fn large_integers_leave_as_numbers() {
        assert_eq!(to_js_number(json!(u64::MAX)), json!(u64::MAX as f64));
        assert_eq!(to_js_number(json!(1u64 << 60)), json!((1u64 << 60) as f64));
        assert_eq!(to_js_number(json!(-1)), json!(-1));
        assert_eq!(
            to_js_number(json!(5_000_000_000u64)),
            json!(5_000_000_000u64)
        );
    }
}
