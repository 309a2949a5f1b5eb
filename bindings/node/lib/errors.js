"use strict";

const native = require("../native.js");

/**
 * Base class of the errors of tasker-core: thrown by the SDK itself (bad
 * configuration, misuse), and the parent of the errors handlers throw to
 * choose whether a failed step may be retried.
 */
class TaskerError extends Error {
  /**
   * @param {string} message
   * @param {{ retryable?: boolean, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    // Subclasses report their own class name as the step's error_type.
    this.name = new.target.name;
    if (typeof options.retryable === "boolean") {
      this.retryable = options.retryable;
    }
  }
}

/** A handler failure that may succeed on a later attempt (retryable). */
class RetryableError extends TaskerError {
  /**
   * @param {string} message
   * @param {{ cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, { ...options, retryable: true });
  }
}

/** A handler failure that no retry can fix (not retryable). */
class PermanentError extends TaskerError {
  /**
   * @param {string} message
   * @param {{ cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, { ...options, retryable: false });
  }
}

/**
 * A configuration that does not resolve: a bad file, `TASKER_*` variable,
 * option or value. The message is the Rust resolver's, naming the key (and
 * the closest valid one for a misspelt key).
 */
class ConfigError extends TaskerError {}

/**
 * The `error_type` values tasker-core reports (`errorTypes.UNKNOWN_HANDLER`,
 * `errorTypes.SERIALIZATION_ERROR`, ...), as the native module defines them:
 * compare a result's `error_type` with these rather than spelling the strings.
 */
const errorTypes = Object.freeze({ ...native.errorTypes });

/** The error of this package for an error thrown by the native module, keeping its message. */
function fromNative(error) {
  if (error instanceof TaskerError) return error;
  const message = error && error.message ? error.message : String(error);
  const Class = error && error.code === native.CONFIG_ERROR_CODE ? ConfigError : TaskerError;
  return new Class(message, { cause: error });
}

module.exports = { TaskerError, RetryableError, PermanentError, ConfigError, errorTypes, fromNative };
