"use strict";

// tasker-core for Node: serve workflow steps from JavaScript handlers (the
// ZeroMQ loop runs in Rust, native.js, built by napi-rs; this layer makes
// it idiomatic), and start tasks from an application through the HTTP API
// of `tasker serve` (Client).

const { resolveConfig } = require("./config.js");
const {
  TaskerError,
  HandlerError,
  RetryableError,
  PermanentError,
  ConfigError,
  WorkerError,
  WorkerRefused,
  errorTypes,
  ClientError,
  ValidationError,
  UnknownWorkflow,
  TaskNotFound,
  IdempotencyConflict,
  TaskEnded,
  Unauthorized,
  ServerUnavailable,
  WaitTimeout,
  ApiError,
} = require("./errors.js");
const { Worker } = require("./worker.js");
const { Client, TaskHandle } = require("./client.js");
const { setLogger, setLogLevel } = require("./logging.js");

/**
 * Resolves a configuration the way a Worker does (file or defaults, then
 * `TASKER_*` variables, then `options`: config keys in camelCase; `env`
 * names the file's section), without starting anything. Throws a
 * ConfigError naming a bad key or value.
 */
function loadConfig(path, options) {
  const { env, ...rest } = options ?? {};
  return resolveConfig(path, rest, env).values;
}

module.exports = {
  Worker,
  TaskerError,
  HandlerError,
  RetryableError,
  PermanentError,
  ConfigError,
  WorkerError,
  WorkerRefused,
  errorTypes,
  setLogger,
  setLogLevel,
  loadConfig,
  Client,
  TaskHandle,
  ClientError,
  ValidationError,
  UnknownWorkflow,
  TaskNotFound,
  IdempotencyConflict,
  TaskEnded,
  Unauthorized,
  ServerUnavailable,
  WaitTimeout,
  ApiError,
};
