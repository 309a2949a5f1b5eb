"use strict";

const { AsyncLocalStorage } = require("node:async_hooks");
const { performance } = require("node:perf_hooks");
const { inspect } = require("node:util");

const native = require("../native.js");
const { resolveConfig } = require("./config.js");
const { ConfigError, TaskerError, errorTypes, fromNative } = require("./errors.js");
const { jsonProblem } = require("./json.js");
const logging = require("./logging.js");

const CONFIG_PATH = Symbol("configPath");
const CONFIG_ENV = Symbol("configEnv");

/** Tells `stop()` whether it runs inside one of a worker's handlers. */
const handlerContext = new AsyncLocalStorage();

/**
 * Innermost-first stack lines of an error, without its "Name: message"
 * header and without this file's frames (the SDK calling the handler), as
 * the Python and Ruby SDKs report them.
 */
function stackLines(error) {
  const stack = error.stack;
  if (typeof stack !== "string") return [];
  const lines = [];
  for (const line of stack.split("\n")) {
    const trimmed = line.trim();
    if (trimmed.startsWith("at ") && !isOwnFrame(trimmed)) lines.push(trimmed);
  }
  return lines;
}

function isOwnFrame(line) {
  return line.includes(`(${__filename}:`) || line.startsWith(`at ${__filename}:`);
}

// A step reaches this layer as a row: an array of its fields in the order
// the native module writes them, which it names (`stepFields()`). Each
// field's position is read here, once, at load.
const STEP_FIELDS = native.stepFields();
const taken = new Set();
function position(name) {
  const at = STEP_FIELDS.indexOf(name);
  if (at < 0) throw new TaskerError(`the native step rows have no field ${name} (${STEP_FIELDS.join(", ")}): rebuild the addon`);
  taken.add(name);
  return at;
}
const STEP_ID = position("stepId");
const TASK_ID = position("taskId");
const STEP_NAME = position("stepName");
const HANDLER_CLASS = position("handlerClass");
const HANDLER_CONFIG = position("handlerConfig");
const TASK_CONTEXT = position("taskContext");
const PREVIOUS_RESULTS = position("previousResults");
const ATTEMPT = position("attempt");
const RETRY_LIMIT = position("retryLimit");
const TIMEOUT_MS = position("timeoutMs");
const CREATED_AT = position("createdAt");
if (taken.size !== STEP_FIELDS.length) {
  const left = STEP_FIELDS.filter((name) => !taken.has(name));
  throw new TaskerError(`the native step rows carry fields this layer does not read (${left.join(", ")})`);
}

// An outcome goes back as a row too: [stepId, attempt, elapsedMs, output]
// when it completed, [stepId, attempt, elapsedMs, null, error] when it
// failed (`_success` and `_failure` write them). The native module reads
// rows in the order it names; a module that reads another order is refused
// here, at load, rather than misread.
const OUTCOME_ROW = ["stepId", "attempt", "elapsedMs", "output", "error"];
if (native.outcomeFields().join() !== OUTCOME_ROW.join()) {
  throw new TaskerError(
    `the native module reads outcome rows as [${native.outcomeFields().join(", ")}], this layer writes [${OUTCOME_ROW.join(", ")}]: rebuild the addon`,
  );
}

/** One step, as a handler sees it (the fields of the native `Step` type). */
class Step {
  constructor(row) {
    this.stepId = row[STEP_ID];
    this.taskId = row[TASK_ID];
    this.stepName = row[STEP_NAME];
    this.handlerClass = row[HANDLER_CLASS];
    this.handlerConfig = row[HANDLER_CONFIG];
    this.taskContext = row[TASK_CONTEXT];
    this.previousResults = row[PREVIOUS_RESULTS];
    this.attempt = row[ATTEMPT];
    this.retryLimit = row[RETRY_LIMIT];
    this.timeoutMs = row[TIMEOUT_MS];
    this.createdAt = row[CREATED_AT];
  }
}

