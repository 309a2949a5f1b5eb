"""Middleware (Worker.use) around sync and async handlers, end to end through
the real orchestrator: order, output, exceptions, short-circuit, the thread
they run on, and misuse."""

from __future__ import annotations

import asyncio
import threading

import pytest

from conftest import run_batch, step
from tasker_core import ConfigError, PermanentError, RetryableError, WorkerError


class Denied(Exception):
    """A plain exception: its class name is the error_type."""


def test_two_middleware_run_in_order_around_a_sync_handler_on_its_thread(dispatch, make_worker):
    events = []

    def register(worker):
        @worker.use
        def outer(step, call_next):
            events.append(("outer in", threading.current_thread().name))
            output = call_next(step)
            events.append(("outer out", threading.current_thread().name))
            return {"outer": output}

        @worker.use
        def inner(step, call_next):
            events.append(("inner in", threading.current_thread().name))
            output = call_next(step)
            events.append(("inner out", threading.current_thread().name))
            return {"inner": output, "step_id": step.step_id}

        @worker.handler("double")
        def double(step):
            events.append(("handler", threading.current_thread().name))
            return step.task_context["n"] * 2

    results = run_batch(dispatch, make_worker, [step(1, "double", task_context={"n": 21})], register)
    assert results[1]["status"] == "completed", results[1]
    # What the outermost middleware returned is the output at the orchestrator.
    assert results[1]["output"] == {"outer": {"inner": 42, "step_id": 1}}
    assert [event for event, _ in events] == [
        "outer in",
        "inner in",
        "handler",
        "inner out",
        "outer out",
    ]
    threads = {thread for _, thread in events}
    assert len(threads) == 1 and threads.pop().startswith("tasker-core-worker-"), events


def test_middleware_exceptions_fail_the_step_as_handler_exceptions_do(dispatch, make_worker):
    seen = []

    def register(worker):
        @worker.use
        def observe(step, call_next):
            try:
                return call_next(step)
            except Exception as exc:
                seen.append((step.step_id, type(exc).__name__))
                raise

        @worker.use
        def guard(step, call_next):
            if step.task_context.get("deny") == "typed":
                raise PermanentError("denied by policy", error_type="PolicyDenied")
            if step.task_context.get("deny") == "plain":
                raise Denied("not allowed")
            return call_next(step)

        @worker.handler("work")
        def work(step):
            if step.task_context.get("fail"):
                raise RetryableError("gateway busy")
            return "done"

    results = run_batch(
        dispatch,
        make_worker,
        [
            step(1, "work", task_context={"deny": "typed"}),
            step(2, "work", task_context={"deny": "plain"}),
            step(3, "work", task_context={"fail": True}),
            step(4, "work", task_context={}),
        ],
        register,
    )
    expected = {
        1: ("PolicyDenied", "denied by policy", False),
        2: ("Denied", "not allowed", False),
        3: ("RetryableError", "gateway busy", True),
    }
    for step_id, (error_type, message, retryable) in expected.items():
        result = results[step_id]
        assert result["status"] == "failed", result
        error = result["error"]
        assert (error["error_type"], error["message"], error["retryable"]) == (
            error_type,
            message,
            retryable,
        )
    # The backtrace names the middleware's frame, not the worker's.
    assert any("in guard" in line for line in results[1]["error"]["backtrace"])
    assert results[4]["output"] == "done"
    # An exception goes out through the middleware around it.
    assert sorted(seen) == [(1, "PermanentError"), (2, "Denied"), (3, "RetryableError")]


def test_a_middleware_that_does_not_call_next_skips_the_handler(dispatch, make_worker):
    called = []

    def register(worker):
        def cache(step, call_next):
            if step.task_context.get("cached"):
                return {"from": "cache"}
            return call_next(step)

        worker.use(cache)
        worker.register("lookup", lambda step: called.append(step.step_id) or {"from": "handler"})

    results = run_batch(
        dispatch,
        make_worker,
        [step(1, "lookup", task_context={"cached": True}), step(2, "lookup", task_context={})],
        register,
    )
    assert results[1]["output"] == {"from": "cache"}
    assert results[2]["output"] == {"from": "handler"}
    assert called == [2], "the short-circuited step never reached the handler"


