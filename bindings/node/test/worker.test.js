"use strict";

// In-process workers (the real addon) against the real orchestrator
// (`tasker dispatch` subprocess).

const { test, after } = require("node:test");
const assert = require("node:assert/strict");

const { Worker, Client, HandlerError, RetryableError, PermanentError, TaskerError, ConfigError, loadConfig, setLogger } = require("tasker-core");
const { QUICK, serveBatch: serve, freeEndpoint, dispatch, byStepId, withTimeout, killAll } = require("./helpers.js");

after(killAll);

test("a step's fields reach the handler in camelCase and nested unicode output comes back intact", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 4, logger: null });
  let seen;
  worker.handle("echo", (step) => {
    seen = step;
    return {
      greeting: "héllo wörld ✓ 日本語 😀",
      nested: { list: [1, 2.5, null, true, { deep: ["ü", { deeper: "𝄞" }] }], empty: {}, none: null },
      context: step.taskContext,
    };
  });
  const context = { customer: { name: "Zoë Ñuñez", tags: ["vip", "早"] }, amount: 42.5 };
  const results = await serve(worker, {
    steps: [
      {
        step_id: 101,
        task_id: 77,
        step_name: "validate",
        handler_class: "echo",
        task_context: context,
        handler_config: { strict: true },
        previous_results: { fetch: { rows: 3 } },
        metadata: { attempt: 2, retry_limit: 5, timeout_ms: 7000 },
      },
    ],
  });
  const result = results.get(101);
  assert.equal(result.status, "completed");
  assert.deepEqual(result.output, {
    greeting: "héllo wörld ✓ 日本語 😀",
    nested: { list: [1, 2.5, null, true, { deep: ["ü", { deeper: "𝄞" }] }], empty: {}, none: null },
    context,
  });
  assert.equal(result.metadata.attempt, 2);
  assert.equal(result.metadata.worker_id, worker.workerId);
  assert.match(worker.workerId, /^node-\d+-/);
  assert.equal(seen.stepId, 101);
  assert.equal(seen.taskId, 77);
  assert.equal(seen.stepName, "validate");
  assert.equal(seen.handlerClass, "echo");
  assert.deepEqual(seen.handlerConfig, { strict: true });
  assert.deepEqual(seen.taskContext, context);
  assert.deepEqual(seen.previousResults, { fetch: { rows: 3 } });
  assert.equal(seen.attempt, 2);
  assert.equal(seen.retryLimit, 5);
  assert.equal(seen.timeoutMs, 7000);
  assert.ok(!Number.isNaN(Date.parse(seen.createdAt)), `createdAt ${seen.createdAt}`);
});

test("sync and async handlers both complete, async ones concurrently up to the capacity", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 4, logger: null });
  let running = 0;
  let peak = 0;
  worker.handle("sync", (step) => ({ doubled: step.taskContext.n * 2 }));
  worker.handle("async", async (step) => {
    running += 1;
    peak = Math.max(peak, running);
    await new Promise((resolve) => setTimeout(resolve, 100));
    running -= 1;
    return { tripled: step.taskContext.n * 3 };
  });
  worker.handle("thenable", (step) => Promise.resolve(`p${step.stepId}`));
  worker.handle("undefined", () => undefined);
  const steps = [];
  for (let i = 1; i <= 8; i++) steps.push({ step_id: i, handler_class: "async", task_context: { n: i } });
  steps.push({ step_id: 20, handler_class: "sync", task_context: { n: 21 } });
  steps.push({ step_id: 21, handler_class: "thenable" });
  steps.push({ step_id: 22, handler_class: "undefined" });
  const results = await serve(worker, { steps });
  for (let i = 1; i <= 8; i++) {
    assert.equal(results.get(i).status, "completed");
    assert.deepEqual(results.get(i).output, { tripled: i * 3 });
  }
  assert.deepEqual(results.get(20).output, { doubled: 42 });
  assert.equal(results.get(21).output, "p21");
  assert.equal(results.get(22).status, "completed");
  assert.equal(results.get(22).output, null);
  assert.ok(peak > 1, `async handlers ran one at a time (peak ${peak})`);
  assert.ok(peak <= 4, `more handlers in flight (${peak}) than the capacity 4`);
});

