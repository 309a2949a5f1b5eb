"""tasker_core: serve tasker-core workflow steps from Python.

::

    from tasker_core import PermanentError, RetryableError, Step, StepOutput, Worker

    worker = Worker.from_config("config/zeromq.yaml")

    @worker.handler("validate_order")
    def validate_order(step: Step) -> StepOutput:
        if step.task_context["amount"] <= 0:
            raise PermanentError("amount must be positive")
        return {"valid": True}

    worker.run()

The ZeroMQ protocol loop (hello, heartbeats, credit, reconnects, drain) runs
in the native runtime, written in Rust; this package runs the handlers.
:mod:`tasker_core.error_types` holds the ``error_type`` values the system
itself reports (``SerializationError``, ``UnknownHandler``, ...).

Application code starts tasks and follows them through ``tasker serve``'s
HTTP API with :class:`Client` (or :class:`AsyncClient` under asyncio)::

    from tasker_core import Client

    handle = Client().submit("order_fulfillment", {"order_id": "A-1"}, idempotency_key="A-1")
    report = handle.wait(timeout=120)

See :mod:`tasker_core.client`; its errors are in :mod:`tasker_core.errors`.
"""

from . import error_types
from ._logging import enable_log_bridge, set_log_level
from ._native import Step
from ._version import __version__
from .client import (
    AsyncClient,
    AsyncTaskHandle,
    Client,
    StepError,
    Task,
    TaskHandle,
    TaskPage,
    TaskStep,
    TaskSummary,
    Workflow,
    WorkflowStep,
)
from .errors import (
    ApiError,
    ClientError,
    ConfigError,
    HandlerError,
    IdempotencyConflict,
    PermanentError,
    RetryableError,
    ServerUnavailable,
    TaskEnded,
    TaskerError,
    TaskNotFound,
    Unauthorized,
    UnknownWorkflow,
    ValidationError,
    WaitTimeout,
    WorkerError,
    WorkerRefused,
)
from .worker import (
    AsyncCallNext,
    AsyncMiddleware,
    CallNext,
    Handler,
    HandlerObject,
    Middleware,
    StepOutput,
    SyncMiddleware,
    Worker,
)

__all__ = [
    "Worker",
    "Step",
    "StepOutput",
    "Handler",
    "HandlerObject",
    "Middleware",
    "SyncMiddleware",
    "AsyncMiddleware",
    "CallNext",
    "AsyncCallNext",
    "TaskerError",
    "HandlerError",
    "RetryableError",
    "PermanentError",
    "ConfigError",
    "WorkerError",
    "WorkerRefused",
    "Client",
    "AsyncClient",
    "TaskHandle",
    "AsyncTaskHandle",
    "Task",
    "TaskStep",
    "StepError",
    "TaskSummary",
    "TaskPage",
    "Workflow",
    "WorkflowStep",
    "ClientError",
    "ValidationError",
    "UnknownWorkflow",
    "TaskNotFound",
    "IdempotencyConflict",
    "TaskEnded",
    "Unauthorized",
    "ServerUnavailable",
    "WaitTimeout",
    "ApiError",
    "error_types",
    "enable_log_bridge",
    "set_log_level",
    "__version__",
]
