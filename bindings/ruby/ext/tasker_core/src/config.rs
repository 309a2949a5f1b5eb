//! `TaskerCore::Native.resolve_config`: the one configuration resolution of
//! tasker-core (`tasker_config::TaskerConfig::resolve`: file section, then
//! `TASKER_*` variables, then keyword options) called from Ruby. Keyword
//! options go over as JSON values; every error is a
//! `TaskerCore::ConfigError` with the Rust message unchanged. Also the API
//! address a client derives from a configuration (`Native.api_base_url`,
//! `Native.parse_api_url`), so that every SDK derives it alike.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use magnus::r_hash::ForEach;
use magnus::value::ReprValue;
use magnus::{function, Error, Module, Object, RHash, RModule, Ruby, Value};
use tasker_config::{ConfigError, Sources, TaskerConfig};

use crate::convert;
use crate::errors;

/// `Native.resolve_config(path, env, vars, options)`: `path` (nil: the
/// built-in defaults) and its section `env` (nil: `TASKER_ENV`, else
/// development), then the `TASKER_*` entries of `vars` (nil: the process
/// environment), then `options` (config keys, String or Symbol, to values).
/// Returns the configuration as a Hash with String keys.
fn resolve_config(
    ruby: &Ruby,
    path: Option<String>,
    env: Option<String>,
    vars: Option<HashMap<String, String>>,
    options: RHash,
) -> Result<RHash, Error> {
    let mut sources = Sources::new();
    sources.path = path.map(PathBuf::from);
    sources.environment = env;
    sources.vars = vars.map(|vars| vars.into_iter().collect());
    sources.options = json_options(options)?;
    let config = TaskerConfig::resolve(&sources).map_err(errors::config)?;
    to_hash(ruby, &config)
}

/// The configuration a Hash of config keys describes: the built-in defaults
/// with the Hash's entries as options (no file, no variables: the Hash is
/// the whole configuration). What `Runtime.new` takes.
pub fn from_hash(hash: RHash) -> Result<TaskerConfig, Error> {
    let mut sources = Sources::with_vars(Vec::new());
    sources.options = json_options(hash)?;
    TaskerConfig::resolve(&sources).map_err(errors::config)
}

/// A Ruby Hash of options as `Sources::options`. Which keys are config keys
/// is for `resolve` to say; a value with no JSON form is an invalid option.
fn json_options(hash: RHash) -> Result<BTreeMap<String, serde_json::Value>, Error> {
    let mut options = BTreeMap::new();
    let mut failure = None;
    hash.foreach(|key: Value, value: Value| {
        let entry = convert::key_string(key)
            .map_err(|e| ConfigError::Option {
                key: key.inspect(),
                message: e.message,
            })
            .and_then(|key| match convert::to_json(value, convert::MAX_DEPTH) {
                Ok(json) => Ok((key, json)),
                Err(e) => Err(ConfigError::Option {
                    message: e.at("value"),
                    key,
                }),
            });
        match entry {
            Ok((key, json)) => {
                options.insert(key, json);
                Ok(ForEach::Continue)
            }
            Err(e) => {
                failure = Some(e);
                Ok(ForEach::Stop)
            }
        }
    })?;
    match failure {
        Some(e) => Err(errors::config(e)),
        None => Ok(options),
    }
}

fn to_hash(ruby: &Ruby, config: &TaskerConfig) -> Result<RHash, Error> {
    let json = serde_json::to_value(config)
        .map_err(|e| errors::error(format!("config has no JSON form: {e}")))?;
    let hash = ruby.hash_new();
    // In file order (`KEYS`), as the readers are defined.
    for key in tasker_config::KEYS {
        hash.aset(*key, convert::to_ruby(ruby, &json[*key])?)?;
    }
    Ok(hash)
}

/// `Native.api_base_url(config)`: where a client reaches the API for the
/// configuration a Hash of config keys describes
/// (`TaskerConfig::api_base_url`: `api_url`, else `http://` + `api_listen`
/// with an unspecified address reached on loopback), without a trailing
/// slash. A `ConfigError` when neither gives a usable URL.
fn api_base_url(hash: RHash) -> Result<String, Error> {
    from_hash(hash)?.api_base_url().map_err(errors::config)
}

/// `Native.parse_api_url(url)`: `url` as an API base URL without a
/// trailing slash (`tasker_config::parse_api_url`: `http://HOST:PORT`, or
/// `https://HOST[:PORT]` for a TLS proxy, with an optional path prefix). A
/// `ConfigError` naming `url` otherwise.
fn parse_api_url(url: String) -> Result<String, Error> {
    tasker_config::parse_api_url(&url)
        .map_err(|message| errors::invalid(format!("invalid value for url: {message}")))
}

/// Defines `Native.resolve_config`, `Native.api_base_url`,
/// `Native.parse_api_url` and `Native::CONFIG_KEYS` (every config key, in
/// file order: `tasker_config::KEYS`).
pub fn define(ruby: &Ruby, native: RModule) -> Result<(), Error> {
    let keys = ruby.ary_new_capa(tasker_config::KEYS.len());
    for key in tasker_config::KEYS {
        keys.push(convert::frozen_str(ruby, key))?;
    }
    keys.freeze();
    native.const_set("CONFIG_KEYS", keys)?;
    native.define_singleton_method("resolve_config", function!(resolve_config, 4))?;
    native.define_singleton_method("api_base_url", function!(api_base_url, 1))?;
    native.define_singleton_method("parse_api_url", function!(parse_api_url, 1))?;
    Ok(())
}
