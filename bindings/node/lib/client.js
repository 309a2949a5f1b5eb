"use strict";

// The client of `tasker serve`'s HTTP API: start tasks from application
// code and learn how they ended. It follows protocol/CLIENT.md (the
// contract every tasker-core client follows) on Node's global fetch, with
// no dependency. Every operation returns a Promise.
//
// An `https://` URL reaches `tasker serve` through a TLS-terminating proxy
// (serve itself speaks plain HTTP). fetch verifies the proxy's certificate,
// host name included, against Node's CA certificates plus those of
// NODE_EXTRA_CA_CERTS (read when node starts: the way to add a private CA).
// The client has no option to skip verification.
//
// Names: the SDK's own API is camelCase, so the server's snake_case fields
// are too (`task_id` is `taskId`, `started_at` is `startedAt`, a Date).
// What the application itself put in (a task's `context`) and what
// handlers returned (a step's `output`) are left as they are. Each result
// object keeps the server's JSON, unchanged, as its non-enumerable `raw`.

const { setTimeout: sleep } = require("node:timers/promises");

const { resolveConfig } = require("./config.js");
const {
  TaskerError,
  fromNative,
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
const { jsonProblem } = require("./json.js");
const logging = require("./logging.js");
const { version } = require("../package.json");

/** Most bytes of a request body `tasker serve` takes (`body-too-large`). */
const MAX_BODY_BYTES = 1 << 20;

const CONFIG_PATH = Symbol("configPath");
const CONFIG_ENV = Symbol("configEnv");

/** `type` values start with this; the rest (the slug) picks the class. */
const PROBLEM_BASE = "https://tasker-core.dev/problems/";

/** The error class of each problem slug (CLIENT.md §4); 5xx and the rest are handled apart. */
const CLASS_OF_SLUG = {
  "malformed-json": ValidationError,
  "invalid-body": ValidationError,
  "invalid-parameter": ValidationError,
  "unsupported-media-type": ValidationError,
  "body-too-large": ValidationError,
  "unknown-workflow": UnknownWorkflow,
  "task-not-found": TaskNotFound,
  "idempotency-conflict": IdempotencyConflict,
  "task-ended": TaskEnded,
  unauthorized: Unauthorized,
};

/** Waits before the retries of an idempotent call, in ms (CLIENT.md §5), each ±20%. */
const RETRY_DELAYS_MS = [200, 400, 800, 1600];

/** Longest `wait` asked of the server per request, in ms (CLIENT.md §3). */
const WAIT_CHUNK_MS = 20_000;

/** A wait request's read timeout beyond its `wait`, in ms. */
const WAIT_GRACE_MS = 10_000;

/**
 * How far past its deadline a wait may run while the server does not
 * answer, in ms (CLIENT.md §3): its tries are cut to end by then.
 */
const DEADLINE_GRACE_MS = 2_000;

/** Read timeout of every other request, in ms, unless `timeoutMs` says otherwise. */
const DEFAULT_TIMEOUT_MS = 30_000;

/** Most characters of a body quoted in a message. */
const MAX_QUOTED = 200;

const LIST_FILTERS = {
  status: "status",
  workflow: "workflow",
  createdSince: "created_since",
  limit: "limit",
  cursor: "cursor",
};

const USER_AGENT = `tasker-core-node/${version} (node ${process.version})`;

function quote(text) {
  const chars = Array.from(String(text));
  return chars.length > MAX_QUOTED ? `${chars.slice(0, MAX_QUOTED).join("")}…` : chars.join("");
}

function toDate(value) {
  return typeof value === "string" ? new Date(value) : null;
}

function orNull(value) {
  return value === undefined ? null : value;
}

/** `object` with `raw` (the server's JSON) as a non-enumerable property. */
function withRaw(object, raw) {
  Object.defineProperty(object, "raw", { value: raw, enumerable: false });
  return object;
}

/** A `StepDetail` of the API as a step report. */
function toStepReport(raw) {
  const error = raw.error
    ? withRaw(
        {
          errorType: raw.error.error_type,
          message: raw.error.message,
          retryable: raw.error.retryable,
          backtrace: raw.error.backtrace ?? [],
        },
        raw.error,
      )
    : null;
  return withRaw(
    {
      stepId: raw.step_id,
      name: raw.name,
      handler: raw.handler,
      state: raw.state,
      outcome: orNull(raw.outcome),
      attempts: raw.attempts,
      durationMs: raw.duration_ms,
      workerId: orNull(raw.worker_id),
      output: orNull(raw.output),
      error,
      blockedBy: orNull(raw.blocked_by),
      nextRunAt: toDate(raw.next_run_at),
      dependsOn: Array.isArray(raw.depends_on) ? raw.depends_on : [],
    },
    raw,
  );
}

/** A `TaskDetail` of the API as a task report. */
function toTask(raw) {
  return withRaw(
    {
      taskId: raw.task_id,
      workflow: raw.workflow,
      status: raw.status,
      cancelRequested: raw.cancel_requested,
      idempotencyKey: orNull(raw.idempotency_key),
      context: raw.context,
      startedAt: toDate(raw.started_at),
      finishedAt: toDate(raw.finished_at),
      durationMs: raw.duration_ms,
      steps: Array.isArray(raw.steps) ? raw.steps.map(toStepReport) : [],
    },
    raw,
  );
}

/** A `TaskSummary` of the API (a task in a list). */
function toSummary(raw) {
  return withRaw(
    {
      taskId: raw.task_id,
      workflow: raw.workflow,
      status: raw.status,
      cancelRequested: raw.cancel_requested,
      idempotencyKey: orNull(raw.idempotency_key),
      startedAt: toDate(raw.started_at),
      finishedAt: toDate(raw.finished_at),
      stepsTotal: raw.steps_total,
      stepsCompleted: raw.steps_completed,
    },
    raw,
  );
}

/** A `WorkflowInfo` of the API. */
function toWorkflow(raw) {
  return withRaw(
    {
      name: raw.name,
      description: orNull(raw.description),
      steps: (raw.steps ?? []).map((step) =>
        withRaw({ name: step.name, handler: step.handler, dependsOn: step.depends_on ?? [] }, step),
      ),
    },
    raw,
  );
}

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

/** What a task (`TaskDetail`, `TaskSummary`) lacks, if anything. */
function notATask(raw, detail) {
  if (!isObject(raw)) return "expected a task object";
  if (!Number.isSafeInteger(raw.task_id)) return "task_id: expected an integer";
  if (typeof raw.workflow !== "string") return "workflow: expected a string";
  if (typeof raw.status !== "string") return "status: expected a string";
  if (detail && !Array.isArray(raw.steps)) return "steps: expected an array";
  return null;
}

/** Why `json` is not the answer `expect` (`"task"`, `"page"`) names, or null. */
function notShaped(expect, json) {
  if (expect === "task") return notATask(json, true);
  if (!isObject(json) || !Array.isArray(json.tasks)) return "tasks: expected an array";
  for (const task of json.tasks) {
    const wrong = notATask(task, false);
    if (wrong) return `tasks: ${wrong}`;
  }
  return null;
}

/** Whether a task (report or summary) has ended: its status is not `running`. */
function hasEnded(task) {
  return task.status !== "running";
}

/** OpenSSL's and Node's codes for a certificate that could not be verified. */
const CERTIFICATE_CODES = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "CERT_REJECTED",
  "CERT_HAS_EXPIRED",
  "CERT_NOT_YET_VALID",
  "CERT_SIGNATURE_FAILURE",
  "CERT_REVOKED",
  "INVALID_CA",
  "HOSTNAME_MISMATCH",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/**
 * Most bytes of an answer read: a task with every step's output is far
 * smaller. A server that streams without end (hostile, or not tasker) would
 * otherwise take the process's memory.
 */
const MAX_ANSWER_BYTES = 256 * 1024 * 1024;

/** The body of `response` as text, read up to MAX_ANSWER_BYTES; past that an ApiError. */
async function readAnswer(response, method, target) {
  const tooLarge = () =>
    new ApiError(
      `${method} ${target} answered with more than ${MAX_ANSWER_BYTES >> 20} MiB, more than any answer of the API; stopped reading`,
      { status: response.status },
    );
  if (Number(response.headers.get("content-length")) > MAX_ANSWER_BYTES) {
    await response.body?.cancel();
    throw tooLarge();
  }
  if (!response.body) return "";
  const chunks = [];
  let total = 0;
  for await (const chunk of response.body) {
    total += chunk.byteLength;
    if (total > MAX_ANSWER_BYTES) {
      await response.body.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Why a fetch failed, in a few words: the code of its cause where there is one. */
function describeFailure(error, timeoutMs) {
  if (error && error.name === "TimeoutError") return `no answer within ${Number((timeoutMs / 1000).toPrecision(3))} s`;
  const cause = error && error.cause ? error.cause : error;
  const code = cause && (cause.code || (Array.isArray(cause.errors) && cause.errors[0] && cause.errors[0].code));
  switch (code) {
    case "ECONNREFUSED":
      return "connection refused";
    case "ECONNRESET":
    case "UND_ERR_SOCKET":
      return "connection reset";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "host not found";
    case "ETIMEDOUT":
    case "UND_ERR_CONNECT_TIMEOUT":
      return "connection timed out";
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return "host unreachable";
    default:
      if (CERTIFICATE_CODES.has(code)) {
        return (
          `the server's TLS certificate was not trusted (${code}: ${cause.message}); for a private CA, ` +
          "name its certificate in NODE_EXTRA_CA_CERTS (read when node starts)"
        );
      }
      break;
  }
  const message = cause && cause.message ? cause.message : String(cause);
  return code ? `${code}: ${message}` : message;
}

/**
 * Why an answer was not HTTP at all, or null. A ZeroMQ socket greets first,
 * ten bytes starting with 0xFF, and then waits; undici hands the bytes it
 * could not parse as text, 0xFF as U+FFFD. Trying again cannot help, and a
 * peer that is no HTTP server acted on nothing it was sent.
 */
function notHttp(error) {
  const cause = error && error.cause;
  if (!cause || cause.code !== "HPE_INVALID_CONSTANT") return null;
  if (typeof cause.data === "string" && cause.data.startsWith("\uFFFD")) {
    return (
      "it answered in ZeroMQ's protocol, not HTTP: that is an orchestrator's ZeroMQ endpoint; " +
      "the API is the `api http://...` address tasker serve prints"
    );
  }
  return "what answered there does not speak HTTP";
}

/** The problem document of an error answer, or null when the body is none. */
function parseProblem(text, contentType) {
  if (!/json/i.test(contentType ?? "")) return null;
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (value === null || typeof value !== "object" || typeof value.type !== "string") return null;
  return value;
}

function slugOf(problem) {
  const type = problem.type;
  return type.startsWith(PROBLEM_BASE) ? type.slice(PROBLEM_BASE.length) : type.slice(type.lastIndexOf("/") + 1);
}

/** An AbortSignal that fires after `ms` (a TimeoutError) or when `outer` does, and its disposer. */
function requestSignal(ms, outer) {
  const controller = new AbortController();
  const timer = setTimeout(() => {
    controller.abort(new DOMException(`no answer within ${ms / 1000} s`, "TimeoutError"));
  }, ms);
  const onAbort = () => controller.abort(outer.reason);
  if (outer) {
    if (outer.aborted) onAbort();
    else outer.addEventListener("abort", onAbort, { once: true });
  }
  const dispose = () => {
    clearTimeout(timer);
    if (outer) outer.removeEventListener("abort", onAbort);
  };
  return { signal: controller.signal, dispose };
}

/** A task id: a positive integer, or a string of its digits (as a URL or a form has it). */
function checkTaskId(id) {
  const value = typeof id === "string" && /^[0-9]+$/.test(id) ? Number(id) : id;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 1) {
    const shown = typeof id === "string" ? JSON.stringify(id) : typeof id === "bigint" ? `${id}n` : String(id);
    throw new TaskerError(`a task id is a positive integer (or a string of its digits), got ${shown}`);
  }
  return String(value);
}

/**
 * A task's context: a JSON object (what the server takes), checked as a
 * handler's output is, so that nothing is sent that JSON.stringify would
 * change (a Map becoming {}) or throw on (a BigInt). `undefined` and `null`
 * are `{}`.
 */
function checkContext(context) {
  if (context === undefined || context === null) return {};
  if (typeof context !== "object" || Array.isArray(context)) {
    const kind = Array.isArray(context) ? "an array" : `a ${typeof context}`;
    throw new TaskerError(`context must be an object (a JSON object), got ${kind}`);
  }
  // Text too: a lone surrogate reached the server, which named the body
  // malformed JSON rather than the place.
  const problem = jsonProblem(context, "context", { text: true });
  if (problem !== null) throw new TaskerError(problem);
  return context;
}

/**
 * A timeout in ms. A wait's (`nullable`) may be 0 (ask once) or null or
 * Infinity (no deadline); a client's read timeout must be positive: with 0
 * every call failed as "is tasker serve running?".
 */
function checkTimeout(name, value, { nullable }) {
  if (value === undefined || (nullable && (value === null || value === Infinity))) return;
  const least = nullable ? 0 : Number.MIN_VALUE;
  if (typeof value !== "number" || !(value >= least) || value === Infinity) {
    const range = nullable ? "0 or more, or null (or Infinity) for no deadline" : "more than 0";
    throw new TaskerError(`${name} must be a number of ms, ${range}; got ${typeof value === "string" ? JSON.stringify(value) : String(value)}`);
  }
}

/**
 * A task started by `submit()`: its `id`, whether this call `created` it
 * (false when an idempotency key returned an earlier task), the `task` as
 * the server answered, and `get`, `wait` and `cancel` bound to the id.
 */
class TaskHandle {
  constructor(client, task, created) {
    /** The task's id. */
    this.id = task.taskId;
    /** Whether this submit created the task (false: its idempotency key had). */
    this.created = created;
    /** The task as the server answered the submit. */
    this.task = task;
    Object.defineProperty(this, "_client", { value: client, enumerable: false });
  }

  /** The task now. */
  get() {
    return this._client.get(this.id);
  }

  /** The task once it has ended; see `Client.wait`. */
  wait(options) {
    return this._client.wait(this.id, options);
  }

  /** Requests the task's cancellation; see `Client.cancel`. */
  cancel() {
    return this._client.cancel(this.id);
  }
}

/**
 * A client of `tasker serve`'s HTTP API (protocol/CLIENT.md).
 *
 * Configured like a worker: the built-in defaults (or a YAML file's
 * section, `Client.fromConfig`), then `TASKER_*` variables, then
 * `options` (config keys in camelCase); then `url` and `token`, which win.
 * The URL is `apiUrl` when set, else `http://` + `apiListen` (an
 * unspecified address reached on loopback); the token `apiToken` (empty:
 * none).
 */
class Client {
  /** A client configured from a YAML file, then `TASKER_*` variables, then `options`. */
  static fromConfig(path, options = {}) {
    if (typeof path !== "string" || path === "") {
      throw new TaskerError("Client.fromConfig needs the path of a YAML config file");
    }
    if (options === null || typeof options !== "object") {
      throw new TaskerError("Client options must be an object");
    }
    const { env, ...rest } = options;
    return new Client({ ...rest, [CONFIG_PATH]: path, [CONFIG_ENV]: env });
  }

  constructor(options = {}) {
    if (options === null || typeof options !== "object") {
      throw new TaskerError("Client options must be an object");
    }
    // The client's own options; every other key is a config key, for Rust
    // to resolve (and to refuse when it is none).
    const { [CONFIG_PATH]: path, [CONFIG_ENV]: env, url, token, timeoutMs, ...configOptions } = options;
    if (url !== undefined && url !== null) {
      if (typeof url !== "string" || url === "") throw new TaskerError("url must be a non-empty string");
      configOptions.apiUrl = url;
    }
    if (token !== undefined && token !== null) {
      if (typeof token !== "string") throw new TaskerError("token must be a string");
      configOptions.apiToken = token;
    }
    checkTimeout("timeoutMs", timeoutMs, { nullable: false });
    let resolved, values;
    try {
      ({ resolved, values } = resolveConfig(path, configOptions, env));
    } catch (error) {
      // The url and token given here are the options `apiUrl` and
      // `apiToken` underneath: name them as the caller wrote them.
      if (typeof error?.message === "string") {
        if (url !== undefined && url !== null) error.message = error.message.replace("option `apiUrl`", "option `url`");
        if (token !== undefined && token !== null) error.message = error.message.replace("option `apiToken`", "option `token`");
      }
      throw error;
    }
    let base;
    try {
      base = resolved.apiBaseUrl();
    } catch (error) {
      throw fromNative(error);
    }
    /** The API's base URL (`http://HOST:PORT`, or `https://HOST[:PORT]` for a TLS proxy; no trailing slash). */
    this.url = base;
    // Checked in Rust with the rest of the configuration (printable ASCII
    // only: a token never needs more, and a line break inside one went
    // into the header); the whitespace around it, as a file ends, is not
    // the token's.
    Object.defineProperty(this, "_token", { value: values.apiToken.trim(), enumerable: false });
    Object.defineProperty(this, "_timeoutMs", { value: timeoutMs ?? DEFAULT_TIMEOUT_MS, enumerable: false });
  }

  /**
   * Starts a task of `workflow` with `context` (a JSON object). With an
   * `idempotencyKey`, repeating the call returns the task the key created
   * (`created` false) and the call is retried when the server cannot be
   * reached; without one it is tried once. A context that is not a JSON
   * object, or holds what is not JSON data, is a `TaskerError` before any
   * request.
   */
  async submit(workflow, context = {}, options = {}) {
    const { idempotencyKey, ...unknown } = optionsObject("submit", options, "{ idempotencyKey: \"order-1\" }");
    rejectUnknown("submit", unknown, ["idempotencyKey"]);
    const body = { workflow, context: checkContext(context) };
    if (idempotencyKey !== undefined && idempotencyKey !== null) body.idempotency_key = idempotencyKey;
    const idempotent = body.idempotency_key !== undefined;
    const { status, json } = await this._request("POST", "/v1/tasks", { body, idempotent, expect: "task" });
    return new TaskHandle(this, toTask(json), status === 201);
  }

  /** The task `id` now. */
  async get(id) {
    const { json } = await this._request("GET", `/v1/tasks/${checkTaskId(id)}`, { idempotent: true, expect: "task" });
    return toTask(json);
  }

  /**
   * The task `id` once it has ended (long-polling the server, CLIENT.md
   * §3). `timeoutMs`: how long to wait at most (default: until it ends);
   * past it, a `WaitTimeout` carrying the task as last seen. `signal`:
   * aborts the wait (the Promise rejects with the signal's reason).
   */
  async wait(id, options = {}) {
    const { timeoutMs = null, signal, ...unknown } = optionsObject("wait", options, "{ timeoutMs: 30000 }");
    rejectUnknown("wait", unknown, ["timeoutMs", "signal"]);
    checkTimeout("timeoutMs", timeoutMs, { nullable: true });
    const path = `/v1/tasks/${checkTaskId(id)}`;
    const deadline = timeoutMs === null || timeoutMs === Infinity ? null : performance.now() + timeoutMs;
    for (;;) {
      const left = deadline === null ? WAIT_CHUNK_MS : Math.max(0, deadline - performance.now());
      const waitMs = Math.min(WAIT_CHUNK_MS, Math.round(left));
      const { json } = await this._request("GET", path, {
        query: { wait: String(waitMs / 1000) },
        idempotent: true,
        expect: "task",
        timeoutMs: waitMs + WAIT_GRACE_MS,
        deadline,
        signal,
      });
      const task = toTask(json);
      if (hasEnded(task)) return task;
      if (deadline !== null && performance.now() >= deadline) {
        throw new WaitTimeout(
          `task ${task.taskId} (${task.workflow}) did not end within ${timeoutMs / 1000} s; it is ${task.status}`,
          { task },
        );
      }
    }
  }

  /**
   * Requests the cancellation of task `id`: it dispatches no more steps.
   * Resolves to the task (`cancelRequested` true; its status turns
   * `cancelled` once its running steps are done). A task that has ended
   * is a `TaskEnded`.
   */
  async cancel(id) {
    const { json } = await this._request("POST", `/v1/tasks/${checkTaskId(id)}/cancel`, {
      idempotent: true,
      expect: "task",
    });
    return toTask(json);
  }

  /**
   * One page of tasks, newest first: `{ tasks, nextCursor }`. Filters:
   * `status`, `workflow`, `createdSince` (a Date or RFC 3339 text),
   * `limit` (1 to 1000, default 50) and `cursor` (a page's `nextCursor`).
   */
  async list(filters = {}) {
    const query = listQuery(filters);
    const { json } = await this._request("GET", "/v1/tasks", { query, idempotent: true, expect: "page" });
    return withRaw(
      { tasks: (json.tasks ?? []).map(toSummary), nextCursor: orNull(json.next_cursor) },
      json,
    );
  }

  /** Every task matching `filters` (those of `list`, `cursor` aside), page after page. */
  async *listAll(filters = {}) {
    let cursor = filters?.cursor;
    for (;;) {
      const page = await this.list({ ...filters, cursor });
      yield* page.tasks;
      if (page.nextCursor === null) return;
      cursor = page.nextCursor;
    }
  }

  /** The workflows the server loaded, with their steps. */
  async workflows() {
    const { json } = await this._request("GET", "/v1/workflows", { idempotent: true });
    return (json.workflows ?? []).map(toWorkflow);
  }

  /**
   * One call: tried once, or with up to 4 retries when `idempotent` and
   * there was no answer or a 5xx one (CLIENT.md §5). Resolves to the
   * status and parsed JSON of a 2xx answer; throws the error of any other.
   */
  async _request(
    method,
    path,
    { query, body, idempotent, expect, timeoutMs = this._timeoutMs, deadline = null, signal } = {},
  ) {
    let target = this.url + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [key, value] of Object.entries(query)) {
        if (value !== undefined && value !== null) params.append(key, String(value));
      }
      const text = params.toString();
      if (text) target += `?${text}`;
    }
    const headers = { Accept: "application/json", "User-Agent": USER_AGENT };
    if (this._token) headers.Authorization = `Bearer ${this._token}`;
    let payload;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
      const bytes = Buffer.byteLength(payload, "utf8");
      if (bytes > MAX_BODY_BYTES) {
        // Said here, before the upload: a server refuses a body much
        // larger than its limit unread and closes, and the client saw a
        // broken pipe, a server "not reachable".
        throw new ValidationError(
          `the body is ${bytes} bytes, larger than the server's limit of ${MAX_BODY_BYTES} bytes (1 MiB); nothing was sent`,
          { problemType: "body-too-large" },
        );
      }
    }
    const tries = idempotent ? RETRY_DELAYS_MS.length + 1 : 1;
    let last; // { cause, status, problem, detail } of the last failed try
    // Answered `shutting-down` by an earlier try: a refusal after it is the
    // server gone, not a server never started.
    let shutDown = false;
    for (let attempt = 0; attempt < tries; attempt++) {
      if (attempt > 0) {
        const delay = Math.round(RETRY_DELAYS_MS[attempt - 1] * (0.8 + Math.random() * 0.4));
        if (deadline !== null && performance.now() + delay >= deadline) {
          throw this._unavailable(method, body, last, attempt, { pastDeadline: true, shutDown });
        }
        logging.log(
          "debug",
          `retrying ${method} ${path} in ${delay} ms`,
          { attempt: attempt + 1, cause: last.cause },
          "tasker_core::client",
        );
        await sleep(delay, undefined, signal ? { signal } : undefined).catch(() => {
          throw signal.reason;
        });
      }
      // A server holding each try (a PostgreSQL store down holds a read
      // 10 s) took a 3 s wait most of a minute to give up.
      const tryMs =
        deadline === null
          ? timeoutMs
          : Math.min(timeoutMs, Math.max(50, Math.round(deadline + DEADLINE_GRACE_MS - performance.now())));
      const { signal: requestAbort, dispose } = requestSignal(tryMs, signal);
      let response;
      let text;
      try {
        response = await fetch(target, { method, headers, body: payload, signal: requestAbort, redirect: "manual" });
        text = await readAnswer(response, method, target);
      } catch (error) {
        if (signal && signal.aborted) throw signal.reason;
        if (error instanceof ApiError) throw error; // an answer past MAX_ANSWER_BYTES
        if (error && error.cause && error.cause.message === "bad port") {
          // The fetch standard's blocked ports (6000, 6665-6669, ...): no try can pass.
          throw new TaskerError(
            `fetch refuses to connect to ${this.url}: its port is one the fetch standard blocks; serve the API on another port`,
            { cause: error },
          );
        }
        const notHttpReason = notHttp(error);
        if (notHttpReason) {
          const created = method === "POST" && body && body.workflow !== undefined ? "; no task was created" : "";
          throw new ServerUnavailable(`the tasker server at ${this.url} is not reachable (${notHttpReason})${created}`, {
            cause: error,
            url: this.url,
          });
        }
        last = { cause: describeFailure(requestAbort.reason ?? error, tryMs), error };
        continue;
      } finally {
        dispose();
      }
      const status = response.status;
      const contentType = response.headers.get("content-type");
      if (status >= 200 && status < 300) {
        let json;
        try {
          json = JSON.parse(text);
        } catch {
          throw new ApiError(`${method} ${target} answered ${status} with a body that is not JSON: ${quote(text)}`, {
            status,
          });
        }
        const wrong = expect && notShaped(expect, json);
        if (wrong) {
          // Another JSON service (a wrong path prefix, a proxy's own page):
          // read as a task, it had "ended" with no status.
          throw new ApiError(`unexpected answer to ${method} ${target} (${status}): ${wrong}: ${quote(text)}`, {
            status,
          });
        }
        return { status, json };
      }
      const problem = parseProblem(text, contentType);
      if (status >= 500) {
        last = problem
          ? { cause: `${status} ${slugOf(problem)}: ${problem.detail}`, status, problem }
          : { cause: `${status}: ${quote(text)}`, status, problem: null };
        shutDown = shutDown || (problem !== null && slugOf(problem) === "shutting-down");
        continue;
      }
      throw errorOf(method, target, status, problem, text);
    }
    throw this._unavailable(method, body, last, tries, { shutDown });
  }

  _unavailable(method, body, last, tries, { pastDeadline = false, shutDown = false } = {}) {
    const answered = last.status !== undefined;
    const cause = tries > 1 ? `${last.cause}; ${tries} tries` : last.cause;
    let message;
    if (shutDown && !answered) {
      message =
        `the tasker server at ${this.url} shut down (it answered shutting-down) and has not answered since (${cause});` +
        " a restarted server carries on with the task: wait again once it is up";
    } else if (pastDeadline) {
      // Silent past a wait's deadline, it may be up and its store down: no hint to start it.
      const state = answered ? "was unavailable until" : "did not answer by";
      message = `the tasker server at ${this.url} ${state} the wait's deadline (${cause})`;
    } else {
      message = answered
        ? `the tasker server at ${this.url} is not available (${cause})`
        : `the tasker server at ${this.url} is not reachable (${cause}); is tasker serve running?`;
    }
    if (tries === 1 && method === "POST" && body && body.workflow !== undefined) {
      message +=
        " A submit without an idempotency key is tried once (a second try could start the task twice);" +
        " pass an idempotencyKey to make it safe to retry.";
    }
    return new ServerUnavailable(message, {
      status: last.status ?? null,
      problemType: last.problem ? slugOf(last.problem) : null,
      detail: last.problem ? last.problem.detail : null,
      problem: last.problem ?? null,
      cause: last.error ?? last.cause,
      url: this.url,
    });
  }
}

