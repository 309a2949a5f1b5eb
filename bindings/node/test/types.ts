// Type-checked with `tsc --noEmit -p test/tsconfig.json` (see package.test.js)
// against lib/index.d.ts and the native.d.ts that `napi build` generates.
// The @ts-expect-error lines fail the check if the declarations get looser.
import { Worker, HandlerError, RetryableError, PermanentError, TaskerError, ConfigError, errorTypes, setLogger, setLogLevel, loadConfig } from "tasker-core";
import type { Step, Config, ConfigOptions, LogEntry, WorkerOptions, Handler, HandlerOptions, JsonObject, JsonValue, Middleware, Next } from "tasker-core";

interface Order {
  amount: number;
}

const options: WorkerOptions = { endpoint: "tcp://127.0.0.1:5555", capacity: 4, workerId: "ts-1", defaultRetryable: true };
const worker: Worker = new Worker(options);
const fromFile: Worker = Worker.fromConfig("config/zeromq.yaml", { capacity: 2, logLevel: "debug" });

worker.handle("validate_order", async (step: Step) => {
  const order = step.taskContext as Order;
  if (order.amount <= 0) throw new PermanentError("amount must be positive");
  const id: number = step.stepId;
  const task: number = step.taskId;
  const name: string = step.stepName + step.handlerClass;
  const attempt: number = step.attempt + step.retryLimit + step.timeoutMs;
  const previous: Record<string, unknown> = step.previousResults;
  const created: string = step.createdAt;
  return { valid: true, id, task, name, attempt, previous, created, config: step.handlerConfig };
});

const sync: Handler<number> = (step) => step.stepId * 2;
worker.handle("double", sync).handle("noop", () => null);

// Typed steps: the context, config and previous results a handler expects.
interface ChargeConfig {
  currency: string;
}
interface Previous {
  validate: { valid: boolean };
}
worker.handle("charge", (step: Step<Order, ChargeConfig, Previous>) => {
  const amount: number = step.taskContext.amount;
  const currency: string = step.handlerConfig.currency;
  const valid: boolean = step.previousResults.validate.valid;
  // @ts-expect-error the context's type is checked
  const wrong: string = step.taskContext.amount;
  // @ts-expect-error a misspelt config key is caught
  const misspelt = step.handlerConfig.curency;
  // @ts-expect-error previous results are typed too
  step.previousResults.fetch;
  void [wrong, misspelt];
  return { charged: amount, currency, valid };
});
// By type arguments: handle<Output, Context, Config>.
worker.handle<{ doubled: number }, Order>("double_amount", (step) => ({ doubled: step.taskContext.amount * 2 }));
// @ts-expect-error the output must be the declared one
worker.handle<{ doubled: number }, Order>("bad_output", (step) => ({ doubled: String(step.taskContext.amount) }));
// @ts-expect-error the step's context is the declared one
worker.handle<unknown, Order>("bad_context", (step) => step.taskContext.customer);
const typed: Handler<{ ok: boolean }, Order, ChargeConfig> = async (step) => ({ ok: step.taskContext.amount > 0 && step.handlerConfig.currency !== "" });
worker.handle("typed", typed);
// @ts-expect-error a handler of another context does not fit
const mismatched: Handler<unknown, { name: string }> = typed;
// Untyped steps stay as loose as before: taskContext and handlerConfig are any.
worker.handle("loose", (step) => step.taskContext.anything.goes + step.handlerConfig.too);
// Per-handler options: at most 2 of its steps at once.
const limits: HandlerOptions = { concurrency: 2 };
worker.handle("limited", () => null, limits).handle("limited_too", () => null, { concurrency: 1 });
// @ts-expect-error concurrency is a number
worker.handle("bad_limit", () => null, { concurrency: "2" });
// @ts-expect-error a misspelt option is caught
worker.handle("bad_option", () => null, { concurency: 2 });
const untyped: Step = {} as Step<Order>;
// JSON helper types for contexts and outputs.
const json: JsonObject = { a: [1, "two", null, { b: true }] };
// @ts-expect-error a function is not JSON
const notJson: JsonValue = () => 1;
void [mismatched, untyped, json, notJson];

// @ts-expect-error step ids are numbers
const wrongId: string = ({} as Step).stepId;
// @ts-expect-error handlers take a function
worker.handle("bad", 42);
// @ts-expect-error unknown option types are rejected
new Worker({ capacity: "four" });
// @ts-expect-error there is no such log level
setLogLevel("loud");
// @ts-expect-error there is no such option
new Worker({ capcity: 3 });
// @ts-expect-error submitPolicy is wait or reject
new Worker({ submitPolicy: "never" });

