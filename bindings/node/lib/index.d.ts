// Declarations of the JavaScript layer. The native types (Step, LogEntry,
// errorTypes) come from native.d.ts, which `napi build` generates from the
// Rust types.
import type { LogEntry, Step as NativeStep, errorTypes as nativeErrorTypes } from "../native";

export type { LogEntry };

/** A JSON value: what a task's context, a handler's config and a step's output are made of. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** A JSON object. */
export type JsonObject = { [key: string]: JsonValue };

/**
 * One step, as a handler sees it (the fields of the native `Step`, which
 * `napi build` generates from the Rust type). `Context` is the type of the
 * task's input (`taskContext`), `Config` of the handler's configuration in
 * the workflow (`handlerConfig`) and `Previous` of the outputs of the steps
 * it depends on (`previousResults`), by step name. They are the caller's
 * word, not checked at run time; untyped they are `any`.
 *
 * ```ts
 * worker.handle("charge", (step: Step<Order, { currency: string }>) => ...);
 * ```
 */
export interface Step<Context = any, Config = any, Previous extends Record<string, any> = Record<string, any>>
  extends Omit<NativeStep, "taskContext" | "handlerConfig" | "previousResults"> {
  /** Handler-specific configuration from the workflow definition. */
  handlerConfig: Config;
  /** The task's input. */
  taskContext: Context;
  /** Outputs of the steps this one depends on, by step name. */
  previousResults: Previous;
}

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
  /** Whether the orchestrator records per-handler Prometheus metrics (orchestrator only). */
  metrics: boolean;
  /** Where `tasker serve` keeps tasks: `sqlite:PATH` or `postgres://...` (serve only). */
  store: string;
  /** The HTTP API address of `tasker serve`, `HOST:PORT` (serve only). */
  apiListen: string;
  /** The folder `tasker serve` loads workflows from; empty: `examples/workflows` (serve only). */
  workflowsDir: string;
  /** Hours `tasker serve` keeps ended tasks; 0 keeps them (serve only). */
  taskRetentionHours: number;
  /** Where a `Client` reaches the API, `http://HOST:PORT` or `https://HOST[:PORT]` (a TLS proxy); empty: `http://` + `apiListen` (clients only). */
  apiUrl: string;
  /** The bearer token a `Client` sends; empty: none (clients only). */
  apiToken: string;
  /** A YAML file of `name: token` lines; when set, every API request needs one of them (serve only). */
  apiTokensFile: string;
  /** Answer without tokens on a non-loopback `apiListen` (serve only; a trusted network). */
  apiTrustedNetwork: boolean;
  /** This side's CURVE secret key file (`NAME.key` from `tasker keygen NAME`); empty: none. */
  curveSecretKeyFile: string;
  /** Workers: the orchestrator's CURVE public key file (`NAME.pub`); setting it connects with CURVE. */
  curveServerPublicKeyFile: string;
  /** Orchestrator: a folder of admitted workers' `*.pub` files; setting it turns CURVE on (orchestrator only). */
  curveAuthorizedKeysDir: string;
}

/** Config keys that replace those of the file and the environment; `undefined` keeps the loaded value. */
export type ConfigOptions = Partial<Config>;

/** Which section of a YAML config file to read (`fromConfig`, `loadConfig`). */
export interface FileSection {
  /** The section's name; default `TASKER_ENV`, else `development`. */
  env?: string;
}

/** The former name of `ConfigOptions`. */
export type ConfigOverrides = ConfigOptions;

/**
 * The `error_type` values tasker-core reports (`errorTypes.UNKNOWN_HANDLER`
 * is `"UnknownHandler"`, ...), defined in Rust.
 */
export declare const errorTypes: Readonly<typeof nativeErrorTypes>;

/** Options of `TaskerError` and its subclasses. */
export interface TaskerErrorOptions {
  /** The step's `error_type` (e.g. `"CardDeclined"`); default: the error's `name`, its class name. */
  errorType?: string;
  /** Whether a step failed with this error may be retried; default: the worker's `defaultRetryable`. */
  retryable?: boolean;
  /** The underlying error. */
  cause?: unknown;
}

