"use strict";

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

module.exports = { TaskerError, RetryableError, PermanentError };