test("each kind of failure is reported with its type, message, stack and retryability", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 8, logger: null });
  class CardDeclined extends PermanentError {}
  worker.handle("retryable", async () => {
    throw new RetryableError("gateway busy");
  });
  worker.handle("permanent", () => {
    throw new PermanentError("amount must be positive");
  });
  worker.handle("subclass", () => {
    throw new CardDeclined("card declined");
  });
  worker.handle("type_error", (step) => step.taskContext.missing.field);
  worker.handle("rejects", () => Promise.reject(new RangeError("out of range")));
  worker.handle("string", () => {
    throw "plain string"; // eslint-disable-line no-throw-literal
  });
  worker.handle("object", async () => {
    throw { code: 42 }; // eslint-disable-line no-throw-literal
  });
  worker.handle("bigint", () => ({ total: 10n }));
  worker.handle("cycle", () => {
    const a = { name: "a" };
    a.self = a;
    return a;
  });
  worker.handle("fine", () => "still serving");
  const names = ["retryable", "permanent", "subclass", "type_error", "rejects", "string", "object", "bigint", "cycle", "fine"];
  const results = await serve(worker, {
    steps: names.map((name, i) => ({ step_id: i + 1, handler_class: name })),
  });
  const error = (i) => {
    const r = results.get(i);
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.equal(r.metadata.retryable, r.error.retryable);
    return r.error;
  };
  assert.deepEqual(
    { ...error(1), backtrace: undefined },
    { error_type: "RetryableError", message: "gateway busy", retryable: true, backtrace: undefined },
  );
  assert.equal(error(2).error_type, "PermanentError");
  assert.equal(error(2).retryable, false);
  assert.equal(error(3).error_type, "CardDeclined");
  assert.equal(error(3).retryable, false);

  const typeError = error(4);
  assert.equal(typeError.error_type, "TypeError");
  assert.match(typeError.message, /Cannot read properties of undefined/);
  assert.equal(typeError.retryable, false, "unrecognised errors default to not retryable");
  assert.ok(typeError.backtrace.length > 0, "the stack is reported");
  assert.match(typeError.backtrace[0], /^at .*worker\.test\.js:\d+:\d+/);
  assert.ok(!typeError.backtrace.some((line) => line.includes("lib/worker.js")), `no SDK frames: ${typeError.backtrace}`);

  assert.equal(error(5).error_type, "RangeError");
  assert.equal(error(5).message, "out of range");
  assert.equal(error(6).error_type, "ThrownValue");
  assert.match(error(6).message, /plain string/);
  assert.equal(error(7).error_type, "ThrownValue");
  assert.match(error(7).message, /code: 42/);

  assert.equal(error(8).error_type, "SerializationError");
  assert.match(error(8).message, /BigInt/);
  assert.equal(error(8).retryable, false);
  assert.equal(error(9).error_type, "SerializationError");
  assert.match(error(9).message, /circular/i);

  assert.equal(results.get(10).status, "completed");
  assert.equal(results.get(10).output, "still serving");
});

