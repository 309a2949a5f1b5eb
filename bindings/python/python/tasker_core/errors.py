"""Exceptions of tasker_core.

Every exception the package raises, and the two a handler raises on purpose,
derive from :class:`TaskerError`:

* :class:`RetryableError` fails the step as retryable (a later attempt may
  succeed), :class:`PermanentError` as not retryable. Subclass them to report
  your own ``error_type`` (the subclass's name), or pass ``error_type=``.
  :class:`HandlerError`, their base, takes ``retryable=`` too (default: the
  worker's ``default_retryable``).
* :class:`ConfigError`: a bad configuration file, variable or keyword.
* :class:`WorkerError`: the native runtime could not start, failed or was
  misused; :class:`WorkerRefused`, one of them, when the orchestrator refused
  the connection in the handshake (CURVE: this worker's key not admitted,
  CURVE on one side only, a wrong server key). ``run()`` raises it.
* :class:`ClientError` and its subclasses: what a call of
  :class:`~tasker_core.Client` / :class:`~tasker_core.AsyncClient` to
  ``tasker serve``'s HTTP API ended with (``protocol/CLIENT.md`` §4).

Any other exception raised by a handler fails its step too, with its
``error_type`` attribute when it has a non-empty ``str`` one, else the
exception's class name, as ``error_type``, and its ``retryable`` attribute
when it is a ``bool``, else the worker's ``default_retryable`` setting,
deciding whether it may be retried (the rules of the Ruby and Node SDKs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional

from ._native import ConfigError, TaskerError, WorkerError, WorkerRefused

if TYPE_CHECKING:
    from .client import Task

__all__ = [
    "TaskerError",
    "ConfigError",
    "WorkerError",
    "WorkerRefused",
    "HandlerError",
    "RetryableError",
    "PermanentError",
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
]


class HandlerError(TaskerError):
    """A handler's deliberate failure: fails the step with ``error_type``
    (default: the class name, so ``class CardDeclined(PermanentError)``
    reports ``CardDeclined``) and ``retryable``.

    Raise :class:`RetryableError` or :class:`PermanentError` (or a subclass)
    when the kind of failure fixes the retryability; raise
    ``HandlerError(message, error_type=..., retryable=...)`` to decide it at
    run time. Without ``retryable``, the worker's ``default_retryable``
    decides, as for any other exception.
    """

    #: Whether the orchestrator may retry the step; ``None``: the worker's
    #: ``default_retryable``.
    retryable: Optional[bool] = None

    def __init__(
        self,
        message: str = "",
        *,
        error_type: Optional[str] = None,
        retryable: Optional[bool] = None,
    ) -> None:
        super().__init__(message)
        if error_type is not None and not (isinstance(error_type, str) and error_type):
            raise TypeError(f"error_type must be a non-empty str, got {error_type!r}")
        if retryable is not None and not isinstance(retryable, bool):
            raise TypeError(f"retryable must be True, False or None, got {retryable!r}")
        self.message = message
        self.error_type: str = error_type or type(self).__name__
        if retryable is not None:
            self.retryable = retryable


def _fixed(cls: "type[HandlerError]", base: str, retryable: Optional[bool], fixed: bool) -> None:
    if isinstance(retryable, bool) and retryable is not fixed:
        raise TypeError(
            f"a {base} is {'always' if fixed else 'never'} retryable ({cls.__name__}); "
            "to decide at run time, raise HandlerError(message, error_type=..., retryable=...)"
        )


class RetryableError(HandlerError):
    """Fails the step; a later attempt may succeed (``retryable`` true)."""

    retryable: Optional[bool] = True

    def __init__(
        self,
        message: str = "",
        *,
        error_type: Optional[str] = None,
        retryable: Optional[Literal[True]] = None,
    ) -> None:
        _fixed(type(self), "RetryableError", retryable, True)
        super().__init__(message, error_type=error_type, retryable=retryable)


class PermanentError(HandlerError):
    """Fails the step; no retry can fix it (``retryable`` false)."""

    retryable: Optional[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        error_type: Optional[str] = None,
        retryable: Optional[Literal[False]] = None,
    ) -> None:
        _fixed(type(self), "PermanentError", retryable, False)
        super().__init__(message, error_type=error_type, retryable=retryable)


# -- the client's errors (protocol/CLIENT.md §4) ------------------------------


class ClientError(TaskerError):
    """Base of every error a :class:`~tasker_core.Client` call raises.

    ``str(error)`` is the server's ``detail``, unchanged (for errors without
    an answer, the client's own message). Attributes:

    * ``status``: the HTTP status, ``None`` when there was no answer;
    * ``problem_type``: the last segment of the problem's ``type``
      (``task-not-found``, ...), ``None`` when the answer was not a problem
      document or there was none;
    * ``detail``: the message;
    * ``problem``: the whole problem document (a dict), ``None`` without one.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: Optional[int] = None,
        problem_type: Optional[str] = None,
        problem: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem_type = problem_type
        self.problem = problem

    def __reduce__(self) -> Any:
        # Pickles (e.g. across multiprocessing) with every attribute.
        return (_rebuild, (type(self), self.detail, dict(self.__dict__)))

    def _problem_field(self, name: str) -> Any:
        return self.problem.get(name) if self.problem is not None else None