/** A handler's `options.concurrency` (undefined when not given), checked. */
function handlerConcurrency(name, options) {
  if (options === undefined || options === null) return undefined;
  if (typeof options !== "object") {
    throw new ConfigError(`handler ${JSON.stringify(name)}: options must be an object like { concurrency: 2 }`);
  }
  const { concurrency, ...rest } = options;
  const unknown = Object.keys(rest);
  if (unknown.length > 0) {
    throw new ConfigError(`handler ${JSON.stringify(name)}: unknown option ${unknown[0]}; the options are: concurrency`);
  }
  if (concurrency === undefined || concurrency === null) return undefined;
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 0xffffffff) {
    throw new ConfigError(
      `handler ${JSON.stringify(name)}: concurrency must be an integer of at least 1, got ${inspect(concurrency)}`,
    );
  }
  return concurrency;
}

/**
 * A Node worker: serves the steps of the handlers registered with
 * `handle()` until `stop()`.
 */
class Worker {
  /**
   * A worker configured from a YAML file (section `TASKER_ENV`, default
   * `development`), then `TASKER_*` environment variables, then `options`.
   */
  static fromConfig(path, options = {}) {
    if (typeof path !== "string" || path === "") {
      throw new TaskerError("Worker.fromConfig needs the path of a YAML config file");
    }
    if (options === null || typeof options !== "object") {
      throw new TaskerError("Worker options must be an object");
    }
    const { env, ...rest } = options;
    return new Worker({ ...rest, [CONFIG_PATH]: path, [CONFIG_ENV]: env });
  }

  /**
   * A worker configured from the built-in defaults, then `TASKER_*`
   * environment variables, then `options`.
   */
  constructor(options = {}) {
    if (options === null || typeof options !== "object") {
      throw new TaskerError("Worker options must be an object");
    }
    // The worker's own options; every other key is a config key, for Rust
    // to resolve (and to refuse when it is none).
    const { [CONFIG_PATH]: path, [CONFIG_ENV]: env, capacity, workerId, logger, logLevel, handleSignals, ...configOptions } = options;
    if (capacity !== undefined) {
      // The same setting under the worker's name for it: given both,
      // neither silently wins.
      for (const key of ["workerCapacity", "worker_capacity"]) {
        if (configOptions[key] !== undefined) {
          throw new ConfigError(
            `capacity: ${String(capacity)} and ${key}: ${String(configOptions[key])} are the same setting (the steps the worker holds at once): give only one`,
          );
        }
      }
      configOptions.workerCapacity = capacity;
    }
    const { resolved, values } = resolveConfig(path, configOptions, env);
    this._nativeConfig = resolved;
    /** The resolved configuration (read-only). */
    this.config = Object.freeze(values);
    if (workerId !== undefined && (typeof workerId !== "string" || workerId === "")) {
      throw new TaskerError("workerId must be a non-empty string");
    }
    this._workerId = workerId;
    this._defaultRetryable = this.config.defaultRetryable;
    this._handleSignals = handleSignals !== false;
    if (logger !== undefined || logLevel !== undefined) {
      logging.setLogger(logger, logLevel);
    }

    this._handlers = new Map();
    // Per-handler concurrency limits (handle()'s `concurrency`), by name.
    this._limits = new Map();
    // Middleware, in registration order (use()); `_run` calls a handler
    // through them.
    this._middleware = [];
    this._run = this._callHandler.bind(this);
    this._state = "idle";
    this._native = null;
    this._pending = [];
    this._flushQueued = null;
    // Results go back every `flushEvery` (set by the native worker: half
    // the capacity), so the next delivery overlaps with the rest of the chunk.
    this._flushEvery = 1;
    this._waiters = []; // stop() calls made inside handlers
    this._signalListener = null;
    // What the worker stopped with by itself (a WorkerRefused), for run().
    this._refusal = null;
    this._closedPromise = new Promise((resolve) => {
      this._resolveClosed = resolve;
    });
    this._onSteps = this._onSteps.bind(this);
    this._flush = this._flush.bind(this);
  }

  /**
   * `idle` (before run()), `connecting` (not registered with an
   * orchestrator yet, or reconnecting), `connected`, `draining` (after
   * stop()) or `stopped`: the names the Python and Ruby SDKs use.
   */
  get state() {
    switch (this._state) {
      case "running":
        // The runtime's own: connecting or connected (draining or stopped
        // when it stopped by itself, refused by the orchestrator).
        return this._native.state;
      case "stopping":
        return "draining";
      default:
        return this._state;
    }
  }

  /** The id announced to the orchestrator (known once running). */
  get workerId() {
    return this._workerId ?? null;
  }