test("an output that is not JSON data fails as SerializationError naming where the bad value is", async () => {
  // JSON.stringify would complete these silently with another output: a
  // function as null (or left out), a Map or a Set as {}, NaN as null, ...
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 32, logger: null });
  class Money {
    constructor(cents) {
      this.cents = cents;
    }
  }
  class Amount {
    constructor(text) {
      this.text = text;
    }
    toJSON() {
      return this.text;
    }
  }
  class Bad {
    toJSON() {
      return { byId: new Map() };
    }
  }
  const refused = {
    function: [() => function callback() {}, "output is a function (callback)"],
    nested_function: [() => ({ items: [1, 2, { callback() {} }] }), "output.items[2].callback is a function"],
    odd_key: [() => ({ "order lines": [{ f: () => 1 }] }), 'output["order lines"][0].f is a function'],
    map: [() => new Map([["a", 1]]), "output is a Map, which JSON has no form for: convert it, e.g. Object.fromEntries(map)"],
    set: [() => ({ tags: new Set(["x"]) }), "output.tags is a Set, which JSON has no form for: convert it, e.g. [...set]"],
    symbol: [() => ({ kind: Symbol("k") }), "output.kind is a symbol (Symbol(k))"],
    nan: [() => ({ ratio: 0 / 0 }), "output.ratio is NaN, which JSON has no form for (JSON.stringify would write null)"],
    infinity: [() => [Infinity], "output[0] is Infinity"],
    bigint: [() => ({ total: 10n }), "output.total is a BigInt (10n), which JSON has no form for: convert it to a number or a string"],
    undefined_item: [() => ({ list: [1, undefined] }), "output.list[1] is undefined (JSON.stringify would write null): use null"],
    hole: [() => [1, , 3], "output[1] is undefined"], // eslint-disable-line no-sparse-arrays
    instance: [() => ({ price: new Money(5) }), "output.price is an instance of Money, not a plain object or array"],
    error_object: [() => ({ error: new Error("x") }), "output.error is an instance of Error"],
    promise: [async () => ({ later: Promise.resolve(1) }), "output.later is a Promise: await it before returning"],
    invalid_date: [() => ({ at: new Date("not a date") }), "output.at is an invalid Date"],
    bytes: [() => new Uint8Array(2), "output is a Uint8Array"],
    to_json_result: [() => ({ index: new Bad() }), "output.index.byId is a Map"],
    cycle: [
      () => {
        const order = { id: 1, lines: [{ sku: "a" }] };
        order.lines[0].order = order;
        return order;
      },
      "output.lines[0].order refers back to output: a circular structure, which JSON has no form for",
    ],
  };
  const shared = { x: 1 };
  const accepted = {
    absent_property: [() => ({ a: 1, b: undefined }), { a: 1 }],
    nothing: [() => undefined, null],
    date: [() => ({ at: new Date(0) }), { at: "1970-01-01T00:00:00.000Z" }],
    to_json: [() => ({ amount: new Amount("12.50") }), { amount: "12.50" }],
    shared_twice: [() => [shared, shared], [{ x: 1 }, { x: 1 }]],
    null_prototype: [() => Object.assign(Object.create(null), { a: [true] }), { a: [true] }],
    negative_zero: [() => -0, 0],
  };
  const names = [...Object.keys(refused), ...Object.keys(accepted)];
  for (const [name, [fn]] of [...Object.entries(refused), ...Object.entries(accepted)]) worker.handle(name, fn);
  const results = await serve(worker, { steps: names.map((name, i) => ({ step_id: i + 1, handler_class: name })) });
  for (const [i, name] of names.entries()) {
    const result = results.get(i + 1);
    if (name in refused) {
      assert.equal(result.status, "failed", `${name}: ${JSON.stringify(result)}`);
      assert.equal(result.error.error_type, "SerializationError", name);
      assert.equal(result.error.retryable, false, name);
      const prefix = `the output of handler ${JSON.stringify(name)} is not JSON data: `;
      assert.ok(result.error.message.startsWith(prefix + refused[name][1]), `${name}: ${result.error.message}`);
    } else {
      assert.equal(result.status, "completed", `${name}: ${JSON.stringify(result)}`);
      assert.deepEqual(result.output, accepted[name][1], name);
    }
  }
  assert.equal(
    results.get(names.indexOf("nested_function") + 1).error.message,
    'the output of handler "nested_function" is not JSON data: output.items[2].callback is a function',
  );
});