/** The error of a 4xx (or other non-2xx, non-5xx) answer. */
function errorOf(method, target, status, problem, text) {
  if (problem) {
    const slug = slugOf(problem);
    const Class = CLASS_OF_SLUG[slug] ?? ApiError;
    const detail = typeof problem.detail === "string" ? problem.detail : `${status} ${slug}`;
    return new Class(detail, { status, problemType: slug, detail: problem.detail ?? null, problem });
  }
  const Class = status === 401 ? Unauthorized : ApiError;
  return new Class(`${method} ${target} answered ${status}: ${quote(text)}`, { status });
}

/** `options`, an object (or nothing); anything else is named, with `example`. */
function optionsObject(operation, options, example) {
  if (options === undefined || options === null) return {};
  if (typeof options !== "object" || Array.isArray(options)) {
    const got = Array.isArray(options) ? "an array" : `a ${typeof options}`;
    throw new TaskerError(`${operation} options must be an object like ${example}, got ${got}`);
  }
  return options;
}

function rejectUnknown(operation, unknown, known) {
  const names = Object.keys(unknown);
  if (names.length > 0) {
    throw new TaskerError(`unknown ${operation} option ${names.map((n) => `\`${n}\``).join(", ")}: expected ${known.join(", ")}`);
  }
}

function listQuery(filters) {
  const query = {};
  for (const [name, value] of Object.entries(filters ?? {})) {
    const param = LIST_FILTERS[name];
    if (param === undefined) {
      throw new TaskerError(
        `unknown list filter \`${name}\`: expected one of ${Object.keys(LIST_FILTERS).join(", ")}`,
      );
    }
    if (value === undefined || value === null) continue;
    if (value instanceof Date && Number.isNaN(value.getTime())) {
      // toISOString() would throw a bare RangeError.
      throw new TaskerError(`${name} is an invalid Date`);
    }
    query[param] = value instanceof Date ? value.toISOString() : value;
  }
  return query;
}

module.exports = { Client, TaskHandle, hasEnded };
