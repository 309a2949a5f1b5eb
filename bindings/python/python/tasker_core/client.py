"""Start and follow tasks from application code: a client of ``tasker
serve``'s HTTP API.

::

    from tasker_core import Client

    client = Client()                      # api_url / TASKER_API_URL, api_token / TASKER_API_TOKEN
    handle = client.submit("order_fulfillment", {"order_id": "A-1"}, idempotency_key="order-A-1")
    task = handle.wait(timeout=120)        # the report once the task has ended
    print(task.status, [(s.name, s.outcome) for s in task.steps])

:class:`Client` blocks; :class:`AsyncClient` has the same operations as
coroutines. Both follow ``protocol/CLIENT.md``, the contract every
tasker-core client (Rust, Python, Ruby, Node) follows:

* Configuration (§1): explicit ``url``/``token`` arguments, else the
  configuration's ``api_url`` and ``api_token`` (file section, then the
  ``TASKER_API_URL`` and ``TASKER_API_TOKEN`` variables, resolved by the one
  Rust call every SDK uses); an empty ``api_url`` means ``http://`` +
  ``api_listen``, an unspecified address reached on loopback. An
  ``https://`` URL reaches ``tasker serve`` through a TLS-terminating proxy
  (``serve`` itself speaks plain HTTP): the proxy's certificate is always
  verified against the system's CA certificates (``SSL_CERT_FILE`` names
  another bundle, for a private CA); there is no way to skip verification.
* Waiting (§3): ``GET /v1/tasks/{id}?wait=SECONDS`` repeated, each asking
  for at most 20 s (2 s in :class:`AsyncClient`), each read given that plus
  10 s, until the task has ended or the deadline has passed
  (:class:`~tasker_core.errors.WaitTimeout`, carrying the task).
* Errors (§4): problem documents become the classes of
  :mod:`tasker_core.errors` (:class:`~tasker_core.errors.ClientError` and
  its subclasses), with the server's ``detail`` as message.
* Retries (§5): an idempotent call (get, wait, list, cancel, workflows;
  submit only with an ``idempotency_key``) is retried when there was no
  answer or a 5xx one, at most 4 times, after 0.2, 0.4, 0.8 and 1.6 s (±20 %);
  then :class:`~tasker_core.errors.ServerUnavailable`. A submit without a key
  is tried once. Retries are logged at debug level on the
  ``tasker_core.client`` logger.

The transport is the standard library's ``urllib.request`` (no proxy from
the environment, no redirects followed; HTTPS with
:func:`ssl.create_default_context`); :class:`AsyncClient` runs it on
threads of its own (see its doc). Results are frozen dataclasses;
timestamps are aware :class:`~datetime.datetime` objects (UTC), and each
result keeps the server's JSON in ``raw`` (``Task.to_dict()`` returns a copy,
ready for :func:`json.dumps`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import copy
import decimal
import functools
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import (
    Any,
    AsyncIterator,
    Callable,
    Dict,
    Generic,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    NoReturn,
    Optional,
    Set,
    Tuple,
    Type,
    TypeVar,
    Union,
    cast,
)

from . import _native
from ._version import __version__
from .errors import (
    ApiError,
    ClientError,
    IdempotencyConflict,
    ServerUnavailable,
    TaskEnded,
    TaskNotFound,
    Unauthorized,
    UnknownWorkflow,
    ValidationError,
    WaitTimeout,
)

#: A task's status, as the API names it.
TaskStatus = Literal["running", "complete", "failed", "cancelled"]

__all__ = [
    "TaskStatus",
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
    "TASK_STATUSES",
]

log = logging.getLogger("tasker_core.client")

#: The statuses a task can have; every one but ``running`` means it ended.
TASK_STATUSES = ("running", "complete", "failed", "cancelled")

#: Where problem ``type`` URIs live; the rest is the problem's slug.
PROBLEM_BASE = "https://tasker-core.dev/problems/"
#: Most characters of an unexpected body quoted in a message.
MAX_QUOTED_CHARS = 200
#: Waits before the retries of an idempotent call (each ±RETRY_JITTER).
RETRY_DELAYS = (0.2, 0.4, 0.8, 1.6)
RETRY_JITTER = 0.2
#: Longest ``wait`` asked of the server in one request, in seconds.
WAIT_CHUNK = 20.0
#: The same for AsyncClient: a cancelled wait leaves its thread this soon.
ASYNC_WAIT_CHUNK = 2.0
#: Added to a long-poll's ``wait`` to make its read timeout.
WAIT_SLACK = 10.0
#: Read timeout of every other request, in seconds (``timeout=``).
DEFAULT_TIMEOUT = 30.0
#: How far past its deadline a wait may run while the server does not
#: answer (CLIENT.md §3): its tries are cut to end by then.
DEADLINE_GRACE = 2.0

_USER_AGENT = (
    f"tasker-core-python/{__version__} (Python {sys.version_info[0]}.{sys.version_info[1]})"
)

_PROBLEM_CLASSES: Dict[str, Type[ClientError]] = {
    "malformed-json": ValidationError,
    "invalid-body": ValidationError,
    "invalid-parameter": ValidationError,
    "unsupported-media-type": ValidationError,
    "body-too-large": ValidationError,
    "unknown-workflow": UnknownWorkflow,
    "task-not-found": TaskNotFound,
    "idempotency-conflict": IdempotencyConflict,
    "task-ended": TaskEnded,
    "unauthorized": Unauthorized,
}


def _json_default(value: Any) -> Any:
    """Encodes a task context's dates, decimals and UUIDs as a handler's
    output is encoded (the README's Outputs table), so a value a handler may
    return can also start a task."""
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(
                "a naive datetime (no timezone) is not accepted in a context: "
                "give it a tzinfo, e.g. datetime.timezone.utc"
            )
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"Decimal {value} is not a JSON number")
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _place_of_failure(value: Any, path: str, open_: Set[int]) -> str:
    """The place of the first value in ``value`` that :func:`json.dumps`
    does not encode (``context['tags'][2]``), or ``path`` itself when no
    part of it is to blame. Looked for only after an encoding failed: json's
    own message names the type but not the place, which in a large context is
    what a user needs."""
    if isinstance(value, (dict, list, tuple)):
        if id(value) in open_:
            return path
        open_.add(id(value))
        if isinstance(value, dict):
            items: Iterable[Tuple[str, Any]] = (
                (f"{path}[{key!r}]" if path else str(key), item) for key, item in value.items()
            )
        else:
            items = ((f"{path}[{i}]", item) for i, item in enumerate(value))
        for place, item in items:
            if not _encodes(item):
                return _place_of_failure(item, place, open_)
        open_.discard(id(value))
    return path


def _encodes(value: Any) -> bool:
    """Whether ``value`` encodes as a request body does: JSON, then UTF-8
    (a lone surrogate passes :func:`json.dumps` and fails there)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False, default=_json_default).encode("utf-8")
    except (TypeError, ValueError):
        return False
    return True