test("errorType chooses a failure's error_type, as error_type= does in Python and Ruby; subclasses still name theirs", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 16, logger: null });
  class CardExpired extends PermanentError {}
  const handlers = {
    permanent: [() => new PermanentError("card declined", { errorType: "CardDeclined" }), "CardDeclined", false],
    retryable: [() => new RetryableError("gateway busy", { errorType: "GatewayBusy" }), "GatewayBusy", true],
    decided: [() => new HandlerError("rate limited", { errorType: "RateLimited", retryable: true }), "RateLimited", true],
    undecided: [() => new HandlerError("no say"), "HandlerError", false], // defaultRetryable
    base: [() => new TaskerError("base", { errorType: "Base", retryable: false }), "Base", false],
    subclass: [() => new CardExpired("expired"), "CardExpired", false],
    subclass_option: [() => new CardExpired("stolen", { errorType: "CardStolen" }), "CardStolen", false],
    assigned: [() => Object.assign(new PermanentError("assigned"), { errorType: "Assigned" }), "Assigned", false],
    renamed: [() => Object.assign(new RetryableError("renamed"), { name: "Renamed" }), "Renamed", true],
    plain_error: [() => Object.assign(new Error("upstream"), { errorType: "Upstream", retryable: true }), "Upstream", true],
  };
  for (const [name, [make]] of Object.entries(handlers)) {
    worker.handle(name, async () => {
      throw make();
    });
  }
  const names = Object.keys(handlers);
  const results = await serve(worker, { steps: names.map((name, i) => ({ step_id: i + 1, handler_class: name })) });
  for (const [i, name] of names.entries()) {
    const [, errorType, retryable] = handlers[name];
    const result = results.get(i + 1);
    assert.equal(result.status, "failed", name);
    assert.equal(result.error.error_type, errorType, name);
    assert.equal(result.error.retryable, retryable, name);
    assert.equal(result.metadata.retryable, retryable, name);
  }
  assert.equal(results.get(1).error.message, "card declined");

  // The errors themselves.
  const declined = new PermanentError("card declined", { errorType: "CardDeclined" });
  assert.equal(declined.errorType, "CardDeclined");
  assert.equal(declined.name, "PermanentError");
  assert.equal(declined.retryable, false);
  assert.ok(declined instanceof HandlerError && declined instanceof TaskerError);
  assert.equal(new PermanentError("x").errorType, "PermanentError");
  assert.equal(new CardExpired("x").errorType, "CardExpired");
  assert.equal(new RetryableError("x", { retryable: true }).retryable, true);
  assert.equal(new HandlerError("x").retryable, undefined);
  assert.throws(() => new PermanentError("x", { retryable: true }), /a PermanentError is never retryable.*new HandlerError\(message, \{ errorType, retryable \}\)/);
  assert.throws(() => new RetryableError("x", { retryable: false }), /a RetryableError is always retryable/);
  assert.throws(() => new PermanentError("x", { errorType: "" }), (e) => e instanceof TypeError && /errorType must be a non-empty string/.test(e.message));
  assert.throws(() => new HandlerError("x", { errorType: 402 }), TypeError);
  assert.throws(() => new HandlerError("x", { retryable: "yes" }), /retryable must be true or false/);
});

/** `depth` arrays deep around 7 (`7` is 0 deep, `[7]` 1). */
function nested(depth) {
  let value = 7;
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

test("an output the orchestrator would refuse fails as SerializationError and the rest go through", async () => {
  // Defect 1: nested deeper than the welcome's max_json_depth (100), or a
  // string holding a lone surrogate (a string cut mid-character, which
  // JSON.stringify writes as an escape), is not sent.
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 8, logger: null });
  worker.handle("deep_100", () => ({ v: nested(99) }));
  worker.handle("deep_101", () => ({ v: nested(100) }));
  worker.handle("cut_emoji", () => ({ name: "🎉".slice(0, 1) }));
  worker.handle("lone_low", () => ({ name: "caf\udce9" }));
  worker.handle("pair", () => "caf\u00e9 \ud83c\udf89");
  worker.handle("throws_lone", () => {
    throw new TypeError("caf\udce9");
  });
  const names = ["deep_100", "deep_101", "cut_emoji", "lone_low", "pair", "throws_lone"];
  const results = await serve(worker, {
    steps: names.map((name, i) => ({ step_id: i + 1, handler_class: name })),
  });
  assert.equal(results.get(1).status, "completed", JSON.stringify(results.get(1)));
  assert.deepEqual(results.get(1).output, { v: nested(99) });
  for (const id of [2, 3, 4]) {
    const r = results.get(id);
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.equal(r.error.error_type, "SerializationError");
    assert.equal(r.error.retryable, false);
    assert.equal(r.metadata.retryable, false);
  }
  assert.match(results.get(2).error.message, /nested more than 100 levels deep.*max_json_depth/);
  assert.match(results.get(3).error.message, /lone UTF-16 surrogate \(\\ud83c\)/);
  assert.match(results.get(4).error.message, /lone UTF-16 surrogate \(\\udce9\)/);
  assert.equal(results.get(5).output, "caf\u00e9 \ud83c\udf89");
  // A failure's own texts only describe it: sent with U+FFFD in place.
  assert.equal(results.get(6).error.error_type, "TypeError");
  assert.equal(results.get(6).error.message, "caf\ufffd");
});

