"""Each way a handler can fail, as the orchestrator reports it."""

from __future__ import annotations

import datetime
import types
from decimal import Decimal

import pytest

from conftest import run_batch, step
from tasker_core import HandlerError, PermanentError, RetryableError, TaskerError


class CardDeclined(PermanentError):
    pass


class GatewayBusy(RetryableError):
    pass


def failing_handlers(worker):
    @worker.handler("retryable")
    def retryable(step):
        raise RetryableError("gateway busy, try later")

    @worker.handler("permanent")
    def permanent(step):
        raise PermanentError("amount must be positive")

    @worker.handler("declined")
    def declined(step):
        raise CardDeclined("card declined")

    @worker.handler("busy")
    def busy(step):
        raise GatewayBusy("busy")

    @worker.handler("custom_type")
    def custom_type(step):
        raise PermanentError("bad input", error_type="InvalidInput")

    @worker.handler("key_error")
    def key_error(step):
        return lookup(step.task_context)

    @worker.handler("ok")
    def ok(step):
        return "fine"


def lookup(context):
    return context["missing"]


def test_error_kinds(dispatch, make_worker):
    names = ["retryable", "permanent", "declined", "busy", "custom_type", "key_error", "ok"]
    results = run_batch(
        dispatch, make_worker, [step(i, n) for i, n in enumerate(names)], failing_handlers
    )
    by_name = {n: results[i] for i, n in enumerate(names)}

    def error(name):
        r = by_name[name]
        assert r["status"] == "failed", r
        assert "output" not in r
        assert r["metadata"]["retryable"] == r["error"]["retryable"]
        return r["error"]

    assert error("retryable") | {"backtrace": None} == {
        "error_type": "RetryableError",
        "message": "gateway busy, try later",
        "retryable": True,
        "backtrace": None,
    }
    assert error("permanent")["error_type"] == "PermanentError"
    assert error("permanent")["retryable"] is False
    assert error("permanent")["message"] == "amount must be positive"
    assert (error("declined")["error_type"], error("declined")["retryable"]) == ("CardDeclined", False)
    assert (error("busy")["error_type"], error("busy")["retryable"]) == ("GatewayBusy", True)
    assert error("custom_type")["error_type"] == "InvalidInput"

    key = error("key_error")
    assert key["error_type"] == "KeyError"
    assert key["message"] == "'missing'"
    assert key["retryable"] is False  # default_retryable defaults to false
    # Innermost first, the worker's own frames left out.
    assert "in lookup" in key["backtrace"][0]
    assert "in key_error" in key["backtrace"][1]
    assert len(key["backtrace"]) == 2
    assert key["backtrace"][0].startswith(__file__)

    assert by_name["ok"]["status"] == "completed" and by_name["ok"]["output"] == "fine"


@pytest.mark.parametrize("default_retryable", [True, False])
def test_unexpected_exception_uses_default_retryable(dispatch, make_worker, default_retryable):
    def register(worker):
        @worker.handler("boom")
        def boom(step):
            raise RuntimeError("boom")

        @worker.handler("explicit")
        def explicit(step):
            raise PermanentError("never retry")

        @worker.handler("handler_error")
        def handler_error(step):
            raise HandlerError("left to the default", error_type="Decided")

        @worker.handler("handler_error_retryable")
        def handler_error_retryable(step):
            raise HandlerError("decided here", retryable=not default_retryable)

    results = run_batch(
        dispatch,
        make_worker,
        [
            step(1, "boom"),
            step(2, "explicit"),
            step(3, "handler_error"),
            step(4, "handler_error_retryable"),
        ],
        register,
        default_retryable=default_retryable,
    )
    assert results[1]["error"]["error_type"] == "RuntimeError"
    assert results[1]["error"]["retryable"] is default_retryable
    assert results[1]["metadata"]["retryable"] is default_retryable
    # RetryableError/PermanentError are not affected by the default.
    assert results[2]["error"]["retryable"] is False
    # A HandlerError without retryable= leaves it to the default, as Ruby's
    # TaskerCore::Error and Node's TaskerError do (issue 18 #7).
    assert results[3]["error"]["error_type"] == "Decided"
    assert results[3]["error"]["retryable"] is default_retryable
    assert results[4]["error"]["error_type"] == "HandlerError"
    assert results[4]["error"]["retryable"] is (not default_retryable)


