"use strict";

// Configuration is resolved in Rust, by the call every tasker-core SDK
// makes (`TaskerConfig::resolve`): the file's section, then the `TASKER_*`
// variables, then the options (config keys in camelCase). Unknown keys and
// bad values are Rust's to judge; its message is thrown unchanged, as a
// ConfigError. This layer keeps no list of keys.

const native = require("../native.js");
const { ConfigError, fromNative } = require("./errors.js");

/**
 * Resolves a configuration: `path`'s section `env` (else `TASKER_ENV`, else
 * `development`), or the built-in defaults, then `TASKER_*` variables, then
 * `options`. Returns the native handle a worker runs with and the values,
 * by camelCase key.
 */
function resolveConfig(path, options, env) {
  if (env !== undefined && env !== null && (typeof env !== "string" || env === "")) {
    throw new ConfigError("env must be the name of a section of the config file, a non-empty string");
  }
  try {
    const resolved = native.NativeConfig.resolve(path ?? null, options ?? null, env ?? null);
    return { resolved, values: resolved.values() };
  } catch (error) {
    throw fromNative(error);
  }
}

module.exports = { resolveConfig };
