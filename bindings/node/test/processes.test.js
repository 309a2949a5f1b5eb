"use strict";

// Worker processes (real Node subprocesses running test/fixtures/worker.js)
// against the real orchestrator.

const { test, afterEach } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");

const { freeEndpoint, dispatch, byStepId, nodeProcess, waitForLine, withTimeout, killAll, tempDir } = require("./helpers.js");

afterEach(killAll);

const QUICK = { TASKER_LINGER_MS: "100", TASKER_RECONNECT_INITIAL_MS: "20" };

function steps(handler, from, count, extra = {}) {
  return Array.from({ length: count }, (_, i) => ({
    step_id: from + i,
    handler_class: handler,
    metadata: { timeout_ms: 20_000 },
    ...extra,
  }));
}

function runLog(file) {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((line) => {
      const [id, worker] = line.split(" ");
      return { id: Number(id), worker };
    });
}

test("several worker processes share one handler and each step runs exactly once", async () => {
  const endpoint = await freeEndpoint();
  const log = path.join(tempDir(), "runs.log");
  const workers = ["a", "b", "c"].map((name) =>
    nodeProcess("worker.js", {
      endpoint,
      env: { ...QUICK, WORKER_ID: `shared-${name}`, RUN_LOG: log, TASKER_WORKER_CAPACITY: "4" },
    }),
  );
  const response = await dispatch(endpoint, { steps: steps("shared", 1, 60) }, { workers: 3 }).result;
  const results = byStepId(response);
  assert.equal(response.results.length, 60);
  for (let id = 1; id <= 60; id++) {
    assert.equal(results.get(id).status, "completed", JSON.stringify(results.get(id)));
    assert.equal(results.get(id).output.ranBy, results.get(id).metadata.worker_id);
  }
  const runs = runLog(log);
  const ids = runs.map((r) => r.id).sort((x, y) => x - y);
  assert.deepEqual(ids, Array.from({ length: 60 }, (_, i) => i + 1), "each step ran exactly once");
  const used = new Set(runs.map((r) => r.worker));
  assert.ok(used.size >= 2, `work was not shared: only ${[...used]} ran steps`);
  for (const w of workers) w.kill("SIGTERM");
  for (const w of workers) {
    const { code } = await withTimeout(w.exited, 15_000, "a worker to exit on SIGTERM");
    assert.equal(code, 0, w.stderrText);
  }
});

test("a worker killed mid-batch: its steps fail WorkerLost (retryable), the rest complete elsewhere, one result each", async () => {
  const endpoint = await freeEndpoint();
  const log = path.join(tempDir(), "runs.log");
  // Fast heartbeats so the orchestrator declares the killed worker dead
  // quickly. The workers get the same interval from the start: the runtime
  // adopts the welcome's interval only after its first (own) heartbeat.
  const orchestratorEnv = { TASKER_HEARTBEAT_INTERVAL_MS: "100", TASKER_LIVENESS: "3" };
  const env = { ...QUICK, ...orchestratorEnv, RUN_LOG: log, TASKER_WORKER_CAPACITY: "2", SLOW_MS: "400" };
  const victim = nodeProcess("worker.js", { endpoint, env: { ...env, WORKER_ID: "victim" } });
  const survivor = nodeProcess("worker.js", { endpoint, env: { ...env, WORKER_ID: "survivor" } });
  const run = dispatch(endpoint, { steps: steps("slow", 1, 12) }, { workers: 2, env: orchestratorEnv });
  await waitForLine(victim, /^started \d+/);
  victim.kill("SIGKILL");
  await withTimeout(victim.exited, 5000, "the killed worker");
  const response = await run.result;

  assert.equal(response.results.length, 12);
  assert.equal(new Set(response.results.map((r) => r.step_id)).size, 12, "one result per step");
  const startedByVictim = new Set(runLog(log).filter((r) => r.worker === "victim").map((r) => r.id));
  assert.ok(startedByVictim.size >= 1);
  const lost = new Set();
  for (const result of response.results) {
    if (result.status === "completed") {
      assert.equal(result.metadata.worker_id, "survivor", JSON.stringify(result));
      continue;
    }
    lost.add(result.step_id);
    assert.equal(result.status, "failed", JSON.stringify(result));
    assert.equal(result.error.error_type, "WorkerLost");
    assert.equal(result.error.retryable, true);
  }
  // The victim was killed within its handlers' 400 ms: whatever it started
  // never finished. It may also have held a delivered step it had not begun.
  for (const id of startedByVictim) assert.ok(lost.has(id), `step ${id}, started by the victim, was not lost`);
  assert.ok(lost.size <= 2, `${lost.size} steps lost; the victim held at most its capacity 2`);
  const survivorRuns = runLog(log).filter((r) => r.worker === "survivor").map((r) => r.id);
  assert.equal(new Set(survivorRuns).size, survivorRuns.length, "the survivor ran no step twice");
  assert.equal(survivorRuns.length, 12 - lost.size);
  survivor.kill("SIGTERM");
  assert.equal((await withTimeout(survivor.exited, 15_000, "the survivor to exit")).code, 0);
});