test("defaultRetryable decides the retryability of unrecognised errors", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), defaultRetryable: true, logger: null });
  worker.handle("type_error", () => null.field);
  worker.handle("string", () => {
    throw "nope"; // eslint-disable-line no-throw-literal
  });
  worker.handle("permanent", () => {
    throw new PermanentError("still permanent");
  });
  const results = await serve(worker, {
    steps: [
      { step_id: 1, handler_class: "type_error" },
      { step_id: 2, handler_class: "string" },
      { step_id: 3, handler_class: "permanent" },
    ],
  });
  assert.equal(results.get(1).error.retryable, true);
  assert.equal(results.get(2).error.retryable, true);
  assert.equal(results.get(3).error.retryable, false);
});

test("a step id beyond Number.MAX_SAFE_INTEGER is failed without reaching the handler", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), logger: null });
  const seen = [];
  worker.handle("echo", (step) => {
    seen.push(step.stepId);
    return step.stepId;
  });
  const huge = "9007199254740993"; // 2^53 + 1: JSON.parse would round it
  const batch = `{"steps":[{"step_id":${huge},"handler_class":"echo"},{"step_id":9007199254740991,"handler_class":"echo"}]}`;
  const running = worker.run();
  let text;
  try {
    // As text: JSON.parse would round the huge id in the response too.
    text = await dispatch(worker.config.endpoint, batch, { raw: true }).result;
  } finally {
    await withTimeout(worker.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
  }
  assert.match(text, new RegExp(`"step_id": ${huge}`));
  assert.match(text, /"error_type": "UnsupportedStepId"/);
  assert.ok(!seen.includes(Number(huge)), "the handler saw the huge id");
  assert.ok(seen.includes(9007199254740991), "the largest safe id reached the handler");
});

/** Resolves once `check()` is true, polling; rejects after `ms` naming `what`. */
async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("a starting worker logs the endpoint it dials and its handlers, then that it waits for an orchestrator and when it registered", async () => {
  const records = [];
  const endpoint = await freeEndpoint();
  const worker = new Worker({ ...QUICK, endpoint, capacity: 3, heartbeatIntervalMs: 100, logger: (entry) => records.push(entry) });
  worker.handle("send_welcome", () => "sent").handle("create_account", () => "created");
  const running = worker.run();
  try {
    // Logged by run() itself, before anything is connected.
    const own = records.filter((r) => r.target === "tasker_core::node");
    assert.deepEqual(own[0], {
      level: "info",
      target: "tasker_core::node",
      message: `connecting to ${endpoint}`,
      fields: { worker_id: worker.workerId, handlers: "send_welcome,create_account", capacity: "3" },
      line: `connecting to ${endpoint} worker_id=${worker.workerId} handlers=send_welcome,create_account capacity=3`,
    });
    // No orchestrator yet: the runtime says so, naming where it waits, once
    // (not a warning every few heartbeats while it waits).
    const waiting = () => records.filter((r) => /^waiting for an orchestrator at /.test(r.message));
    await until(() => waiting().length > 0, 15_000, `"waiting for an orchestrator" among ${JSON.stringify(records.map((r) => r.line))}`);
    assert.ok(waiting()[0].line.includes(endpoint), waiting()[0].line);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(waiting().length, 1, JSON.stringify(records.map((r) => r.line)));
    const warnings = records.filter((r) => r.level === "warn" && !/^waiting for an orchestrator/.test(r.message));
    assert.deepEqual(warnings.map((r) => r.line), []);

    const env = { TASKER_HEARTBEAT_INTERVAL_MS: "100" };
    const response = await dispatch(endpoint, { steps: [{ step_id: 1, handler_class: "send_welcome" }] }, { env }).result;
    assert.equal(response.results[0].output, "sent");
    const registered = records.find((r) => r.message.startsWith("registered with orchestrator"));
    assert.ok(registered, JSON.stringify(records.map((r) => r.line)));
    assert.equal(registered.target, "tasker_worker::connection");
  } finally {
    await withTimeout(worker.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
    setLogger(null);
  }
  const own = records.filter((r) => r.target === "tasker_core::node").map((r) => r.message);
  assert.deepEqual(own, [`connecting to ${endpoint}`, "stopped"]);
});

test("worker.state goes idle, connecting, connected, draining, stopped (the Python and Ruby names)", async () => {
  const endpoint = await freeEndpoint();
  const worker = new Worker({ ...QUICK, endpoint, logger: null });
  const seen = [];
  worker.handle("state", () => {
    seen.push(worker.state);
    return worker.state;
  });
  assert.equal(worker.state, "idle");
  const running = worker.run();
  assert.equal(worker.state, "connecting");
  const response = await dispatch(endpoint, { steps: [{ step_id: 1, handler_class: "state" }] }).result;
  assert.equal(response.results[0].output, "connected");
  assert.deepEqual(seen, ["connected"]);
  const stopping = worker.stop();
  assert.equal(worker.state, "draining");
  await withTimeout(stopping, 15_000, "worker.stop()");
  await withTimeout(running, 15_000, "worker.run()");
  assert.equal(worker.state, "stopped");
});

test("the logger hook receives the runtime's Rust tracing records", async () => {
  const records = [];
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), logger: (entry) => records.push(entry) });
  worker.handle("noop", () => null);
  await serve(worker, { steps: [{ step_id: 1, handler_class: "noop" }] });
  setLogger(null);
  const registered = records.find((r) => r.message === "registered with orchestrator");
  assert.ok(registered, `no registration record among ${JSON.stringify(records.map((r) => r.message))}`);
  assert.equal(registered.level, "info");
  assert.equal(registered.target, "tasker_worker::connection");
  assert.equal(registered.fields.worker_id, worker.workerId);
  assert.match(registered.line, /^registered with orchestrator worker_id=/);
});

