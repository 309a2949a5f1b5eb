"""Exceptions of tasker_core.

Every exception the package raises, and the two a handler raises on purpose,
derive from :class:`TaskerError`:

* :class:`RetryableError` fails the step as retryable (a later attempt may
  succeed), :class:`PermanentError` as not retryable. Subclass them to report
  your own ``error_type`` (the subclass's name), or pass ``error_type=``.
* :class:`ConfigError`: a bad configuration file, variable or keyword.
* :class:`WorkerError`: the native runtime could not start or was misused.

Any other exception raised by a handler fails its step too, with the
exception's class name as ``error_type`` and the worker's
``default_retryable`` setting deciding whether it may be retried.
"""

from __future__ import annotations

from typing import Optional

from ._native import ConfigError, TaskerError, WorkerError

__all__ = [
    "TaskerError",
    "ConfigError",
    "WorkerError",
    "HandlerError",
    "RetryableError",
    "PermanentError",
]


class HandlerError(TaskerError):
    """A handler's deliberate failure, with a fixed retryability.

    ``error_type`` defaults to the class name, so ``class CardDeclined(
    PermanentError)`` reports ``CardDeclined``.
    """

    #: Whether the orchestrator may retry the step.
    retryable: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        error_type: Optional[str] = None,
        retryable: Optional[bool] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type or type(self).__name__
        if retryable is not None:
            self.retryable = retryable


class RetryableError(HandlerError):
    """Fails the step; a later attempt may succeed (``retryable`` true)."""

    retryable = True


class PermanentError(HandlerError):
    """Fails the step; no retry can fix it (``retryable`` false)."""

    retryable = False