  /** The declared capacity: most steps (and handler calls) in flight at once. */
  get capacity() {
    return this.config.workerCapacity;
  }

  /**
   * Registers the handler of the steps whose `handlerClass` is `name`.
   * `fn(step)` returns the step's output (JSON data: anything else fails
   * the step as SerializationError, see lib/json.js) or a Promise of it;
   * throwing (or rejecting) fails the step.
   *
   * `options.concurrency`: at most this many steps of this handler at once
   * on this worker (e.g. a handler calling a rate-limited API); the other
   * handlers use the rest of its capacity. Announced to the orchestrator,
   * which sends no more of its steps while that many are out here. Absent:
   * limited by the capacity only. Anything but an integer of at least 1 is
   * a ConfigError.
   */
  handle(name, fn, options = undefined) {
    if (typeof name !== "string" || name === "") {
      throw new TaskerError("handler name must be a non-empty string");
    }
    if (typeof fn !== "function") {
      throw new TaskerError(`handler ${JSON.stringify(name)} must be a function`);
    }
    const concurrency = handlerConcurrency(name, options);
    if (this._state !== "idle") {
      throw new TaskerError(`cannot add handler ${JSON.stringify(name)}: the worker is already ${this._state}`);
    }
    if (this._handlers.has(name)) {
      // Allowed (it replaces the first, limit and all), but a copied
      // handler whose name was not changed hides another: say so.
      logging.log("warn", `handler ${JSON.stringify(name)} registered again: this one replaces the first`);
    }
    this._handlers.set(name, fn);
    if (concurrency === undefined) this._limits.delete(name);
    else this._limits.set(name, concurrency);
    return this;
  }

  /**
   * Adds a middleware around every handler call, Koa style:
   * `async (step, next) => { ...; const output = await next(); ...; return output; }`.
   * `next()` runs the rest of the chain (the next middleware, at the end
   * the handler) and returns a Promise of its output. Middleware run in
   * the order they were added, the first outermost. What a middleware
   * returns (or resolves to) is the step's output, checked as JSON like a
   * handler's; one that never calls `next()` skips the handler. A throw or
   * rejection from a middleware or the handler goes out through the
   * middleware around it and fails the step as a handler's error does.
   */
  use(middleware) {
    if (typeof middleware !== "function") {
      throw new TaskerError("middleware must be a function (step, next) => output");
    }
    if (this._state !== "idle") {
      throw new TaskerError(`cannot add middleware: the worker is already ${this._state}`);
    }
    this._middleware.push(middleware);
    return this;
  }

  /**
   * Connects and serves steps. Resolves once the worker has stopped
   * (`stop()`, SIGINT or SIGTERM) and drained; rejects with WorkerRefused
   * as soon as the orchestrator refuses the connection (a CURVE key it does
   * not admit, CURVE on one side only), which no retry would mend.
   */
  async run() {
    if (this._state !== "idle") {
      throw new TaskerError(`run() called on a ${this._state} worker; a Worker runs once`);
    }
    if (this._handlers.size === 0) {
      throw new TaskerError("no handlers registered: call worker.handle(name, fn) before run()");
    }
    logging.ensureForwarding();
    const options = { handlers: [...this._handlers.keys()] };
    if (this._workerId !== undefined) options.workerId = this._workerId;
    if (this._limits.size > 0) options.handlerLimits = Object.fromEntries(this._limits);
    try {
      this._native = new native.NativeWorker(this._nativeConfig, options, this._onSteps);
    } catch (error) {
      this._state = "stopped";
      throw fromNative(error);
    }
    this._workerId = this._native.workerId;
    this._flushEvery = this._native.flushEvery;
    this._state = "running";
    // The runtime logs "registered with orchestrator" once it is, and that
    // it is waiting for one while it is not.
    const curve = this.config.curveServerPublicKeyFile ? " with CURVE" : "";
    logging.log("info", `connecting to ${this.config.endpoint}${curve}`, {
      worker_id: this._workerId,
      handlers: options.handlers.join(","),
      capacity: String(this._native.capacity),
    });
    this._installSignals();
    return this._closedPromise.then(() => {
      if (this._refusal !== null) throw this._refusal;
    });
  }