test("SIGINT drains the steps in flight, then the process exits 0 by itself", async () => {
  const endpoint = await freeEndpoint();
  const worker = nodeProcess("worker.js", {
    endpoint,
    env: { ...QUICK, WORKER_ID: "sigint", TASKER_WORKER_CAPACITY: "3", SLOW_MS: "500" },
  });
  const run = dispatch(endpoint, { steps: steps("slow", 1, 3) });
  await waitForLine(worker, /^started 1$/);
  await waitForLine(worker, /^started 3$/);
  worker.kill("SIGINT");
  const { code, signal } = await withTimeout(worker.exited, 15_000, "the worker to exit after SIGINT");
  assert.equal(signal, null);
  assert.equal(code, 0, worker.stderrText);
  assert.match(worker.stdoutText, /run resolved/);
  const response = await run.result;
  for (const result of response.results) {
    assert.equal(result.status, "completed", JSON.stringify(result));
    assert.equal(result.output.sleptMs, 500);
  }
});

test("graceful stop() with steps in flight finishes them and the process then exits by itself", async () => {
  const endpoint = await freeEndpoint();
  // STOP_AFTER=3: stop() is called (from a timer) once the third handler has
  // started, while all three are sleeping.
  const worker = nodeProcess("worker.js", {
    endpoint,
    env: { ...QUICK, WORKER_ID: "graceful", TASKER_WORKER_CAPACITY: "3", SLOW_MS: "400", STOP_AFTER: "3" },
  });
  const response = await dispatch(endpoint, { steps: steps("slow", 1, 3) }).result;
  const { code, signal } = await withTimeout(worker.exited, 15_000, "the worker to exit after stop()");
  assert.equal(signal, null);
  assert.equal(code, 0, worker.stderrText);
  assert.match(worker.stdoutText, /run resolved/);
  for (const result of response.results) {
    assert.equal(result.status, "completed", JSON.stringify(result));
    assert.equal(result.metadata.worker_id, "graceful");
    assert.equal(result.output.sleptMs, 400);
  }
});

/** Resolves once `child`'s stderr matches `pattern`; rejects after `ms`, or when it exits first. */
async function waitForStderr(child, pattern, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (!pattern.test(child.stderrText)) {
    if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
      throw new Error(`no ${pattern} on stderr${child.exitCode !== null ? " before exiting" : ` within ${ms} ms`}:\n${child.stderrText}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test("with the default logger a worker process says on stderr what it dials, its handlers, that it waits and that it registered", async () => {
  const endpoint = await freeEndpoint();
  const worker = nodeProcess("worker.js", {
    endpoint,
    env: { ...QUICK, LOG_LEVEL: "info", WORKER_ID: "loud", TASKER_WORKER_CAPACITY: "2" },
  });
  const escaped = endpoint.replace(/[.]/g, "\\.");
  await waitForStderr(
    worker,
    new RegExp(`^\\S+ \\[tasker\\] INFO  tasker_core::node: connecting to ${escaped} worker_id=loud handlers=shared,slow capacity=2$`, "m"),
  );
  await waitForStderr(worker, new RegExp(`^\\S+ \\[tasker\\] \\w+ +tasker_worker::\\S+ waiting for an orchestrator at ${escaped}`, "m"));
  const response = await dispatch(endpoint, { steps: steps("shared", 1, 1) }).result;
  assert.equal(response.results[0].status, "completed");
  await waitForStderr(worker, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[tasker\] INFO  tasker_worker::\S+ registered with orchestrator/m);
  worker.kill("SIGTERM");
  const { code } = await withTimeout(worker.exited, 15_000, "the worker to exit on SIGTERM");
  assert.equal(code, 0, worker.stderrText);
  assert.match(worker.stderrText, /^\S+ \[tasker\] INFO  tasker_core::node: stopped worker_id=loud$/m);
});

test("a worker process's last runtime records reach its logger before it says stopped and exits", async () => {
  // The runtime's closing record ("worker connection closed") was handed
  // over in a call the event loop could end before running: two runs in
  // three lost it. Three processes at once, each must have it.
  const workers = await Promise.all(
    ["last-1", "last-2", "last-3"].map(async (id) => {
      const worker = nodeProcess("worker.js", { endpoint: await freeEndpoint(), env: { ...QUICK, LOG_LEVEL: "debug", WORKER_ID: id } });
      await waitForStderr(worker, /waiting for an orchestrator at /);
      return worker;
    }),
  );
  for (const worker of workers) worker.kill("SIGTERM");
  for (const worker of workers) {
    const { code } = await withTimeout(worker.exited, 15_000, "the worker to exit on SIGTERM");
    assert.equal(code, 0, worker.stderrText);
    const last = worker.stderrText
      .split("\n")
      .filter((line) => /^\S+ \[tasker\] \w+ +tasker_(worker::connection: worker connection closed|core::node: stopped)/.test(line))
      .map((line) => line.replace(/^\S+ \[tasker\] \w+ +[\w:]+: /, "").split(" worker_id=")[0]);
    assert.deepEqual(last, ["worker connection closed", "stopped"], worker.stderrText.slice(-2000));
  }
});