def _check_keys(value: Any, path: str, open_: Set[int]) -> None:
    """Raises TypeError at the first mapping key in ``value`` that is not a
    ``str``: :func:`json.dumps` writes ``1`` as ``"1"`` and ``None`` as
    ``"null"``, so the handler would read another key than was given."""
    if isinstance(value, (dict, list, tuple)):
        if id(value) in open_:
            return
        open_.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise TypeError(
                        f"{path}: key {key!r} ({type(key).__name__}) is not a str "
                        "(JSON object keys are strings)"
                    )
                _check_keys(item, f"{path}[{key!r}]", open_)
        else:
            for i, item in enumerate(value):
                _check_keys(item, f"{path}[{i}]", open_)
        open_.discard(id(value))


# -- results -----------------------------------------------------------------


@dataclass(frozen=True)
class StepError:
    """What went wrong with a step's latest failed attempt."""

    #: The error's kind: the handler's exception class, or one of
    #: :mod:`tasker_core.error_types` for errors the system reports.
    error_type: str
    message: str
    #: Whether trying again may succeed.
    retryable: bool
    #: Backtrace lines, innermost first, where the handler's language has them.
    backtrace: Tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskStep:
    """One step of a :class:`Task` (``StepDetail`` in ``openapi.json``)."""

    #: The step's id (the ``step_id`` its workers see).
    step_id: int
    #: Its name in the workflow template.
    name: str
    handler: str
    #: ``waiting``, ``running``, ``retry_wait``, ``completed``, ``failed``,
    #: ``blocked`` or ``cancelled``.
    state: str
    #: How it ended (``completed``, ``failed``, ``blocked``, ``cancelled``);
    #: ``None`` while it has not.
    outcome: Optional[str]
    #: Attempts dispatched.
    attempts: int
    #: From first dispatch to end, in ms (0 until both happened).
    duration_ms: int
    #: For a running step, the worker it is out at now (None while it waits
    #: for one); for any other, the worker of its latest result.
    worker_id: Optional[str]
    #: The output (plain JSON data), once completed.
    output: Any
    #: The latest failed attempt's error.
    error: Optional[StepError]
    #: For a blocked step, the failed step upstream.
    blocked_by: Optional[str]
    #: While waiting out a retry backoff: when the next attempt is due.
    next_run_at: Optional[datetime]
    #: The steps it waits for, by name.
    depends_on: List[str] = field(default_factory=list)
    #: The step as the server sent it.
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """Whether the step has ended (it has an ``outcome``)."""
        return self.outcome is not None


@dataclass(frozen=True)
class Task:
    """A task and its steps (``TaskDetail`` in ``openapi.json``): the report
    once it has ended."""

    task_id: int
    workflow: str
    #: ``running``, ``complete``, ``failed`` or ``cancelled``.
    status: TaskStatus
    #: Whether a cancel was requested (the task stops dispatching).
    cancel_requested: bool
    idempotency_key: Optional[str]
    #: The task's context (handlers see it as ``task_context``).
    context: Dict[str, Any]
    #: When it was created (and started).
    started_at: datetime
    #: When it ended.
    finished_at: Optional[datetime]
    #: From creation to end (or to the answer), in ms.
    duration_ms: int
    #: Each step, in template order.
    steps: Tuple[TaskStep, ...]
    #: The task as the server sent it (``to_dict()`` returns a copy).
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """Whether the task has ended: its ``status`` is not ``running``."""
        return self.status != "running"

    def step(self, name: str) -> TaskStep:
        """The step called ``name``; :class:`KeyError` when there is none."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def to_dict(self) -> Dict[str, Any]:
        """The task exactly as the server returned it (a deep copy of
        ``raw``), for :func:`json.dumps`."""
        return copy.deepcopy(self.raw)


@dataclass(frozen=True)
class TaskSummary:
    """A task in a :class:`TaskPage` (``TaskSummary`` in ``openapi.json``)."""

    task_id: int
    workflow: str
    status: TaskStatus
    cancel_requested: bool
    idempotency_key: Optional[str]
    started_at: datetime
    finished_at: Optional[datetime]
    steps_total: int
    steps_completed: int
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def ended(self) -> bool:
        """Whether the task has ended: its ``status`` is not ``running``."""
        return self.status != "running"


@dataclass(frozen=True)
class TaskPage:
    """One page of :meth:`Client.list`, newest first."""

    tasks: Tuple[TaskSummary, ...]
    #: Pass as ``cursor`` for the next page; ``None`` on the last page.
    next_cursor: Optional[str]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class WorkflowStep:
    """One step of a :class:`Workflow`."""

    name: str
    handler: str
    depends_on: Tuple[str, ...]


@dataclass(frozen=True)
class Workflow:
    """A workflow the server can run (``WorkflowInfo`` in ``openapi.json``)."""

    #: What :meth:`Client.submit` takes as ``workflow``.
    name: str
    description: Optional[str]
    steps: Tuple[WorkflowStep, ...]
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# -- decoding ----------------------------------------------------------------

_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:[.,](\d+))?([Zz]|[+-]\d{2}:?\d{2})"
)


def _time(value: Any) -> datetime:
    """An RFC 3339 timestamp as an aware datetime in UTC (any number of
    fraction digits, ``Z`` or an offset; Python 3.9's ``fromisoformat``
    takes neither)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp, got {type(value).__name__}")
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value[:64]!r}")
    date, clock, fraction, offset = match.groups()
    micros = (fraction or "")[:6].ljust(6, "0")
    if offset in ("Z", "z"):
        offset = "+00:00"
    elif ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    return datetime.fromisoformat(f"{date}T{clock}.{micros}{offset}").astimezone(timezone.utc)


