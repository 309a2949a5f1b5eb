//! The native part of the `tasker_core` gem: a thin magnus layer over
//! `tasker_worker::WorkerRuntime`. The Ruby API (`TaskerCore::Worker`,
//! handler pool, signal handling, logger) lives in `lib/tasker_core`; this
//! crate only moves steps and results across, and never runs Ruby code off a
//! Ruby thread nor blocks while holding the GVL.

mod convert;
mod errors;
mod logging;
mod nogvl;
mod runtime;

use magnus::{function, Error, Module, Object, RHash, Ruby};
use tasker_config::TaskerConfig;

/// `TaskerCore::Native.load_config(path, env, overrides)`: the file's
/// section for `env` (default `TASKER_ENV`, else development; no file: the
/// built-in defaults), then `TASKER_*` variables, then `overrides`; validated.
/// Returns a Hash with String keys.
fn load_config(
    ruby: &Ruby,
    path: Option<String>,
    env: Option<String>,
    overrides: RHash,
) -> Result<RHash, Error> {
    let cfg = |e: tasker_config::ConfigError| errors::config(e.to_string());
    let base = TaskerConfig::load_from(path.as_deref().map(std::path::Path::new), env.as_deref())
        .map_err(cfg)?;
    let mut json = serde_json::to_value(&base).map_err(|e| errors::config(e.to_string()))?;
    let overrides = convert::to_json(
        magnus::value::ReprValue::as_value(overrides),
        convert::MAX_DEPTH,
    )
    .map_err(|e| errors::config(format!("invalid override: {e}")))?;
    if let (Some(target), Some(overrides)) = (json.as_object_mut(), overrides.as_object()) {
        for (key, value) in overrides {
            if !tasker_config::KEYS.contains(&key.as_str()) {
                return Err(errors::config(format!(
                    "unknown config key `{key}`; expected one of {}",
                    tasker_config::KEYS.join(", ")
                )));
            }
            target.insert(key.clone(), value.clone());
        }
    }
    let config: TaskerConfig = serde_json::from_value(json)
        .map_err(|e| errors::config(format!("invalid override: {e}")))?;
    config.validate().map_err(cfg)?;
    config_to_hash(ruby, &config)
}

/// `TaskerCore::Native.check_config(hash)`: validates a complete config Hash
/// (as returned by `load_config`, possibly edited) and returns it normalised.
fn check_config(ruby: &Ruby, hash: RHash) -> Result<RHash, Error> {
    let config = runtime::config_from_hash(hash)?;
    config_to_hash(ruby, &config)
}

fn config_to_hash(ruby: &Ruby, config: &TaskerConfig) -> Result<RHash, Error> {
    let json = serde_json::to_value(config).map_err(|e| errors::config(e.to_string()))?;
    let map = json.as_object().expect("a config serialises to an object");
    let hash = convert::object_to_ruby(ruby, map.iter())?;
    Ok(RHash::from_value(hash).expect("a Hash"))
}

#[magnus::init(name = "tasker_core")]
fn init(ruby: &Ruby) -> Result<(), Error> {
    let core = ruby.define_module("TaskerCore")?;
    errors::define(ruby, core)?;
    let native = core.define_module("Native")?;
    native.const_set("CONFIG_KEYS", tasker_config::KEYS.to_vec())?;
    native.define_singleton_method("load_config", function!(load_config, 3))?;
    native.define_singleton_method("check_config", function!(check_config, 1))?;
    native.define_singleton_method("log_install", function!(logging::install, 1))?;
    native.define_singleton_method("next_log_records", function!(logging::next_log_records, 2))?;
    native.define_singleton_method("log_emit", function!(logging::emit, 2))?;
    runtime::define(ruby, core, native)?;
    Ok(())
}
