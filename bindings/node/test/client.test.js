"use strict";

// The HTTP client (`Client`) against a real `tasker serve` and real Rust
// workers (`tasker worker`): the steps run in Rust, the client is Node.
// One server for most tests; the ones that stop a server or need tokens
// start their own.

const { test, before, after } = require("node:test");
const assert = require("node:assert/strict");
const { execFile } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const path = require("node:path");
const tls = require("node:tls");
const { promisify } = require("node:util");

const {
  Client,
  TaskHandle,
  TaskerError,
  ConfigError,
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
  setLogger,
} = require("tasker-core");
const { tempDir, startServe, startRustWorker, stopProcess, killAll, withTimeout, freeEndpoint } = require("./helpers.js");

const WORKFLOWS = {
  // Two echo steps in a row: the second sees the first's output.
  echo_pair: `
name: echo_pair
description: two echo steps in a row
steps:
  - name: first
    handler: echo
    handler_config: { greeting: "grüß dich" }
  - name: second
    handler: echo
    depends_on: [first]
`,
  // A permanent failure after an echo; the step after it is blocked.
  mixed: `
name: mixed
steps:
  - name: fetch
    handler: echo
  - name: charge
    handler: fail_permanent
    depends_on: [fetch]
  - name: ship
    handler: echo
    depends_on: [charge]
`,
  // Sleeps task_context.sleep_ms, then echoes.
  slow: `
name: slow
defaults:
  timeout_ms: 120000
steps:
  - name: nap
    handler: sleep
  - name: after
    handler: echo
    depends_on: [nap]
`,
  // For the list tests: nothing else submits it.
  listed: `
name: listed
steps:
  - name: only
    handler: echo
`,
};

const processes = [];
const dirs = [];
let dir;
let server; // { child, url, endpoint }
let client;

/** A folder with the test workflows in workflows/. */
function serveDir() {
  const folder = tempDir();
  dirs.push(folder);
  fs.mkdirSync(path.join(folder, "workflows"));
  for (const [name, yaml] of Object.entries(WORKFLOWS)) {
    fs.writeFileSync(path.join(folder, "workflows", `${name}.yaml`), yaml);
  }
  return folder;
}