def _opt_time(value: Any) -> Optional[datetime]:
    return None if value is None else _time(value)


def _opt_str(value: Any) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _status(value: Any) -> TaskStatus:
    # Not checked against the four: a newer server's status still reads.
    return cast(TaskStatus, _str(value))


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _object(value: Any, what: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected an object, got {type(value).__name__}")
    return value


def _step_error(value: Any) -> Optional[StepError]:
    if value is None:
        return None
    raw = _object(value, "error")
    backtrace = raw.get("backtrace") or []
    return StepError(
        error_type=_str(raw["error_type"]),
        message=_str(raw["message"]),
        retryable=bool(raw["retryable"]),
        backtrace=tuple(str(line) for line in backtrace),
    )


def _task_step(value: Any) -> TaskStep:
    raw = _object(value, "step")
    return TaskStep(
        step_id=_int(raw["step_id"]),
        name=_str(raw["name"]),
        handler=_str(raw["handler"]),
        state=_str(raw["state"]),
        outcome=_opt_str(raw.get("outcome")),
        attempts=_int(raw["attempts"]),
        duration_ms=_int(raw["duration_ms"]),
        worker_id=_opt_str(raw.get("worker_id")),
        output=raw.get("output"),
        error=_step_error(raw.get("error")),
        blocked_by=_opt_str(raw.get("blocked_by")),
        next_run_at=_opt_time(raw.get("next_run_at")),
        depends_on=[_str(d) for d in raw.get("depends_on") or []],
        raw=raw,
    )


def _task(value: Any) -> Task:
    raw = _object(value, "task")
    context = raw.get("context")
    return Task(
        task_id=_int(raw["task_id"]),
        workflow=_str(raw["workflow"]),
        status=_status(raw["status"]),
        cancel_requested=bool(raw["cancel_requested"]),
        idempotency_key=_opt_str(raw.get("idempotency_key")),
        context=context if isinstance(context, dict) else {},
        started_at=_time(raw["started_at"]),
        finished_at=_opt_time(raw.get("finished_at")),
        duration_ms=_int(raw["duration_ms"]),
        steps=tuple(_task_step(s) for s in raw["steps"]),
        raw=raw,
    )


def _summary(value: Any) -> TaskSummary:
    raw = _object(value, "task")
    return TaskSummary(
        task_id=_int(raw["task_id"]),
        workflow=_str(raw["workflow"]),
        status=_status(raw["status"]),
        cancel_requested=bool(raw["cancel_requested"]),
        idempotency_key=_opt_str(raw.get("idempotency_key")),
        started_at=_time(raw["started_at"]),
        finished_at=_opt_time(raw.get("finished_at")),
        steps_total=_int(raw["steps_total"]),
        steps_completed=_int(raw["steps_completed"]),
        raw=raw,
    )


def _page(value: Any) -> TaskPage:
    raw = _object(value, "page")
    return TaskPage(
        tasks=tuple(_summary(t) for t in raw["tasks"]),
        next_cursor=_opt_str(raw.get("next_cursor")),
        raw=raw,
    )


def _workflow(value: Any) -> Workflow:
    raw = _object(value, "workflow")
    return Workflow(
        name=_str(raw["name"]),
        description=_opt_str(raw.get("description")),
        steps=tuple(
            WorkflowStep(
                name=_str(s["name"]),
                handler=_str(s["handler"]),
                depends_on=tuple(_str(d) for d in s.get("depends_on") or []),
            )
            for s in raw["steps"]
        ),
        raw=raw,
    )


def _workflows(value: Any) -> List[Workflow]:
    return [_workflow(w) for w in _object(value, "answer")["workflows"]]


# -- transport ---------------------------------------------------------------


def _quote(body: bytes) -> str:
    """At most MAX_QUOTED_CHARS characters of a body, for a message."""
    text = " ".join(body.decode("utf-8", "replace").split())
    if not text:
        return "(empty body)"
    if len(text) > MAX_QUOTED_CHARS:
        return text[:MAX_QUOTED_CHARS] + "…"
    return text


def _problem(body: bytes) -> Optional[Dict[str, Any]]:
    """The body as a problem document, or None when it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    if (
        isinstance(doc, dict)
        and isinstance(doc.get("type"), str)
        and isinstance(doc.get("detail"), str)
    ):
        return doc
    return None


def _slug(problem: Mapping[str, Any]) -> str:
    return str(problem["type"]).rstrip("/").rsplit("/", 1)[-1]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The API never redirects; a 3xx is reported, not followed."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _NoAnswer(Exception):
    """A try that got no answer: ``cause`` is why; ``sent`` is False when the
    request certainly never reached the server (connection refused);
    ``final`` when trying again cannot help."""

    def __init__(self, cause: BaseException, text: str, sent: bool, final: bool = False) -> None:
        super().__init__(text)
        self.cause = cause
        self.text = text
        self.sent = sent
        self.final = final


#: Most bytes of a request body ``tasker serve`` takes (``body-too-large``).
MAX_BODY_BYTES = 1 << 20

#: Most bytes of an answer read: a task with every step's output is far
#: smaller. A server that streams without end (hostile, or not tasker)
#: would otherwise take the caller's memory.
MAX_ANSWER_BYTES = 256 << 20


def _read_answer(response: Any, method: str, url: str) -> bytes:
    """The body of ``response``, read a MiB at a time up to
    :data:`MAX_ANSWER_BYTES`; past that an :class:`ApiError`."""
    pieces: List[bytes] = []
    total = 0
    while True:
        piece = response.read(1 << 20)
        if not piece:
            return b"".join(pieces)
        total += len(piece)
        if total > MAX_ANSWER_BYTES:
            raise ApiError(
                f"{method} {url} answered with more than {MAX_ANSWER_BYTES >> 20} MiB, more than"
                " any answer of the API; stopped reading",
                status=int(getattr(response, "status", 0) or getattr(response, "code", 0)),
            )
        pieces.append(piece)


class _NotHttp(http.client.HTTPException):
    """The server answered in ZeroMQ's protocol: the URL names an
    orchestrator's ZeroMQ endpoint, not its HTTP API."""


class _HttpConnection(http.client.HTTPConnection):
    """Tells a ZeroMQ endpoint from an HTTP server at the first byte.

    A ZeroMQ socket greets first, ten bytes starting with 0xFF and no line
    end, then waits: ``http.client`` waited for a status line until the read
    timeout, five times over (2.5 minutes for a call). An HTTP answer never
    starts with 0xFF; looking costs nothing, since the answer is waited for
    anyway.
    """

    def getresponse(self) -> http.client.HTTPResponse:
        if self.sock is not None:
            if self.sock.recv(1, socket.MSG_PEEK) == b"\xff":
                raise _NotHttp(
                    "it answered in ZeroMQ's protocol, not HTTP: that is an orchestrator's"
                    " ZeroMQ endpoint; the API is the `api http://...` address tasker serve"
                    " prints"
                )
        return super().getresponse()


class _HttpHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HttpConnection, req)


