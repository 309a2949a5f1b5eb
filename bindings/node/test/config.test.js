"use strict";

// Configuration is resolved by Rust (TaskerConfig::resolve): the options of
// a Worker, the file and the TASKER_* variables all go there, and its
// errors are thrown unchanged as ConfigError.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");

const { Worker, ConfigError, TaskerError, loadConfig } = require("tasker-core");
const { REPO } = require("./helpers.js");

/** Runs `fn` with `vars` set in process.env, restoring it after. */
function withEnv(vars, fn) {
  const saved = {};
  for (const [key, value] of Object.entries(vars)) {
    saved[key] = process.env[key];
    process.env[key] = value;
  }
  try {
    return fn();
  } finally {
    for (const [key, value] of Object.entries(saved)) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
}

test("every config key is an option, the socket high-water marks included", () => {
  const worker = new Worker({ sendHwm: 10, recvHwm: 20, batchSize: 7, capacity: 3 });
  assert.equal(worker.config.sendHwm, 10);
  assert.equal(worker.config.recvHwm, 20);
  assert.equal(worker.config.batchSize, 7);
  assert.equal(worker.config.workerCapacity, 3);
  assert.equal(worker.capacity, 3);
  assert.ok(Object.isFrozen(worker.config));
  withEnv({ TASKER_SEND_HWM: "30" }, () => assert.equal(new Worker().config.sendHwm, 30));
  // A large integer stays a number both ways.
  assert.equal(loadConfig(null, { shutdownTimeoutMs: 5e9 }).shutdownTimeoutMs, 5e9);
});

test("a misspelt option is a ConfigError naming it as written and the key it resembles in camelCase", () => {
  assert.throws(
    () => new Worker({ workerCapcity: 3 }),
    (e) =>
      e instanceof ConfigError &&
      e instanceof TaskerError &&
      e.message === "unknown config key `workerCapcity` (option); did you mean `workerCapacity`?",
  );
  assert.throws(
    () => loadConfig(null, { heartbeatIntervalMS: 5 }),
    (e) => e instanceof ConfigError && /`heartbeatIntervalMS`.*did you mean `heartbeatIntervalMs`/.test(e.message),
  );
});

test("a bad value, file or TASKER_* variable is a ConfigError naming it", () => {
  assert.throws(() => new Worker({ batchSize: "ten" }), (e) => e instanceof ConfigError && /option `batchSize`/.test(e.message));
  assert.throws(() => new Worker({ capacity: 2.5 }), (e) => e instanceof ConfigError && /option `workerCapacity`/.test(e.message));
  assert.throws(() => new Worker({ heartbeatIntervalMs: 0 }), (e) => e instanceof ConfigError && /option `heartbeatIntervalMs`: must be at least 1/.test(e.message));
  assert.throws(() => new Worker({ endpoint: () => "tcp://x" }), (e) => e instanceof ConfigError && /endpoint/.test(e.message));
  assert.throws(() => Worker.fromConfig("/nonexistent/zeromq.yaml"), (e) => e instanceof ConfigError && /nonexistent/.test(e.message));
  withEnv({ TASKER_WORKER_CAPCITY: "4" }, () => {
    assert.throws(
      () => new Worker(),
      (e) => e instanceof ConfigError && /TASKER_WORKER_CAPCITY/.test(e.message) && /did you mean `worker_capacity`/.test(e.message),
    );
  });
  withEnv({ TASKER_BATCH_SIZE: "many" }, () => {
    assert.throws(() => loadConfig(), (e) => e instanceof ConfigError && /TASKER_BATCH_SIZE/.test(e.message));
  });
});

test("options win over the file's section and the environment", () => {
  const file = path.join(REPO, "config", "zeromq.yaml");
  withEnv({ TASKER_ENV: "test", TASKER_LIVENESS: "7" }, () => {
    const worker = Worker.fromConfig(file, { heartbeatIntervalMs: 300 });
    assert.equal(worker.config.endpoint, "tcp://127.0.0.1:5655");
    assert.equal(worker.config.liveness, 7);
    assert.equal(worker.config.heartbeatIntervalMs, 300);
  });
});
