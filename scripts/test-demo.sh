#!/usr/bin/env bash
# Runs the demo (scripts/demo.sh) with real workers in Rust, Python, Ruby and
# Node, twice: with `tasker run`, and with `tasker serve` and the order
# submitted through the Python SDK's Client (demo.sh --serve). Checks each
# JSON report: every step completed, each language ran its steps, the
# payment step was retried once, and the join step used both branches'
# outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
report="$(mktemp)"
served="$(mktemp)"
trap 'rm -f "$report" "$served"' EXIT
./scripts/demo.sh --json >"$report"
./scripts/demo.sh --serve --json >"$served"
for file in "$report" "$served"; do
python3 - "$file" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
steps = {s["name"]: s for s in report["steps"]}
problems = []

def check(ok, what):
    if not ok:
        problems.append(what)

check(report["status"] == "complete", f"task status {report['status']!r}")
check(all(s["outcome"] == "completed" for s in steps.values()), "a step did not complete")
languages = {
    "validate_order": "python-",
    "reserve_inventory": "rust-",
    "charge_payment": "ruby-",
    "ship_order": "node-",
    "send_confirmation": "python-",
}
for name, prefix in languages.items():
    worker = steps[name].get("worker_id") or ""
    check(worker.startswith(prefix), f"{name} ran on {worker!r}, expected a {prefix}* worker")
check(steps["charge_payment"]["attempts"] == 2, "charge_payment was not retried exactly once")
check(all(steps[n]["attempts"] == 1 for n in languages if n != "charge_payment"), "an unexpected retry")
ship = steps["ship_order"]["output"]
check(ship["reservation_id"] == steps["reserve_inventory"]["output"]["reservation_id"],
      "ship_order did not use the reservation")
check(ship["charge_id"] == steps["charge_payment"]["output"]["charge_id"],
      "ship_order did not use the charge")
check(steps["charge_payment"]["output"]["amount"] == steps["validate_order"]["output"]["total"],
      "charge_payment did not charge the validated total")
check(steps["send_confirmation"]["output"]["tracking"] == ship["tracking_number"],
      "send_confirmation did not use the tracking number")
if problems:
    print("demo report check FAILED:\n  " + "\n  ".join(problems), file=sys.stderr)
    print(json.dumps(report, indent=2), file=sys.stderr)
    sys.exit(1)
print("demo report: complete across rust, python, ruby and node, 1 retry, join used both branches")
PY
done
