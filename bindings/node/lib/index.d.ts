// Declarations of the JavaScript layer. The native types (Step, LogEntry,
// errorTypes) come from native.d.ts, which `napi build` generates from the
// Rust types.
import type { LogEntry, Step, errorTypes as nativeErrorTypes } from "../native";

export type { LogEntry, Step };

/**
 * A resolved configuration: every config key (`tasker_config::KEYS`), in
 * camelCase, in file order. For types and documentation only: the keys are
 * Rust's, which resolves and checks them (the test suite checks that this
 * list is `configKeys()` of the native module). See the project README for
 * the full meaning of each key.
 */
export interface Config {
  /** ZeroMQ endpoint the orchestrator binds (`tcp://HOST:PORT` or `ipc://PATH`). */
  endpoint: string;
  /** Interval between heartbeats, each way, in ms. */
  heartbeatIntervalMs: number;
  /** Missed heartbeat intervals after which a peer is dead. */
  liveness: number;
  /** Timeout of a step that does not set one, in ms. */
  defaultStepTimeoutMs: number;
  /** Most steps per delivery to a worker, and per hand-over to JavaScript. */
  batchSize: number;
  /** Steps the worker holds at once (its declared capacity). */
  workerCapacity: number;
  /** Most unfinished steps the orchestrator holds (orchestrator only). */
  queueBound: number;
  /** What the orchestrator's submit does when its queue is full (orchestrator only). */
  submitPolicy: "wait" | "reject";
  /** ZeroMQ send high-water mark of the worker's socket, in messages. */
  sendHwm: number;
  /** ZeroMQ receive high-water mark of the worker's socket, in messages. */
  recvHwm: number;
  /** Largest message body accepted, in bytes. */
  maxMessageBytes: number;
  /** How long a closing socket may flush, in ms (-1: forever). */
  lingerMs: number;
  /** First reconnect delay, in ms; doubles up to `reconnectMaxMs`. */
  reconnectInitialMs: number;
  /** Longest reconnect delay, in ms. */
  reconnectMaxMs: number;
  /** How long a stopping worker waits for its running steps, in ms. */
  shutdownTimeoutMs: number;
  /** Retryability of a handler error of an unrecognised kind. */
  defaultRetryable: boolean;
  /** Most worker connections the orchestrator registers (orchestrator only). */
  maxWorkers: number;
  /** Where `tasker serve` keeps tasks: `sqlite:PATH` or `postgres://...` (serve only). */
  store: string;
  /** The HTTP API address of `tasker serve`, `HOST:PORT` (serve only). */
  apiListen: string;
  /** The folder `tasker serve` loads workflows from; empty: `examples/workflows` (serve only). */
  workflowsDir: string;
  /** Hours `tasker serve` keeps ended tasks; 0 keeps them (serve only). */
  taskRetentionHours: number;
}

/** Config keys that replace those of the file and the environment; `undefined` keeps the loaded value. */
export type ConfigOptions = Partial<Config>;

/** The former name of `ConfigOptions`. */
export type ConfigOverrides = ConfigOptions;

/**
 * The `error_type` values tasker-core reports (`errorTypes.UNKNOWN_HANDLER`
 * is `"UnknownHandler"`, ...), defined in Rust.
 */
export declare const errorTypes: Readonly<typeof nativeErrorTypes>;

/** Options of `TaskerError` and its subclasses. */
export interface TaskerErrorOptions {
  /** Whether a step failed with this error may be retried. */
  retryable?: boolean;
  /** The underlying error. */
  cause?: unknown;
}

/** Base class of tasker-core's errors (SDK errors and handler failures). */
export declare class TaskerError extends Error {
  constructor(message: string, options?: TaskerErrorOptions);
  /** Set when the error decides the step's retryability. */
  retryable?: boolean;
}

/** A handler failure that may succeed on a later attempt. */
export declare class RetryableError extends TaskerError {
  constructor(message: string, options?: { cause?: unknown });
  retryable: true;
}

/** A handler failure that no retry can fix. */
export declare class PermanentError extends TaskerError {
  constructor(message: string, options?: { cause?: unknown });
  retryable: false;
}

/** A configuration that does not resolve; the message names the key, variable, value or file. */
export declare class ConfigError extends TaskerError {}

/** Receives the runtime's log records. */
export type LogFunction = (entry: LogEntry) => void;

/** A console-like logger: `console`, pino, winston, ... */
export interface ConsoleLikeLogger {
  error?(message: string, fields?: Record<string, string>): void;
  warn?(message: string, fields?: Record<string, string>): void;
  info?(message: string, fields?: Record<string, string>): void;
  debug?(message: string, fields?: Record<string, string>): void;
  log?(message: string, fields?: Record<string, string>): void;
}

/** Where log records go: a function, a console-like object, or null (drop). */
export type Logger = LogFunction | ConsoleLikeLogger | null;

/** Most verbose level forwarded. */
export type LogLevel = "error" | "warn" | "info" | "debug" | "trace";

/** Options of a Worker: any config key, plus the worker's own options. */
export interface WorkerOptions extends ConfigOptions {
  /** Most steps in flight at once (sets `workerCapacity`). */
  capacity?: number;
  /** Stable worker id; generated (`node-<pid>-<random>`) by default. */
  workerId?: string;
  /** Where runtime log records go (process-wide); stderr by default. */
  logger?: Logger;
  /** Most verbose level forwarded (process-wide); `info` by default. */
  logLevel?: LogLevel;
  /** Install SIGINT/SIGTERM handlers that drain while running (default true). */
  handleSignals?: boolean;
}

/** A step handler: returns the output (JSON-serialisable) or a Promise of it. */
export type Handler<T = unknown> = (step: Step) => T | Promise<T>;

/** Lifecycle of a Worker. */
export type WorkerState = "idle" | "running" | "stopping" | "stopped";

/** A Node worker serving the steps of its registered handlers. */
export declare class Worker {
  /** Configured from a YAML file, then `TASKER_*` variables, then `options`. */
  static fromConfig(path: string, options?: WorkerOptions): Worker;
  /** Configured from the defaults, then `TASKER_*` variables, then `options`. */
  constructor(options?: WorkerOptions);
  /** The resolved configuration. */
  readonly config: Readonly<Config>;
  /** Where the worker is in its life. */
  readonly state: WorkerState;
  /** The id announced to the orchestrator (null before run() without a workerId option). */
  readonly workerId: string | null;
  /** Most steps in flight at once. */
  readonly capacity: number;
  /** Registers the handler of steps whose `handlerClass` is `name`. */
  handle<T>(name: string, fn: Handler<T>): this;
  /** Serves steps; resolves after stop() (or SIGINT/SIGTERM) has drained. */
  run(): Promise<void>;
  /** Drains gracefully; resolves when done (see README for calls inside handlers). */
  stop(): Promise<void>;
}

/** Sets where runtime log records go (process-wide); undefined restores stderr. */
export declare function setLogger(logger: Logger | undefined, level?: LogLevel): void;

/** Sets the most verbose level forwarded (process-wide). */
export declare function setLogLevel(level: LogLevel): void;

/** Resolves a configuration like a Worker does, without starting anything; throws ConfigError. */
export declare function loadConfig(path?: string | null, options?: ConfigOptions | null): Config;
