"use strict";

// The benchmark's baseline: a worker written directly with the npm `zeromq`
// package (v6) and JSON, speaking tasker/1.0 (protocol/SPEC.md) itself:
// hello, welcome, heartbeats, step batches, results, unknown_worker,
// reconnect on silence or goodbye, drain and goodbye on SIGTERM/SIGINT.
// It serves the handler `noop` (returns null).
//
//   TASKER_ENDPOINT=tcp://127.0.0.1:5555 TASKER_WORKER_CAPACITY=100 node bench/zeromq-worker.js

const zmq = require("zeromq");

const HEADER = "tasker/1.0";
const endpoint = process.env.TASKER_ENDPOINT || "tcp://127.0.0.1:5555";
const capacity = Number(process.env.TASKER_WORKER_CAPACITY || 8);
const workerId = `zeromq-js-${process.pid}-${Math.random().toString(16).slice(2, 10)}`;
const handlers = { noop: () => null };

let interval = 1000;
let expiry = 3000;
let backoff = 100;
let heardAt = Date.now();
let beatAt = 0;
let stopping = false;
let socket = null;
// The `orchestrator_id` of the last welcome: steps are answered as they
// arrive, so every result answers that orchestrator.
let orchestratorId = null;

function send(message) {
  // Sends are queued by zeromq.js; a full queue throws EAGAIN, which at our
  // capacity-bounded rate does not happen.
  return socket.send([HEADER, JSON.stringify(message)]).catch(() => {});
}

function hello() {
  return send({
    type: "hello",
    worker_id: workerId,
    handlers: Object.keys(handlers),
    capacity,
    in_progress: [],
    language: "node-zeromq",
    pid: process.pid,
  });
}

function run(step) {
  const started = Date.now();
  const handler = handlers[step.handler_class];
  const metadata = { attempt: step.metadata.attempt, worker_id: workerId, retryable: false };
  let result;
  if (handler === undefined) {
    result = {
      step_id: step.step_id,
      status: "failed",
      error: { message: `no handler ${step.handler_class}`, error_type: "UnknownHandler", retryable: false },
    };
  } else {
    try {
      result = { step_id: step.step_id, status: "completed", output: handler(step) ?? null };
    } catch (e) {
      result = {
        step_id: step.step_id,
        status: "failed",
        error: { message: String(e && e.message), error_type: (e && e.name) || "Error", retryable: false },
      };
    }
  }
  metadata.execution_time_ms = Date.now() - started;
  metadata.completed_at = new Date().toISOString();
  result.metadata = metadata;
  return result;
}

function onMessage(body) {
  heardAt = Date.now();
  let message;
  try {
    message = JSON.parse(body.toString());
  } catch {
    return;
  }
  switch (message.type) {
    case "welcome":
      orchestratorId = message.orchestrator_id;
      interval = message.heartbeat_interval_ms;
      expiry = interval * message.liveness;
      backoff = 100;
      break;
    case "step_batch_request":
      if (stopping) {
        send({
          type: "drain",
          returned: message.steps.map((s) => ({
            step_id: s.step_id,
            attempt: s.metadata.attempt,
            orchestrator_id: orchestratorId,
          })),
        });
        break;
      }
      send({
        type: "step_batch_response",
        batch_id: message.batch_id,
        orchestrator_id: orchestratorId,
        protocol_version: "1.0",
        results: message.steps.map(run),
      });
      break;
    case "protocol_error":
      if (message.code === "unknown_worker") hello();
      break;
    case "goodbye":
      heardAt = 0; // reconnect at the next tick
      break;
    default:
      break;
  }
}

async function receive(sock) {
  try {
    for await (const [header, body] of sock) {
      if (header.toString().startsWith("tasker/")) onMessage(body);
    }
  } catch {
    // closed socket: the loop ends
  }
}

function connect() {
  socket = new zmq.Dealer({ linger: 1000 });
  socket.connect(endpoint);
  heardAt = Date.now();
  hello();
  receive(socket);
}

const ticker = setInterval(() => {
  if (Date.now() - heardAt > expiry) {
    socket.linger = 0;
    socket.close();
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
    heardAt = Date.now() + backoff;
    return;
  }
  if (Date.now() - beatAt >= interval) {
    beatAt = Date.now();
    send({ type: "heartbeat" });
  }
}, 50);

async function stop() {
  if (stopping) return;
  stopping = true;
  clearInterval(ticker);
  // Every step is answered as soon as it arrives, so nothing is in hand.
  await send({ type: "drain", returned: [] });
  await send({ type: "goodbye", reason: "worker stopping" });
  socket.close();
}

process.on("SIGTERM", stop);
process.on("SIGINT", stop);
connect();
