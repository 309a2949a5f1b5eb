"use strict";

// tasker-core for Node: serve workflow steps from JavaScript handlers. The
// ZeroMQ loop runs in Rust (native.js, built by napi-rs); this layer makes
// it idiomatic.

const native = require("../native.js");
const { TaskerError, RetryableError, PermanentError } = require("./errors.js");
const { Worker } = require("./worker.js");
const { setLogger, setLogLevel } = require("./logging.js");

/**
 * Resolves a configuration the way a Worker does (file or defaults, then
 * `TASKER_*` variables, then overrides), without starting anything.
 */
function loadConfig(path, overrides) {
  try {
    return native.loadConfig(path ?? null, overrides ?? null);
  } catch (error) {
    throw new TaskerError(error.message, { cause: error });
  }
}

module.exports = {
  Worker,
  TaskerError,
  RetryableError,
  PermanentError,
  setLogger,
  setLogLevel,
  loadConfig,
};
