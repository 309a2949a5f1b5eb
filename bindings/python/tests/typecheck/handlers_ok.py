"""Right usages of the typed API: `mypy --strict` must pass on this file
(tests/test_typing.py). Never run; only type-checked."""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, TypedDict

from tasker_core import (
    AsyncCallNext,
    CallNext,
    HandlerError,
    HandlerObject,
    PermanentError,
    RetryableError,
    Step,
    StepOutput,
    Worker,
)

worker = Worker(
    endpoint="tcp://127.0.0.1:5555",
    capacity=8,
    threads=4,
    worker_id="billing-1",
    default_retryable=False,
    log_level="info",
    heartbeat_interval_ms=1000,
    liveness=3,
    shutdown_timeout_ms=30_000,
    linger_ms=1000,
    reconnect_initial_ms=100,
    reconnect_max_ms=5000,
    max_message_bytes=1 << 20,
    send_hwm=1000,
    recv_hwm=1000,
    curve_secret_key_file=Path("/etc/tasker/billing.key"),
    curve_server_public_key_file="/etc/tasker/orchestrator.pub",
)
from_file: Worker = Worker.from_config(Path("config/zeromq.yaml"), "test", capacity=2)
also: Worker = Worker(config_path="config/zeromq.yaml", env="production")


class Receipt(TypedDict):
    order_id: str
    total: str


@worker.handler("validate_order")
def validate_order(step: Step) -> Dict[str, Any]:
    if step.task_context["amount"] <= 0:
        raise PermanentError("amount must be positive", error_type="InvalidAmount")
    return {"valid": True, "attempt": step.attempt}


@worker.handler("echo")
def echo(step: Step) -> Any:  # task_context is Any: --strict refuses it as a StepOutput
    return step.task_context


@worker.handler("summary")
def summary(step: Step) -> StepOutput:
    return {"context": step.task_context, "previous": step.previous_results}


@worker.handler("receipt")
def receipt(step: Step) -> Receipt:
    return {"order_id": str(step.task_context["id"]), "total": "12.50"}


@worker.handler("typed_values")
def typed_values(step: Step) -> Dict[str, object]:
    return {
        "at": datetime.datetime.now(datetime.timezone.utc),
        "on": datetime.date(2025, 1, 23),
        "amount": Decimal("12.50"),
        "id": uuid.uuid4(),
    }


@worker.handler("ids")
def ids(step: Step) -> List[uuid.UUID]:
    return [uuid.uuid4()]


@worker.handler("nothing")
def nothing(step: Step) -> None:
    return None


@worker.handler("charge_card")
async def charge_card(step: Step) -> Dict[str, str]:
    await asyncio.sleep(0)
    if step.attempt == 1:
        raise RetryableError("gateway busy", error_type="GatewayBusy")
    return {"charged": "yes"}


@worker.handler("by_class")
class ByClass:
    def call(self, step: Step) -> List[int]:
        return [step.step_id]


class Mailer:
    def __init__(self, sender: str) -> None:
        self.sender = sender

    async def call(self, step: Step) -> Optional[str]:
        await asyncio.sleep(0)
        return self.sender


worker.register("mail", Mailer("orders@example.invalid"))
worker.register("mail_slowly", Mailer("orders@example.invalid"), concurrency=2)


@worker.handler("rate_limited", concurrency=1)
def rate_limited(step: Step) -> StepOutput:
    return None
worker.register("noop", lambda step: None)
worker.register("decide", lambda step: HandlerError("x", error_type="Decided", retryable=True).message)

# The decorator returns the function unchanged, typed as it was.
direct: Callable[[Step], Dict[str, Any]] = validate_order
later: Callable[[Step], Awaitable[Dict[str, str]]] = charge_card
handler_object: HandlerObject = Mailer("x")
state: str = worker.state
names: List[str] = worker.handlers


# Middleware: sync ones around sync handlers, async def ones around async
# handlers; use() returns the middleware unchanged, so it decorates too.
@worker.use
def timing(step: Step, call_next: CallNext) -> StepOutput:
    started = time.perf_counter()
    try:
        return call_next(step)
    finally:
        print(step.handler_class, time.perf_counter() - started)


@worker.use
async def async_timing(step: Step, call_next: AsyncCallNext) -> StepOutput:
    started = time.perf_counter()
    output = await call_next(step)
    print(step.handler_class, time.perf_counter() - started)
    return output


def wrap_output(step: Step, call_next: Callable[[Step], StepOutput]) -> Dict[str, object]:
    return {"wrapped": call_next(step)}


def short_circuit(step: Step, call_next: CallNext) -> List[int]:
    return [step.step_id]


worker.use(wrap_output)
used: Callable[[Step, CallNext], List[int]] = worker.use(short_circuit)
worker.use(lambda step, call_next: call_next(step))