const marks: ConfigOptions = { sendHwm: 1000, recvHwm: 1000, submitPolicy: "reject" };

// CURVE: the keys are config keys (options, TASKER_CURVE_*), and a refusal is a WorkerError.
import { WorkerError, WorkerRefused } from "tasker-core";
const curve: WorkerOptions = { curveSecretKeyFile: "keys/worker.key", curveServerPublicKeyFile: "keys/orchestrator.pub" };
const curveKeys: Pick<Config, "curveSecretKeyFile" | "curveServerPublicKeyFile" | "curveAuthorizedKeysDir"> = loadConfig();
const refusal: WorkerError = new WorkerRefused("refused");
const refusalBase: TaskerError = refusal;
// @ts-expect-error key files are paths (strings)
new Worker({ curveSecretKeyFile: 1 });
void [curve, curveKeys, refusalBase];
const unknownHandler: string = errorTypes.UNKNOWN_HANDLER;
const configError: TaskerError = new ConfigError("bad key");

const config: Readonly<Config> = worker.config;
const endpoint: string = config.endpoint;
const capacity: number = worker.capacity;
const state: "idle" | "connecting" | "connected" | "draining" | "stopped" = worker.state;
// @ts-expect-error the states are those of the Python and Ruby SDKs; there is no "running"
const running: boolean = worker.state === "running";
const id: string | null = worker.workerId;

setLogger((entry: LogEntry) => console.log(entry.level, entry.target, entry.message, entry.fields, entry.line), "info");
setLogger(console);
// The README's example: the level indexes the console.
setLogger((entry) => console[entry.level === "trace" ? "debug" : entry.level](entry.message, entry.fields), "trace");
setLogger(null);
const loaded: Config = loadConfig(null, { endpoint: "tcp://127.0.0.1:5555" });

const retryable: boolean | undefined = new TaskerError("x", { retryable: true }).retryable;
const r: true = new RetryableError("busy").retryable;
const p: false = new PermanentError("bad").retryable;

// error_type as an option, as Python's and Ruby's `error_type=` keyword.
const declined = new PermanentError("card declined", { errorType: "CardDeclined", cause: new Error("402") });
const declinedType: string = declined.errorType;
const busy: RetryableError = new RetryableError("busy", { errorType: "GatewayBusy" });
const chosen: HandlerError = new HandlerError("maybe", { errorType: "RateLimited", retryable: true });
const base: TaskerError = chosen;
const baseType: string = new TaskerError("x", { errorType: "Custom" }).errorType;
const family: HandlerError = new PermanentError("x");
class CardDeclined extends PermanentError {}
const subclassType: string = new CardDeclined("no").errorType;
// @ts-expect-error errorType is a string
new PermanentError("x", { errorType: 402 });
// @ts-expect-error a PermanentError is never retryable (use HandlerError with { retryable })
new PermanentError("x", { retryable: true });
// @ts-expect-error a RetryableError is always retryable
new RetryableError("x", { retryable: false });
// @ts-expect-error there is no such option (it is errorType)
new PermanentError("x", { error_type: "CardDeclined" });
void [declinedType, busy, chosen, base, baseType, family, subclassType];

async function main(): Promise<void> {
  const running: Promise<void> = worker.run();
  await worker.stop();
  await running;
}

void [fromFile, wrongId, endpoint, capacity, state, running, id, loaded, retryable, r, p, main, marks, unknownHandler, configError];

// ---- The HTTP client ----------------------------------------------------
import {
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
} from "tasker-core";
import type { Task, TaskSummary, TaskPage, StepReport, StepError, Workflow, ClientOptions, ListFilters, TaskStatus, Problem } from "tasker-core";

const clientOptions: ClientOptions = { url: "http://127.0.0.1:8080", token: "secret", timeoutMs: 5000, apiListen: "0.0.0.0:8080" };
const client: Client = new Client(clientOptions);
const fromConfigClient: Client = Client.fromConfig("config/zeromq.yaml", { apiToken: "t" });
const baseUrl: string = client.url;
const apiKeys: Pick<Config, "apiUrl" | "apiToken" | "apiTokensFile"> = loadConfig();

// @ts-expect-error there is no such client option
new Client({ tokn: "x" });
// @ts-expect-error url is a string
new Client({ url: 8080 });