/** Base class of tasker-core's errors (SDK errors and handler failures). */
export declare class TaskerError extends Error {
  constructor(message: string, options?: TaskerErrorOptions);
  /** The `error_type` a step failed with it reports: the `errorType` option, else `name`. */
  errorType: string;
  /** Set when the error decides the step's retryability. */
  retryable?: boolean;
}

/**
 * A handler's deliberate failure, its retryability chosen at run time:
 * `new HandlerError(message, { errorType, retryable })` (`retryable`
 * absent: the worker's `defaultRetryable`).
 */
export declare class HandlerError extends TaskerError {}

/** A handler failure that may succeed on a later attempt. */
export declare class RetryableError extends HandlerError {
  constructor(message: string, options?: Omit<TaskerErrorOptions, "retryable"> & { retryable?: true });
  retryable: true;
}

/** A handler failure that no retry can fix. */
export declare class PermanentError extends HandlerError {
  constructor(message: string, options?: Omit<TaskerErrorOptions, "retryable"> & { retryable?: false });
  retryable: false;
}

/**
 * A configuration that does not resolve, or options the runtime refuses (a
 * missing or garbled CURVE key file); the message names the key, variable,
 * value or file.
 */
export declare class ConfigError extends TaskerError {}

/** The worker runtime could not start, or failed while running. */
export declare class WorkerError extends TaskerError {}

/**
 * The orchestrator refused this worker's connection in the handshake (its
 * CURVE key not admitted, CURVE on one side only, a wrong server key); the
 * message says which and what to change. `Worker#run()` rejects with it and
 * the worker has stopped.
 */
export declare class WorkerRefused extends WorkerError {}

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

/**
 * A step handler: returns the output (JSON data) or a Promise of it. `T` is
 * the output's type; `Context`, `Config` and `Previous` type the step's
 * fields (see `Step`).
 */
export type Handler<T = unknown, Context = any, Config = any, Previous extends Record<string, any> = Record<string, any>> = (
  step: Step<Context, Config, Previous>,
) => T | Promise<T>;

/**
 * What a middleware calls to go on: runs the rest of the chain (the next
 * middleware, at the end the handler) and resolves to its output, or
 * rejects with what it threw.
 */
export type Next = () => Promise<unknown>;

/**
 * A middleware around every handler call (`worker.use`), Koa style:
 * `async (step, next) => { ...; const output = await next(); ...; return output; }`.
 * What it returns (or resolves to) is the step's output; `Context`,
 * `Config` and `Previous` type the step's fields (see `Step`).
 */
export type Middleware<Context = any, Config = any, Previous extends Record<string, any> = Record<string, any>> = (
  step: Step<Context, Config, Previous>,
  next: Next,
) => unknown;

/** Options of one handler, given to `worker.handle(name, fn, options)`. */
export interface HandlerOptions {
  /**
   * Most steps of this handler at once on this worker (an integer ≥ 1; a
   * ConfigError otherwise), e.g. for a rate-limited API; the other handlers
   * use the rest of the capacity. Enforced by the orchestrator. Absent:
   * the capacity only.
   */
  concurrency?: number;
}

/**
 * Lifecycle of a Worker: `idle` before run(), `connecting` until registered
 * with an orchestrator (and again while reconnecting), `connected`,
 * `draining` after stop(), `stopped`. The Python and Ruby SDKs use the same
 * names.
 */
export type WorkerState = "idle" | "connecting" | "connected" | "draining" | "stopped";

/** A Node worker serving the steps of its registered handlers. */
export declare class Worker {
  /**
   * Configured from a YAML file's section `env` (else `TASKER_ENV`, else
   * `development`), then `TASKER_*` variables, then `options`.
   */
  static fromConfig(path: string, options?: WorkerOptions & FileSection): Worker;
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
  /**
   * Registers the handler of steps whose `handlerClass` is `name`. The step's
   * types come from the handler's parameter (`(step: Step<Order>) => ...`) or
   * the type arguments: `handle<Output, Context, Config, Previous>`.
   */
  handle<T = unknown, Context = any, Config = any, Previous extends Record<string, any> = Record<string, any>>(
    name: string,
    fn: Handler<T, Context, Config, Previous>,
    options?: HandlerOptions,
  ): this;
  /**
   * Adds a middleware around every handler call; the first added is the
   * outermost. Its return value is the step's output; not calling `next()`
   * skips the handler; a throw fails the step as a handler's would. Throws
   * TaskerError once the worker runs.
   */
  use<Context = any, Config = any, Previous extends Record<string, any> = Record<string, any>>(
    middleware: Middleware<Context, Config, Previous>,
  ): this;
  /**
   * Serves steps; resolves after stop() (or SIGINT/SIGTERM) has drained.
   * Rejects with WorkerRefused when the orchestrator refuses the connection.
   */
  run(): Promise<void>;
  /** Drains gracefully; resolves when done (see README for calls inside handlers). */
  stop(): Promise<void>;
}

