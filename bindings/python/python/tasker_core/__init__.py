"""tasker_core: serve tasker-core workflow steps from Python.

::

    from tasker_core import Worker, RetryableError, PermanentError

    worker = Worker.from_config("config/zeromq.yaml")

    @worker.handler("validate_order")
    def validate_order(step):
        if step.task_context["amount"] <= 0:
            raise PermanentError("amount must be positive")
        return {"valid": True}

    worker.run()

The ZeroMQ protocol loop (hello, heartbeats, credit, reconnects, drain) runs
in the native runtime, written in Rust; this package runs the handlers.
:mod:`tasker_core.error_types` holds the ``error_type`` values the system
itself reports (``SerializationError``, ``UnknownHandler``, ...).
"""

from . import error_types
from ._logging import enable_log_bridge, set_log_level
from ._native import Step
from .errors import (
    ConfigError,
    HandlerError,
    PermanentError,
    RetryableError,
    TaskerError,
    WorkerError,
)
from .worker import Handler, Worker

__version__ = "0.1.0"

__all__ = [
    "Worker",
    "Step",
    "Handler",
    "TaskerError",
    "HandlerError",
    "RetryableError",
    "PermanentError",
    "ConfigError",
    "WorkerError",
    "error_types",
    "enable_log_bridge",
    "set_log_level",
    "__version__",
]