test("a console logger takes trace records at debug, without console.trace's stack trace", () => {
  const { log } = require("../lib/logging.js");
  const { Writable } = require("node:stream");
  let written = "";
  const stream = new Writable({
    write(chunk, _encoding, done) {
      written += chunk;
      done();
    },
  });
  setLogger(new console.Console({ stdout: stream, stderr: stream }), "trace");
  try {
    log("trace", "a trace record");
    log("info", "an info record");
  } finally {
    setLogger(null, "info");
  }
  assert.equal(written, "tasker_core::node: a trace record {}\ntasker_core::node: an info record {}\n");
});

test("an idle worker keeps its registration on heartbeats from the event loop, without busy polling", async () => {
  // The runtime runs on this thread's event loop: its heartbeats come from a
  // libuv timer. At a 100 ms interval (liveness 3) the orchestrator drops a
  // worker silent for 300 ms, and the worker would say hello again.
  const records = [];
  const endpoint = await freeEndpoint();
  const idler = new Worker({ ...QUICK, endpoint, logLevel: "debug", logger: (r) => records.push(r) });
  idler.handle("noop", () => "served");
  const late = new Worker({ ...QUICK, endpoint });
  late.handle("noop", () => "served");
  const running = [idler.run()];
  try {
    // Sends the step once two workers are there: the first idles until then.
    const call = dispatch(endpoint, { steps: [{ step_id: 1, handler_class: "noop" }] }, {
      workers: 2,
      env: { TASKER_HEARTBEAT_INTERVAL_MS: "100", TASKER_LIVENESS: "3" },
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = process.cpuUsage();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const idle = process.cpuUsage(before);
    const messages = records.map((r) => r.message);
    running.push(late.run());
    const results = byStepId(await call.result);
    assert.equal(results.get(1).status, "completed");
    assert.equal(results.get(1).output, "served");
    assert.ok(messages.includes("registered with orchestrator"), JSON.stringify(messages));
    for (const m of messages) {
      assert.doesNotMatch(m, /silent|does not know this worker|reconnect/, JSON.stringify(messages));
    }
    // A busy loop would spend the whole second; the beats cost next to nothing.
    const idleMs = (idle.user + idle.system) / 1000;
    assert.ok(idleMs < 250, `idle worker used ${idleMs} ms of CPU in 1 s`);
  } finally {
    await withTimeout(Promise.all([idler.stop(), late.stop()]), 15_000, "worker.stop()");
    await withTimeout(Promise.all(running), 15_000, "worker.run()");
    setLogger(null);
  }
});

test("after the orchestrator goes away the worker reconnects on a new socket and serves the next one", async () => {
  const worker = new Worker({
    ...QUICK,
    endpoint: await freeEndpoint(),
    heartbeatIntervalMs: 100,
    reconnectMaxMs: 200,
    logger: null,
  });
  let served = 0;
  worker.handle("noop", () => ++served);
  const running = worker.run();
  try {
    const env = { TASKER_HEARTBEAT_INTERVAL_MS: "100" };
    const first = byStepId(await dispatch(worker.config.endpoint, { steps: [{ step_id: 1, handler_class: "noop" }] }, { env }).result);
    assert.equal(first.get(1).output, 1);
    // The first orchestrator has exited; a new one binds the same endpoint.
    const second = byStepId(await dispatch(worker.config.endpoint, { steps: [{ step_id: 2, handler_class: "noop" }] }, { env }).result);
    assert.equal(second.get(2).status, "completed");
    assert.equal(second.get(2).output, 2);
    // An orchestrator killed outright says no goodbye, and nothing arrives
    // any more: only the worker's timer makes it beat (and notice silence),
    // so that the next orchestrator learns of it and has it say hello.
    const doomed = dispatch(worker.config.endpoint, { steps: [{ step_id: 3, handler_class: "noop" }] }, { env, workers: 2 });
    doomed.result.catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 500));
    doomed.kill("SIGKILL");
    await doomed.exited;
    const third = byStepId(await dispatch(worker.config.endpoint, { steps: [{ step_id: 4, handler_class: "noop" }] }, { env }).result);
    assert.equal(third.get(4).status, "completed");
    assert.equal(third.get(4).output, 3);
  } finally {
    await withTimeout(worker.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
  }
});

test("stop() awaited inside a handler resolves without deadlock once the other steps are done", async () => {
  // Capacity 8 hands the four steps to JavaScript in one chunk (half the
  // capacity per chunk): with smaller chunks, steps still in the runtime
  // when stop() runs are rightly given back to the orchestrator, and whether
  // that happens would depend on thread timing.
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 8, logger: null });
  const events = [];
  worker.handle("stopper", async () => {
    events.push("stop called");
    await worker.stop();
    events.push("stop resolved");
    return "stopped from inside";
  });
  worker.handle("slow", async (step) => {
    await new Promise((resolve) => setTimeout(resolve, 200));
    events.push(`slow ${step.stepId} done`);
    return step.stepId;
  });
  const running = worker.run();
  const batch = {
    steps: [
      { step_id: 1, handler_class: "slow" },
      { step_id: 2, handler_class: "slow" },
      { step_id: 3, handler_class: "stopper" },
      { step_id: 4, handler_class: "slow" },
    ],
  };
  const response = await dispatch(worker.config.endpoint, batch).result;
  await withTimeout(running, 10_000, "worker.run() after an in-handler stop");
  assert.equal(worker.state, "stopped");
  for (const result of response.results) assert.equal(result.status, "completed", JSON.stringify(result));
  assert.equal(byStepId(response).get(3).output, "stopped from inside");
  // The in-handler stop() waited for the other handlers, not for itself.
  assert.equal(events[events.length - 1], "stop resolved", events.join(", "));
  assert.equal(events.filter((e) => e.startsWith("slow")).length, 3);
  // After it resolved, stop() stays resolved.
  await withTimeout(worker.stop(), 1000, "a second stop()");
});

