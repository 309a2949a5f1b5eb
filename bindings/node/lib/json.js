"use strict";

// What a handler may return: JSON data. `JSON.stringify` quietly turns much
// else into something else: a function or a symbol into nothing (or null),
// a Map or a Set into {}, NaN into null, a class instance into its own
// fields. `jsonProblem` finds the first value that is not JSON data and says
// where it is (`output.items[2].callback is a function`), so that the step
// fails rather than completing with an output the handler did not mean.
//
// JSON data is: null, booleans, strings, finite numbers, arrays and plain
// objects of JSON data, and any object with a `toJSON()` method (a Date, a
// Buffer, a decimal or date-time class of a library), whose result must be
// JSON data in turn. `undefined` is allowed where it has an unambiguous JSON
// reading: as the whole output (null) and as an object property's value
// (the property is left out, as `JSON.stringify` and TypeScript's optional
// properties read it).

const { types } = require("node:util");

/**
 * Deepest nesting walked. Nesting is limited by the orchestrator's
 * `max_json_depth` (100), which the runtime checks with its own message;
 * the walk only stops here so that no output can exhaust the stack.
 */
const MAX_WALK_DEPTH = 1000;

const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

/** Said of a string that is not Unicode text (`"🎉".slice(0, 1)`). */
const LONE_SURROGATE = "is a string with a lone UTF-16 surrogate (half of a character, e.g. \"🎉\".slice(0, 1)), which is not Unicode text";

/** `.key`, or `["some key"]` when the key is not an identifier: a path's segment. */
function member(key) {
  return IDENTIFIER.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
}

/** An object literal's kind: its prototype is Object.prototype (of any realm) or null. */
function isPlainObject(value) {
  const proto = Object.getPrototypeOf(value);
  if (proto === null || proto === Object.prototype) return true;
  // An object of another realm (a vm context): that realm's Object.prototype.
  return Object.getPrototypeOf(proto) === null && typeof proto.constructor === "function" && proto.constructor.name === "Object";
}

/** Why an object that is neither an array nor a plain object is refused. */
function notPlain(value) {
  if (types.isMap(value)) return "is a Map, which JSON has no form for: convert it, e.g. Object.fromEntries(map)";
  if (types.isSet(value)) return "is a Set, which JSON has no form for: convert it, e.g. [...set]";
  if (types.isPromise(value)) return "is a Promise: await it before returning";
  const name = (typeof value.constructor === "function" && value.constructor.name) || Object.prototype.toString.call(value).slice(8, -1);
  if (types.isTypedArray(value)) return `is a ${name}, which JSON has no form for: convert it, e.g. Array.from(array)`;
  if (types.isBoxedPrimitive(value)) return `is a ${name} object, not a primitive: use the value itself`;
  return `is an instance of ${name}, not a plain object or array: convert it to plain data, or give its class a toJSON() method`;
}

/**
 * The first place where `value` is not JSON data, as a sentence starting
 * with its path from `root` (`output.items[2] is a function`); null when it
 * is all JSON data. Getters and toJSON() methods are called, as
 * `JSON.stringify` calls them; what they throw propagates.
 */
function jsonProblem(value, root = "output", { text = false } = {}) {
  if (value === undefined) return null; // the whole output: null
  const found = check(value, "", [], true, text);
  if (found === null) return null;
  // Segments were added while unwinding, innermost first.
  const segments = found.segments.reverse();
  const path = root + segments.join("");
  if (found.cycleAt !== undefined) {
    const target = root + segments.slice(0, found.cycleAt).join("");
    return `${path} refers back to ${target}: a circular structure, which JSON has no form for`;
  }
  return `${path} ${found.what}`;
}

/** A problem found at the value being checked; its path is added on the way out. */
function problem(what, cycleAt) {
  return { what, cycleAt, segments: [] };
}

/**
 * Checks `value`, reached under `key` (what `toJSON(key)` receives), inside
 * the arrays and objects of `stack` (outermost first). `toJson`: whether a
 * toJSON() method applies (not to the result of one, as in
 * `JSON.stringify`). Paths are only built for a problem, so a valid output
 * costs a walk and no strings.
 */
function check(value, key, stack, toJson, text) {
  switch (typeof value) {
    case "string":
      return text && !value.isWellFormed() ? problem(LONE_SURROGATE) : null;
    case "boolean":
      return null;
    case "number":
      return Number.isFinite(value) ? null : problem(`is ${value}, which JSON has no form for (JSON.stringify would write null)`);
    case "bigint":
      return problem(`is a BigInt (${value}n), which JSON has no form for: convert it to a number or a string`);
    case "function":
      return problem(`is a function${value.name && value.name !== key ? ` (${value.name})` : ""}`);
    case "symbol":
      return problem(`is a symbol (${String(value)})`);
    case "undefined":
      return problem("is undefined: use null");
    default:
      break;
  }
  if (value === null) return null;
  if (toJson && typeof value.toJSON === "function") {
    if (types.isDate(value) && Number.isNaN(value.getTime())) {
      return problem("is an invalid Date (JSON.stringify would write null)");
    }
    const replaced = value.toJSON(key);
    // undefined from toJSON() is the method's own choice ("leave me out").
    return replaced === undefined ? null : check(replaced, key, stack, false, text);
  }
  const at = stack.indexOf(value);
  if (at >= 0) return problem(null, at);
  if (stack.length >= MAX_WALK_DEPTH) return null;
  let found = null;
  if (Array.isArray(value)) {
    stack.push(value);
    for (let i = 0; i < value.length; i++) {
      const item = value[i];
      // A hole, or undefined: JSON.stringify would write null in its place.
      found = item === undefined ? problem("is undefined (JSON.stringify would write null): use null") : check(item, String(i), stack, true, text);
      if (found !== null) {
        found.segments.push(`[${i}]`);
        break;
      }
    }
  } else if (isPlainObject(value)) {
    stack.push(value);
    const keys = Object.keys(value);
    for (let i = 0; i < keys.length; i++) {
      const name = keys[i];
      const item = value[name];
      if (item === undefined) continue; // left out, as JSON.stringify does
      if (text && !name.isWellFormed()) {
        found = problem(`has a key ${JSON.stringify(name)} with a lone UTF-16 surrogate, which is not Unicode text`);
        break;
      }
      found = check(item, name, stack, true, text);
      if (found !== null) {
        found.segments.push(member(name));
        break;
      }
    }
  } else {
    return problem(notPlain(value));
  }
  stack.pop();
  return found;
}

module.exports = { jsonProblem };
