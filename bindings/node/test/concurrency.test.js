"use strict";

// Per-handler concurrency (`worker.handle(name, fn, { concurrency })`): the
// limit is announced to the real orchestrator (`tasker dispatch`
// subprocess), which never has more of that handler's steps out at the
// worker, while the other handlers use the rest of its capacity; bad
// values are refused at registration.

const { test, after } = require("node:test");
const assert = require("node:assert/strict");

const { Worker, ConfigError } = require("tasker-core");
const { QUICK, serveBatch: serve, freeEndpoint, killAll } = require("./helpers.js");

after(killAll);


/** How many run at once, and the most that ever did. */
function gauge() {
  const g = { now: 0, most: 0 };
  g.run = async (ms) => {
    g.now += 1;
    g.most = Math.max(g.most, g.now);
    await new Promise((resolve) => setTimeout(resolve, ms));
    g.now -= 1;
  };
  return g;
}


test("a handler limited to 2 never runs more than 2 at once; the other handler gets the rest", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), capacity: 8, logger: null });
  const limited = gauge();
  const free = gauge();
  worker.handle(
    "rate_limited",
    async () => {
      await limited.run(100);
      return "limited";
    },
    { concurrency: 2 },
  );
  worker.handle("free", async () => {
    await free.run(300);
    return "free";
  });
  const steps = [];
  for (let i = 0; i < 16; i++) steps.push({ step_id: i, handler_class: "rate_limited" });
  for (let i = 0; i < 24; i++) steps.push({ step_id: 100 + i, handler_class: "free" });
  const results = await serve(worker, { steps });
  assert.equal(results.size, 40);
  for (const result of results.values()) assert.equal(result.status, "completed");
  assert.equal(limited.most, 2, `a handler limited to 2 ran ${limited.most} at once`);
  assert.ok(free.most >= 5 && free.most <= 6, `the unlimited handler ran at most ${free.most} at once`);
});

test("a bad concurrency is a ConfigError naming the handler and the option", async () => {
  const worker = new Worker({ ...QUICK, endpoint: await freeEndpoint(), logger: null });
  for (const bad of [0, -1, 1.5, "2", true, 2 ** 32]) {
    assert.throws(
      () => worker.handle("api", () => null, { concurrency: bad }),
      (error) => error instanceof ConfigError && /handler "api": concurrency/.test(error.message),
      `concurrency ${String(bad)}`,
    );
  }
  assert.throws(() => worker.handle("api", () => null, { concurency: 2 }), /unknown option concurency/);
  assert.throws(() => worker.handle("api", () => null, 2), ConfigError);
  // Nothing was registered by the refused calls.
  await assert.rejects(worker.run(), /no handlers registered/);
});