test("bad options and misuse throw TaskerError naming the problem", async () => {
  assert.throws(() => new Worker({ endpoint: "inproc://x" }), (e) => e instanceof TaskerError && /endpoint/.test(e.message));
  assert.throws(() => new Worker({ capcity: 3 }), (e) => e instanceof TaskerError && /capcity/.test(e.message));
  assert.throws(() => new Worker({ capacity: 0 }), (e) => e instanceof TaskerError && /workerCapacity/.test(e.message));
  assert.throws(() => Worker.fromConfig("/nonexistent/zeromq.yaml"), (e) => e instanceof TaskerError && /nonexistent/.test(e.message));
  const worker = new Worker({ endpoint: await freeEndpoint() });
  assert.throws(() => worker.handle("", () => null), TaskerError);
  assert.throws(() => worker.handle("x", "not a function"), TaskerError);
  await assert.rejects(worker.run(), (e) => e instanceof TaskerError && /no handlers/.test(e.message));
});

test("registering a handler name again replaces the first, with a warning", async () => {
  const records = [];
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), logger: (entry) => records.push(entry) });
  try {
    worker.handle("charge", () => "first").handle("refund", () => null);
    assert.deepEqual(records.filter((r) => r.level === "warn"), []);
    worker.handle("charge", () => "second");
    const warnings = records.filter((r) => r.level === "warn").map((r) => r.message);
    assert.deepEqual(warnings, ['handler "charge" registered again: this one replaces the first']);
    const results = await serve(worker, { steps: [{ step_id: 1, handler_class: "charge" }] });
    assert.equal(results.get(1).output, "second");
  } finally {
    setLogger(null);
  }
});

