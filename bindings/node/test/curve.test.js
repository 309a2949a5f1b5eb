"use strict";

// CURVE: encrypted, authenticated connections to a real `tasker dispatch`
// with CURVE on, keys made by the real `tasker keygen`. Never skipped: a
// build without CURVE fails them.

const { test, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const { Worker, WorkerError, WorkerRefused, TaskerError, ConfigError } = require("tasker-core");
const { TASKER, freeEndpoint, dispatch, byStepId, nodeProcess, withTimeout, killAll, tempDir } = require("./helpers.js");

afterEach(killAll);

/** Longest a refusal may take to reject run(). */
const REFUSAL_WITHIN_MS = 10_000;
const QUICK = { lingerMs: 100, reconnectInitialMs: 20, logger: null };

/** Key pairs made by `tasker keygen` in a temporary folder. */
class Keys {
  constructor() {
    const root = tempDir();
    this.dir = path.join(root, "keys");
    this.authorized = path.join(root, "authorized");
    fs.mkdirSync(this.dir);
    fs.mkdirSync(this.authorized);
    this.make("orchestrator");
  }

  /** A key pair NAME; `admit` copies NAME.pub into the authorized folder. */
  make(name, { admit = false } = {}) {
    execFileSync(TASKER, ["keygen", name, "--out", this.dir], { stdio: ["ignore", "pipe", "pipe"] });
    if (admit) fs.copyFileSync(this.publicFile(name), path.join(this.authorized, `${name}.pub`));
  }

  secret(name) {
    return path.join(this.dir, `${name}.key`);
  }

  publicFile(name) {
    return path.join(this.dir, `${name}.pub`);
  }

  /** The Z85 public key in NAME.pub. */
  publicKey(name) {
    const match = /public-key = "(.{40})"/.exec(fs.readFileSync(this.publicFile(name), "utf8"));
    assert.ok(match, `no public key in ${this.publicFile(name)}`);
    return match[1];
  }

  /** What turns CURVE on for `tasker dispatch`. */
  orchestratorEnv() {
    return { TASKER_CURVE_AUTHORIZED_KEYS_DIR: this.authorized, TASKER_CURVE_SECRET_KEY_FILE: this.secret("orchestrator") };
  }

  /** A worker's options: its secret key, the orchestrator's public key. */
  workerOptions(name) {
    return { curveSecretKeyFile: this.secret(name), curveServerPublicKeyFile: this.publicFile("orchestrator") };
  }
}

/** A dispatch whose result the test does not wait for (killed after the test). */
function dispatchUnawaited(...args) {
  const run = dispatch(...args);
  run.result.catch(() => {});
  return run;
}

/** What `worker.run()` rejects with, checking it came promptly and left the worker stopped. */
async function refusalOf(worker) {
  const started = Date.now();
  let error;
  await withTimeout(
    worker.run().then(
      () => assert.fail("run() resolved: the refusal did not reach it"),
      (e) => {
        error = e;
      },
    ),
    REFUSAL_WITHIN_MS,
    "run() to reject",
  );
  const took = Date.now() - started;
  assert.ok(took < REFUSAL_WITHIN_MS, `the refusal took ${took} ms`);
  assert.ok(error instanceof WorkerRefused, `not a WorkerRefused: ${error && error.stack}`);
  assert.ok(error instanceof WorkerError && error instanceof TaskerError && error instanceof Error);
  assert.equal(error.name, "WorkerRefused");
  assert.equal(worker.state, "stopped");
  // stop() after the refusal resolves at once.
  await withTimeout(worker.stop(), 1000, "stop() after the refusal");
  return error;
}

test("a worker with its keys as options serves a step over CURVE", async () => {
  const keys = new Keys();
  keys.make("alice", { admit: true });
  const endpoint = await freeEndpoint();
  const run = dispatch(endpoint, { steps: [{ step_id: 1, handler_class: "double", task_context: { n: 21 } }] }, { env: keys.orchestratorEnv() });
  const records = [];
  const worker = new Worker({ ...QUICK, endpoint, ...keys.workerOptions("alice"), logger: (entry) => records.push(entry) });
  assert.equal(worker.config.curveSecretKeyFile, keys.secret("alice"));
  worker.handle("double", (step) => ({ doubled: step.taskContext.n * 2 }));
  const running = worker.run();
  try {
    // Its start line says CURVE is on, as Python's and Ruby's do.
    assert.ok(
      records.some((r) => r.message === `connecting to ${endpoint} with CURVE`),
      JSON.stringify(records.map((r) => r.message)),
    );
    const result = byStepId(await run.result).get(1);
    assert.equal(result.status, "completed", JSON.stringify(result));
    assert.deepEqual(result.output, { doubled: 42 });
    assert.equal(result.metadata.worker_id, worker.workerId);
  } finally {
    await withTimeout(worker.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
  }
});

test("a worker process configured by TASKER_CURVE_* variables serves steps", async () => {
  const keys = new Keys();
  keys.make("bob", { admit: true });
  const endpoint = await freeEndpoint();
  const run = dispatch(endpoint, { steps: [1, 2, 3].map((id) => ({ step_id: id, handler_class: "shared" })) }, { env: keys.orchestratorEnv() });
  const child = nodeProcess("worker.js", {
    endpoint,
    env: {
      WORKER_ID: "curve-env",
      TASKER_LINGER_MS: "100",
      TASKER_CURVE_SECRET_KEY_FILE: keys.secret("bob"),
      TASKER_CURVE_SERVER_PUBLIC_KEY_FILE: keys.publicFile("orchestrator"),
    },
  });
  const results = byStepId(await run.result);
  for (const id of [1, 2, 3]) {
    const result = results.get(id);
    assert.equal(result.status, "completed", JSON.stringify(result));
    assert.deepEqual(result.output, { ranBy: "curve-env" });
    assert.equal(result.metadata.worker_id, "curve-env");
  }
  child.kill("SIGTERM");
  const { code } = await withTimeout(child.exited, 15_000, "the worker to exit on SIGTERM");
  assert.equal(code, 0, child.stderrText);
});

test("a worker whose key is not admitted: run() rejects with WorkerRefused naming its key, and it runs no step", async () => {
  const keys = new Keys();
  keys.make("admitted", { admit: true });
  keys.make("mallory"); // its .pub is not in the authorized folder
  const endpoint = await freeEndpoint();
  const run = dispatch(endpoint, { steps: [{ step_id: 1, handler_class: "work" }] }, { env: keys.orchestratorEnv() });
  const ran = [];
  const refused = new Worker({ ...QUICK, endpoint, ...keys.workerOptions("mallory") });
  refused.handle("work", (step) => ran.push(step.stepId));
  const error = await refusalOf(refused);
  assert.ok(error.message.includes(keys.publicKey("mallory")), error.message);
  assert.match(error.message, /curve_authorized_keys_dir/);
  assert.ok(error.message.includes(endpoint), error.message);

  // The step waits for a worker the orchestrator admits, which runs it.
  const good = new Worker({ ...QUICK, endpoint, ...keys.workerOptions("admitted") });
  good.handle("work", () => "admitted");
  const running = good.run();
  try {
    const result = byStepId(await run.result).get(1);
    assert.equal(result.status, "completed", JSON.stringify(result));
    assert.equal(result.output, "admitted");
    assert.equal(result.metadata.worker_id, good.workerId);
  } finally {
    await withTimeout(good.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
  }
  assert.deepEqual(ran, [], "the refused worker ran no step");
});

test("a plaintext worker against a CURVE orchestrator: run() rejects with WorkerRefused (requires CURVE)", async () => {
  const keys = new Keys();
  const endpoint = await freeEndpoint();
  dispatchUnawaited(endpoint, { steps: [{ step_id: 1, handler_class: "work" }] }, { env: keys.orchestratorEnv() });
  const ran = [];
  const worker = new Worker({ ...QUICK, endpoint });
  worker.handle("work", (step) => ran.push(step.stepId));
  const error = await refusalOf(worker);
  assert.match(error.message, /requires CURVE/);
  assert.match(error.message, /curve_server_public_key_file/);
  assert.deepEqual(ran, []);
});

test("a refused worker process: run() rejects, and nothing keeps the process alive", async () => {
  const keys = new Keys();
  const endpoint = await freeEndpoint();
  dispatchUnawaited(endpoint, { steps: [{ step_id: 1, handler_class: "shared" }] }, { env: keys.orchestratorEnv() });
  const child = nodeProcess("worker.js", { endpoint, env: { WORKER_ID: "plain", TASKER_LINGER_MS: "100" } });
  const { code } = await withTimeout(child.exited, REFUSAL_WITHIN_MS + 5000, "the refused worker to exit");
  assert.equal(code, 1, child.stderrText);
  // A plaintext peer mostly sees the mismatch only as handshakes closed in
  // silence ("closed 5 handshakes in a row: either it requires CURVE ...").
  assert.match(child.stderrText, /run failed: WorkerRefused: the orchestrator at \S+ .*requires CURVE/);
  assert.doesNotMatch(child.stdoutText, /started|run resolved/);
});

test("bad CURVE settings are ConfigErrors when the worker starts", async () => {
  const keys = new Keys();
  keys.make("carol");
  const server = keys.publicFile("orchestrator");
  const cases = [
    [{ curveServerPublicKeyFile: server }, /curve_secret_key_file/],
    [{ curveServerPublicKeyFile: server, curveSecretKeyFile: path.join(keys.dir, "nowhere.key") }, /nowhere\.key/],
    [{ curveServerPublicKeyFile: server, curveSecretKeyFile: keys.publicFile("carol") }, /curve_secret_key_file/],
  ];
  for (const [options, named] of cases) {
    await assert.rejects(
      async () => {
        const worker = new Worker({ ...QUICK, endpoint: "tcp://127.0.0.1:9", ...options });
        worker.handle("work", () => null);
        await worker.run();
      },
      (e) => e instanceof ConfigError && named.test(e.message),
      JSON.stringify(options),
    );
  }
});