async function useClient(): Promise<void> {
  const handle: TaskHandle<Order> = await client.submit("checkout", { amount: 3 }, { idempotencyKey: "order-1" });
  const created: boolean = handle.created;
  const id: number = handle.id;
  const amount: number = handle.task.context.amount;
  // @ts-expect-error the context keeps its type
  const missing: string = handle.task.context.currency;
  // @ts-expect-error a context is an object
  await client.submit("checkout", 42);
  // @ts-expect-error an array is not a JSON object
  await client.submit("checkout", [1, 2]);
  // @ts-expect-error nor is a Map
  await client.submit("checkout", new Map([["a", 1]]));
  // null is {}, as the README says.
  await client.submit("checkout", null);
  await client.wait(id, { timeoutMs: Infinity });
  // @ts-expect-error idempotencyKey is a string
  await client.submit("checkout", {}, { idempotencyKey: 7 });

  const done: Task<Order> = await handle.wait({ timeoutMs: 30_000 });
  const viaClient: Task = await client.wait(id, { timeoutMs: null, signal: AbortSignal.timeout(1000) });
  // @ts-expect-error the wait's timeout is in ms, a number
  await handle.wait({ timeoutMs: "30s" });
  const status: TaskStatus = done.status;
  const started: Date = done.startedAt;
  const finished: Date | null = done.finishedAt;
  const raw: Readonly<Record<string, unknown>> = done.raw;
  for (const step of done.steps) {
    const s: StepReport = step;
    const output: unknown = s.output;
    const error: StepError | null = s.error;
    const kind: string | undefined = error?.errorType;
    const outcome: "completed" | "failed" | "blocked" | "cancelled" | null = s.outcome;
    void [output, kind, outcome, s.stepId + s.attempts + s.durationMs, s.nextRunAt?.getTime()];
  }
  // @ts-expect-error a task id is a number
  const wrongTaskId: string = done.taskId;

  const now: Task<Order> = await handle.get();
  const cancelled: Task = await client.cancel(id);
  // A task id from a URL, as its digits.
  const fromUrl: Task = await client.get("42");
  // @ts-expect-error a task id is a number or a string of its digits
  await client.wait({ id: 42 });
  const filters: ListFilters = { status: "failed", workflow: "checkout", createdSince: new Date(), limit: 10 };
  // @ts-expect-error no such status
  const badFilters: ListFilters = { status: "done" };
  const page: TaskPage = await client.list(filters);
  const next: string | null = page.nextCursor;
  const summaries: TaskSummary[] = page.tasks;
  for await (const summary of client.listAll({ workflow: "checkout" })) {
    const total: number = summary.stepsTotal + summary.stepsCompleted;
    void total;
  }
  const workflows: Workflow[] = await client.workflows();
  const dependsOn: string[] = workflows[0].steps[0].dependsOn;

  try {
    await client.get(1);
  } catch (e) {
    if (e instanceof UnknownWorkflow) {
      const closest: string | null = e.closest;
      const known: string[] = e.knownWorkflows;
      const field: string | null = e.field;
      void [closest, known, field];
    } else if (e instanceof ValidationError) {
      const field: string | null = e.field;
      void field;
    } else if (e instanceof TaskNotFound || e instanceof IdempotencyConflict) {
      const taskId: number | null = e.taskId;
      void taskId;
    } else if (e instanceof TaskEnded) {
      const ended: TaskStatus | null = e.taskStatus;
      void ended;
    } else if (e instanceof WaitTimeout) {
      const last: Task = e.task;
      void last;
    } else if (e instanceof ServerUnavailable) {
      const serverUrl: string | null = e.url;
      void serverUrl;
    } else if (e instanceof Unauthorized || e instanceof ApiError) {
      const httpStatus: number | null = e.status;
      void httpStatus;
    }
    if (e instanceof ClientError) {
      const base: TaskerError = e;
      const slug: string | null = e.problemType;
      const detail: string | null = e.detail;
      const problem: Problem | null = e.problem;
      void [base, slug, detail, problem?.type];
    }
  }
  void [created, amount, missing, done, viaClient, started, finished, raw, wrongTaskId, now, cancelled, fromUrl, badFilters, next, summaries, dependsOn, status];
}

void [fromConfigClient, baseUrl, apiKeys, useClient];

// Middleware: (step, next) => output, next() a Promise of the rest's output.
const timing: Middleware = async (step, next) => {
  const started = performance.now();
  try {
    return await next();
  } finally {
    console.log(step.handlerClass, performance.now() - started);
  }
};
worker.use(timing).use(async (step: Step<Order>, next: Next) => ({ amount: step.taskContext.amount, output: await next() }));
worker.use((step) => step.stepId); // sync, never calling next(): short-circuit
// @ts-expect-error next() takes no step
worker.use(async (step, next) => next(step));
// @ts-expect-error a middleware is a function
worker.use({ call: () => null });
// @ts-expect-error the step's context is typed
worker.use(async (step: Step<Order>) => step.taskContext.missing);
