"use strict";

// Rust `tracing` events of the runtime reach JavaScript here. The bridge is
// process-wide (one tracing subscriber per process), so the logger is too.

const native = require("../native.js");
const { TaskerError } = require("./errors.js");

const LEVELS = ["error", "warn", "info", "debug", "trace"];

/**
 * Writes one line per record to stderr, like the Rust CLI does: a UTC time
 * first, so a worker's lines can be set beside the orchestrator's.
 */
function consoleLogger(entry) {
  const level = entry.level.toUpperCase().padEnd(5);
  process.stderr.write(`${new Date().toISOString()} [tasker] ${level} ${entry.target}: ${entry.line}\n`);
}

let current = consoleLogger;
let level = "info";
let forwarding = false;
let reportedFailure = false;

function checkLevel(value) {
  if (!LEVELS.includes(value)) {
    throw new TaskerError(
      `unknown log level ${JSON.stringify(value)}: expected one of ${LEVELS.join(", ")}`,
    );
  }
  return value;
}

function deliver(entry) {
  const logger = current;
  if (logger === null) return;
  if (typeof logger === "function") {
    logger(entry);
    return;
  }
  // A console-like object (console, pino, winston...): logger.info(line, fields).
  // Node's console.trace prints a stack trace of this bridge with every
  // record, so a console takes trace records at debug.
  const name = entry.level === "trace" && logger instanceof console.Console ? "debug" : entry.level;
  const method = logger[name] ?? (name === "trace" ? logger.debug : undefined) ?? logger.log;
  if (typeof method === "function") {
    method.call(logger, `${entry.target}: ${entry.line}`, entry.fields);
  }
}

function onRecords(entries) {
  for (const entry of entries) {
    try {
      deliver(entry);
    } catch (error) {
      // A broken logger must not take the worker down; say so once.
      if (!reportedFailure) {
        reportedFailure = true;
        process.stderr.write(`[tasker] the logger threw; further logger errors are ignored: ${error}\n`);
      }
    }
  }
}

/**
 * Logs a record of the JavaScript layer itself through the same logger,
 * filtered by the same level: the worker's under `tasker_core::node`, the
 * client's under `tasker_core::client`, so either can be told apart.
 */
function log(recordLevel, message, fields = {}, target = "tasker_core::node") {
  if (LEVELS.indexOf(recordLevel) > LEVELS.indexOf(level)) return;
  const pairs = Object.entries(fields).map(([k, v]) => ` ${k}=${v}`).join("");
  onRecords([{ level: recordLevel, target, message, fields, line: message + pairs }]);
}

/**
 * Hands the runtime's waiting records to the logger now. `run()` calls it
 * before it says "stopped", and the process before it exits: the native
 * side only rings when records wait, and a ring still queued when the event
 * loop ends is never answered.
 */
function flush() {
  if (forwarding) onRecords(native.takeLogs(true));
}

/** Starts forwarding (once); later calls only update the level. */
function ensureForwarding() {
  if (forwarding) {
    native.setLogLevel(level);
    return;
  }
  forwarding = true;
  const installed = native.forwardLogs(level, () => onRecords(native.takeLogs(false)));
  if (!installed) {
    process.stderr.write(
      "[tasker] another tracing subscriber owns this process; runtime logs are not forwarded\n",
    );
    return;
  }
  process.on("exit", flush);
}

/**
 * Sets where the runtime's log records go, process-wide.
 *
 * @param {((entry: object) => void) | object | null} logger a function
 *   receiving each record, a console-like object with `error`/`warn`/`info`/
 *   `debug` methods, or `null` to drop records; `undefined` restores the
 *   default (stderr).
 * @param {string} [newLevel] most verbose level forwarded (default: unchanged, initially `info`)
 */
function setLogger(logger, newLevel) {
  if (logger !== null && logger !== undefined && typeof logger !== "function" && typeof logger !== "object") {
    throw new TypeError("logger must be a function, a console-like object, null or undefined");
  }
  if (newLevel !== undefined) level = checkLevel(newLevel);
  current = logger === undefined ? consoleLogger : logger;
  ensureForwarding();
}

/** Sets the most verbose level forwarded: error, warn, info, debug or trace. */
function setLogLevel(newLevel) {
  level = checkLevel(newLevel);
  if (forwarding) native.setLogLevel(level);
}

module.exports = { setLogger, setLogLevel, ensureForwarding, flush, consoleLogger, log, LEVELS };
