"use strict";

// The benchmark's tasker-core worker: one no-op handler. Endpoint and
// capacity come from TASKER_ENDPOINT / TASKER_WORKER_CAPACITY; SIGTERM drains
// and the process exits by itself.
const { Worker } = require("..");

const worker = new Worker({ logLevel: "warn" });
worker.handle("noop", () => null);
worker.run();
