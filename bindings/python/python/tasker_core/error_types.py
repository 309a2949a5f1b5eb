"""The ``error_type`` values tasker-core itself reports, as opposed to the
exception class names of handler failures.

They are defined once, in Rust (``tasker_protocol::error_types``), and
exported by the native module; compare a result's ``error_type`` with these
constants rather than spelling the strings. ``ERROR_TYPES`` maps every
constant's name to its value (read-only).

Reported by the worker: ``UNKNOWN_HANDLER`` (no handler of the step's name),
``SERIALIZATION_ERROR`` (the output is not JSON the orchestrator accepts),
``OUTPUT_TOO_LARGE`` (the result exceeds the orchestrator's
``max_message_bytes``), ``INVALID_STEP`` (a step the worker cannot decode).
Reported by the orchestrator: ``TIMED_OUT``, ``WORKER_LOST``,
``NO_WORKER_FOR_HANDLER``, ``SCHEDULE_TIMEOUT``, ``ABANDONED``,
``STEP_TOO_LARGE``, ``INVALID_RESULT``, ``EXECUTOR_STOPPED``, ``WITHDRAWN``
(the task was cancelled or stopped before a worker took the step); ``PANIC`` by Rust
workers.
"""

from ._native import (
    ABANDONED,
    ERROR_TYPES,
    EXECUTOR_STOPPED,
    INVALID_RESULT,
    INVALID_STEP,
    NO_WORKER_FOR_HANDLER,
    OUTPUT_TOO_LARGE,
    PANIC,
    SCHEDULE_TIMEOUT,
    SERIALIZATION_ERROR,
    STEP_TOO_LARGE,
    TIMED_OUT,
    UNKNOWN_HANDLER,
    WITHDRAWN,
    WORKER_LOST,
)

__all__ = [
    "ERROR_TYPES",
    "TIMED_OUT",
    "WORKER_LOST",
    "NO_WORKER_FOR_HANDLER",
    "SCHEDULE_TIMEOUT",
    "ABANDONED",
    "UNKNOWN_HANDLER",
    "SERIALIZATION_ERROR",
    "PANIC",
    "OUTPUT_TOO_LARGE",
    "STEP_TOO_LARGE",
    "INVALID_STEP",
    "INVALID_RESULT",
    "EXECUTOR_STOPPED",
    "WITHDRAWN",
]