class _ServerError(Exception):
    """A try answered with a 5xx."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.problem = _problem(body)

    @property
    def text(self) -> str:
        if self.problem is not None:
            return f"{self.status} {_slug(self.problem)}: {self.problem['detail']}"
        return f"HTTP {self.status}: {_quote(self.body)}"


def _describe(error: BaseException, timeout: float) -> Tuple[str, bool]:
    """Why a try got no answer, and whether the request may have been sent."""
    if isinstance(error, ssl.SSLCertVerificationError):
        # The handshake failed: nothing was sent.
        why = error.verify_message or error.reason or str(error)
        return (
            f"the server's TLS certificate was not trusted: {why}; for a private CA,"
            " name its certificate in SSL_CERT_FILE",
            False,
        )
    if isinstance(error, ConnectionRefusedError):
        return (error.strerror or "connection refused", False)
    if isinstance(error, socket.gaierror):
        return (f"cannot resolve the host: {error.strerror or error}", False)
    if isinstance(error, (socket.timeout, TimeoutError)):
        return (f"no answer within {timeout:.3g} s", True)
    if isinstance(error, http.client.RemoteDisconnected):
        return ("the connection closed without an answer", True)
    if isinstance(error, OSError) and error.strerror:
        return (error.strerror, True)
    return (str(error) or type(error).__name__, True)


def _check_timeout(
    value: Optional[float], what: str, positive: bool = False
) -> Optional[float]:
    """``value`` as seconds: 0 or more (a wait's: 0 asks once, inf never
    gives up), or with ``positive`` more than 0 and finite (a read timeout:
    0 failed every call as "is tasker serve running?")."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, got {type(value).__name__}")
    if positive and not (0 < value < math.inf):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{what} must be a non-negative number of seconds, got {value!r}")
    return float(value)


