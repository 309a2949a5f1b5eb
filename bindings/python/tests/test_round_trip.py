"""Steps served end to end through the real orchestrator: outputs, the Step
attributes, class handlers and async handlers."""

from __future__ import annotations

import asyncio
import collections
import datetime
import threading
import types
import uuid
from decimal import Decimal

from conftest import run_batch, step

NESTED = {
    "text": "naïve café ☃ 😀 日本語 \u0000 \"quoted\" \\ back",
    "numbers": [0, -1, 2**53 + 1, -(2**63), 2**64 - 1, 1.5, -0.25, 1e300],
    "flags": [True, False, None],
    "deep": {"a": [{"b": [[{"c": "d"}]]}], "empty_list": [], "empty_dict": {}},
    "clé-ü": {"ключ": "значение"},
}


def test_any_mapping_or_sequence_is_an_object_or_an_array_as_the_type_hints_say(
    dispatch, make_worker
):
    # `StepOutput` admits any Mapping[str, object] and Sequence; these passed
    # mypy and pyright and then failed their step every time.
    outputs = {
        "range": (range(3), [0, 1, 2]),
        "deque": (collections.deque([1, "two"]), [1, "two"]),
        "userlist": (collections.UserList([{"a": 1}]), [{"a": 1}]),
        "userdict": (collections.UserDict({"k": range(2)}), {"k": [0, 1]}),
        "mappingproxy": (types.MappingProxyType({"n": {"m": None}}), {"n": {"m": None}}),
        "chainmap": (collections.ChainMap({"a": 1}, {"a": 2, "b": 3}), {"a": 1, "b": 3}),
        # A Sequence of its own kind, a character each: a string, not an
        # array nested without end.
        "userstring": (collections.UserString("hé"), "hé"),
    }

    def register(worker):
        for name, (value, _) in outputs.items():
            worker.register(name, lambda step, value=value: value)

    names = list(outputs)
    results = run_batch(dispatch, make_worker, [step(i, n) for i, n in enumerate(names)], register)
    for i, name in enumerate(names):
        assert results[i]["status"] == "completed", (name, results[i])
        assert results[i]["output"] == outputs[name][1], name


def test_output_round_trip_nested_json_and_unicode(dispatch, make_worker):
    def register(worker):
        @worker.handler("echo")
        def echo(step):
            return {
                "task_context": step.task_context,
                "handler_config": step.handler_config,
                "previous_results": step.previous_results,
                "tuple_becomes_list": (1, "two"),
                "int_keys_become_strings": {1: "one"},
            }

    results = run_batch(
        dispatch,
        make_worker,
        [
            step(
                1,
                "echo",
                task_context=NESTED,
                handler_config={"mode": "ünïcode"},
                previous_results={"validate": {"valid": True, "list": [1, [2, [3]]]}},
            )
        ],
        register,
    )
    result = results[1]
    assert result["status"] == "completed", result
    assert result["output"] == {
        "task_context": NESTED,
        "handler_config": {"mode": "ünïcode"},
        "previous_results": {"validate": {"valid": True, "list": [1, [2, [3]]]}},
        "tuple_becomes_list": [1, "two"],
        "int_keys_become_strings": {"1": "one"},
    }
    assert result["metadata"]["retryable"] is False
    assert result["metadata"]["worker_id"].startswith("python-")


class BusinessDay(datetime.date):
    """A subclass: encoded as its base."""


def test_dates_decimals_and_uuids_are_sent_as_strings(dispatch, make_worker):
    """Issue 18 #8: aware datetimes keep their offset (ISO 8601), dates are
    ISO 8601, Decimals keep every digit, UUIDs are canonical; inside dicts,
    lists and tuples too."""
    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    output = {
        "at": datetime.datetime(2025, 1, 23, 10, 0, 0, 123456, tzinfo=plus_two),
        "utc": datetime.datetime(2025, 1, 23, 8, 0, tzinfo=datetime.timezone.utc),
        "on": datetime.date(2025, 1, 23),
        "business_day": BusinessDay(2025, 1, 24),
        "amount": Decimal("12.50"),
        "precise": Decimal("123456789012345678901234567890.123456789"),
        "scientific": Decimal("1E+3"),
        "negative": Decimal("-0.000001"),
        "id": ident,
        "nested": [{"when": datetime.date(2024, 2, 29), "ids": (ident, uuid.UUID(int=0))}],
    }

    def register(worker):
        worker.register("typed", lambda step: output)

    results = run_batch(dispatch, make_worker, [step(1, "typed")], register)
    assert results[1]["status"] == "completed", results[1]
    assert results[1]["output"] == {
        "at": "2025-01-23T10:00:00.123456+02:00",
        "utc": "2025-01-23T08:00:00+00:00",
        "on": "2025-01-23",
        "business_day": "2025-01-24",
        "amount": "12.50",
        "precise": "123456789012345678901234567890.123456789",
        "scientific": "1E+3",
        "negative": "-0.000001",
        "id": "12345678-1234-5678-1234-567812345678",
        "nested": [
            {
                "when": "2024-02-29",
                "ids": ["12345678-1234-5678-1234-567812345678", "00000000-0000-0000-0000-000000000000"],
            }
        ],
    }
    # Read back with the standard library, the values are the same.
    back = results[1]["output"]
    assert datetime.datetime.fromisoformat(back["at"]) == output["at"]
    assert Decimal(back["precise"]) == output["precise"]
    assert uuid.UUID(back["id"]) == ident