  /**
   * Stops gracefully: takes no new steps, gives unstarted ones back to the
   * orchestrator, lets running handlers finish (up to `shutdownTimeoutMs`),
   * then says goodbye. Resolves when that is done; called inside a handler,
   * resolves when everything but the handlers awaiting it has drained (the
   * drain itself waits for those handlers to return).
   */
  stop() {
    if (this._state === "idle") {
      this._state = "stopped";
      this._resolveClosed();
      return this._closedPromise;
    }
    if (this._state === "running") {
      this._state = "stopping";
      this._native.stop();
    }
    if (this._state === "stopped") return this._closedPromise;
    const context = handlerContext.getStore();
    if (context !== undefined && context.worker === this && !context.done) {
      return new Promise((resolve) => {
        this._waiters.push({ context, resolve });
        this._flush();
      });
    }
    return this._closedPromise;
  }

  _installSignals() {
    if (!this._handleSignals) return;
    const listener = (signal) => {
      if (this._state === "stopping") {
        // A second signal while draining: give up the drain, let the
        // signal's default action end the process.
        this._removeSignals();
        process.kill(process.pid, signal);
        return;
      }
      logging.log("info", `received ${signal}; draining`, { worker_id: this.workerId });
      this.stop();
    };
    this._signalListener = listener;
    process.on("SIGINT", listener);
    process.on("SIGTERM", listener);
  }

  _removeSignals() {
    if (this._signalListener === null) return;
    process.removeListener("SIGINT", this._signalListener);
    process.removeListener("SIGTERM", this._signalListener);
    this._signalListener = null;
  }

  /** Called by the native worker with each chunk of steps (JSON), then with null. */
  _onSteps(chunk) {
    if (chunk === null || chunk === undefined) {
      this._closed();
      return;
    }
    const rows = JSON.parse(chunk);
    const every = this._flushEvery;
    for (let i = 0; i < rows.length; i++) {
      this._start(new Step(rows[i]));
      if (this._pending.length >= every) this._flush();
    }
    this._flush();
  }

  _start(step) {
    const fn = this._handlers.get(step.handlerClass);
    if (fn === undefined) {
      this._pending.push(
        this._failure(step, 0, errorTypes.UNKNOWN_HANDLER, `this worker has no handler ${JSON.stringify(step.handlerClass)}`, false),
      );
      return;
    }
    const context = { worker: this, done: false };
    const started = performance.now();
    let value;
    try {
      value = this._middleware.length === 0 ? handlerContext.run(context, fn, step) : handlerContext.run(context, this._run, step, fn);
    } catch (error) {
      context.done = true;
      this._pending.push(this._errorOutcome(step, started, error));
      return;
    }
    if (value !== null && typeof value === "object" && typeof value.then === "function") {
      value.then(
        (output) => this._settle(context, this._success(step, started, output)),
        (error) => this._settle(context, this._errorOutcome(step, started, error)),
      );
      return;
    }
    context.done = true;
    this._pending.push(this._success(step, started, value));
  }

  /** `fn(step)` inside the middleware: the first one's value. */
  _callHandler(step, fn) {
    const middleware = this._middleware;
    const call = (index) => {
      if (index === middleware.length) return fn(step);
      // next(): the rest of the chain, run now; its output (or throw) as a Promise.
      const next = () => {
        try {
          return Promise.resolve(call(index + 1));
        } catch (error) {
          return Promise.reject(error);
        }
      };
      return middleware[index](step, next);
    };
    return call(0);
  }

  _settle(context, outcome) {
    context.done = true;
    this._pending.push(outcome);
    // Results finished in the same turn of the event loop go back together.
    if (this._flushQueued === null) this._flushQueued = setImmediate(this._flush);
  }

  _flush() {
    if (this._flushQueued !== null) {
      clearImmediate(this._flushQueued);
      this._flushQueued = null;
    }
    if (this._pending.length > 0 && this._native !== null) {
      const outcomes = this._pending;
      this._pending = [];
      try {
        this._native.complete(`[${outcomes.join(",")}]`);
      } catch (error) {
        this._completeOneByOne(outcomes, error);
      }
    }
    if (this._waiters.length > 0) this._checkWaiters();
  }

  /** Cannot happen with JSON.stringify's output; if it does, no step is lost. */
  _completeOneByOne(outcomes, error) {
    logging.log("error", `results refused by the runtime, completing one by one: ${error.message}`);
    for (const outcome of outcomes) {
      try {
        this._native.complete(`[${outcome}]`);
      } catch (e) {
        const [stepId, attempt] = JSON.parse(outcome);
        const failure = this._failure({ stepId, attempt }, 0, errorTypes.SERIALIZATION_ERROR, e.message, false);
        this._native.complete(`[${failure}]`);
      }
    }
  }