class GatewayTimeout(Exception):
    """A library's exception carrying its own error_type and retryable."""

    error_type = "UpstreamTimeout"
    retryable = True


class NotReallyTyped(Exception):
    error_type = 42  # not a str: ignored
    retryable = "yes"  # not a bool: ignored


class BrokenAttributes(Exception):
    @property
    def error_type(self):
        raise RuntimeError("broken property")

    def __str__(self):
        raise RuntimeError("broken __str__")


def test_any_exception_may_declare_error_type_and_retryable(dispatch, make_worker):
    """Issue 18 #7: as in the Ruby and Node SDKs, any exception's str
    `error_type` and bool `retryable` are reported, not only a
    HandlerError's."""

    def register(worker):
        def raiser(exc):
            def handler(step):
                raise exc

            return handler

        worker.register("declared", raiser(GatewayTimeout("upstream took too long")))
        worker.register("ignored", raiser(NotReallyTyped("odd attributes")))
        worker.register("broken", raiser(BrokenAttributes()))
        worker.register("fine", lambda step: "still serving")

    steps = [step(1, "declared"), step(2, "ignored"), step(3, "broken"), step(4, "fine")]
    results = run_batch(dispatch, make_worker, steps, register)
    assert results[1]["error"]["error_type"] == "UpstreamTimeout"
    assert results[1]["error"]["retryable"] is True
    assert results[1]["error"]["message"] == "upstream took too long"
    assert results[2]["error"]["error_type"] == "NotReallyTyped"
    assert results[2]["error"]["retryable"] is False  # default_retryable
    assert results[3]["error"]["error_type"] == "BrokenAttributes"
    assert "str() of the exception failed" in results[3]["error"]["message"]
    assert results[4]["output"] == "still serving"


def test_handler_error_options_match_the_other_sdks():
    """Issue 18 #7: error_type= on every handler error; retryable= decides
    on HandlerError and may not contradict RetryableError/PermanentError."""
    assert HandlerError("x").retryable is None  # the worker's default_retryable
    assert HandlerError("x", retryable=True).retryable is True
    assert HandlerError("x").error_type == "HandlerError"
    assert RetryableError("x", error_type="GatewayBusy").error_type == "GatewayBusy"
    assert PermanentError("x", retryable=False).retryable is False  # agrees: fine
    assert RetryableError("x", retryable=True).retryable is True
    with pytest.raises(TypeError, match="a PermanentError is never retryable"):
        PermanentError("x", retryable=True)
    with pytest.raises(TypeError, match=r"a RetryableError is always retryable \(GatewayBusy\)"):
        GatewayBusy("x", retryable=False)
    for bad in (3, ""):
        with pytest.raises(TypeError, match="error_type must be a non-empty str"):
            PermanentError("x", error_type=bad)
    with pytest.raises(TypeError, match="retryable must be True, False or None"):
        HandlerError("x", retryable="yes")


def test_default_retryable_from_environment(dispatch, make_worker, monkeypatch):
    monkeypatch.setenv("TASKER_DEFAULT_RETRYABLE", "true")

    def register(worker):
        worker.register("boom", lambda step: 1 / 0)

    results = run_batch(dispatch, make_worker, [step(1, "boom")], register)
    assert results[1]["error"]["error_type"] == "ZeroDivisionError"
    assert results[1]["error"]["retryable"] is True


class Unserialisable:
    pass


def self_containing():
    items = [1]
    items.append(items)
    return items


BAD_OUTPUTS = {
    "set": ({1, 2}, "$: object of type set"),
    "object": (Unserialisable(), "$: object of type Unserialisable"),
    "nan": (float("nan"), "$: float NaN"),
    "inf": ({"x": float("inf")}, '$["x"]: float inf'),
    "nested_bytes": ({"a": [1, {"b": b"raw"}]}, '$["a"][1]["b"]: object of type bytes'),
    "huge_int": (2**70, "$: integer does not fit in 64 bits"),
    "tuple_key": ({(1, 2): "v"}, "dict key of type tuple"),
    "cycle": (self_containing(), "nested more than 100 levels deep"),
    # Issue 18 #8: only aware datetimes, dates, finite Decimals and UUIDs
    # have an encoding; the rest stays refused, with the place.
    "naive_datetime": (
        {"a": [datetime.datetime(2025, 1, 23, 10, 0)]},
        '$["a"][0]: naive datetime (no timezone)',
    ),
    "decimal_nan": (Decimal("NaN"), "$: Decimal NaN is not valid JSON"),
    "decimal_inf": ({"x": [Decimal("-Infinity")]}, '$["x"][0]: Decimal -Infinity is not valid JSON'),
    "time": ({"t": datetime.time(10, 0)}, '$["t"]: object of type time'),
    "timedelta": ([datetime.timedelta(seconds=1)], "$[0]: object of type timedelta"),
    # Bytes are a Sequence, but not of what JSON means by one.
    "bytearray": ({"b": [bytearray(b"raw")]}, '$["b"][0]: object of type bytearray'),
    "memoryview": (memoryview(b"raw"), "$: object of type memoryview"),
    "frozenset": (frozenset({1}), "$: object of type frozenset"),
    "mapping_tuple_key": (types.MappingProxyType({(1, 2): "v"}), "dict key of type tuple"),
}


