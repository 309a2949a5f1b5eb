// The ES-module view of the declarations (the "import" condition).
import { Worker, RetryableError } from "tasker-core";
import type { Step } from "tasker-core";

const worker = new Worker({ capacity: 2 });
worker.handle("esm", async (step: Step): Promise<{ id: number }> => {
  if (step.attempt < 2) throw new RetryableError("first attempt fails");
  return { id: step.stepId };
});
// @ts-expect-error run() returns a Promise, not a number
const n: number = worker.run();
void n;
