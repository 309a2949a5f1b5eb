// Type-checked with `tsc --noEmit -p test/tsconfig.json` (see package.test.js)
// against lib/index.d.ts and the native.d.ts that `napi build` generates.
// The @ts-expect-error lines fail the check if the declarations get looser.
import { Worker, RetryableError, PermanentError, TaskerError, ConfigError, errorTypes, setLogger, setLogLevel, loadConfig } from "tasker-core";
import type { Step, Config, ConfigOptions, LogEntry, WorkerOptions, Handler } from "tasker-core";

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
const unknownHandler: string = errorTypes.UNKNOWN_HANDLER;
const configError: TaskerError = new ConfigError("bad key");

const config: Readonly<Config> = worker.config;
const endpoint: string = config.endpoint;
const capacity: number = worker.capacity;
const state: "idle" | "running" | "stopping" | "stopped" = worker.state;
const id: string | null = worker.workerId;

setLogger((entry: LogEntry) => console.log(entry.level, entry.target, entry.message, entry.fields, entry.line), "info");
setLogger(console);
setLogger(null);
const loaded: Config = loadConfig(null, { endpoint: "tcp://127.0.0.1:5555" });

const retryable: boolean | undefined = new TaskerError("x", { retryable: true }).retryable;
const r: true = new RetryableError("busy").retryable;
const p: false = new PermanentError("bad").retryable;

async function main(): Promise<void> {
  const running: Promise<void> = worker.run();
  await worker.stop();
  await running;
}

void [fromFile, wrongId, endpoint, capacity, state, id, loaded, retryable, r, p, main, marks, unknownHandler, configError];