/** Sets where runtime log records go (process-wide); undefined restores stderr. */
export declare function setLogger(logger: Logger | undefined, level?: LogLevel): void;

/** Sets the most verbose level forwarded (process-wide). */
export declare function setLogLevel(level: LogLevel): void;

/** Resolves a configuration like a Worker does, without starting anything; throws ConfigError. */
export declare function loadConfig(path?: string | null, options?: (ConfigOptions & FileSection) | null): Config;

// ---- The HTTP client (`Client`): start tasks from an application ---------
//
// Field names: the server's snake_case JSON fields are camelCase here
// (`task_id` -> `taskId`); timestamps are `Date`s. A task's `context` and a
// step's `output` are the application's and handlers' own JSON, unchanged.
// Every result object also has the server's JSON, unchanged, as its
// non-enumerable `raw`.

/** Where a durable task is. */
export type TaskStatus = "running" | "complete" | "failed" | "cancelled";

/** Where a step of a durable task is. */
export type StepState = "waiting" | "running" | "retry_wait" | "completed" | "failed" | "blocked" | "cancelled";

/** How a step ended. */
export type StepOutcome = "completed" | "failed" | "blocked" | "cancelled";

/** A JSON object as the server sent it (snake_case keys). */
export type RawJson = Readonly<Record<string, unknown>>;

/** What went wrong with a step (its latest failed attempt). */
export interface StepError {
  /** The error's kind: the handler's exception class, or one of `errorTypes`. */
  errorType: string;
  /** Human-readable description. */
  message: string;
  /** Whether trying again may succeed. */
  retryable: boolean;
  /** Backtrace lines, innermost first, where the handler's language has them. */
  backtrace: string[];
  /** The server's JSON. */
  readonly raw: RawJson;
}

/** One step of a task report. */
export interface StepReport {
  /** The step's id (the `stepId` its workers see). */
  stepId: number;
  /** Its name in the workflow. */
  name: string;
  /** Its handler. */
  handler: string;
  /** Where it is. */
  state: StepState;
  /** How it ended; null while it has not. */
  outcome: StepOutcome | null;
  /** Attempts dispatched. */
  attempts: number;
  /** From first dispatch to end, in ms (0 until both happened). */
  durationMs: number;
  /** For a running step, the worker it is out at now (null while it waits for one); for any other, the worker of its latest result. */
  workerId: string | null;
  /** The handler's output once completed (JSON, as returned); null before. */
  output: unknown;
  /** The latest failed attempt's error; null when none failed. */
  error: StepError | null;
  /** For a blocked step: the failed step upstream. */
  blockedBy: string | null;
  /** While waiting out a retry backoff: when the next attempt is due. */
  nextRunAt: Date | null;
  /** The steps it waits for, by name. */
  dependsOn: string[];
  /** The server's JSON (`StepDetail`). */
  readonly raw: RawJson;
}

/** A task and its steps (the server's `TaskDetail`); `C` is its context's type. */
export interface Task<C = Record<string, unknown>> {
  /** The task's id. */
  taskId: number;
  /** The workflow's name. */
  workflow: string;
  /** Where the task is; it has ended when this is not `running`. */
  status: TaskStatus;
  /** Whether a cancel was requested. */
  cancelRequested: boolean;
  /** The key it was created with; null without one. */
  idempotencyKey: string | null;
  /** The task's context, as submitted. */
  context: C;
  /** When it was created (and started). */
  startedAt: Date;
  /** When it ended; null while running. */
  finishedAt: Date | null;
  /** From creation to end (or to now), in ms. */
  durationMs: number;
  /** Each step, in workflow order. */
  steps: StepReport[];
  /** The server's JSON (`TaskDetail`). */
  readonly raw: RawJson;
}