/** Resolves once `url`'s server has a worker connected. */
async function workersConnected(url, token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const deadline = Date.now() + 20_000;
  for (;;) {
    const response = await fetch(`${url}/v1/workers`, { headers });
    const { workers } = await response.json();
    if (workers.length > 0) return;
    if (Date.now() > deadline) throw new Error(`no worker connected to ${url}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A serve with one Rust worker, stopped after the tests. */
async function serveWithWorker(folder, env = {}, token) {
  const started = await startServe(folder, { env });
  processes.push(started.child);
  const worker = startRustWorker(started.endpoint);
  processes.push(worker);
  await workersConnected(started.url, token);
  return { ...started, worker };
}

before(async () => {
  dir = serveDir();
  server = await serveWithWorker(dir);
  client = new Client({ url: server.url });
});

after(async () => {
  await Promise.all(processes.map((child) => stopProcess(child)));
  killAll();
  for (const folder of dirs) fs.rmSync(folder, { recursive: true, force: true });
});

/** Resolves once task `id`'s step `name` is running, as `via` sees it. */
async function stepRunning(via, id, name) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const task = await via.get(id);
    if (task.steps.find((s) => s.name === name).state === "running") return task;
    if (Date.now() > deadline) throw new Error(`step ${name} of task ${id} never ran: ${JSON.stringify(task.raw)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** How long `promise` takes to settle, in ms, and its error. */
async function timed(promise) {
  const start = performance.now();
  let error;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  return { ms: performance.now() - start, error };
}

test("submit, then wait: the Rust worker's echo outputs come back, in camelCase, with Dates", async () => {
  const context = { order: { id: "A-17", customer: "Zoë Ñuñez", items: [1, 2.5, null, true] }, note: "日本語 😀" };
  const handle = await client.submit("echo_pair", context);
  assert.ok(handle instanceof TaskHandle);
  assert.equal(handle.created, true);
  assert.equal(typeof handle.id, "number");
  assert.equal(handle.task.taskId, handle.id);
  assert.equal(handle.task.workflow, "echo_pair");
  assert.deepEqual(handle.task.context, context);

  const task = await handle.wait({ timeoutMs: 30_000 });
  assert.equal(task.status, "complete");
  assert.equal(task.taskId, handle.id);
  assert.equal(task.cancelRequested, false);
  assert.equal(task.idempotencyKey, null);
  assert.ok(task.startedAt instanceof Date && !Number.isNaN(task.startedAt.getTime()));
  assert.ok(task.finishedAt instanceof Date && task.finishedAt >= task.startedAt);
  assert.equal(typeof task.durationMs, "number");
  assert.deepEqual(
    task.steps.map((s) => [s.name, s.handler, s.state, s.outcome, s.attempts, s.error]),
    [
      ["first", "echo", "completed", "completed", 1, null],
      ["second", "echo", "completed", "completed", 1, null],
    ],
  );
  const [first, second] = task.steps;
  // The echo handler (Rust) returns what it got: context and config unchanged
  // (snake_case keys are the handler's own output, not renamed).
  assert.deepEqual(first.output.task_context, context);
  assert.deepEqual(first.output.handler_config, { greeting: "grüß dich" });
  assert.deepEqual(second.output.previous_results.first, first.output);
  assert.match(first.workerId, /^rust-/);
  // The server's JSON is kept, unchanged and out of the way.
  assert.equal(task.raw.task_id, handle.id);
  // Compared as instants: the server writes RFC 3339 with as many fraction
  // digits as it needs (none on a whole second), toISOString always three.
  assert.equal(Date.parse(task.raw.started_at), task.startedAt.getTime());
  assert.ok(!Object.keys(task).includes("raw"));
  assert.equal(first.raw.step_id, first.stepId);
  // get and the handle's get agree once it has ended.
  assert.deepEqual(await client.get(handle.id), task);
  assert.deepEqual(await handle.get(), task);
});

test("a failed task reports its step's error (errorType, message) and the blocked step after it", async () => {
  const handle = await client.submit("mixed", { amount: 3 });
  const task = await client.wait(handle.id, { timeoutMs: 30_000 });
  assert.equal(task.status, "failed");
  const [fetched, charge, ship] = task.steps;
  assert.equal(fetched.outcome, "completed");
  assert.equal(charge.outcome, "failed");
  assert.equal(charge.output, null);
  assert.equal(charge.error.errorType, "PermanentError");
  assert.equal(charge.error.retryable, false);
  assert.match(charge.error.message, /charge failed/);
  assert.ok(Array.isArray(charge.error.backtrace));
  assert.equal(ship.outcome, "blocked");
  assert.equal(ship.blockedBy, "charge");
  assert.deepEqual(task.steps.map((s) => s.dependsOn), [[], ["fetch"], ["charge"]]);
});

test("an idempotent resubmit returns the same task; the key with another context is an IdempotencyConflict", async () => {
  const key = `order-${process.pid}-${Date.now()}`;
  const first = await client.submit("echo_pair", { n: 1 }, { idempotencyKey: key });
  assert.equal(first.created, true);
  assert.equal(first.task.idempotencyKey, key);
  const again = await client.submit("echo_pair", { n: 1 }, { idempotencyKey: key });
  assert.equal(again.created, false);
  assert.equal(again.id, first.id);

  const conflict = await client.submit("echo_pair", { n: 2 }, { idempotencyKey: key }).then(
    () => assert.fail("a conflicting submit resolved"),
    (e) => e,
  );
  assert.ok(conflict instanceof IdempotencyConflict, String(conflict));
  assert.ok(conflict instanceof ClientError && conflict instanceof TaskerError);
  assert.equal(conflict.name, "IdempotencyConflict");
  assert.equal(conflict.status, 409);
  assert.equal(conflict.problemType, "idempotency-conflict");
  assert.equal(conflict.taskId, first.id);
  assert.equal(conflict.message, conflict.detail);
  assert.equal(conflict.message, conflict.problem.detail);
  assert.match(conflict.message, new RegExp(`task ${first.id}`));
  await first.wait({ timeoutMs: 30_000 });
});

test("cancelling a running task ends it cancelled; cancelling it again is TaskEnded", async () => {
  const handle = await client.submit("slow", { sleep_ms: 1500 });
  await stepRunning(client, handle.id, "nap");
  const requested = await handle.cancel();
  assert.equal(requested.cancelRequested, true);
  assert.equal(requested.taskId, handle.id);
  const task = await handle.wait({ timeoutMs: 30_000 });
  assert.equal(task.status, "cancelled");
  assert.equal(task.steps[1].outcome, "cancelled");

  const ended = await client.cancel(handle.id).then(
    () => assert.fail("cancelling an ended task resolved"),
    (e) => e,
  );
  assert.ok(ended instanceof TaskEnded, String(ended));
  assert.equal(ended.status, 409);
  assert.equal(ended.taskId, handle.id);
  assert.equal(ended.taskStatus, "cancelled");
});

test("get, wait and cancel of an unknown task are TaskNotFound with its id", async () => {
  for (const call of [() => client.get(987654), () => client.wait(987654, { timeoutMs: 1000 }), () => client.cancel(987654)]) {
    const { ms, error } = await timed(call());
    assert.ok(error instanceof TaskNotFound, String(error));
    assert.equal(error.status, 404);
    assert.equal(error.problemType, "task-not-found");
    assert.equal(error.taskId, 987654);
    assert.match(error.message, /987654/);
    assert.ok(ms < 1000, `a 404 is not retried (${ms} ms)`);
  }
});

test("an unknown workflow is UnknownWorkflow naming the field, the loaded workflows and the closest", async () => {
  const error = await client.submit("mixd", {}).then(
    () => assert.fail("resolved"),
    (e) => e,
  );
  assert.ok(error instanceof UnknownWorkflow, String(error));
  assert.ok(error instanceof ValidationError);
  assert.equal(error.status, 422);
  assert.equal(error.field, "workflow");
  assert.equal(error.closest, "mixed");
  assert.deepEqual([...error.knownWorkflows].sort(), Object.keys(WORKFLOWS).sort());
  assert.match(error.message, /did you mean `mixed`/);
});

test("validation errors carry the field at fault", async () => {
  const limit = await client.list({ limit: 0 }).catch((e) => e);
  assert.ok(limit instanceof ValidationError && !(limit instanceof UnknownWorkflow), String(limit));
  assert.equal(limit.field, "limit");
  assert.equal(limit.status, 400);
  assert.equal(limit.problemType, "invalid-parameter");

  const key = await client.submit("echo_pair", {}, { idempotencyKey: "k".repeat(300) }).catch((e) => e);
  assert.ok(key instanceof ValidationError, String(key));
  assert.equal(key.field, "idempotency_key");
  assert.equal(key.status, 422);

  // Over the server's 1 MiB: said before any upload, not a broken pipe
  // taken for a server gone (and a keyed submit retried five times).
  for (const size of [2 << 20, 20 << 20]) {
    const started = performance.now();
    const big = await client.submit("echo_pair", { pad: "x".repeat(size) }, { idempotencyKey: `big-${size}` }).catch((e) => e);
    assert.ok(big instanceof ValidationError, String(big));
    assert.equal(big.problemType, "body-too-large");
    assert.match(big.message, /1 MiB/);
    assert.ok(performance.now() - started < 2_000);
  }

  // Mistakes the SDK sees itself are TaskerErrors, before any request.
  await assert.rejects(client.list({ limt: 3 }), (e) => e instanceof TaskerError && /unknown list filter `limt`/.test(e.message));
  await assert.rejects(client.get("seven"), (e) => e instanceof TaskerError && !(e instanceof ClientError));
  await assert.rejects(client.get(1.5), (e) => e instanceof TaskerError && !(e instanceof ClientError));
});

/** A server that counts the requests it gets and answers each task-not-found. */
async function countingServer() {
  const seen = [];
  const counting = http.createServer((request, response) => {
    seen.push(`${request.method} ${request.url}`);
    response.writeHead(404, { "Content-Type": "application/problem+json" });
    response.end(JSON.stringify({ type: "https://tasker-core.dev/problems/task-not-found", title: "Not Found", status: 404, detail: "no task", task_id: 7 }));
  });
  await new Promise((resolve) => counting.listen(0, "127.0.0.1", resolve));
  return { url: `http://127.0.0.1:${counting.address().port}`, seen, close: () => new Promise((resolve) => counting.close(resolve)) };
}

test("a task id that is not a positive integer (or a string of its digits) is a TaskerError, before any request", async () => {
  const counting = await countingServer();
  try {
    const local = new Client({ url: counting.url });
    const misuse = (e) => e instanceof TaskerError && !(e instanceof ClientError) && /^a task id is a positive integer/.test(e.message);
    for (const id of ["abc", -1, 0, "0", "-1", "1.5", "1e3", " 7", "", 1.5, NaN, 2 ** 60, 7n, null, undefined]) {
      await assert.rejects(local.get(id), misuse, `get(${typeof id === "bigint" ? `${id}n` : JSON.stringify(id)})`);
      await assert.rejects(local.wait(id, { timeoutMs: 0 }), misuse);
      await assert.rejects(local.cancel(id), misuse);
    }
    const error = await local.get("abc").catch((e) => e);
    assert.equal(error.message, 'a task id is a positive integer (or a string of its digits), got "abc"');
    assert.deepEqual(counting.seen, [], "no request was sent");

    // Digits, as a URL or a form has them, are the id.
    await assert.rejects(local.get("7"), TaskNotFound);
    await assert.rejects(local.cancel("007"), TaskNotFound);
    assert.deepEqual(counting.seen, ["GET /v1/tasks/7", "POST /v1/tasks/7/cancel"]);
  } finally {
    await counting.close();
  }
  const handle = await client.submit("echo_pair", { n: 1 });
  assert.equal((await client.get(String(handle.id))).taskId, handle.id);
});

test("a context that is not a JSON object, or holds what JSON has no form for, is a TaskerError naming it, before any request", async () => {
  const counting = await countingServer();
  try {
    const local = new Client({ url: counting.url });
    const refused = async (context, message) => {
      const error = await local.submit("echo_pair", context).catch((e) => e);
      assert.ok(error instanceof TaskerError && !(error instanceof ClientError), String(error));
      assert.equal(error.message, message);
    };
    await refused([1, 2], "context must be an object (a JSON object), got an array");
    await refused("order 7", "context must be an object (a JSON object), got a string");
    await refused(new Map([["a", 1]]), "context is a Map, which JSON has no form for: convert it, e.g. Object.fromEntries(map)");
    await refused({ n: 5n }, "context.n is a BigInt (5n), which JSON has no form for: convert it to a number or a string");
    await refused({ items: [1, new Set([2])] }, "context.items[1] is a Set, which JSON has no form for: convert it, e.g. [...set]");
    await refused({ total: NaN }, "context.total is NaN, which JSON has no form for (JSON.stringify would write null)");
    const loop = { a: {} };
    loop.a.back = loop;
    await refused(loop, "context.a.back refers back to context: a circular structure, which JSON has no form for");
    // Half a character is not text: the server called the body malformed JSON.
    await refused(
      { s: ["ok", "🎉".slice(0, 1)] },
      'context.s[1] is a string with a lone UTF-16 surrogate (half of a character, e.g. "🎉".slice(0, 1)), which is not Unicode text',
    );
    await refused({ ["\ud83c"]: 1 }, 'context has a key "\\ud83c" with a lone UTF-16 surrogate, which is not Unicode text');
    // An invalid Date filter and a zero read timeout are misuses too.
    await assert.rejects(local.list({ createdSince: new Date("x") }), (e) => e instanceof TaskerError && e.message === "createdSince is an invalid Date");
    assert.deepEqual(counting.seen, [], "no request was sent");
  } finally {
    await counting.close();
  }
  // Dates (toJSON) and undefined properties are JSON data, as in outputs; null is {}.
  const task = await (await client.submit("echo_pair", { at: new Date(0), gone: undefined, n: [1, "ü"] })).wait({ timeoutMs: 30_000 });
  assert.deepEqual(task.context, { at: "1970-01-01T00:00:00.000Z", n: [1, "ü"] });
  assert.deepEqual((await client.submit("echo_pair", null)).task.context, {});
});

test("wait takes Infinity, as null, for no deadline", async () => {
  const handle = await client.submit("echo_pair", { n: 2 });
  assert.equal((await client.wait(handle.id, { timeoutMs: Infinity })).status, "complete");
});

test("wait with a short timeout is a WaitTimeout carrying the running task", async () => {
  const handle = await client.submit("slow", { sleep_ms: 4_000 });
  try {
    const { ms, error } = await timed(handle.wait({ timeoutMs: 400 }));
    assert.ok(error instanceof WaitTimeout, String(error));
    assert.ok(error instanceof ClientError);
    assert.equal(error.status, null);
    assert.equal(error.task.taskId, handle.id);
    assert.equal(error.task.status, "running");
    assert.match(error.message, new RegExp(`task ${handle.id} \\([^)]+\\) did not end within 0.4 s; it is running`));
    assert.ok(ms >= 390 && ms < 5_000, `waited ${ms} ms`);
    // timeoutMs 0: one look, no waiting.
    const zero = await timed(client.wait(handle.id, { timeoutMs: 0 }));
    assert.ok(zero.error instanceof WaitTimeout && zero.ms < 1_000, `${zero.error} after ${zero.ms} ms`);
    // An aborted wait rejects with the signal's reason, at once.
    const controller = new AbortController();
    const waiting = timed(handle.wait({ signal: controller.signal }));
    setTimeout(() => controller.abort(new Error("gave up")), 200);
    const aborted = await waiting;
    assert.equal(aborted.error?.message, "gave up");
    assert.ok(aborted.ms < 2_000, `aborted after ${aborted.ms} ms`);
  } finally {
    await handle.cancel();
  }
});

test("list filters by status and workflow and pages with the cursor; listAll walks every page", async () => {
  const since = new Date(Date.now() - 1000);
  const ids = [];
  for (let i = 0; i < 5; i++) ids.push((await client.submit("listed", { i })).id);
  for (const id of ids) await client.wait(id, { timeoutMs: 30_000 });
  const failed = await client.submit("mixed", {});
  await failed.wait({ timeoutMs: 30_000 });

  const seen = [];
  let cursor;
  let pages = 0;
  do {
    const page = await client.list({ workflow: "listed", limit: 2, cursor });
    assert.ok(page.tasks.length <= 2);
    seen.push(...page.tasks);
    cursor = page.nextCursor ?? undefined;
    pages += 1;
  } while (cursor !== undefined && pages < 10);
  assert.equal(pages, 3);
  // Newest first.
  assert.deepEqual(
    seen.map((t) => t.taskId),
    [...ids].reverse(),
  );
  for (const summary of seen) {
    assert.equal(summary.workflow, "listed");
    assert.equal(summary.status, "complete");
    assert.equal(summary.stepsTotal, 1);
    assert.equal(summary.stepsCompleted, 1);
    assert.ok(summary.startedAt instanceof Date);
    assert.ok(summary.finishedAt instanceof Date);
    assert.equal(summary.raw.task_id, summary.taskId);
  }
  const all = [];
  for await (const summary of client.listAll({ workflow: "listed", limit: 2 })) all.push(summary.taskId);
  assert.deepEqual(all, [...ids].reverse());

  const failures = await client.list({ status: "failed" });
  assert.ok(failures.tasks.some((t) => t.taskId === failed.id));
  assert.ok(failures.tasks.every((t) => t.status === "failed"));
  assert.deepEqual((await client.list({ status: "failed", workflow: "listed" })).tasks, []);
  const recent = await client.list({ workflow: "listed", createdSince: since });
  assert.equal(recent.tasks.length, 5);
  assert.equal(recent.nextCursor, null);
  const future = await client.list({ createdSince: new Date(Date.now() + 3_600_000).toISOString() });
  assert.deepEqual(future.tasks, []);
});

test("workflows lists the loaded workflows with their steps", async () => {
  const workflows = await client.workflows();
  const byName = new Map(workflows.map((w) => [w.name, w]));
  assert.deepEqual([...byName.keys()].sort(), Object.keys(WORKFLOWS).sort());
  const pair = byName.get("echo_pair");
  assert.equal(pair.description, "two echo steps in a row");
  assert.deepEqual(
    pair.steps.map((s) => [s.name, s.handler, s.dependsOn]),
    [
      ["first", "echo", []],
      ["second", "echo", ["first"]],
    ],
  );
});

test("ServerUnavailable on a port nobody listens on: after the retries (about 3 s), at once for a submit without key", async () => {
  const endpoint = await freeEndpoint(); // a free port: nobody listens
  const nobody = new Client({ url: endpoint.replace("tcp://", "http://") });
  const records = [];
  setLogger((entry) => records.push(entry), "debug");
  const read = await timed(nobody.get(1)).finally(() => setLogger(undefined));
  // Each retry is logged under the client's own target, not the worker's.
  const retries = records.filter((r) => r.message.startsWith("retrying GET"));
  assert.equal(retries.length, 4, JSON.stringify(records));
  assert.ok(retries.every((r) => r.target === "tasker_core::client" && r.level === "debug"), JSON.stringify(retries));
  assert.ok(read.error instanceof ServerUnavailable, String(read.error));
  assert.equal(read.error.status, null);
  assert.equal(read.error.url, nobody.url);
  assert.match(read.error.message, new RegExp(`the tasker server at ${nobody.url} is not reachable \\(connection refused; 5 tries\\); is tasker serve running\\?`));
  // Waits of 0.2, 0.4, 0.8 and 1.6 s, each ±20%: 2.4 to 3.6 s.
  assert.ok(read.ms > 2_300 && read.ms < 6_000, `gave up after ${read.ms} ms`);

  const submit = await timed(nobody.submit("echo_pair", {}));
  assert.ok(submit.error instanceof ServerUnavailable, String(submit.error));
  assert.match(submit.error.message, /without an idempotency key is tried once/);
  assert.ok(submit.ms < 1_000, `a submit without key was retried (${submit.ms} ms)`);

  const keyed = await timed(nobody.submit("echo_pair", {}, { idempotencyKey: "k" }));
  assert.ok(keyed.error instanceof ServerUnavailable, String(keyed.error));
  assert.ok(keyed.ms > 2_300, `a submit with a key is retried (${keyed.ms} ms)`);
});

test("a wait's timeout bounds it against a server that holds every request", async () => {
  // Each try was held for the wait plus 10 s, five times over: against a
  // server whose PostgreSQL store is down, a 3 s wait gave up after most of
  // a minute.
  const held = [];
  const holder = net.createServer((socket) => held.push(socket));
  await new Promise((resolve) => holder.listen(0, "127.0.0.1", resolve));
  try {
    const client = new Client({ url: `http://127.0.0.1:${holder.address().port}` });
    const { ms, error } = await timed(client.wait(1, { timeoutMs: 1_000 }));
    assert.ok(error instanceof ServerUnavailable, String(error));
    assert.match(error.message, /^the tasker server at \S+ did not answer by the wait's deadline \(/);
    assert.doesNotMatch(error.message, /is tasker serve running/);
    assert.ok(ms >= 1_000 && ms < 1_000 + 2_000 + 1_000, `gave up after ${ms} ms`);
  } finally {
    for (const socket of held) socket.destroy();
    await new Promise((resolve) => holder.close(resolve));
  }
});

test("a URL naming a ZeroMQ endpoint fails at once, saying so", async () => {
  // What a user gets who copies the orchestrator's endpoint for the API's:
  // it was retried five times with the HTTP parser's HPE_INVALID_CONSTANT.
  const zmq = new Client({ url: server.endpoint.replace("tcp://", "http://") });
  for (const call of [() => zmq.get(1), () => zmq.submit("echo_pair", {}, { idempotencyKey: "z" })]) {
    const { ms, error } = await timed(call());
    assert.ok(error instanceof ServerUnavailable, String(error));
    assert.match(error.message, /ZeroMQ endpoint/);
    assert.doesNotMatch(error.message, /tries/);
    assert.ok(ms < 1_000, `took ${ms} ms`);
  }
  const { error } = await timed(zmq.submit("echo_pair", {}));
  assert.match(error.message, /no task was created/);
});

test("a JSON answer that is no task is an ApiError, not a task that has ended", async () => {
  // Another JSON service behind the URL (a wrong path prefix, a proxy's own
  // page): its `{"hello":"world"}` read as a task had ended with no status,
  // and a keyed submit "was already started".
  const other = http.createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end('{"hello":"world"}');
  });
  await new Promise((resolve) => other.listen(0, "127.0.0.1", resolve));
  try {
    const client = new Client({ url: `http://127.0.0.1:${other.address().port}` });
    for (const call of [
      () => client.get(1),
      () => client.wait(1),
      () => client.submit("pipeline", {}, { idempotencyKey: "k" }),
      () => client.cancel(1),
      () => client.list(),
    ]) {
      const { error } = await timed(call());
      assert.ok(error instanceof ApiError, String(error));
      assert.match(error.message, /unexpected answer to .*\(200\): (task_id: expected an integer|tasks: expected an array)/);
    }
  } finally {
    other.closeAllConnections();
    await new Promise((resolve) => other.close(resolve));
  }
});

test("an answer without end is refused at its limit, not read into memory", async () => {
  // A server that streamed 2 GB took a client's memory with it.
  const http = require("node:http");
  let streamed = 0;
  const endless = http.createServer((req, res) => {
    res.writeHead(200, { "Content-Type": "application/json" });
    const chunk = Buffer.alloc(1 << 20, 0x37);
    const more = () => {
      while (streamed < 1 << 30) {
        streamed += chunk.length;
        if (!res.write(chunk)) return res.once("drain", more);
      }
      res.end();
    };
    res.on("close", () => (streamed = Math.min(streamed, 1 << 30)));
    more();
  });
  await new Promise((resolve) => endless.listen(0, "127.0.0.1", resolve));
  try {
    const odd = new Client({ url: `http://127.0.0.1:${endless.address().port}` });
    const { error } = await timed(odd.get(1));
    assert.ok(error instanceof ApiError, String(error));
    assert.match(error.message, /more than 256 MiB/);
    assert.ok(streamed < 300 * (1 << 20), `${streamed} bytes streamed`);
  } finally {
    endless.closeAllConnections();
    await new Promise((resolve) => endless.close(resolve));
  }
});

test("a server stopped (SIGTERM) during a wait ends it with ServerUnavailable, not a hang", async () => {
  const own = await serveWithWorker(serveDir());
  const ownClient = new Client({ url: own.url });
  const handle = await ownClient.submit("slow", { sleep_ms: 60_000 });
  await stepRunning(ownClient, handle.id, "nap");
  const waiting = timed(handle.wait());
  await new Promise((resolve) => setTimeout(resolve, 500));
  own.child.kill("SIGTERM");
  const { ms, error } = await withTimeout(waiting, 20_000, "the wait to end");
  assert.ok(error instanceof ServerUnavailable, String(error));
  // Answered 503 shutting-down while it drains, or refused once it has gone.
  assert.ok(error.status === 503 || error.status === null, `status ${error.status}`);
  if (error.status === 503) assert.equal(error.problemType, "shutting-down");
  if (error.status === null) {
    // Refused after it answered shutting-down: said as a stop, not as a
    // server that may never have run.
    assert.match(error.message, /shut down \(it answered shutting-down\)/);
    assert.doesNotMatch(error.message, /is tasker serve running/);
  }
  assert.ok(ms < 15_000, `took ${ms} ms`);
  await stopProcess(own.child, 2_000);
});

test("with api tokens, no token and a wrong one are Unauthorized; the right one works, from TASKER_API_URL/TASKER_API_TOKEN too", async () => {
  const folder = serveDir();
  const tokens = path.join(folder, "tokens.yaml");
  // The server takes tokens of 16 characters or more.
  const secret = "secret-token-0123456789";
  fs.writeFileSync(tokens, `ci: ${secret}\n`);
  const guarded = await serveWithWorker(folder, { TASKER_API_TOKENS_FILE: tokens }, secret);

  for (const token of [undefined, "wrong-token"]) {
    const { ms, error } = await timed(new Client({ url: guarded.url, token }).workflows());
    assert.ok(error instanceof Unauthorized, `${token}: ${error}`);
    assert.equal(error.status, 401);
    assert.equal(error.problemType, "unauthorized");
    assert.ok(ms < 1_000, `a 401 is not retried (${ms} ms)`);
  }
  const authorized = new Client({ url: guarded.url, token: secret });
  assert.ok((await authorized.workflows()).length > 0);
  // A token read from a file ends in a line break: not the token's.
  assert.ok((await new Client({ url: guarded.url, token: `${secret}\n` }).workflows()).length > 0);
  // One with a line break inside goes into no header: refused when the
  // client is made, naming the setting, never quoting the token.
  assert.throws(
    () => new Client({ url: guarded.url, token: "secret-token\r\nX-Injected: 1" }),
    (error) =>
      error instanceof ConfigError &&
      /option `token`: holds a line break/.test(error.message) &&
      !error.message.includes("secret-token"),
  );

  // The same from the environment, as a worker's config would be.
  const saved = { url: process.env.TASKER_API_URL, token: process.env.TASKER_API_TOKEN };
  process.env.TASKER_API_URL = guarded.url;
  process.env.TASKER_API_TOKEN = secret;
  try {
    const fromEnv = new Client();
    assert.equal(fromEnv.url, guarded.url);
    const handle = await fromEnv.submit("echo_pair", { env: true });
    const task = await handle.wait({ timeoutMs: 30_000 });
    assert.equal(task.status, "complete");
    assert.deepEqual(task.steps[0].output.task_context, { env: true });
    // Explicit arguments win over the environment.
    const { error } = await timed(new Client({ token: "wrong-token" }).get(handle.id));
    assert.ok(error instanceof Unauthorized, String(error));
    assert.equal(new Client({ url: "http://127.0.0.1:1234/" }).url, "http://127.0.0.1:1234");
  } finally {
    for (const [key, value] of [
      ["TASKER_API_URL", saved.url],
      ["TASKER_API_TOKEN", saved.token],
    ]) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
});

test("the URL comes from apiUrl, else apiListen on loopback; https is for a TLS proxy; other schemes and malformed URLs are ConfigErrors", async () => {
  assert.equal(new Client().url, "http://127.0.0.1:8080");
  assert.equal(new Client({ apiListen: "0.0.0.0:9000" }).url, "http://127.0.0.1:9000");
  assert.equal(new Client({ apiListen: "[::]:9000" }).url, "http://[::1]:9000");
  assert.equal(new Client({ apiUrl: "http://tasks.internal:80/tasker/" }).url, "http://tasks.internal:80/tasker");
  assert.equal(new Client({ url: "https://tasks.example.com/" }).url, "https://tasks.example.com");
  assert.equal(new Client({ apiUrl: "https://tasks.example.com:8443/tasker" }).url, "https://tasks.example.com:8443/tasker");
  assert.throws(
    () => new Client({ url: "ftp://x:1" }),
    (e) =>
      e instanceof ConfigError &&
      /http:\/\/HOST:PORT, or https:\/\/HOST\[:PORT\] for a TLS proxy/.test(e.message) &&
      // Named as the caller wrote it, not as the config key underneath.
      e.message.startsWith("invalid value for option `url`"),
  );
  assert.throws(() => new Client({ apiListen: "127.0.0.1:0" }), (e) => e instanceof ConfigError && /api_url/.test(e.message));
  assert.throws(() => new Client({ tokn: "x" }), (e) => e instanceof ConfigError && /unknown config key `tokn`/.test(e.message));
  assert.throws(() => new Client({ timeoutMs: -1 }), (e) => e instanceof TaskerError);
  // 0 made every call fail as "is tasker serve running?".
  assert.throws(() => new Client({ timeoutMs: 0 }), (e) => e instanceof TaskerError && /timeoutMs must be a number of ms, more than 0; got 0/.test(e.message));
  // A Python habit (a key as the third argument) is named as what it is,
  // before any request; a string timeout keeps its quotes.
  const client = new Client({ url: "http://127.0.0.1:9" });
  await assert.rejects(
    client.submit("demo", {}, "order-1"),
    (e) => e instanceof TaskerError && e.message === 'submit options must be an object like { idempotencyKey: "order-1" }, got a string',
  );
  await assert.rejects(client.wait(1, { timeoutMs: "5" }), (e) => e instanceof TaskerError && /got "5"$/.test(e.message));
});

// A self-signed certificate for localhost and 127.0.0.1, for the tests only
// (valid 2000-2125; its key is public, here).
const TLS_CERT = path.join(__dirname, "fixtures", "test-only-localhost-cert.pem");
const TLS_KEY = path.join(__dirname, "fixtures", "test-only-localhost-key.pem");

/**
 * A TLS-terminating proxy on a loopback port in front of `upstream` (a
 * plain `http://HOST:PORT`), as Caddy or nginx would be in front of
 * `tasker serve`, with the test certificate. Resolves to `{ port,
 * handshakes(), close() }`.
 */
async function tlsProxy(upstream) {
  const { hostname, port } = new URL(upstream);
  const sockets = new Set();
  let handshakes = 0;
  const proxy = tls.createServer({ cert: fs.readFileSync(TLS_CERT), key: fs.readFileSync(TLS_KEY) }, (secure) => {
    handshakes += 1;
    const plain = net.connect(Number(port), hostname);
    sockets.add(secure).add(plain);
    const end = () => {
      secure.destroy();
      plain.destroy();
    };
    for (const socket of [secure, plain]) socket.on("error", end).on("close", end);
    secure.pipe(plain).pipe(secure);
  });
  proxy.on("tlsClientError", () => {}); // a client that refused the certificate
  await new Promise((resolve) => proxy.listen(0, "127.0.0.1", resolve));
  return {
    port: proxy.address().port,
    handshakes: () => handshakes,
    close: () => {
      for (const socket of sockets) socket.destroy();
      return new Promise((resolve) => proxy.close(resolve));
    },
  };
}

test("behind a TLS proxy: https works once NODE_EXTRA_CA_CERTS trusts its certificate; an untrusted one is ServerUnavailable", async () => {
  const folder = serveDir();
  const tokens = path.join(folder, "tokens.yaml");
  const secret = "https-only-token-0123456789";
  fs.writeFileSync(tokens, `app: ${secret}\n`);
  const guarded = await serveWithWorker(folder, { TASKER_API_TOKENS_FILE: tokens }, secret);
  const proxy = await tlsProxy(guarded.url);
  const url = `https://localhost:${proxy.port}`;
  try {
    // This process does not trust the test certificate (NODE_EXTRA_CA_CERTS
    // is read only at start): a call fails like an unreachable server.
    const untrusted = new Client({ url, token: secret });
    assert.equal(untrusted.url, url);
    const { ms, error } = await timed(untrusted.workflows());
    assert.ok(error instanceof ServerUnavailable, String(error));
    assert.ok(ms >= 2_000, `retried like no answer (${ms} ms)`);
    assert.match(error.message, /certificate was not trusted/);
    assert.match(error.message, /NODE_EXTRA_CA_CERTS/);
    assert.match(error.message, /5 tries/);
    assert.ok(error.message.includes(url), error.message);
    assert.equal(proxy.handshakes(), 0);

    // A node started with NODE_EXTRA_CA_CERTS naming it trusts it.
    const script = `
      const { Client, Unauthorized } = require(${JSON.stringify(path.join(__dirname, ".."))});
      (async () => {
        const client = new Client({ url: process.env.PROXY_URL, token: process.env.PROXY_TOKEN });
        const workflows = (await client.workflows()).map((w) => w.name).sort();
        const handle = await client.submit("echo_pair", { tls: true }, { idempotencyKey: "tls-1" });
        const got = await client.get(handle.id);
        const task = await handle.wait({ timeoutMs: 30_000 });
        let anonymous = "no error";
        try {
          await new Client({ url: process.env.PROXY_URL, token: "" }).workflows();
        } catch (error) {
          anonymous = error instanceof Unauthorized ? "Unauthorized" : String(error);
        }
        console.log(JSON.stringify({
          url: client.url, workflows, created: handle.created, same: got.taskId === handle.id,
          status: task.status, context: task.steps[0].output.task_context, anonymous,
        }));
      })().catch((error) => { console.error(error); process.exit(1); });
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ["-e", script], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: TLS_CERT, PROXY_URL: url, PROXY_TOKEN: secret },
      timeout: 60_000,
    });
    const result = JSON.parse(stdout);
    assert.deepEqual(result, {
      url,
      workflows: Object.keys(WORKFLOWS).sort(),
      created: true,
      same: true,
      status: "complete",
      context: { tls: true },
      anonymous: "Unauthorized",
    });
    assert.ok(proxy.handshakes() >= 1);
  } finally {
    await proxy.close();
  }
});

test("the ES module entry exports the same Client and error classes", async () => {
  const esm = await import("tasker-core");
  assert.equal(esm.Client, Client);
  assert.equal(esm.ServerUnavailable, ServerUnavailable);
  assert.equal(esm.ApiError, ApiError);
  assert.equal(esm.default.WaitTimeout, WaitTimeout);
});
