"use strict";

// tasker-core for Node: serve workflow steps from JavaScript handlers. The
// ZeroMQ loop runs in Rust (native.js, built by napi-rs); this layer makes
// it idiomatic.

const { resolveConfig } = require("./config.js");
const { TaskerError, RetryableError, PermanentError, ConfigError, errorTypes } = require("./errors.js");
const { Worker } = require("./worker.js");
const { setLogger, setLogLevel } = require("./logging.js");

/**
 * Resolves a configuration the way a Worker does (file or defaults, then
 * `TASKER_*` variables, then `options`: config keys in camelCase), without
 * starting anything. Throws a ConfigError naming a bad key or value.
 */
function loadConfig(path, options) {
  return resolveConfig(path, options).values;
}

module.exports = {
  Worker,
  TaskerError,
  RetryableError,
  PermanentError,
  ConfigError,
  errorTypes,
  setLogger,
  setLogLevel,
  loadConfig,
};