def test_non_serialisable_output_fails_that_step_only(dispatch, make_worker):
    names = list(BAD_OUTPUTS)

    def register(worker):
        for name in names:
            worker.register(name, lambda step, value=BAD_OUTPUTS[name][0]: value)
        worker.register("fine", lambda step: {"still": "serving"})

    steps = [step(i, n) for i, n in enumerate(names)] + [step(100, "fine")]
    results = run_batch(dispatch, make_worker, steps, register)
    for i, name in enumerate(names):
        r = results[i]
        assert r["status"] == "failed", (name, r)
        assert r["error"]["error_type"] == "SerializationError"
        assert r["error"]["retryable"] is False
        assert f'the output of handler "{name}" is not JSON-serialisable' in r["error"]["message"]
        assert BAD_OUTPUTS[name][1] in r["error"]["message"], (name, r["error"]["message"])
    assert results[100]["output"] == {"still": "serving"}


def nested(depth):
    """`depth` lists deep around 7 (`7` is 0 deep, `[7]` 1)."""
    value = 7
    for _ in range(depth):
        value = [value]
    return value


def test_output_the_orchestrator_would_refuse_fails_as_serialization_error(dispatch, make_worker):
    """Defect 1: an output nested deeper than the welcome's max_json_depth
    (100), or holding a lone surrogate, is not sent: its step fails, not
    retryable, and the rest of its message goes through."""

    def register(worker):
        worker.register("deep_100", lambda step: {"v": nested(99)})
        worker.register("deep_101", lambda step: {"v": nested(100)})
        worker.register("deep_tuple", lambda step: (nested(100),))
        worker.register("surrogate", lambda step: {"name": "caf\udce9"})
        worker.register("pair", lambda step: "\U0001f389 caf\u00e9")

        def raises(step):
            raise ValueError("caf\udce9")

        worker.register("raises_surrogate", raises)

    steps = [
        step(1, "deep_100"),
        step(2, "deep_101"),
        step(3, "deep_tuple"),
        step(4, "surrogate"),
        step(5, "pair"),
        step(6, "raises_surrogate"),
    ]
    results = run_batch(dispatch, make_worker, steps, register)
    assert results[1]["status"] == "completed", results[1]
    assert results[1]["output"] == {"v": nested(99)}
    for i in (2, 3, 4):
        r = results[i]
        assert r["status"] == "failed", r
        assert r["error"]["error_type"] == "SerializationError"
        assert r["error"]["retryable"] is False
        assert r["metadata"]["retryable"] is False
    assert "nested more than 100 levels deep" in results[2]["error"]["message"]
    assert "max_json_depth" in results[2]["error"]["message"]
    assert "nested more than 100 levels deep" in results[3]["error"]["message"]
    assert '$["name"]' in results[4]["error"]["message"]
    assert "surrogates not allowed" in results[4]["error"]["message"]
    assert results[5]["output"] == "\U0001f389 caf\u00e9"
    # A failure's message only describes it: sent with U+FFFD in place.
    assert results[6]["status"] == "failed", results[6]
    assert results[6]["error"]["error_type"] == "ValueError"
    assert results[6]["error"]["message"] == "caf\ufffd"


def test_error_classes_share_a_base():
    from tasker_core import ConfigError, HandlerError, WorkerError

    for cls in (RetryableError, PermanentError, ConfigError, WorkerError, HandlerError):
        assert issubclass(cls, TaskerError)
    assert issubclass(TaskerError, Exception)
    assert RetryableError("x").retryable is True
    assert PermanentError("x").retryable is False
    assert CardDeclined("x").error_type == "CardDeclined"