def _format_seconds(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


def _created_since(value: Union[datetime, str, None]) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("created_since must be an aware datetime (e.g. with tzinfo=timezone.utc)")
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


T = TypeVar("T")


class _Core:
    """What Client and AsyncClient share: the address, the token, one
    blocking request with its retries, and each operation's request."""

    def __init__(
        self,
        url: Optional[str],
        token: Optional[str],
        config_path: Union[str, "os.PathLike[str]", None],
        env: Optional[str],
        timeout: float,
    ) -> None:
        checked = _check_timeout(timeout, "timeout", positive=True)
        if checked is None:
            raise ValueError("timeout must be a positive number of seconds, got None")
        if token is not None and not isinstance(token, str):
            raise TypeError(f"token must be a str, got {type(token).__name__}")
        # An explicit token is checked in Rust as the configuration's is
        # (printable ASCII only: a line break inside one went into the
        # header, and the error quoted it); the whitespace around it, as a
        # file ends, is not the token's.
        config = _native.load_config(
            os.fspath(config_path) if config_path is not None else None,
            env,
            {"api_token": token} if token is not None else None,
        )
        self.url = _native.parse_api_url(url) if url is not None else _native.api_base_url(config)
        self.token: str = str(config["api_token"] or "").strip()
        self.timeout = checked
        # HTTPS always verifies the certificate and the host name, against
        # OpenSSL's default verify paths (which honour SSL_CERT_FILE).
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}),
            _HttpHandler(),
            urllib.request.HTTPSHandler(context=ssl.create_default_context()),
            _NoRedirect(),
        )

    # One request, with the retries of CLIENT.md §5.
    def request(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Optional[str]]] = None,
        body: Any = None,
        idempotent: bool,
        timeout: Optional[float] = None,
        deadline: Optional[float] = None,
        decode: Callable[[Any], T],
    ) -> Tuple[int, T]:
        url = self.url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if body is not None:
            try:
                text = json.dumps(body, ensure_ascii=False, allow_nan=False, default=_json_default)
                data = text.encode("utf-8")
            except (TypeError, ValueError) as error:
                kind = TypeError if isinstance(error, TypeError) else ValueError
                if isinstance(error, UnicodeEncodeError):
                    # Its own message counts characters of the whole body.
                    bad = error.object[error.start : error.end]
                    error = ValueError(
                        f"a string with a lone surrogate ({bad!r}), which is not Unicode text"
                    )
                raise kind(f"{_place_of_failure(body, '', set())}: {error}") from None
            if len(data) > MAX_BODY_BYTES:
                # Said here, before the upload: a server refuses a body
                # much larger than its limit unread and closes, and the
                # client saw a broken pipe, a server "not reachable".
                raise ValidationError(
                    f"the body is {len(data)} bytes, larger than the server's limit of "
                    f"{MAX_BODY_BYTES} bytes (1 MiB); nothing was sent",
                    status=None,
                    problem_type="body-too-large",
                )
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        read_timeout = timeout if timeout is not None else self.timeout
        tries = 0
        # Answered `shutting-down` by an earlier try: a refusal after it is
        # the server gone, not a server never started.
        shut_down = False
        while True:
            tries += 1
            try_timeout = read_timeout
            if deadline is not None:
                # A server holding each try (a PostgreSQL store down holds a
                # read 10 s) took a 3 s wait 53 s to give up.
                left = deadline + DEADLINE_GRACE - time.monotonic()
                try_timeout = min(read_timeout, max(0.05, left))
            try:
                status, answer = self._try(method, url, data, headers, try_timeout)
            except (_NoAnswer, _ServerError) as failure:
                if isinstance(failure, _ServerError) and failure.problem is not None:
                    shut_down = shut_down or _slug(failure.problem) == "shutting-down"
                final = isinstance(failure, _NoAnswer) and failure.final
                if not idempotent or tries > len(RETRY_DELAYS) or final:
                    self._unavailable(failure, tries, idempotent, shut_down=shut_down)
                delay = RETRY_DELAYS[tries - 1] * random.uniform(1 - RETRY_JITTER, 1 + RETRY_JITTER)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    self._unavailable(
                        failure, tries, idempotent, past_deadline=True, shut_down=shut_down
                    )
                log.debug(
                    "%s %s: %s; retry %d of %d in %.2f s",
                    method,
                    url,
                    failure.text,
                    tries,
                    len(RETRY_DELAYS),
                    delay,
                )
                time.sleep(delay)
                continue
            try:
                return status, decode(json.loads(answer))
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(
                    f"unexpected answer to {method} {url} ({status}): {e}: {_quote(answer)}",
                    status=status,
                ) from None

    def _try(
        self, method: str, url: str, data: Optional[bytes], headers: Dict[str, str], timeout: float
    ) -> Tuple[int, bytes]:
        """One try: the status and body of a 2xx answer; raises the
        ClientError of a 4xx (or 3xx) answer, _ServerError for a 5xx and
        _NoAnswer without an answer."""
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            try:
                with self._opener.open(request, timeout=timeout) as response:
                    return int(response.status), _read_answer(response, method, url)
            except urllib.error.HTTPError as answer:
                with answer:
                    status, body = answer.code, _read_answer(answer, method, url)
        except _NotHttp as error:
            raise _NoAnswer(error, str(error), False, final=True) from None
        except (OSError, http.client.HTTPException) as error:
            cause: BaseException = error
            if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
                cause = error.reason
            text, sent = _describe(cause, timeout)
            raise _NoAnswer(cause, text, sent) from None
        if status >= 500:
            raise _ServerError(status, body)
        raise self._client_error(method, url, status, body)

    @staticmethod
    def _client_error(method: str, url: str, status: int, body: bytes) -> ClientError:
        problem = _problem(body)
        if problem is None:
            # A proxy in front of the server may ask for credentials in a
            # page of its own: still a matter of credentials.
            unexpected: Type[ClientError] = Unauthorized if status == 401 else ApiError
            return unexpected(
                f"unexpected answer to {method} {url}: HTTP {status}: {_quote(body)}",
                status=status,
            )
        slug = _slug(problem)
        cls = _PROBLEM_CLASSES.get(slug, ApiError)
        return cls(str(problem["detail"]), status=status, problem_type=slug, problem=problem)

    def _unavailable(
        self,
        failure: Union[_NoAnswer, _ServerError],
        tries: int,
        idempotent: bool,
        past_deadline: bool = False,
        shut_down: bool = False,
    ) -> NoReturn:
        if shut_down and isinstance(failure, _NoAnswer):
            message = (
                f"the tasker server at {self.url} shut down (it answered shutting-down)"
                f" and has not answered since ({failure.text}"
            )
        elif past_deadline:
            state = (
                "did not answer by the wait's deadline"
                if isinstance(failure, _NoAnswer)
                else "was unavailable until the wait's deadline"
            )
            message = f"the tasker server at {self.url} {state} ({failure.text}"
        elif isinstance(failure, _NoAnswer):
            message = f"the tasker server at {self.url} is not reachable ({failure.text}"
        else:
            message = f"the tasker server at {self.url} is unavailable ({failure.text}"
        message += f"; {tries} tries)" if tries > 1 else ")"
        final = isinstance(failure, _NoAnswer) and failure.final
        if idempotent:
            # A server that answered 5xx is running: the hint is for silence
            # (and one silent past a wait's deadline may be up, its store down).
            if shut_down and isinstance(failure, _NoAnswer):
                message += "; a restarted server carries on with the task: wait again once it is up"
            elif not final and not past_deadline and isinstance(failure, _NoAnswer):
                message += "; is tasker serve running?"
        elif isinstance(failure, _NoAnswer) and not failure.sent:
            message += (
                "; no task was created. A submit without idempotency_key is tried only once:"
                " pass one to make it safe to retry"
            )
        else:
            message += (
                "; the task may or may not have been created. A submit without"
                " idempotency_key is tried only once: pass one to make it safe to retry"
            )
        if isinstance(failure, _NoAnswer):
            raise ServerUnavailable(message, cause=failure.cause) from failure.cause
        problem = failure.problem
        raise ServerUnavailable(
            message,
            status=failure.status,
            problem_type=_slug(problem) if problem is not None else None,
            problem=problem,
        )

    # -- the operations' requests

    def submit(
        self, workflow: str, context: Optional[Mapping[str, Any]], idempotency_key: Optional[str]
    ) -> Tuple[Task, bool]:
        if context is not None and not isinstance(context, Mapping):
            # The server takes a JSON object only; `dict()` would turn a list
            # of pairs into one, and fail on anything else with a message
            # about "dictionary update sequence elements".
            raise TypeError(
                f"context must be a mapping (a JSON object) or None, got {type(context).__name__}"
            )
        body: Dict[str, Any] = {
            "workflow": workflow,
            "context": dict(context) if context is not None else {},
        }
        _check_keys(body["context"], "context", set())
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        status, task = self.request(
            "POST", "/v1/tasks", body=body, idempotent=idempotency_key is not None, decode=_task
        )
        return task, status == 201

    @staticmethod
    def _task_path(task_id: int) -> str:
        if isinstance(task_id, bool) or not isinstance(task_id, int):
            raise TypeError(f"task_id must be an int, got {type(task_id).__name__}")
        return f"/v1/tasks/{task_id}"

    def get(
        self, task_id: int, wait: Optional[float] = None, deadline: Optional[float] = None
    ) -> Task:
        """The task; with ``wait``, long-polled, its tries ending by
        ``deadline`` (``time.monotonic()``) and a little more."""
        path = self._task_path(task_id)
        if wait is None:
            return self.request("GET", path, idempotent=True, decode=_task)[1]
        return self.request(
            "GET",
            path,
            query={"wait": _format_seconds(wait)},
            idempotent=True,
            timeout=wait + WAIT_SLACK,
            deadline=deadline,
            decode=_task,
        )[1]

    def cancel(self, task_id: int) -> Task:
        path = self._task_path(task_id) + "/cancel"
        return self.request("POST", path, idempotent=True, decode=_task)[1]

    def list(
        self,
        status: Optional[TaskStatus],
        workflow: Optional[str],
        created_since: Union[datetime, str, None],
        limit: Optional[int],
        cursor: Optional[str],
    ) -> TaskPage:
        query = {
            "status": status,
            "workflow": workflow,
            "created_since": _created_since(created_since),
            "limit": None if limit is None else str(limit),
            "cursor": cursor,
        }
        return self.request("GET", "/v1/tasks", query=query, idempotent=True, decode=_page)[1]

    def workflows(self) -> List[Workflow]:
        return self.request("GET", "/v1/workflows", idempotent=True, decode=_workflows)[1]