def test_a_middleware_output_is_checked_as_json_like_a_handler_output(dispatch, make_worker):
    def register(worker):
        worker.use(lambda step, call_next: {"bad": {call_next(step)}})
        worker.register("one", lambda step: 1)

    results = run_batch(dispatch, make_worker, [step(1, "one")], register)
    assert results[1]["status"] == "failed"
    assert results[1]["error"]["error_type"] == "SerializationError"
    assert "set" in results[1]["error"]["message"]


def test_async_middleware_wrap_async_handlers_on_the_event_loop(dispatch, make_worker):
    events = []

    def register(worker):
        @worker.use
        async def outer(step, call_next):
            events.append(("outer in", step.step_id, threading.current_thread().name))
            try:
                output = await call_next(step)
            except Denied:
                raise PermanentError("wrapped", error_type="Wrapped")
            events.append(("outer out", step.step_id, threading.current_thread().name))
            return {"outer": output}

        @worker.use
        async def inner(step, call_next):
            if step.task_context.get("short"):
                return "short-circuited"
            events.append(("inner in", step.step_id, threading.current_thread().name))
            await asyncio.sleep(0.01)
            return {"inner": await call_next(step)}

        @worker.handler("fetch")
        async def fetch(step):
            events.append(("handler", step.step_id, threading.current_thread().name))
            await asyncio.sleep(0.01)
            if step.task_context.get("fail"):
                raise Denied("upstream refused")
            return step.task_context["n"]

    results = run_batch(
        dispatch,
        make_worker,
        [
            step(1, "fetch", task_context={"n": 5}),
            step(2, "fetch", task_context={"short": True}),
            step(3, "fetch", task_context={"fail": True}),
        ],
        register,
    )
    assert results[1]["output"] == {"outer": {"inner": 5}}
    assert results[2]["output"] == {"outer": "short-circuited"}
    assert results[3]["status"] == "failed"
    assert (results[3]["error"]["error_type"], results[3]["error"]["message"]) == (
        "Wrapped",
        "wrapped",
    )
    assert [e for e, step_id, _ in events if step_id == 1] == [
        "outer in",
        "inner in",
        "handler",
        "outer out",
    ]
    assert [e for e, step_id, _ in events if step_id == 2] == ["outer in", "outer out"]
    assert {thread for _, _, thread in events} == {"tasker-core-asyncio"}


def test_sync_and_async_middleware_each_wrap_their_kind_of_handler(dispatch, make_worker):
    def register(worker):
        worker.use(lambda step, call_next: {"sync": call_next(step)})

        @worker.use
        async def tag(step, call_next):
            return {"async": await call_next(step)}

        worker.register("plain", lambda step: 1)

        @worker.handler("coroutine")
        async def coroutine(step):
            return 2

    results = run_batch(dispatch, make_worker, [step(1, "plain"), step(2, "coroutine")], register)
    assert results[1]["output"] == {"sync": 1}
    assert results[2]["output"] == {"async": 2}


def test_middleware_misuse_is_refused(dispatch, make_worker):
    worker = make_worker(endpoint="tcp://127.0.0.1:9")
    with pytest.raises(TypeError, match="middleware must be callable"):
        worker.use(42)

    # Middleware of one kind only, with handlers of the other: refused at
    # start, naming the handlers it would silently miss.
    worker.use(lambda step, call_next: call_next(step))
    worker.register("sync", lambda step: 1)

    async def lonely(step):
        return 2

    worker.register("lonely", lonely)
    with pytest.raises(
        ConfigError,
        match="no async def middleware wraps handler.s. lonely.*add an async def middleware",
    ):
        worker.start()
    assert worker.state == "idle"

    run = dispatch([step(1, "only")])
    started = make_worker(endpoint=run.endpoint)
    started.register("only", lambda step: "ok")
    started.start()
    with pytest.raises(WorkerError, match="add middleware before the worker starts"):
        started.use(lambda step, call_next: call_next(step))
    assert run.results()[1]["output"] == "ok", "the refused middleware was not added"
