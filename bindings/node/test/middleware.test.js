"use strict";

// Middleware (worker.use) around handlers of in-process workers (the real
// addon) against the real orchestrator (`tasker dispatch` subprocess).

const { test, after } = require("node:test");
const assert = require("node:assert/strict");

const { Worker, PermanentError, RetryableError, TaskerError } = require("tasker-core");
const { QUICK, serveBatch, freeEndpoint, withTimeout, killAll } = require("./helpers.js");

after(killAll);

/** Runs `worker` for `steps`; returns the results by step id, worker stopped. */
function serve(worker, steps) {
  return serveBatch(worker, { steps });
}

async function newWorker(capacity = 4) {
  return new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity, logger: null });
}

test("two async middleware run in order around sync and async handlers and change the output", async () => {
  const worker = await newWorker();
  const events = [];
  const wrap = (name) => async (step, next) => {
    events.push(`${name} in ${step.stepId}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const output = await next();
    events.push(`${name} out ${step.stepId}`);
    return { [name]: output };
  };
  worker.use(wrap("outer")).use(wrap("inner"));
  worker.handle("sync", (step) => {
    events.push(`handler ${step.stepId}`);
    return step.taskContext.n * 2;
  });
  worker.handle("async", async (step) => {
    events.push(`handler ${step.stepId}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
    return step.taskContext.n * 3;
  });
  const results = await serve(worker, [
    { step_id: 1, handler_class: "sync", task_context: { n: 21 } },
    { step_id: 2, handler_class: "async", task_context: { n: 5 } },
  ]);
  // What the outermost middleware returned is the output at the orchestrator.
  assert.deepEqual(results.get(1).output, { outer: { inner: 42 } });
  assert.deepEqual(results.get(2).output, { outer: { inner: 15 } });
  for (const id of [1, 2]) {
    assert.deepEqual(
      events.filter((e) => e.endsWith(` ${id}`)),
      [`outer in ${id}`, `inner in ${id}`, `handler ${id}`, `inner out ${id}`, `outer out ${id}`],
    );
  }
});

test("a sync middleware around a sync handler keeps the call synchronous", async () => {
  const worker = await newWorker();
  worker.use((step, next) => {
    if (step.taskContext.cached) return { from: "cache" };
    return next().then((output) => ({ from: "handler", output }));
  });
  const called = [];
  worker.handle("lookup", (step) => {
    called.push(step.stepId);
    return step.stepId;
  });
  const results = await serve(worker, [
    { step_id: 1, handler_class: "lookup", task_context: { cached: true } },
    { step_id: 2, handler_class: "lookup" },
  ]);
  assert.deepEqual(results.get(1).output, { from: "cache" });
  assert.deepEqual(results.get(2).output, { from: "handler", output: 2 });
  assert.deepEqual(called, [2], "the short-circuited step never reached the handler");
});

test("errors from middleware and handlers fail the step as handler errors do, through the middleware around them", async () => {
  const worker = await newWorker(8);
  const seen = [];
  worker.use(async (step, next) => {
    try {
      return await next();
    } catch (error) {
      seen.push([step.stepId, error.name]);
      throw error;
    }
  });
  worker.use((step, next) => {
    switch (step.taskContext.deny) {
      case "typed":
        throw new PermanentError("denied by policy", { errorType: "PolicyDenied" });
      case "rejects":
        return Promise.reject(new RangeError("out of range"));
      case "value":
        throw "plain string"; // eslint-disable-line no-throw-literal
      default:
        return next();
    }
  });
  worker.handle("work", (step) => {
    if (step.taskContext.fail === "sync") throw new RetryableError("gateway busy");
    if (step.taskContext.fail === "async") return Promise.reject(new TypeError("bad input"));
    return "done";
  });
  const results = await serve(worker, [
    { step_id: 1, handler_class: "work", task_context: { deny: "typed" } },
    { step_id: 2, handler_class: "work", task_context: { deny: "rejects" } },
    { step_id: 3, handler_class: "work", task_context: { deny: "value" } },
    { step_id: 4, handler_class: "work", task_context: { fail: "sync" } },
    { step_id: 5, handler_class: "work", task_context: { fail: "async" } },
    { step_id: 6, handler_class: "work" },
  ]);
  const expected = {
    1: ["PolicyDenied", "denied by policy", false],
    2: ["RangeError", "out of range", false],
    3: ["ThrownValue", "handler threw a non-Error value: 'plain string'", false],
    4: ["RetryableError", "gateway busy", true],
    5: ["TypeError", "bad input", false],
  };
  for (const [id, [errorType, message, retryable]] of Object.entries(expected)) {
    const result = results.get(Number(id));
    assert.equal(result.status, "failed", `step ${id}`);
    assert.deepEqual([result.error.error_type, result.error.message, result.error.retryable], [errorType, message, retryable], `step ${id}`);
  }
  assert.match(results.get(1).error.backtrace[0], /middleware\.test\.js/);
  assert.equal(results.get(6).output, "done");
  assert.deepEqual(
    seen.sort((a, b) => a[0] - b[0]),
    [
      [1, "PermanentError"],
      [2, "RangeError"],
      [3, undefined],
      [4, "RetryableError"],
      [5, "TypeError"],
    ],
  );
});

test("a middleware's output is checked as JSON like a handler's", async () => {
  const worker = await newWorker();
  worker.use(async (step, next) => ({ wrapped: await next(), when: new Map() }));
  worker.handle("one", () => 1);
  const results = await serve(worker, [{ step_id: 1, handler_class: "one" }]);
  assert.equal(results.get(1).status, "failed");
  assert.equal(results.get(1).error.error_type, "SerializationError");
  assert.match(results.get(1).error.message, /output\.when is a Map/);
});

test("use() refuses a non-function and middleware added once the worker runs", async () => {
  const worker = await newWorker();
  assert.throws(() => worker.use({ call() {} }), (e) => e instanceof TaskerError && /middleware must be a function/.test(e.message));
  worker.handle("one", () => 1);
  const running = worker.run();
  assert.throws(
    () => worker.use(async (step, next) => next()),
    (e) => e instanceof TaskerError && /cannot add middleware: the worker is already running/.test(e.message),
  );
  await withTimeout(worker.stop(), 15_000, "worker.stop()");
  await withTimeout(running, 15_000, "worker.run()");
});