def _wait_timeout(task: Task, timeout: float) -> WaitTimeout:
    return WaitTimeout(
        f"task {task.task_id} ({task.workflow}) did not end within {timeout:g} s;"
        f" it is {task.status}",
        task=task,
    )


# -- the blocking client -----------------------------------------------------


class Client:
    """A blocking client of ``tasker serve``'s HTTP API.

    ``Client(url=None, token=None, *, config_path=None, env=None,
    timeout=30.0)``:

    * ``url``: the API's ``http://HOST:PORT``, or ``https://HOST[:PORT]``
      for a TLS-terminating proxy in front of it (an optional path prefix
      allowed); default: the configuration's ``api_url``, else ``http://`` +
      ``api_listen``. ``token``: the bearer token; default ``api_token``
      (``""`` sends none).
    * The configuration is resolved like a worker's: the YAML file
      ``config_path``'s section ``env`` (default ``TASKER_ENV``, else
      ``development``) or the built-in defaults, then the ``TASKER_*``
      variables (``TASKER_API_URL``, ``TASKER_API_TOKEN``).
    * ``timeout``: the read timeout of each request but a wait's long-polls
      (which get their ``wait`` plus 10 s), in seconds.

    Raises :class:`~tasker_core.ConfigError` for a bad configuration or URL
    (a scheme other than ``http://`` or ``https://``). Over HTTPS the
    proxy's certificate must be trusted (the system's CA certificates, or
    the bundle ``SSL_CERT_FILE`` names); one that is not makes the call fail
    like an unreachable server (:class:`~tasker_core.ServerUnavailable`,
    after the retries). The client keeps no connection open and may be
    shared between threads.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        config_path: Union[str, "os.PathLike[str]", None] = None,
        env: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._core = _Core(url, token, config_path, env, timeout)

    @classmethod
    def from_config(
        cls,
        path: Union[str, "os.PathLike[str]"],
        env: Optional[str] = None,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> "Client":
        """A client configured from a YAML file (section ``env``)."""
        return cls(url, token, config_path=path, env=env, timeout=timeout)

    @property
    def url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._core.url

    @property
    def timeout(self) -> float:
        return self._core.timeout

    def __repr__(self) -> str:
        return f"Client(url={self.url!r}, token={'set' if self._core.token else 'none'})"

    def __reduce__(self) -> Tuple[Any, ...]:
        # Pickled as what it was made with, so that it can be handed to a
        # multiprocessing worker or a Process (pickling its SSL context
        # failed, for an http:// URL too). The token travels with it.
        return (_client, (self._core.url, self._core.token, self._core.timeout))

    def submit(
        self,
        workflow: str,
        context: Optional[Mapping[str, Any]] = None,
        idempotency_key: Optional[str] = None,
    ) -> "TaskHandle":
        """Starts a task of ``workflow`` with ``context`` (a JSON object) and
        returns its :class:`TaskHandle`.

        With an ``idempotency_key`` (1 to 255 characters), submitting again
        with the same key, workflow and context returns the task the first
        call created (``handle.created`` False) instead of a new one, and the
        call is retried like any other when the server cannot be reached;
        with the same key and another workflow or context it raises
        :class:`~tasker_core.errors.IdempotencyConflict`. Without a key the
        call is tried once. Raises
        :class:`~tasker_core.errors.UnknownWorkflow`,
        :class:`~tasker_core.errors.ValidationError` (``field`` names what),
        and, before any request, a ``TypeError`` for a context that is not a
        mapping (the server takes a JSON object only) and a
        ``TypeError``/``ValueError`` for one holding values that are not JSON.
        """
        task, created = self._core.submit(workflow, context, idempotency_key)
        return TaskHandle(self, task, created)

    def get(self, task_id: int) -> Task:
        """The task as it is now; :class:`~tasker_core.errors.TaskNotFound`
        when there is none."""
        return self._core.get(task_id)

    def wait(self, task_id: int, timeout: Optional[float] = None) -> Task:
        """Waits until the task has ended and returns it (the report).

        ``timeout`` in seconds (``None``: no deadline); when it passes first,
        raises :class:`~tasker_core.errors.WaitTimeout`, whose ``task`` is
        the task as last seen. ``timeout=0`` looks once. The server is asked
        to hold each request up to 20 s (long-poll), so a task that ends is
        seen at once, without polling.
        """
        limit = _check_timeout(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            left = WAIT_CHUNK if deadline is None else deadline - time.monotonic()
            task = self._core.get(task_id, max(0.0, min(WAIT_CHUNK, left)), deadline)
            if task.ended:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                assert limit is not None
                raise _wait_timeout(task, limit)

    def cancel(self, task_id: int) -> Task:
        """Asks for the task to be cancelled: no more steps are dispatched,
        steps running finish, and the task ends ``cancelled`` (see
        :meth:`wait`). Returns the task as the cancel left it
        (``cancel_requested`` true). Raises
        :class:`~tasker_core.errors.TaskEnded` when it had already ended."""
        return self._core.cancel(task_id)

    def list(
        self,
        status: Optional[TaskStatus] = None,
        workflow: Optional[str] = None,
        created_since: Union[datetime, str, None] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        """One page of tasks, newest first, filtered by ``status``
        (``running``, ``complete``, ``failed``, ``cancelled``), ``workflow``
        and ``created_since`` (an aware datetime or an RFC 3339 string), at
        most ``limit`` (1 to 1000; server default 50) of them; pass a page's
        ``next_cursor`` as ``cursor`` for the next one."""
        return self._core.list(status, workflow, created_since, limit, cursor)

    def iter_tasks(
        self,
        status: Optional[TaskStatus] = None,
        workflow: Optional[str] = None,
        created_since: Union[datetime, str, None] = None,
        page_size: Optional[int] = None,
    ) -> Iterator[TaskSummary]:
        """Every task matching the filters, newest first, fetching pages of
        ``page_size`` as the iteration goes."""
        cursor: Optional[str] = None
        while True:
            page = self._core.list(status, workflow, created_since, page_size, cursor)
            yield from page.tasks
            if page.next_cursor is None or not page.tasks:
                return
            cursor = page.next_cursor

    def workflows(self) -> List[Workflow]:
        """The workflows the server has loaded, with their steps."""
        return self._core.workflows()


_C = TypeVar("_C")


class _Handle(Generic[_C]):
    """What the two handles share: the task's id, whether the submit created
    it, and the task as its answer showed it."""

    __slots__ = ("_client", "_task", "_created")

    def __init__(self, client: _C, task: Task, created: bool) -> None:
        self._client = client
        self._task = task
        self._created = created

    @property
    def id(self) -> int:
        return self._task.task_id

    @property
    def created(self) -> bool:
        return self._created

    @property
    def task(self) -> Task:
        """The task as the submit's answer showed it."""
        return self._task

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id}, workflow={self._task.workflow!r},"
            f" created={self._created})"
        )