/** A task in a list (the server's `TaskSummary`). */
export interface TaskSummary {
  taskId: number;
  workflow: string;
  status: TaskStatus;
  cancelRequested: boolean;
  idempotencyKey: string | null;
  startedAt: Date;
  finishedAt: Date | null;
  /** Steps in all. */
  stepsTotal: number;
  /** Steps completed. */
  stepsCompleted: number;
  /** The server's JSON (`TaskSummary`). */
  readonly raw: RawJson;
}

/** One page of tasks, newest first. */
export interface TaskPage {
  tasks: TaskSummary[];
  /** Pass as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
  /** The server's JSON (`TaskPage`). */
  readonly raw: RawJson;
}

/** Filters of `list` (and `listAll`). */
export interface ListFilters {
  /** Only tasks in this state. */
  status?: TaskStatus;
  /** Only tasks of this workflow. */
  workflow?: string;
  /** Only tasks created at or after this time (a Date, or RFC 3339 text). */
  createdSince?: Date | string;
  /** Most tasks in the page, 1 to 1000 (default 50). */
  limit?: number;
  /** The `nextCursor` of the previous page. */
  cursor?: string;
}

/** A step of a workflow. */
export interface WorkflowStep {
  name: string;
  handler: string;
  /** The steps it waits for. */
  dependsOn: string[];
  readonly raw: RawJson;
}

/** A workflow the server can run. */
export interface Workflow {
  /** Its name (what `submit` takes). */
  name: string;
  description: string | null;
  /** Its steps, in workflow order. */
  steps: WorkflowStep[];
  readonly raw: RawJson;
}

/** Options of `submit`. */
export interface SubmitOptions {
  /**
   * A key of the caller's choosing (1 to 255 characters): the same key with
   * the same workflow and context returns the task it created (`created`
   * false); with another, an `IdempotencyConflict`. With a key the submit
   * is retried when the server cannot be reached; without, tried once.
   */
  idempotencyKey?: string | null;
}

/** Options of `wait`. */
export interface WaitOptions {
  /** Longest wait in ms, then a `WaitTimeout`; null, `Infinity` or absent: until the task ends. */
  timeoutMs?: number | null;
  /** Aborts the wait; the Promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Options of a Client: any config key, plus the client's own options. */
export interface ClientOptions extends ConfigOptions {
  /** The API's base URL, `http://HOST:PORT[/prefix]` or `https://HOST[:PORT][/prefix]` (a TLS proxy; its certificate is always verified); wins over `apiUrl` and `apiListen`. */
  url?: string | null;
  /** The bearer token; wins over `apiToken`. */
  token?: string | null;
  /** Read timeout of each request but waits, in ms, more than 0 (default 30000). */
  timeoutMs?: number;
}

/**
 * A task's context as `submit` takes it: a JSON object. Arrays, Maps and
 * Sets are objects to TypeScript but not to JSON (the client refuses them
 * at run time), so they do not type-check either; `null` means `{}`.
 */
export type ContextOf<C> = C extends readonly unknown[] | ReadonlyMap<unknown, unknown> | ReadonlySet<unknown> ? never : C;

/** A task started by `submit`, with operations bound to its id. */
export declare class TaskHandle<C = Record<string, unknown>> {
  /** The task's id. */
  readonly id: number;
  /** Whether this submit created the task (false: its idempotency key had). */
  readonly created: boolean;
  /** The task as the server answered the submit. */
  readonly task: Task<C>;
  /** The task now. */
  get(): Promise<Task<C>>;
  /** The task once it has ended (see `Client.wait`). */
  wait(options?: WaitOptions): Promise<Task<C>>;
  /** Requests its cancellation (see `Client.cancel`). */
  cancel(): Promise<Task<C>>;
}

/**
 * A client of `tasker serve`'s HTTP API (protocol/CLIENT.md). Configured
 * from the defaults (or a file: `fromConfig`), then `TASKER_*` variables,
 * then `options`; `url` and `token` win. Retries idempotent calls (all but
 * a submit without an idempotency key) when there is no answer or a 5xx.
 */
export declare class Client {
  /**
   * Configured from a YAML file's section `env` (else `TASKER_ENV`, else
   * `development`), then `TASKER_*` variables, then `options`.
   */
  static fromConfig(path: string, options?: ClientOptions & FileSection): Client;
  /** Configured from the defaults, then `TASKER_*` variables, then `options`. */
  constructor(options?: ClientOptions);
  /** The API's base URL (no trailing slash). */
  readonly url: string;
  /**
   * Starts a task of `workflow` with `context`, a JSON object (default `{}`).
   * One that is not (an array), or holds what JSON has no form for (a Map,
   * a BigInt, NaN...), is a `TaskerError` naming it, before any request.
   */
  submit<C extends object = Record<string, unknown>>(workflow: string, context?: ContextOf<C> | null, options?: SubmitOptions): Promise<TaskHandle<C>>;
  /**
   * The task `id` now; `TaskNotFound` when there is none. An id that is not
   * a positive integer, or a string of its digits (`"42"` from a URL), is a
   * `TaskerError`, before any request (as for `wait` and `cancel`).
   */
  get<C = Record<string, unknown>>(id: number | string): Promise<Task<C>>;
  /** The task `id` once it has ended; `WaitTimeout` after `timeoutMs`. */
  wait<C = Record<string, unknown>>(id: number | string, options?: WaitOptions): Promise<Task<C>>;
  /** Requests the cancellation of task `id`; `TaskEnded` when it has ended. */
  cancel<C = Record<string, unknown>>(id: number | string): Promise<Task<C>>;
  /** One page of tasks, newest first. */
  list(filters?: ListFilters): Promise<TaskPage>;
  /** Every task matching `filters`, page after page. */
  listAll(filters?: ListFilters): AsyncGenerator<TaskSummary, void, undefined>;
  /** The workflows the server loaded. */
  workflows(): Promise<Workflow[]>;
}

/** Options of `ClientError` and its subclasses. */
export interface ClientErrorOptions {
  status?: number | null;
  problemType?: string | null;
  detail?: string | null;
  problem?: Problem | null;
  cause?: unknown;
}

/** An RFC 9457 problem document, as the server sent it (snake_case keys). */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  field?: string | null;
  task_id?: number | null;
  task_status?: TaskStatus | null;
  known_workflows?: string[] | null;
  closest?: string | null;
  [key: string]: unknown;
}

