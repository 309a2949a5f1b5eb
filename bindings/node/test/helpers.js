"use strict";

// Shared test helpers: the real orchestrator (`tasker dispatch`) and real
// worker processes, each wait bounded by a timeout.

const { spawn } = require("node:child_process");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const fs = require("node:fs");

const PACKAGE_DIR = path.resolve(__dirname, "..");
const REPO = path.resolve(PACKAGE_DIR, "..", "..");
const TASKER = process.env.TASKER_BIN || path.join(REPO, "target", "debug", "tasker");
const FIXTURES = path.join(__dirname, "fixtures");

/** A free loopback TCP port. */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function freeEndpoint() {
  return `tcp://127.0.0.1:${await freePort()}`;
}

/** Rejects after `ms` with a message naming what was awaited. */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const children = new Set();

/** Kills every child still running; call from `after`/`afterEach`. */
function killAll() {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  children.clear();
}

/** Spawns a process and tracks its output and exit. */
function track(child) {
  children.add(child);
  child.stdoutText = "";
  child.stderrText = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  child.stdout.on("data", (d) => {
    child.stdoutText += d;
  });
  child.stderr.on("data", (d) => {
    child.stderrText += d;
  });
  child.exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  return child;
}

/**
 * Runs `tasker dispatch` on `endpoint` with `batch` (an object, or JSON
 * text) on stdin. Returns the child; `child.result` resolves to the parsed
 * response (its text with `raw`).
 */
function dispatch(endpoint, batch, { workers = 1, wait = 20, env = {}, timeoutMs = 60_000, raw = false } = {}) {
  const child = track(
    spawn(TASKER, ["dispatch", "-", "--workers", String(workers), "--wait", String(wait), "--endpoint", endpoint], {
      cwd: os.tmpdir(), // no ./config/zeromq.yaml: built-in defaults + env
      env: { ...process.env, RUST_LOG: "warn", ...env },
      stdio: ["pipe", "pipe", "pipe"],
    }),
  );
  child.stdin.end(typeof batch === "string" ? batch : JSON.stringify(batch));
  child.result = withTimeout(child.exited, timeoutMs, "tasker dispatch").then(({ code, signal }) => {
    if (code !== 0) {
      throw new Error(`tasker dispatch exited ${code ?? signal}: ${child.stderrText}`);
    }
    return raw ? child.stdoutText : JSON.parse(child.stdoutText);
  });
  return child;
}

/** Results of a dispatch response, by step id. */
function byStepId(response) {
  const map = new Map();
  for (const result of response.results) map.set(result.step_id, result);
  return map;
}

/** Starts a Node process running `script` (a fixture name or a path). */
function nodeProcess(script, { endpoint, env = {}, args = [], cwd = PACKAGE_DIR } = {}) {
  const file = path.isAbsolute(script) ? script : path.join(FIXTURES, script);
  return track(
    spawn(process.execPath, [file, ...args], {
      cwd,
      env: { ...process.env, TASKER_ENDPOINT: endpoint, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
}

/** Resolves when `child`'s stdout has a line matching `pattern`. */
function waitForLine(child, pattern, ms = 20_000) {
  const found = () => child.stdoutText.split("\n").find((line) => pattern.test(line));
  return withTimeout(
    new Promise((resolve, reject) => {
      const check = () => {
        const line = found();
        if (line !== undefined) {
          child.stdout.off("data", check);
          resolve(line);
        }
      };
      child.stdout.on("data", check);
      child.once("exit", () => {
        const line = found();
        if (line !== undefined) resolve(line);
        else reject(new Error(`process exited before printing ${pattern}: ${child.stderrText}`));
      });
      check();
    }),
    ms,
    `a line matching ${pattern}`,
  );
}

function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), "tasker-node-test-"));
}

/**
 * Starts `tasker serve` (SQLite in `dir`, a free API port, the workflows of
 * `dir/workflows`) and resolves once it printed its address line:
 * `{ child, url, endpoint }`. Its log goes to `child.stderrText`.
 */
async function startServe(dir, { env = {}, endpoint } = {}) {
  endpoint = endpoint ?? (await freeEndpoint());
  const child = track(
    spawn(
      TASKER,
      [
        "serve",
        "--store",
        `sqlite:${path.join(dir, "t.db")}`,
        "--api-listen",
        "127.0.0.1:0",
        "--workflows-dir",
        path.join(dir, "workflows"),
        "--endpoint",
        endpoint,
      ],
      { cwd: dir, env: { ...process.env, TASKER_ENV: "test", RUST_LOG: "info", ...env }, stdio: ["ignore", "pipe", "pipe"] },
    ),
  );
  // Up to the space after the URL: the whole address, even before the line ends.
  const line = await waitForLine(child, /^tasker serve: api http:\/\/\S+ /);
  const url = line.split(/\s+/)[3];
  if (!/^http:\/\/127\.0\.0\.1:\d+$/.test(url)) throw new Error(`unexpected address line: ${line}`);
  return { child, url, endpoint };
}

/** Starts a Rust worker (`tasker worker`) serving `handlers` on `endpoint`. */
function startRustWorker(endpoint, handlers = "echo,sleep,fail_permanent") {
  return track(
    spawn(TASKER, ["worker", "--endpoint", endpoint, "--handlers", handlers], {
      cwd: os.tmpdir(),
      env: { ...process.env, RUST_LOG: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    }),
  );
}

/** Stops `child`: SIGTERM, then SIGKILL after `graceMs`; resolves once it exited. */
async function stopProcess(child, graceMs = 5_000) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  try {
    await child.exited;
  } finally {
    clearTimeout(timer);
  }
}

// Worker options for quick exits in tests: after `tasker dispatch` has gone,
// a stopping worker's goodbye waits for a reconnection and the socket's
// linger.
const QUICK = { lingerMs: 100, reconnectInitialMs: 20 };

/** Runs `worker` for `batch`; returns the results by step id, worker stopped. */
async function serveBatch(worker, batch) {
  const running = worker.run();
  try {
    return byStepId(await dispatch(worker.config.endpoint, batch).result);
  } finally {
    await withTimeout(worker.stop(), 15_000, "worker.stop()");
    await withTimeout(running, 15_000, "worker.run()");
  }
}

module.exports = {
  QUICK,
  serveBatch,
  PACKAGE_DIR,
  REPO,
  TASKER,
  freeEndpoint,
  withTimeout,
  killAll,
  track,
  dispatch,
  byStepId,
  nodeProcess,
  waitForLine,
  tempDir,
  startServe,
  startRustWorker,
  stopProcess,
};