class TaskHandle(_Handle["Client"]):
    """What :meth:`Client.submit` returns: the task's ``id``, whether this
    call ``created`` it (False when its idempotency key returned an earlier
    task), the ``task`` as the server answered, and :meth:`get`,
    :meth:`wait` and :meth:`cancel` for that task."""

    __slots__ = ()

    def get(self) -> Task:
        return self._client.get(self.id)

    def wait(self, timeout: Optional[float] = None) -> Task:
        return self._client.wait(self.id, timeout)

    def cancel(self) -> Task:
        return self._client.cancel(self.id)


# -- the asyncio client --------------------------------------------------------


def _client(url: str, token: str, timeout: float) -> "Client":
    """A pickled :class:`Client` made again."""
    return Client(url, token, timeout=timeout)


def _async_client(url: str, token: str, timeout: float, max_threads: int) -> "AsyncClient":
    """A pickled :class:`AsyncClient` made again."""
    return AsyncClient(url, token, timeout=timeout, max_threads=max_threads)


class AsyncClient:
    """The :class:`Client`'s operations as coroutines, for asyncio.

    Same arguments as :class:`Client`, plus ``max_threads`` (default 32):
    each request runs, with the standard library's blocking HTTP, on a
    thread of the client's own pool (not the event loop's default executor,
    which its own ``getaddrinfo`` and ``to_thread`` calls need), so at most
    ``max_threads`` requests are in flight at once and the rest queue.
    Waits ask the server for at most 2 s per request, so a cancelled
    ``await client.wait(...)`` raises ``CancelledError`` at once and leaves
    its thread within about 2 s. ``await client.aclose()`` (or ``async
    with``) lets the pool's threads go; a client that is not closed keeps
    them idle.
    """

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        config_path: Union[str, "os.PathLike[str]", None] = None,
        env: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_threads: int = 32,
    ) -> None:
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            raise ValueError(f"max_threads must be a positive int, got {max_threads!r}")
        self._core = _Core(url, token, config_path, env, timeout)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_threads, thread_name_prefix="tasker-client"
        )

    @classmethod
    def from_config(
        cls,
        path: Union[str, "os.PathLike[str]"],
        env: Optional[str] = None,
        *,
        url: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_threads: int = 32,
    ) -> "AsyncClient":
        """A client configured from a YAML file (section ``env``)."""
        return cls(
            url, token, config_path=path, env=env, timeout=timeout, max_threads=max_threads
        )

    def __reduce__(self) -> Tuple[Any, ...]:
        # As Client's: made again from what it was made with (its thread
        # pool and SSL context cannot be pickled, nor need to be).
        return (
            _async_client,
            (self._core.url, self._core.token, self._core.timeout, self._pool._max_workers),
        )

    @property
    def url(self) -> str:
        """The API's base URL, without a trailing slash."""
        return self._core.url

    @property
    def timeout(self) -> float:
        return self._core.timeout

    def __repr__(self) -> str:
        return f"AsyncClient(url={self.url!r}, token={'set' if self._core.token else 'none'})"

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Lets the pool's threads go once their requests are done (at once
        when idle); later calls raise ``RuntimeError``."""
        self._pool.shutdown(wait=False)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await loop.run_in_executor(self._pool, call)

    async def submit(
        self,
        workflow: str,
        context: Optional[Mapping[str, Any]] = None,
        idempotency_key: Optional[str] = None,
    ) -> "AsyncTaskHandle":
        """As :meth:`Client.submit`."""
        task, created = await self._run(self._core.submit, workflow, context, idempotency_key)
        return AsyncTaskHandle(self, task, created)

    async def get(self, task_id: int) -> Task:
        """As :meth:`Client.get`."""
        return await self._run(self._core.get, task_id)

    async def wait(self, task_id: int, timeout: Optional[float] = None) -> Task:
        """As :meth:`Client.wait`, asking the server for at most 2 s at a
        time."""
        limit = _check_timeout(timeout, "timeout")
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            left = ASYNC_WAIT_CHUNK if deadline is None else deadline - time.monotonic()
            chunk = max(0.0, min(ASYNC_WAIT_CHUNK, left))
            task = await self._run(self._core.get, task_id, chunk, deadline)
            if task.ended:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                assert limit is not None
                raise _wait_timeout(task, limit)

    async def cancel(self, task_id: int) -> Task:
        """As :meth:`Client.cancel`."""
        return await self._run(self._core.cancel, task_id)

    async def list(
        self,
        status: Optional[TaskStatus] = None,
        workflow: Optional[str] = None,
        created_since: Union[datetime, str, None] = None,
        limit: Optional[int] = None,
        cursor: Optional[str] = None,
    ) -> TaskPage:
        """As :meth:`Client.list`."""
        return await self._run(self._core.list, status, workflow, created_since, limit, cursor)

    async def iter_tasks(
        self,
        status: Optional[TaskStatus] = None,
        workflow: Optional[str] = None,
        created_since: Union[datetime, str, None] = None,
        page_size: Optional[int] = None,
    ) -> AsyncIterator[TaskSummary]:
        """As :meth:`Client.iter_tasks`: ``async for task in
        client.iter_tasks(...)``."""
        cursor: Optional[str] = None
        while True:
            page = await self.list(status, workflow, created_since, page_size, cursor)
            for task in page.tasks:
                yield task
            if page.next_cursor is None or not page.tasks:
                return
            cursor = page.next_cursor

    async def workflows(self) -> List[Workflow]:
        """As :meth:`Client.workflows`."""
        return await self._run(self._core.workflows)


class AsyncTaskHandle(_Handle["AsyncClient"]):
    """What :meth:`AsyncClient.submit` returns: as :class:`TaskHandle`, with
    coroutines."""

    __slots__ = ()

    async def get(self) -> Task:
        return await self._client.get(self.id)

    async def wait(self, timeout: Optional[float] = None) -> Task:
        return await self._client.wait(self.id, timeout)

    async def cancel(self) -> Task:
        return await self._client.cancel(self.id)