/** Base class of the errors a `Client` throws. */
export declare class ClientError extends TaskerError {
  constructor(message: string, options?: ClientErrorOptions);
  /** The HTTP status; null when there was no answer. */
  readonly status: number | null;
  /** The problem's slug (`task-not-found`, ...); null without a problem document. */
  readonly problemType: string | null;
  /** The server's detail (also the message); null without a problem document. */
  readonly detail: string | null;
  /** The whole problem document; null without one. */
  readonly problem: Problem | null;
}

/** A request refused as invalid; `field` names the field or parameter at fault. */
export declare class ValidationError extends ClientError {
  readonly field: string | null;
}

/** The workflow is not loaded: `field` is `workflow`. */
export declare class UnknownWorkflow extends ValidationError {
  /** The workflows loaded. */
  readonly knownWorkflows: string[];
  /** The loaded one closest to the name given; null when none is near. */
  readonly closest: string | null;
}

/** No task has the id. */
export declare class TaskNotFound extends ClientError {
  readonly taskId: number | null;
}

/** The idempotency key was used with another workflow or context. */
export declare class IdempotencyConflict extends ClientError {
  /** The task the key belongs to. */
  readonly taskId: number | null;
}

/** Cancelling a task that has ended. */
export declare class TaskEnded extends ClientError {
  readonly taskId: number | null;
  /** How it ended. */
  readonly taskStatus: TaskStatus | null;
}

/** No token, or a wrong one, for a server that wants one. */
export declare class Unauthorized extends ClientError {}

/** No answer, or a 5xx one, left after the retries. */
export declare class ServerUnavailable extends ClientError {
  constructor(message: string, options?: ClientErrorOptions & { url?: string | null });
  /** The server's base URL. */
  readonly url: string | null;
}

/** The wait's timeout passed before the task ended. */
export declare class WaitTimeout extends ClientError {
  constructor(message: string, options?: ClientErrorOptions & { task?: Task });
  /** The task as last seen (still running). */
  readonly task: Task;
}

/** Any other problem or status. */
export declare class ApiError extends ClientError {}
