"use strict";

// The cross-language conformance scenario (protocol/conformance/
// scenario.json, read here at run time): a conformance worker written with
// this SDK (fixtures/conformance-worker.js) serves every case not skipped
// for Node, sent by the real orchestrator (`tasker dispatch`), and each
// final result is compared with the case's `expect`. The Rust, Python and
// Ruby suites run the same file, so a rule that drifts in one SDK fails.

const { test, after } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");

const { REPO, freeEndpoint, dispatch, byStepId, nodeProcess, waitForLine, withTimeout, killAll } = require("./helpers.js");

after(killAll);

const LANGUAGE = "node";
const SCENARIO = path.join(REPO, "protocol", "conformance", "scenario.json");

/** Nesting of arrays and objects: `7` is 0 deep, `[7]` 1. */
function depth(value) {
  if (value === null || typeof value !== "object") return 0;
  const items = Array.isArray(value) ? value : Object.values(value);
  return 1 + items.reduce((deepest, item) => Math.max(deepest, depth(item)), 0);
}

/** How `result` differs from `expect` (the fields the scenario's "about" describes). */
function mismatches(result, expect) {
  const wrong = [];
  if (result === undefined) return ["no result"];
  const show = (v) => JSON.stringify(v)?.slice(0, 200);
  if (result.status !== expect.status) wrong.push(`status ${result.status} (expected ${expect.status})`);
  if ("output" in expect) {
    try {
      assert.deepStrictEqual(result.output, expect.output);
    } catch {
      wrong.push(`output ${show(result.output)} (expected ${show(expect.output)})`);
    }
  }
  if ("output_depth" in expect && depth(result.output) !== expect.output_depth) {
    wrong.push(`output depth ${depth(result.output)} (expected ${expect.output_depth})`);
  }
  if ("output_bytes" in expect) {
    const bytes = typeof result.output === "string" ? Buffer.byteLength(result.output) : null;
    if (bytes !== expect.output_bytes) wrong.push(`output of ${bytes} bytes (expected ${expect.output_bytes})`);
  }
  const error = result.error ?? null;
  if ("error_type" in expect) {
    const kind = typeof expect.error_type === "string" ? expect.error_type : expect.error_type[LANGUAGE];
    if (error?.error_type !== kind) wrong.push(`error_type ${error?.error_type} (expected ${kind})`);
  }
  if ("retryable" in expect && result.metadata.retryable !== expect.retryable) {
    wrong.push(`retryable ${result.metadata.retryable} (expected ${expect.retryable})`);
  }
  if ("message_contains" in expect && !(error?.message ?? "").includes(expect.message_contains)) {
    wrong.push(`message ${show(error?.message)} lacks ${show(expect.message_contains)}`);
  }
  return wrong;
}

test("the Node worker gives the results the conformance scenario expects", async (t) => {
  const scenario = JSON.parse(fs.readFileSync(SCENARIO, "utf8"));
  const cases = scenario.cases.filter((c) => !(c.skip ?? []).includes(LANGUAGE));
  assert.ok(cases.length >= 10, `the scenario has its cases (${cases.length})`);

  // The scenario's config, for the worker and the orchestrator alike.
  const env = { TASKER_LINGER_MS: "100", TASKER_RECONNECT_INITIAL_MS: "20" };
  for (const [key, value] of Object.entries(scenario.config)) env[`TASKER_${key.toUpperCase()}`] = String(value);

  const endpoint = await freeEndpoint();
  const worker = nodeProcess("conformance-worker.js", { endpoint, env: { ...env, WORKER_ID: "conformance" } });
  await waitForLine(worker, /^running$/);
  const steps = cases.map((c, i) => ({ ...c.step, step_id: i + 1 }));
  const results = byStepId(await dispatch(endpoint, { steps }, { env }).result);
  worker.kill("SIGTERM");
  const { code } = await withTimeout(worker.exited, 15_000, "the conformance worker to exit");
  assert.equal(code, 0, worker.stderrText);

  const failed = [];
  for (const [i, c] of cases.entries()) {
    await t.test(c.name, () => {
      const result = results.get(i + 1);
      const wrong = mismatches(result, c.expect);
      if (wrong.length > 0) failed.push(c.name);
      assert.deepEqual(wrong, [], `case "${c.name}": ${wrong.join("; ")}\nresult: ${JSON.stringify(result)?.slice(0, 500)}`);
    });
  }
  assert.deepEqual(failed, [], `conformance cases failed: ${failed.join(", ")}`);
});