test("Worker.fromConfig reads the project's config file, its environment section and overrides", () => {
  const path = require("node:path");
  const file = path.join(require("./helpers.js").REPO, "config", "zeromq.yaml");
  const previous = process.env.TASKER_ENV;
  process.env.TASKER_ENV = "test";
  try {
    const worker = Worker.fromConfig(file, { capacity: 3 });
    assert.equal(worker.config.endpoint, "tcp://127.0.0.1:5655");
    assert.equal(worker.config.heartbeatIntervalMs, 200);
    assert.equal(worker.capacity, 3);
    // `env` picks the section over TASKER_ENV, as Python's and Ruby's
    // `from_config(path, env)`; a section the file lacks is named.
    const development = Worker.fromConfig(file, { env: "development" });
    assert.equal(development.config.endpoint, loadConfig(file, { env: "development" }).endpoint);
    assert.notEqual(development.config.heartbeatIntervalMs, 200);
    assert.throws(() => Worker.fromConfig(file, { env: "staging" }), (e) => e instanceof ConfigError && /staging/.test(e.message));
    assert.throws(() => Worker.fromConfig(file, { env: 7 }), (e) => e instanceof ConfigError && /env must be/.test(e.message));
    assert.equal(Client.fromConfig(file, { env: "test" }).url.startsWith("http://"), true);
    // `capacity` is `workerCapacity` under the worker's name: given both,
    // neither silently wins.
    assert.throws(
      () => new Worker({ capacity: 2, workerCapacity: 3 }),
      (e) => e instanceof ConfigError && /capacity: 2 and workerCapacity: 3 are the same setting/.test(e.message),
    );
  } finally {
    if (previous === undefined) delete process.env.TASKER_ENV;
    else process.env.TASKER_ENV = previous;
  }
});

test("a handler that holds the JavaScript thread past the heartbeat expiry loses the worker its steps, and the worker warns why", async () => {
  const records = [];
  const endpoint = await freeEndpoint();
  const worker = new Worker({ ...QUICK, endpoint, heartbeatIntervalMs: 100, logger: (entry) => records.push(entry) });
  worker.handle("crunch", () => {
    const until = Date.now() + 1500;
    while (Date.now() < until) {
      // CPU-bound on the event loop: no heartbeat can go out meanwhile.
    }
    return "done";
  });
  const running = worker.run();
  try {
    const env = { TASKER_HEARTBEAT_INTERVAL_MS: "100", TASKER_LIVENESS: "3" };
    const response = await dispatch(endpoint, { steps: [{ step_id: 1, handler_class: "crunch" }] }, { env }).result;
    assert.equal(response.results[0].error.error_type, "WorkerLost", JSON.stringify(response.results[0]));
    const warned = () => records.filter((r) => r.level === "warn" && /could not beat for longer than the heartbeat expiry/.test(r.message));
    await until(() => warned().length > 0, 5_000, `the warning among ${JSON.stringify(records.map((r) => r.line))}`);
  } finally {
    await withTimeout(worker.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
    setLogger(null);
  }
});
