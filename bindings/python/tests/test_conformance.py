"""The cross-language conformance scenario (protocol/conformance/
scenario.json) through the Python SDK and the real orchestrator: the
conformance worker (tests/conformance_worker.py, a worker process written
with the SDK) serves every case's step sent by `tasker dispatch`, and each
final result must match the case's `expect`. The Rust, Ruby and Node suites
run the same file, so a rule that drifts in one SDK fails a test.

The file is read when the tests run; every case not skipped for Python is a
test of its own, named after the case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

import conformance_worker
from conftest import ROOT, Dispatch, WorkerProcess
from tasker_core import Worker

LANGUAGE = "python"
SCENARIO_FILE = ROOT / "protocol" / "conformance" / "scenario.json"
WORKER = Path(__file__).resolve().parent / "conformance_worker.py"


def load_scenario() -> Dict[str, Any]:
    with open(SCENARIO_FILE, encoding="utf-8") as f:
        return json.load(f)


SCENARIO = load_scenario()


def skipped(case: Dict[str, Any]) -> bool:
    return LANGUAGE in case.get("skip", [])


def case_param(case: Dict[str, Any]) -> Any:
    marks: List[Any] = []
    if skipped(case):
        marks.append(pytest.mark.skip(reason=f"the scenario skips {LANGUAGE}"))
    return pytest.param(case, id=case["name"], marks=marks)


def env_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def depth(value: Any) -> int:
    """Nesting of lists and dicts: `7` is 0 deep, `[7]` 1."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def mismatches(result: Dict[str, Any], expect: Dict[str, Any]) -> List[str]:
    """The fields of `result` that differ from `expect`, as the scenario's
    `about` defines them."""
    wrong = []
    if result["status"] != expect["status"]:
        wrong.append(f"status {result['status']!r} (expected {expect['status']!r})")
    if "output" in expect and (result.get("output", ...) != expect["output"]):
        wrong.append(f"output {result.get('output', '(none)')!r} (expected {expect['output']!r})")
    if "output_depth" in expect:
        got = depth(result["output"]) if "output" in result else None
        if got != expect["output_depth"]:
            wrong.append(f"output depth {got} (expected {expect['output_depth']})")
    if "output_bytes" in expect:
        output = result.get("output")
        got = len(output.encode()) if isinstance(output, str) else None
        if got != expect["output_bytes"]:
            wrong.append(f"output of {got} bytes (expected {expect['output_bytes']})")
    error = result.get("error") or {}
    if "error_type" in expect:
        kind = expect["error_type"]
        if isinstance(kind, dict):
            kind = kind[LANGUAGE]
        if error.get("error_type") != kind:
            wrong.append(f"error_type {error.get('error_type')!r} (expected {kind!r})")
    if "retryable" in expect:
        got = {result["metadata"]["retryable"], error.get("retryable", result["metadata"]["retryable"])}
        if got != {expect["retryable"]}:
            wrong.append(f"retryable {sorted(got)} (expected {expect['retryable']})")
    if "message_contains" in expect:
        message = error.get("message")
        if message is None or expect["message_contains"] not in message:
            wrong.append(f"message {message!r} lacks {expect['message_contains']!r}")
    return wrong


@pytest.fixture(scope="module")
def results() -> Iterator[Dict[str, Dict[str, Any]]]:
    """Every case not skipped, sent as one batch to one conformance worker
    process; the final results by case name."""
    scenario = load_scenario()
    cases = [case for case in scenario["cases"] if not skipped(case)]
    steps = [{"step_id": i + 1, **case["step"]} for i, case in enumerate(cases)]
    # The orchestrator gets the scenario's config too (max_message_bytes, so
    # that OutputTooLarge is reachable).
    env = {f"TASKER_{key.upper()}": env_value(v) for key, v in scenario["config"].items()}
    run = Dispatch(steps, env=env)
    worker = WorkerProcess(run.endpoint, str(SCENARIO_FILE), script=WORKER)
    try:
        by_id = run.results()
        yield {case["name"]: by_id[i + 1] for i, case in enumerate(cases)}
    finally:
        worker.kill()
        run.kill()


@pytest.mark.parametrize("case", [case_param(case) for case in SCENARIO["cases"]])
def test_case(case: Dict[str, Any], results: Dict[str, Dict[str, Any]]) -> None:
    result = results[case["name"]]
    wrong = mismatches(result, case["expect"])
    assert not wrong, f"conformance case {case['name']!r}: " + "; ".join(wrong)


def test_the_worker_serves_every_handler_the_scenario_describes() -> None:
    worker = Worker(endpoint="tcp://127.0.0.1:6009")
    conformance_worker.register(worker)
    assert worker.handlers == sorted(SCENARIO["handlers"])
    assert len(SCENARIO["cases"]) >= 10, "the scenario has its cases"