class ValidationError(ClientError):
    """The request was refused as invalid (``malformed-json``,
    ``invalid-body``, ``invalid-parameter``, ``unsupported-media-type``,
    ``body-too-large``). ``field`` names the field or parameter at fault
    (``None`` when the server named none)."""

    @property
    def field(self) -> Optional[str]:
        value = self._problem_field("field")
        return value if isinstance(value, str) else None


class UnknownWorkflow(ValidationError):
    """No workflow of that name is loaded (``unknown-workflow``; ``field``
    is ``workflow``). ``known_workflows``: those loaded; ``closest``: the one
    closest to the name given, if any."""

    @property
    def known_workflows(self) -> List[str]:
        value = self._problem_field("known_workflows")
        return [str(v) for v in value] if isinstance(value, list) else []

    @property
    def closest(self) -> Optional[str]:
        value = self._problem_field("closest")
        return value if isinstance(value, str) else None


class TaskNotFound(ClientError):
    """No task has that id (``task-not-found``); ``task_id`` is it."""

    @property
    def task_id(self) -> Optional[int]:
        value = self._problem_field("task_id")
        return value if isinstance(value, int) else None


class IdempotencyConflict(ClientError):
    """The idempotency key was used before with another workflow or context
    (``idempotency-conflict``); ``task_id`` is the task the key belongs to."""

    @property
    def task_id(self) -> Optional[int]:
        value = self._problem_field("task_id")
        return value if isinstance(value, int) else None


class TaskEnded(ClientError):
    """A cancel of a task that has already ended (``task-ended``):
    ``task_id`` and ``task_status`` (``complete``, ``failed``,
    ``cancelled``)."""

    @property
    def task_id(self) -> Optional[int]:
        value = self._problem_field("task_id")
        return value if isinstance(value, int) else None

    @property
    def task_status(self) -> Optional[str]:
        value = self._problem_field("task_status")
        return value if isinstance(value, str) else None


class Unauthorized(ClientError):
    """The server requires a bearer token and got none or a wrong one
    (``unauthorized``, 401): set ``api_token`` / ``TASKER_API_TOKEN`` or pass
    ``token=``."""


class ServerUnavailable(ClientError):
    """No answer (connection refused or reset, timed out), or a 5xx answer
    left after the retries (e.g. ``shutting-down``, 503). The message names
    the URL and the last cause; ``cause`` is the last exception when there
    was no answer (``None`` after a 5xx: see ``status`` and ``problem``)."""

    def __init__(
        self,
        detail: str,
        *,
        status: Optional[int] = None,
        problem_type: Optional[str] = None,
        problem: Optional[Dict[str, Any]] = None,
        cause: Optional[BaseException] = None,
    ) -> None:
        super().__init__(detail, status=status, problem_type=problem_type, problem=problem)
        self.cause = cause


class WaitTimeout(ClientError, TimeoutError):
    """The task did not end before the wait's timeout (raised by the client,
    not the server); ``task`` is the task as last seen (still running). Also
    a :class:`TimeoutError`."""

    def __init__(self, detail: str, *, task: "Task") -> None:
        super().__init__(detail)
        self.task = task


class ApiError(ClientError):
    """Any other problem or HTTP status (e.g. ``not-found`` for a path the
    server does not have: a URL with a wrong prefix)."""


def _rebuild(cls: "type[ClientError]", detail: str, state: Dict[str, Any]) -> ClientError:
    error = cls.__new__(cls, detail)
    Exception.__init__(error, detail)
    error.__dict__.update(state)
    return error
