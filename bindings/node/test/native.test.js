"use strict";

// The contract between the native module and the JavaScript layer, checked
// directly (no orchestrator): the config keys of the TypeScript type are
// Rust's, the step rows' field order is read from Rust, and the error kinds
// come from Rust and are not spelt in lib/.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const ts = require("typescript");

const native = require("../native.js");
const { Step } = require("../lib/worker.js");
const { errorTypes, loadConfig } = require("tasker-core");
const { PACKAGE_DIR, REPO } = require("./helpers.js");

/** The property names of `interface name` in a declaration file, in order. */
function interfaceMembers(file, name) {
  const source = ts.createSourceFile(file, fs.readFileSync(file, "utf8"), ts.ScriptTarget.Latest);
  let members;
  source.forEachChild((node) => {
    if (ts.isInterfaceDeclaration(node) && node.name.text === name) {
      members = node.members.map((m) => m.name.getText(source));
    }
  });
  assert.ok(members, `no interface ${name} in ${file}`);
  return members;
}

const snakeCase = (name) => name.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

test("the TypeScript Config type lists exactly Rust's config keys (tasker_config::KEYS), in order", () => {
  const declared = interfaceMembers(path.join(PACKAGE_DIR, "lib", "index.d.ts"), "Config");
  assert.deepEqual(declared.map(snakeCase), native.configKeys());
  // And a resolved config has exactly those keys.
  assert.deepEqual(Object.keys(loadConfig()), declared);
});

test("a Step has every field of the native row, each taken from the position Rust names", () => {
  const fields = native.stepFields();
  // The generated type declares the same fields, in the same order.
  assert.deepEqual(interfaceMembers(path.join(PACKAGE_DIR, "native.d.ts"), "Step"), fields);
  const row = fields.map((name) => `value of ${name}`);
  const step = new Step(row);
  assert.deepEqual(Object.keys(step).sort(), [...fields].sort());
  for (const [i, name] of fields.entries()) assert.equal(step[name], row[i], name);
});

test("errorTypes holds every error kind of tasker_protocol::error_types, and lib/ spells none of them", () => {
  // The constants of the Rust module, read from its source.
  const source = fs.readFileSync(path.join(REPO, "crates", "tasker-protocol", "src", "messages.rs"), "utf8");
  const module = source.slice(source.indexOf("pub mod error_types {"));
  const body = module.slice(0, module.indexOf("\n}"));
  const rust = Object.fromEntries([...body.matchAll(/pub const (\w+): &str = "(\w+)";/g)].map((m) => [m[1], m[2]]));
  assert.ok(Object.keys(rust).length >= 10, `constants read: ${JSON.stringify(rust)}`);
  const nodeOnly = { THROWN_VALUE: "ThrownValue", UNSUPPORTED_STEP_ID: "UnsupportedStepId" };
  assert.deepEqual({ ...errorTypes }, { ...rust, ...nodeOnly });
  assert.ok(Object.isFrozen(errorTypes));

  const lib = path.join(PACKAGE_DIR, "lib");
  for (const file of fs.readdirSync(lib).filter((f) => f.endsWith(".js"))) {
    const text = fs.readFileSync(path.join(lib, file), "utf8");
    for (const value of Object.values(errorTypes)) {
      assert.doesNotMatch(text, new RegExp(`["'\`]${value}["'\`]`), `lib/${file} spells ${value}; use errorTypes`);
    }
  }
});

test("the outcome rows this layer writes are read in the order Rust names", () => {
  // lib/worker.js refuses to load otherwise; this names the order for a reader.
  assert.deepEqual(native.outcomeFields(), ["stepId", "attempt", "elapsedMs", "output", "error"]);
});
