"use strict";

const native = require("../native.js");

/**
 * Base class of the errors of tasker-core: thrown by the SDK itself (bad
 * configuration, misuse), and the parent of the errors handlers throw to
 * say how a step failed.
 *
 * A step failed with one of these reports `errorType` as its `error_type`:
 * the `errorType` option when given, else the error's `name` (which is the
 * class name, so `class CardDeclined extends PermanentError {}` reports
 * `CardDeclined`).
 */
class TaskerError extends Error {
  #errorType;

  /**
   * @param {string} message
   * @param {{ errorType?: string, retryable?: boolean, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    // Subclasses report their own class name as the step's error_type.
    this.name = new.target.name;
    if (options.errorType !== undefined) this.errorType = options.errorType;
    if (typeof options.retryable === "boolean") {
      this.retryable = options.retryable;
    } else if (options.retryable !== undefined) {
      throw new TypeError(`retryable must be true or false, not ${typeof options.retryable}`);
    }
  }

  /** The `error_type` a step failed with this error reports: the `errorType` option, else `name`. */
  get errorType() {
    return this.#errorType ?? this.name;
  }

  set errorType(value) {
    if (typeof value !== "string" || value === "") {
      throw new TypeError(`errorType must be a non-empty string, not ${value === "" ? "an empty string" : typeof value}`);
    }
    this.#errorType = value;
  }
}

/**
 * A handler's deliberate failure: fails the step with `errorType` (default:
 * the class name) and `retryable` (default: the worker's
 * `defaultRetryable`). Throw a RetryableError or a PermanentError (or a
 * subclass) when the kind of failure fixes the retryability, and
 * `new HandlerError(message, { errorType, retryable })` to decide it at run
 * time. (Python's `HandlerError`; any TaskerError takes the same options.)
 */
class HandlerError extends TaskerError {}

/** The options of RetryableError and PermanentError, whose retryability is fixed. */
function fixedRetryable(Class, options, retryable) {
  if (options === null || typeof options !== "object") return { retryable };
  if (options.retryable !== undefined && options.retryable !== retryable) {
    throw new TypeError(
      `a ${Class} is ${retryable ? "always" : "never"} retryable; to decide at run time, throw ` +
        `new HandlerError(message, { errorType, retryable })`,
    );
  }
  return { ...options, retryable };
}

/**
 * A handler failure that may succeed on a later attempt (retryable).
 * `new RetryableError("gateway busy", { errorType: "GatewayBusy" })`, or a
 * subclass, reports its own `error_type`.
 */