  /** Resolves in-handler stop() calls once only their own handlers remain. */
  _checkWaiters() {
    const waiting = new Set();
    for (const { context } of this._waiters) {
      if (!context.done) waiting.add(context);
    }
    if (this._native === null || this._native.inHand <= waiting.size) {
      const waiters = this._waiters;
      this._waiters = [];
      for (const { resolve } of waiters) resolve();
    }
  }

  _closed() {
    try {
      // Throws when the runtime stopped by itself: the orchestrator refused it.
      this._native.checkFailure();
    } catch (error) {
      this._refusal = fromNative(error);
    }
    this._flush();
    this._state = "stopped";
    logging.flush();
    logging.log("info", this._refusal === null ? "stopped" : "stopped: refused by the orchestrator", { worker_id: this._workerId });
    this._removeSignals();
    this._native = null;
    const waiters = this._waiters;
    this._waiters = [];
    for (const { resolve } of waiters) resolve();
    this._resolveClosed();
  }

  /** The outcome of a completed step, as JSON text (a StepOutcome). */
  _success(step, started, output) {
    let json;
    try {
      // What JSON.stringify would silently drop or change (a function, a
      // Map, NaN, ...) fails the step, naming where it is.
      const problem = jsonProblem(output);
      if (problem !== null) {
        return this._failure(
          step,
          started,
          errorTypes.SERIALIZATION_ERROR,
          `the output of handler ${JSON.stringify(step.handlerClass)} is not JSON data: ${problem}`,
          false,
        );
      }
      json = JSON.stringify(output);
    } catch (error) {
      return this._failure(
        step,
        started,
        errorTypes.SERIALIZATION_ERROR,
        `the output of handler ${JSON.stringify(step.handlerClass)} cannot be serialised to JSON: ${error.message}`,
        false,
      );
    }
    // A handler that returns nothing (undefined) completes with null.
    if (json === undefined) json = "null";
    // A StepOutcome row: [stepId, attempt, elapsedMs, output].
    return `[${step.stepId},${step.attempt},${Math.round(performance.now() - started)},${json}]`;
  }

  _errorOutcome(step, started, error) {
    if (error instanceof Error || (error !== null && typeof error === "object" && typeof error.message === "string")) {
      // `errorType` (TaskerError's option or property, or any error's own),
      // else the error's name: a subclass's name, `TypeError`, ...
      const name =
        (typeof error.errorType === "string" && error.errorType) ||
        (typeof error.name === "string" && error.name) ||
        (error.constructor && error.constructor.name) ||
        "Error";
      const retryable = typeof error.retryable === "boolean" ? error.retryable : this._defaultRetryable;
      return this._failure(step, started, name, String(error.message), retryable, stackLines(error));
    }
    return this._failure(
      step,
      started,
      errorTypes.THROWN_VALUE,
      `handler threw a non-Error value: ${inspect(error, { depth: 2, breakLength: Infinity })}`,
      this._defaultRetryable,
    );
  }

  /** The outcome of a failed step, as JSON text (a StepOutcome). */
  _failure(step, started, errorType, message, retryable, backtrace = []) {
    const elapsedMs = started === 0 ? 0 : Math.round(performance.now() - started);
    // Only valid Unicode crosses the wire; these texts only describe the
    // failure, so a lone surrogate in them becomes U+FFFD.
    const error = {
      message: wellFormed(message),
      errorType: wellFormed(errorType),
      retryable,
      backtrace: backtrace.map(wellFormed),
    };
    // A StepOutcome row: [stepId, attempt, elapsedMs, output, error].
    return JSON.stringify([step.stepId, step.attempt, elapsedMs, null, error]);
  }
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

/** `text` with each lone UTF-16 surrogate replaced by U+FFFD. */
function wellFormed(value) {
  const text = String(value);
  if (typeof text.toWellFormed === "function") return text.toWellFormed();
  return text.replace(LONE_SURROGATE, "\ufffd");
}

// Step is exported for the test suite's check of the row pairing only.
module.exports = { Worker, Step };
