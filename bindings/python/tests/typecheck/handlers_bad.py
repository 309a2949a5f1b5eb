"""Wrong usages of the typed API: `mypy --strict` must report exactly the
errors marked `# E:` (then part of the message) on their lines, and no others
(tests/test_typing.py). Never run; only type-checked."""

from __future__ import annotations

import asyncio
from typing import Dict, Set

from tasker_core import AsyncCallNext, CallNext, Client, PermanentError, RetryableError, Step, Worker

worker = Worker(endpont="tcp://127.0.0.1:5555")  # E: Unexpected keyword argument "endpont" for "Worker"; did you mean "endpoint"?
Worker(worker_capacity=4)  # E: Unexpected keyword argument "worker_capacity" for "Worker"
Worker(capacity="4")  # E: Argument "capacity" to "Worker" has incompatible type "str"; expected "int | None"
Worker(heartbeat_interval_ms=0.5)  # E: Argument "heartbeat_interval_ms" to "Worker" has incompatible type "float"
Worker.from_config("config/zeromq.yaml", endpont="tcp://127.0.0.1:5555")  # E: Unexpected keyword argument "endpont" for "from_config" of "Worker"; did you mean "endpoint"?


@worker.handler("two_arguments")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[Step, int], int]"
def two_arguments(step: Step, retries: int) -> int:
    return retries


@worker.handler("no_argument")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[], int]"
def no_argument() -> int:
    return 1


@worker.handler("not_a_step")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[dict[str, int]], int]"
def not_a_step(context: Dict[str, int]) -> int:
    return len(context)


@worker.handler("returns_a_set")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[Step], set[int]]"
def returns_a_set(step: Step) -> Set[int]:
    return {step.step_id}


@worker.handler("returns_an_object")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[Step], object]"
def returns_an_object(step: Step) -> object:
    return object()


@worker.handler("int_keys")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[Step], dict[int, str]]"
def int_keys(step: Step) -> Dict[int, str]:
    return {step.step_id: "x"}


@worker.handler("async_set")  # E: Value of type variable "HandlerT" of function cannot be "Callable[[Step], Coroutine[Any, Any, set[str]]]"
async def async_set(step: Step) -> Set[str]:
    await asyncio.sleep(0)
    return set()


@worker.handler("no_call_method")
class NoCallMethod:  # E: Value of type variable "HandlerT" of function cannot be "type[NoCallMethod]"
    def run(self, step: Step) -> int:
        return 1


class CallWithoutStep:
    def call(self) -> int:
        return 1


worker.register("call_without_step", CallWithoutStep())  # E: Argument 2 to "register" of "Worker" has incompatible type "CallWithoutStep"
worker.register("not_callable", 42)  # E: Argument 2 to "register" of "Worker" has incompatible type "int"
PermanentError("bad", error_type=3)  # E: Argument "error_type" to "PermanentError" has incompatible type "int"; expected "str | None"
RetryableError("bad", retryable="yes")  # E: Argument "retryable" to "RetryableError" has incompatible type "Literal['yes']"
RetryableError("bad", retryable=False)  # E: Argument "retryable" to "RetryableError" has incompatible type "Literal[False]"
PermanentError("bad", retryable=True)  # E: Argument "retryable" to "PermanentError" has incompatible type "Literal[True]"
Client("http://127.0.0.1:1").list(status="weird")  # E: Argument "status" to "list" of "Client" has incompatible type "Literal['weird']"


@worker.use  # E: Value of type variable "MiddlewareT" of "use" of "Worker" cannot be "Callable[[Step], int]"
def middleware_without_next(step: Step) -> int:
    return 1


@worker.use  # E: Value of type variable "MiddlewareT" of "use" of "Worker" cannot be "Callable[[Step, Callable[[Step], StepOutput]], set[int]]"
def middleware_returns_a_set(step: Step, call_next: CallNext) -> Set[int]:
    return {step.step_id}


@worker.use  # E: Value of type variable "MiddlewareT" of "use" of "Worker" cannot be "Callable[[Step, Callable[[Step], Awaitable[StepOutput]]], int]"
def sync_middleware_with_async_next(step: Step, call_next: AsyncCallNext) -> int:
    return 1


worker.use(42)  # E: Value of type variable "MiddlewareT" of "use" of "Worker" cannot be "int"