class RetryableError extends HandlerError {
  /**
   * @param {string} message
   * @param {{ errorType?: string, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, fixedRetryable("RetryableError", options, true));
  }
}

/**
 * A handler failure that no retry can fix (not retryable).
 * `new PermanentError("card declined", { errorType: "CardDeclined" })`, or a
 * subclass, reports its own `error_type`.
 */
class PermanentError extends HandlerError {
  /**
   * @param {string} message
   * @param {{ errorType?: string, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, fixedRetryable("PermanentError", options, false));
  }
}

/**
 * A configuration that does not resolve: a bad file, `TASKER_*` variable,
 * option or value. The message is the Rust resolver's, naming the key (and
 * the closest valid one for a misspelt key).
 */
class ConfigError extends TaskerError {}

/** The worker runtime could not start, or failed while running. */
class WorkerError extends TaskerError {}

/**
 * The orchestrator refused this worker's connection in the handshake: its
 * CURVE key is not in the orchestrator's `curve_authorized_keys_dir`, the
 * orchestrator requires CURVE and the worker has none, or the other way
 * round. The message says which and what to change; no retry would help,
 * so the worker has stopped, and `Worker#run()` rejects with this.
 */
class WorkerRefused extends WorkerError {}

// ---- Errors of the HTTP client (`Client`, lib/client.js) ----------------
//
// protocol/CLIENT.md §4: the last segment of a problem document's `type`
// decides the class; its `detail` is the message, unchanged.

/**
 * Base class of the errors a `Client` throws. `status` is the HTTP status
 * (null when there was no answer), `problemType` the problem's slug
 * (`task-not-found`, ...; null without a problem document), `detail` the
 * server's detail (null without one) and `problem` the whole problem
 * document as the server sent it (snake_case keys; null without one).
 */
class ClientError extends TaskerError {
  /**
   * @param {string} message
   * @param {{ status?: number | null, problemType?: string | null, detail?: string | null,
   *   problem?: object | null, cause?: unknown }} [options]
   */
  constructor(message, options = {}) {
    super(message, { cause: options.cause });
    this.status = options.status ?? null;
    this.problemType = options.problemType ?? null;
    this.detail = options.detail ?? null;
    this.problem = options.problem ?? null;
  }
}

/** What a problem document says beyond type, title, status and detail. */
function problemField(options, key) {
  const problem = options.problem;
  return problem && typeof problem === "object" && problem[key] !== undefined ? problem[key] : null;
}

/**
 * The request was refused as invalid (`malformed-json`, `invalid-body`,
 * `invalid-parameter`, `unsupported-media-type`, `body-too-large`);
 * `field` names the field or parameter at fault, when the server says.
 */
class ValidationError extends ClientError {
  constructor(message, options = {}) {
    super(message, options);
    this.field = problemField(options, "field");
  }
}

/**
 * The workflow is not one the server loaded (`unknown-workflow`): `field`
 * is `"workflow"`, `knownWorkflows` the names loaded and `closest` the one
 * nearest to the name given (null when none is near).
 */
class UnknownWorkflow extends ValidationError {
  constructor(message, options = {}) {
    super(message, options);
    this.knownWorkflows = problemField(options, "known_workflows") ?? [];
    this.closest = problemField(options, "closest");
  }
}

/** No task has this id (`task-not-found`); `taskId` is the id asked for. */
class TaskNotFound extends ClientError {
  constructor(message, options = {}) {
    super(message, options);
    this.taskId = problemField(options, "task_id");
  }
}

/**
 * The idempotency key was used before with another workflow or context
 * (`idempotency-conflict`); `taskId` is the task the key belongs to.
 */
class IdempotencyConflict extends ClientError {
  constructor(message, options = {}) {
    super(message, options);
    this.taskId = problemField(options, "task_id");
  }
}

/** Cancelling a task that has ended (`task-ended`); `taskStatus` is how it ended. */
class TaskEnded extends ClientError {
  constructor(message, options = {}) {
    super(message, options);
    this.taskId = problemField(options, "task_id");
    this.taskStatus = problemField(options, "task_status");
  }
}

/** The server wants a bearer token and got none, or a wrong one (`unauthorized`). */
class Unauthorized extends ClientError {}

/**
 * No answer (connection refused or reset, timeout), or a 5xx answer
 * (`shutting-down`, ...), left after the retries; `cause` is the last
 * cause, `url` the server's base URL.
 */
class ServerUnavailable extends ClientError {
  constructor(message, options = {}) {
    super(message, options);
    this.url = options.url ?? null;
  }
}

/** `wait()`'s timeout passed before the task ended; `task` is the task as last seen. */
class WaitTimeout extends ClientError {
  constructor(message, options = {}) {
    super(message, options);
    this.task = options.task ?? null;
  }
}

/** Any other problem or status (`not-found`, `method-not-allowed`, an answer that is not JSON, ...). */
class ApiError extends ClientError {}

/**
 * The `error_type` values tasker-core reports (`errorTypes.UNKNOWN_HANDLER`,
 * `errorTypes.SERIALIZATION_ERROR`, ...), as the native module defines them:
 * compare a result's `error_type` with these rather than spelling the strings.
 */
const errorTypes = Object.freeze({ ...native.errorTypes });

/** The class of each `code` the native module gives its errors (src/errors.rs). */
const NATIVE_CLASSES = new Map([
  [native.CONFIG_ERROR_CODE, ConfigError],
  [native.WORKER_ERROR_CODE, WorkerError],
  [native.WORKER_REFUSED_CODE, WorkerRefused],
]);

/** The error of this package for an error thrown by the native module, keeping its message. */
function fromNative(error) {
  if (error instanceof TaskerError) return error;
  const message = error && error.message ? error.message : String(error);
  const Class = (error && NATIVE_CLASSES.get(error.code)) || TaskerError;
  return new Class(message, { cause: error });
}

module.exports = {
  TaskerError,
  HandlerError,
  RetryableError,
  PermanentError,
  ConfigError,
  WorkerError,
  WorkerRefused,
  errorTypes,
  fromNative,
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