def test_step_exposes_request_fields(dispatch, make_worker):
    seen = {}

    def register(worker):
        @worker.handler("inspect")
        def inspect_step(step):
            seen["step"] = step
            # The same object on every access: converted once.
            assert step.task_context is step.task_context
            return None

    created = "2025-01-23T10:00:00.123Z"
    results = run_batch(
        dispatch,
        make_worker,
        [
            step(
                7,
                "inspect",
                task_id=42,
                step_name="check",
                task_context={"amount": 42.5},
                metadata={"attempt": 2, "retry_limit": 3, "timeout_ms": 4500, "created_at": created},
            )
        ],
        register,
    )
    assert results[7]["status"] == "completed"
    assert results[7]["output"] is None
    assert results[7]["metadata"]["attempt"] == 2
    s = seen["step"]
    assert (s.step_id, s.task_id, s.step_name, s.handler_class) == (7, 42, "check", "inspect")
    assert (s.attempt, s.retry_limit, s.timeout_ms, s.timeout) == (2, 3, 4500, 4.5)
    assert s.task_context == {"amount": 42.5}
    assert s.handler_config == {} and s.previous_results == {}
    assert s.created_at == datetime.datetime(2025, 1, 23, 10, 0, 0, 123000, tzinfo=datetime.timezone.utc)
    assert "step_id=7" in repr(s)


def test_class_handlers(dispatch, make_worker):
    class Doubler:
        def __init__(self, factor=2):
            self.factor = factor

        def call(self, step):
            return step.task_context["n"] * self.factor

    def register(worker):
        worker.register("double", Doubler())
        worker.register("triple", Doubler(3))

        @worker.handler("by_class")
        class ByClass:
            def call(self, step):
                return "instantiated"

        worker.register("class_object", Doubler)

    results = run_batch(
        dispatch,
        make_worker,
        [
            step(1, "double", task_context={"n": 21}),
            step(2, "triple", task_context={"n": 5}),
            step(3, "by_class"),
            step(4, "class_object", task_context={"n": 1}),
        ],
        register,
    )
    assert {i: r["output"] for i, r in results.items()} == {1: 42, 2: 15, 3: "instantiated", 4: 2}


def test_async_handlers_run_concurrently_on_one_loop(dispatch, make_worker):
    n = 8
    state = {"running": 0, "peak": 0, "loops": set(), "threads": set()}
    everyone_in = None

    def register(worker):
        @worker.handler("gather")
        async def gather(step):
            nonlocal everyone_in
            if everyone_in is None:
                everyone_in = asyncio.Event()
            state["loops"].add(id(asyncio.get_running_loop()))
            state["threads"].add(threading.current_thread().name)
            state["running"] += 1
            state["peak"] = max(state["peak"], state["running"])
            if state["running"] == n:
                everyone_in.set()
            # Only returns once all n run at the same time: proves they are
            # concurrent (a sequential runner would time out here).
            await asyncio.wait_for(everyone_in.wait(), timeout=10)
            state["running"] -= 1
            return {"n": step.task_context["i"]}

        class AsyncClass:
            async def call(self, step):
                await asyncio.sleep(0)
                raise ValueError("async failure")

        worker.register("async_fail", AsyncClass())

        @worker.handler("sync")
        def sync(step):
            return threading.current_thread().name

    steps = [step(i, "gather", task_context={"i": i}) for i in range(n)]
    steps += [step(100, "async_fail"), step(101, "sync")]
    results = run_batch(dispatch, make_worker, steps, register, capacity=n + 2)
    for i in range(n):
        assert results[i]["status"] == "completed", results[i]
        assert results[i]["output"] == {"n": i}
    assert state["peak"] == n
    assert len(state["loops"]) == 1 and state["threads"] == {"tasker-core-asyncio"}
    failed = results[100]
    assert failed["status"] == "failed"
    assert failed["error"]["error_type"] == "ValueError"
    assert failed["error"]["message"] == "async failure"
    assert "in call" in failed["error"]["backtrace"][0]
    assert results[101]["output"].startswith("tasker-core-worker-")
