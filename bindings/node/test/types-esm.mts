// The ES-module view of the declarations (the "import" condition).
import { Worker, RetryableError, WorkerError, WorkerRefused } from "tasker-core";
import type { Step, Middleware } from "tasker-core";

const worker = new Worker({ capacity: 2 });
worker.handle("esm", async (step: Step): Promise<{ id: number }> => {
  if (step.attempt < 2) throw new RetryableError("first attempt fails");
  return { id: step.stepId };
});
// Typed steps through the ES-module view too.
worker.handle("esm_typed", (step: Step<{ n: number }>): number => step.taskContext.n + 1);
// @ts-expect-error the context's type is checked
worker.handle("esm_wrong", (step: Step<{ n: number }>): string => step.taskContext.n);
// Middleware through the ES-module view.
const tag: Middleware<{ n: number }> = async (step, next) => ({ n: step.taskContext.n, output: await next() });
worker.use(tag);
// @ts-expect-error next() takes no step
worker.use(async (step, next) => next(step));
// @ts-expect-error run() returns a Promise, not a number
const n: number = worker.run();
void n;
const refused: WorkerError = new WorkerRefused("the orchestrator at tcp://... requires CURVE");
void refused;

// The client through the ES-module view.
import { Client, TaskNotFound, ClientError } from "tasker-core";
import type { Task } from "tasker-core";

const client = new Client({ url: "http://127.0.0.1:8080" });
async function esmClient(): Promise<string> {
  const handle = await client.submit("esm", { n: 1 });
  const task: Task<{ n: number }> = await handle.wait({ timeoutMs: 1000 });
  const notFound = new TaskNotFound("no task has id 7");
  const isClientError: boolean = notFound instanceof ClientError;
  // @ts-expect-error the context keeps its type
  const s: string = task.context.n;
  return `${task.status} ${task.context.n} ${isClientError} ${s}`;
}
void esmClient;
