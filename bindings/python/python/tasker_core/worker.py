"""The :class:`Worker`: register handlers, then serve steps.

How it runs
-----------
The native runtime (Rust) owns the ZeroMQ connection: hello, heartbeats,
credit, reconnects, drain and goodbye. This module only runs handlers:

* ``threads`` Python threads each pull a chunk of up to
  ``ceil(capacity / threads)`` steps (half the capacity when there is one
  thread), waiting with the GIL released, run the
  sync handlers one after another and hand the results back in one call.
  Results of quick handlers go back together; a slow handler first flushes
  what is already done.
* Async handlers (``async def``) run on one asyncio event loop in its own
  thread; the pulling threads only hand them over, so up to ``capacity`` of
  them run at once.
* ``capacity`` (default: the config's ``worker_capacity``) is what the
  orchestrator is told: the most steps this worker holds at once, running or
  waiting in a pulled chunk. ``threads`` defaults to ``min(capacity, 8)``
  when sync handlers are registered, and to 1 when all handlers are async;
  it is never more than ``capacity``.

The numbers come from the native module (``tasker_worker::policy`` in Rust,
shared with every SDK): ``handler_threads`` and ``chunk_size``.

Middleware (:meth:`Worker.use`) wrap each handler call where the handler
runs: sync ones on the pulling thread, ``async def`` ones on the event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import difflib
import inspect
import logging
import os
import signal
import threading
import time
import traceback
import uuid
import weakref
from decimal import Decimal
from types import FrameType
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from . import _logging, _native
from ._native import Step
from .error_types import UNKNOWN_HANDLER
from .errors import ConfigError, TaskerError

__all__ = [
    "Worker",
    "Handler",
    "HandlerObject",
    "StepOutput",
    "Middleware",
    "SyncMiddleware",
    "AsyncMiddleware",
    "CallNext",
    "AsyncCallNext",
]

log = logging.getLogger("tasker_core.worker")

#: What a handler may return: JSON data (``None``, ``bool``, ``int``,
#: ``float``, ``str``, lists and tuples of it, dicts with ``str`` keys), and
#: the values sent as ISO 8601 or canonical strings: an aware
#: ``datetime.datetime``, a ``datetime.date``, a ``decimal.Decimal``, a
#: ``uuid.UUID``. To a type checker, list items are checked but a dict's
#: values are ``object`` (so a ``TypedDict`` is a valid output); the runtime
#: checks everything and fails the step with ``SerializationError`` naming
#: the place of a bad value.
StepOutput = Union[
    None,
    bool,
    int,
    float,
    str,
    datetime.date,
    Decimal,
    uuid.UUID,
    Sequence["StepOutput"],
    Mapping[str, object],
]


class HandlerObject(Protocol):
    """A handler object: its ``call(step)`` runs the step (``async def call``
    runs on the worker's event loop)."""

    def call(self, step: Step, /) -> Union[StepOutput, Awaitable[StepOutput]]: ...


#: Everything :meth:`Worker.register` and :meth:`Worker.handler` take: a
#: function (or any callable) taking the :class:`Step` and returning its
#: output, an ``async def`` one, an object with a ``call(step)`` method, or a
#: class of such objects (instantiated without arguments).
Handler = Union[
    Callable[[Step], StepOutput],
    Callable[[Step], Awaitable[StepOutput]],
    HandlerObject,
    Type[HandlerObject],
]
HandlerT = TypeVar("HandlerT", bound=Handler)

#: What a sync middleware calls to go on: the next middleware, or at the end
#: the handler; returns the step's output.
CallNext = Callable[[Step], StepOutput]
#: What an ``async def`` middleware awaits to go on.
AsyncCallNext = Callable[[Step], Awaitable[StepOutput]]
#: A middleware around sync handlers, run on the handler's thread:
#: ``def mw(step, call_next)`` returning the step's output (usually
#: ``call_next(step)``'s).
SyncMiddleware = Callable[[Step, CallNext], StepOutput]
#: A middleware around ``async def`` handlers, run on the event loop:
#: ``async def mw(step, call_next)`` returning ``await call_next(step)``'s
#: value (or another output).
AsyncMiddleware = Callable[[Step, AsyncCallNext], Awaitable[StepOutput]]
#: What :meth:`Worker.use` takes.
Middleware = Union[SyncMiddleware, AsyncMiddleware]
MiddlewareT = TypeVar("MiddlewareT", bound=Middleware)


def _is_async(fn: Any) -> bool:
    """Whether calling ``fn`` gives a coroutine (an ``async def`` function or
    an object whose ``__call__`` is one)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )


def _link(
    middleware: Callable[[Step, Any], Any], call_next: Callable[[Step], Any]
) -> Callable[[Step], Any]:
    # One closure per middleware and handler, made at start: a call goes
    # through no list walk. Frames of this file are left out of backtraces.
    def link(step: Step) -> Any:
        return middleware(step, call_next)

    return link


def _chain(
    handler: Callable[[Step], Any], middleware: Sequence[Callable[[Step, Any], Any]]
) -> Callable[[Step], Any]:
    """``handler`` inside ``middleware``, the first registered outermost;
    the handler itself when there is none."""
    fn = handler
    for mw in reversed(middleware):
        fn = _link(mw, fn)
    return fn


#: Longest a finished result waits for the rest of its chunk, in seconds.
_FLUSH_AFTER = 0.002
#: How long the pulling threads get to leave after the runtime stopped.
_THREAD_EXIT_GRACE = 1.0
#: Longest the main thread waits in run() before looking for a signal
#: another thread received.
_SIGNAL_POLL = 0.1

_live_workers: "weakref.WeakSet[Worker]" = weakref.WeakSet()
_this_file = os.path.normcase(__file__)


def _backtrace(exc: BaseException) -> List[str]:
    """``file:line in function`` lines, innermost first, without our frames."""
    # walk_tb, not extract_tb: these three fields are all we report, and
    # extract_tb also stats every source file and reads its lines.
    frames = [
        (frame.f_code.co_filename, lineno, frame.f_code.co_name)
        for frame, lineno in traceback.walk_tb(exc.__traceback__)
        if os.path.normcase(frame.f_code.co_filename) != _this_file
    ]
    return [f"{filename}:{lineno} in {name}" for filename, lineno, name in reversed(frames)]


def _attribute(exc: BaseException, name: str) -> Any:
    """``exc.name``, or None when it has none (or reading it fails)."""
    try:
        return getattr(exc, name, None)
    except Exception:  # noqa: BLE001 - a broken property is no attribute
        return None


class _AsyncRunner:
    """One asyncio event loop, in its own thread, running async handlers."""

    def __init__(self, worker: "Worker") -> None:
        self._worker = worker
        assert worker._rt is not None, "the runtime starts before the event loop"
        self._rt: _native.WorkerRuntime = worker._rt
        self.loop = asyncio.new_event_loop()
        self._tasks: "set[asyncio.Task[None]]" = set()
        self._done: List[Tuple[Step, Any, float]] = []
        self._flush_scheduled = False
        self._stopping = False
        self.thread = threading.Thread(target=self._run, name="tasker-core-asyncio", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self._stopping = True
            self._cancel_abandoned()
            self.loop.close()

    def _cancel_abandoned(self) -> None:
        """Cancels the handlers still running past the drain deadline (their
        steps were given up) and lets them unwind, their ``finally`` blocks
        run, before :meth:`Worker.run` returns. Cancelled and never awaited,
        each was logged by asyncio as an ERROR ("Task was destroyed but it is
        pending!") and its ``finally`` ran at interpreter exit."""
        pending = list(self._tasks)
        if not pending:
            return
        for task in pending:
            task.cancel()
        _, stubborn = self.loop.run_until_complete(
            asyncio.wait(pending, timeout=_THREAD_EXIT_GRACE / 2)
        )
        if stubborn:
            log.warning(
                "%d async handler(s) ignored their cancellation at the stop; left unfinished",
                len(stubborn),
            )
            # Said once above, not again per task when it is collected.
            self.loop.set_exception_handler(lambda _loop, _context: None)

    def submit(self, items: List[Tuple[Callable[[Step], Awaitable[Any]], Step]]) -> None:
        """Starts the handlers on the loop; any thread."""
        self.loop.call_soon_threadsafe(self._start, items)

    def _start(self, items: List[Tuple[Callable[[Step], Awaitable[Any]], Step]]) -> None:
        for fn, step in items:
            task = self.loop.create_task(self._execute(fn, step))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _execute(self, fn: Callable[[Step], Awaitable[Any]], step: Step) -> None:
        started = time.perf_counter()
        try:
            output = await fn(step)
        except BaseException as exc:  # noqa: BLE001 - every failure is reported
            if self._stopping and isinstance(exc, asyncio.CancelledError):
                return  # given up at the drain deadline: nobody takes a result now
            self._worker._fail(step, exc, time.perf_counter() - started)
            return
        self._done.append((step, output, time.perf_counter() - started))
        if not self._flush_scheduled:
            # One complete_many per loop iteration, not one per handler.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        done, self._done = self._done, []
        if done:
            self._rt.complete_many(done)

    def stop(self, timeout: float) -> None:
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:  # closed in between
                pass
        self.thread.join(timeout)


_PathArg = Union[str, "os.PathLike[str]"]
_W = TypeVar("_W", bound="Worker")

#: The keywords of :class:`Worker` that are config keys, each under its own
#: name (``capacity`` is ``worker_capacity``).
_CONFIG_KEYWORDS = (
    "endpoint",
    "default_retryable",
    "heartbeat_interval_ms",
    "liveness",
    "shutdown_timeout_ms",
    "linger_ms",
    "reconnect_initial_ms",
    "reconnect_max_ms",
    "max_message_bytes",
    "send_hwm",
    "recv_hwm",
    "curve_secret_key_file",
    "curve_server_public_key_file",
)


_keyword_cache: "weakref.WeakKeyDictionary[type, Optional[frozenset[str]]]" = (
    weakref.WeakKeyDictionary()
)


def _keywords(cls: type) -> "Optional[frozenset[str]]":
    """The keywords ``cls.__init__`` takes; None when it takes ``**kwargs``
    (a subclass's own business)."""
    if cls not in _keyword_cache:
        params = inspect.signature(getattr(cls, "__init__")).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            _keyword_cache[cls] = None
        else:
            _keyword_cache[cls] = frozenset(p.name for p in params)
    return _keyword_cache[cls]


def _unexpected_keyword(cls: type, name: str) -> TypeError:
    """The TypeError for a keyword ``cls()`` does not take, naming the
    closest one (Python's own message may name none)."""
    allowed = [
        p.name
        for p in inspect.signature(getattr(cls, "__init__")).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    message = f"{cls.__name__}() got an unexpected keyword argument {name!r}"
    # The config key's name, and its near misses, lead to `capacity`.
    candidates = {keyword: keyword for keyword in allowed}
    if "capacity" in candidates:
        candidates["worker_capacity"] = "capacity"
    if name in _native.CONFIG_KEYS and name not in candidates:
        return TypeError(
            f"{message}: {name} is a config key, but not a worker's (the orchestrator "
            f"or `tasker serve` reads it from the configuration file or TASKER_{name.upper()})"
        )
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    if close:
        return TypeError(f"{message}; did you mean {candidates[close[0]]!r}?")
    return TypeError(f"{message}; the keywords are: {', '.join(allowed)}")


def _check_concurrency(name: str, concurrency: Any) -> None:
    """A handler's ``concurrency`` option: ``None`` or an int from 1 to
    2**32 - 1, else ``TypeError`` (not an int) or ``ConfigError``."""
    if concurrency is None:
        return
    if isinstance(concurrency, bool) or not isinstance(concurrency, int):
        raise TypeError(
            f"handler {name!r}: concurrency must be an int, got {type(concurrency).__name__}"
        )
    if not 1 <= concurrency <= 0xFFFF_FFFF:
        raise _native.ConfigError(
            f"handler {name!r}: concurrency must be at least 1 (and at most 4294967295),"
            f" got {concurrency}"
        )


class Worker:
    """A tasker worker serving steps with Python handlers.

    >>> worker = Worker(endpoint="tcp://127.0.0.1:5555", capacity=4)
    >>> @worker.handler("echo")
    ... def echo(step: Step) -> StepOutput:
    ...     return {"echo": step.task_context}
    >>> worker.run()  # doctest: +SKIP

    Keyword arguments (all optional; ``None`` means not given):

    * ``endpoint`` (``tcp://host:port`` or ``ipc://path``) and the other
      config keys a worker uses — ``default_retryable``,
      ``heartbeat_interval_ms``, ``liveness``, ``shutdown_timeout_ms``,
      ``linger_ms``, ``reconnect_initial_ms``, ``reconnect_max_ms``,
      ``max_message_bytes``, ``send_hwm``, ``recv_hwm``,
      ``curve_secret_key_file`` (this worker's ``NAME.key`` from ``tasker
      keygen``) and ``curve_server_public_key_file`` (the orchestrator's
      ``NAME.pub``; setting it connects with CURVE) — override the
      configuration (file section, then ``TASKER_<KEY>`` variables, then
      these keywords, last wins). The resolution is the one every SDK
      shares (``TaskerConfig::resolve`` in Rust), which checks the values;
    * ``capacity``: steps held at once (config key ``worker_capacity``);
    * ``threads``: threads running sync handlers, never more than
      ``capacity`` (see the module doc);
    * ``worker_id``: the id announced (default: ``python-<pid>-<random>``);
    * ``config_path`` / ``env``: a YAML configuration file and its section;
    * ``log_level``: most verbose runtime level forwarded to ``logging``
      (default: the ``tasker_core`` logger's effective level).

    Any other keyword is a ``TypeError`` naming the closest one. Raises
    :class:`ConfigError` when the configuration is invalid; :meth:`run`
    raises :class:`~tasker_core.WorkerRefused` when the orchestrator refuses
    the connection.
    """

    def __new__(cls: Type[_W], *args: Any, **kwargs: Any) -> _W:
        # Only to name the closest keyword when one is misspelt: __init__
        # takes exactly its keywords (a TypeError anyway, and to mypy).
        allowed = _keywords(cls) if kwargs else None
        if allowed is not None:
            for name in kwargs:
                if name not in allowed:
                    raise _unexpected_keyword(cls, name)
        return super().__new__(cls)

    def __init__(
        self,
        *,
        endpoint: Optional[str] = None,
        capacity: Optional[int] = None,
        threads: Optional[int] = None,
        worker_id: Optional[str] = None,
        default_retryable: Optional[bool] = None,
        config_path: Optional[_PathArg] = None,
        env: Optional[str] = None,
        log_level: Union[int, str, None] = None,
        heartbeat_interval_ms: Optional[int] = None,
        liveness: Optional[int] = None,
        shutdown_timeout_ms: Optional[int] = None,
        linger_ms: Optional[int] = None,
        reconnect_initial_ms: Optional[int] = None,
        reconnect_max_ms: Optional[int] = None,
        max_message_bytes: Optional[int] = None,
        send_hwm: Optional[int] = None,
        recv_hwm: Optional[int] = None,
        curve_secret_key_file: Optional[_PathArg] = None,
        curve_server_public_key_file: Optional[_PathArg] = None,
    ) -> None:
        given = locals()
        options: Dict[str, Any] = {}
        for key in _CONFIG_KEYWORDS:
            value = given[key]
            if value is not None:
                options[key] = os.fspath(value) if isinstance(value, os.PathLike) else value
        if capacity is not None:
            options["worker_capacity"] = capacity
        try:
            #: The effective configuration (every key), as a dict.
            self.config: Dict[str, Any] = _native.load_config(
                os.fspath(config_path) if config_path is not None else None, env, options
            )
        except ConfigError as error:
            # `capacity` is the key `worker_capacity` underneath: name it as
            # the caller wrote it.
            if capacity is not None and "option `worker_capacity`" in str(error):
                raise ConfigError(
                    str(error).replace("option `worker_capacity`", "option `capacity`")
                ) from None
            raise
        if threads is not None:
            # Refused here, not at start(): a bad count is a configuration error.
            _native.handler_threads(int(self.config["worker_capacity"]), threads)
        self._threads_wanted = threads
        self._worker_id = worker_id
        self._log_level = log_level
        self._sync: Dict[str, Callable[[Step], Any]] = {}
        self._async: Dict[str, Callable[[Step], Awaitable[Any]]] = {}
        # Per-handler concurrency limits (see register()), by name.
        self._limits: Dict[str, int] = {}
        # Middleware, in registration order, by kind (see use()); the
        # handlers wrapped in them, by name, are made at start().
        self._sync_middleware: List[Callable[[Step, Any], Any]] = []
        self._async_middleware: List[Callable[[Step, Any], Any]] = []
        self._run_sync: Dict[str, Callable[[Step], Any]] = {}
        self._run_async: Dict[str, Callable[[Step], Awaitable[Any]]] = {}
        self._rt: Optional[_native.WorkerRuntime] = None
        self._runner: Optional[_AsyncRunner] = None
        self._pumps: List[threading.Thread] = []
        self._supervisor: Optional[threading.Thread] = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._default_retryable = bool(self.config["default_retryable"])
        self._signalled: Optional[int] = None
        self._stopping = False
        self._forced = False
        self._failure: Optional[BaseException] = None
        #: The pid of the process that started this worker, once a child
        #: forked from it holds this copy (see ``_after_fork_in_child``).
        self._forked_from: Optional[int] = None

    @classmethod
    def from_config(
        cls: Type[_W],
        path: _PathArg,
        env: Optional[str] = None,
        *,
        endpoint: Optional[str] = None,
        capacity: Optional[int] = None,
        threads: Optional[int] = None,
        worker_id: Optional[str] = None,
        default_retryable: Optional[bool] = None,
        log_level: Union[int, str, None] = None,
        heartbeat_interval_ms: Optional[int] = None,
        liveness: Optional[int] = None,
        shutdown_timeout_ms: Optional[int] = None,
        linger_ms: Optional[int] = None,
        reconnect_initial_ms: Optional[int] = None,
        reconnect_max_ms: Optional[int] = None,
        max_message_bytes: Optional[int] = None,
        send_hwm: Optional[int] = None,
        recv_hwm: Optional[int] = None,
        curve_secret_key_file: Optional[_PathArg] = None,
        curve_server_public_key_file: Optional[_PathArg] = None,
    ) -> _W:
        """A worker configured from a YAML file (section ``env``, default
        ``TASKER_ENV`` or ``development``), ``TASKER_<KEY>`` variables, then
        the keywords, which are those of :class:`Worker`."""
        return cls(
            config_path=path,
            env=env,
            endpoint=endpoint,
            capacity=capacity,
            threads=threads,
            worker_id=worker_id,
            default_retryable=default_retryable,
            log_level=log_level,
            heartbeat_interval_ms=heartbeat_interval_ms,
            liveness=liveness,
            shutdown_timeout_ms=shutdown_timeout_ms,
            linger_ms=linger_ms,
            reconnect_initial_ms=reconnect_initial_ms,
            reconnect_max_ms=reconnect_max_ms,
            max_message_bytes=max_message_bytes,
            send_hwm=send_hwm,
            recv_hwm=recv_hwm,
            curve_secret_key_file=curve_secret_key_file,
            curve_server_public_key_file=curve_server_public_key_file,
        )

    # -- registration -----------------------------------------------------

    def handler(
        self, name: str, *, concurrency: Optional[int] = None
    ) -> Callable[[HandlerT], HandlerT]:
        """Decorator registering a function, an ``async def`` function, or a
        class with a ``call(step)`` method (instantiated without arguments)
        as the handler called ``name``; returns it unchanged.
        ``concurrency`` is as in :meth:`register`.

        Typed: the decorated object must take a :class:`Step` and return a
        :data:`StepOutput` (or an awaitable of one), so a type checker
        refuses a handler with another signature."""
        _check_concurrency(name, concurrency)

        def register(fn: HandlerT) -> HandlerT:
            self.register(name, fn, concurrency=concurrency)
            return fn

        return register

    def register(self, name: str, handler: Handler, *, concurrency: Optional[int] = None) -> None:
        """Registers ``handler`` under ``name``.

        ``handler`` is a callable taking the :class:`Step`, an object with a
        ``call(step)`` method, or a class of such objects (instantiated
        without arguments). ``async def`` callables run on the event loop.
        Its return value is the step's output: JSON data (see
        :data:`StepOutput`).

        ``concurrency``: at most this many steps of this handler at once on
        this worker (e.g. a handler calling a rate-limited API); the other
        handlers use the rest of its capacity. Announced to the
        orchestrator, which sends no more of its steps while that many are
        out here. ``None`` (default): limited by ``capacity`` only. A
        non-integer is a ``TypeError``, a value below 1 a
        :class:`ConfigError`.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"handler name must be a non-empty string, got {name!r}")
        _check_concurrency(name, concurrency)
        if self._rt is not None:
            raise _native.WorkerError("register handlers before the worker starts")
        obj: Any = handler() if isinstance(handler, type) else handler
        fn = getattr(obj, "call", None)
        if fn is None or not callable(fn):
            if not callable(obj):
                raise TypeError(
                    f"handler {name!r} must be callable or have a call(step) method, "
                    f"got {type(obj).__name__}"
                )
            fn = obj
        if name in self._sync or name in self._async:
            # Allowed (a registration replaces the one before, limit and
            # all), but a copy-pasted handler whose name was not changed
            # hides another: say so.
            log.warning("handler %r registered again: this one replaces the first", name)
        self._sync.pop(name, None)
        self._async.pop(name, None)
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        ):
            self._async[name] = fn
        else:
            self._sync[name] = fn
        if concurrency is None:
            self._limits.pop(name, None)
        else:
            self._limits[name] = concurrency

    @property
    def handlers(self) -> List[str]:
        """Names of the registered handlers, sorted."""
        return sorted([*self._sync, *self._async])

    def use(self, middleware: MiddlewareT) -> MiddlewareT:
        """Adds ``middleware`` around every handler call; returns it
        unchanged (so ``@worker.use`` decorates a function).

        A middleware is ``def mw(step, call_next)``: it runs around the
        handler on the thread that runs the handler and returns the step's
        output, usually ``call_next(step)``'s. ``async def mw(step,
        call_next)`` is the same around ``async def`` handlers, on the event
        loop: it returns ``await call_next(step)``'s value. A sync
        middleware wraps the sync handlers only and an ``async def`` one the
        async handlers only (a sync one cannot wait for an async handler
        without blocking the loop, nor an async one run a sync handler
        without blocking it). So once any middleware is added, every kind of
        handler the worker has needs middleware of its kind: :meth:`start`
        raises :class:`ConfigError` naming the handlers none wraps.

        Middleware run in the order they were added, the first outermost.
        What one returns is the step's output (checked as JSON, like a
        handler's); one that does not call ``call_next`` skips the handler
        and the rest of the chain. An exception from a middleware or the
        handler goes out through the middleware around it (which may catch
        it) and fails the step exactly as a handler's exception does
        (``error_type`` and ``retryable`` as usual).

        Raises :class:`WorkerError` once the worker has started and
        ``TypeError`` when ``middleware`` is not callable.
        """
        if self._rt is not None:
            raise _native.WorkerError("add middleware before the worker starts")
        if not callable(middleware):
            raise TypeError(
                f"middleware must be callable as mw(step, call_next), got {type(middleware).__name__}"
            )
        if _is_async(middleware):
            self._async_middleware.append(middleware)
        else:
            self._sync_middleware.append(middleware)
        return middleware

    def _wrap_handlers(self) -> None:
        """The handlers inside their middleware (start()). With middleware,
        every handler must have some of its kind: a tracing middleware
        silently missing half the handlers is worse than an error."""
        if self._sync_middleware or self._async_middleware:
            for handlers, middleware, kind in (
                (self._sync, self._sync_middleware, "a sync (def)"),
                (self._async, self._async_middleware, "an async def"),
            ):
                if handlers and not middleware:
                    raise _native.ConfigError(
                        f"no {kind.split(' ', 1)[1]} middleware wraps handler(s) "
                        f"{', '.join(sorted(handlers))}: the middleware added with use() are "
                        f"all of the other kind, which cannot wrap them; add {kind} middleware too"
                    )
        self._run_sync = {
            name: _chain(fn, self._sync_middleware) for name, fn in self._sync.items()
        }
        self._run_async = {
            name: _chain(fn, self._async_middleware) for name, fn in self._async.items()
        }

    # -- state ------------------------------------------------------------

    @property
    def worker_id(self) -> Optional[str]:
        """The id announced to the orchestrator (known once started, unless
        given)."""
        return self._rt.worker_id if self._rt is not None else self._worker_id

    @property
    def capacity(self) -> int:
        """Steps held at once, as announced to the orchestrator."""
        return self._rt.capacity if self._rt is not None else int(self.config["worker_capacity"])

    @property
    def threads(self) -> int:
        """Threads pulling steps and running sync handlers."""
        requested = self._threads_wanted
        if requested is None and self._async and not self._sync:
            # Async handlers run on the event loop; one thread hands them over.
            requested = 1
        return _native.handler_threads(self.capacity, requested)

    @property
    def state(self) -> str:
        """``idle`` (not started), ``connecting`` (started, not registered
        with an orchestrator: at first, and again while reconnecting),
        ``connected``, ``draining`` or ``stopped`` (the Ruby SDK's names)."""
        if self._rt is None:
            return "idle"
        if self._forked_from is not None or self._done.is_set():
            return "stopped"
        return "draining" if self._stopping else self._rt.state

    @property
    def in_hand(self) -> int:
        """Steps pulled and not yet answered."""
        if self._rt is None or self._forked_from is not None:
            return 0
        return self._rt.in_hand

    @property
    def failure(self) -> Optional[BaseException]:
        """Why the worker stopped by itself, once it has: the
        :class:`~tasker_core.WorkerRefused` the orchestrator's refusal of
        the connection raised (:meth:`run` and :meth:`join` raise it too);
        ``None`` otherwise."""
        if self._forked_from is not None:
            return None
        return self._failure if self._done.is_set() else None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "Worker":
        """Connects and starts serving in background threads; returns at once.

        Raises :class:`ConfigError` when no handler is registered or the
        options are invalid, :class:`WorkerError` when already started.
        """
        with self._lock:
            self._refuse_if_forked("start()")
            if self._rt is not None:
                raise _native.WorkerError("this worker was already started")
            self._wrap_handlers()
            _logging.enable_log_bridge(self._log_level)
            threads = self.threads
            # The runtime connects as soon as it exists, and its records
            # ("registered with orchestrator") could reach the loggers
            # before this one: they wait for it behind the log lock.
            with _logging.emit_lock:
                rt = _native.WorkerRuntime(
                    self.config,
                    self.handlers,
                    worker_id=self._worker_id,
                    handler_limits=self._limits,
                )
                self._rt = rt
                # Not "serving": the runtime has only begun to connect. It
                # logs "registered with orchestrator" itself once welcomed.
                log.info(
                    "worker %s connecting to %s%s, handlers [%s] (capacity %d, threads %d)",
                    rt.worker_id,
                    self.config["endpoint"],
                    " with CURVE" if self.config["curve_server_public_key_file"] else "",
                    ", ".join(self.handlers),
                    rt.capacity,
                    threads,
                )
            if self._async:
                self._runner = _AsyncRunner(self)
            chunk = _native.chunk_size(rt.capacity, threads)
            self._pumps = [
                threading.Thread(
                    target=self._pump, args=(chunk,), name=f"tasker-core-worker-{i}", daemon=True
                )
                for i in range(threads)
            ]
            for thread in self._pumps:
                thread.start()
            self._supervisor = threading.Thread(
                target=self._supervise, name="tasker-core-supervisor", daemon=True
            )
            self._supervisor.start()
            _live_workers.add(self)
        return self

    def stop(self) -> None:
        """Begins a graceful stop and returns at once; safe from any thread,
        a signal handler or a handler.

        Steps received but not started go back to the orchestrator; running
        ones finish and are reported; then the worker says goodbye. Use
        :meth:`join` (or :meth:`run`) to wait for the end.
        """
        rt = self._rt
        if rt is not None and self._forked_from is None:
            self._stopping = True
            rt.stop()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Waits up to ``timeout`` seconds (None: no limit) for the worker to
        stop; True if it did. Must not be called from a handler (the handler
        would wait for itself); :meth:`stop` may be.

        Raises :class:`~tasker_core.WorkerRefused` when the worker stopped
        because the orchestrator refused its connection (see
        :attr:`failure`)."""
        if self._rt is None or self._forked_from is not None:
            return True
        if threading.current_thread() in self._pumps:
            raise _native.WorkerError("join() called from a handler would wait for itself")
        done = self._done.wait(timeout)
        if done and self._failure is not None:
            raise self._failure
        return done

    def run(self) -> None:
        """Starts (if not yet) and serves until stopped.

        On the main thread, SIGINT (Ctrl-C) and SIGTERM begin a graceful
        stop; a second signal raises ``KeyboardInterrupt`` without waiting
        for the drain. Returns once the worker has stopped.

        Raises :class:`~tasker_core.WorkerRefused` as soon as the
        orchestrator refuses the connection (a CURVE key it does not admit,
        CURVE on one side only, a wrong server key): the message says what
        to change, and no retry would help. Raises :class:`WorkerError` on a
        worker that has stopped: a worker runs once (make a new one).
        """
        self._refuse_if_forked("run()")
        if self._rt is not None and self._done.is_set():
            # Returning at once, as it did, made a supervisor's
            # `while True: worker.run()` spin.
            if self._failure is not None:
                raise self._failure
            raise _native.WorkerError(
                "run() called on a stopped worker; a Worker runs once: make a new one"
            )
        previous: Dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        try:
            if self._rt is None:
                self.start()
            # An Event wait is interrupted by a signal the main thread
            # receives, so the handlers above run at once, unlike a wait
            # inside Rust. The kernel may hand the signal to another thread
            # (a Rust or handler thread) instead: Python then only runs the
            # handler when the main thread next runs bytecode, so the wait
            # wakes up now and then to let it.
            while not self._done.wait(_SIGNAL_POLL):
                pass
            if self._failure is not None:
                raise self._failure
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _refuse_if_forked(self, call: str) -> None:
        if self._forked_from is not None:
            raise _native.WorkerError(
                f"{call} on a Worker started in process {self._forked_from}, which this "
                "process was forked from: its connection and threads stay in that process. "
                "Start a Worker in this process after the fork (gunicorn: in post_fork, or "
                "without --preload)"
            )

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        # Runs between two bytecodes of the main thread, which may hold any
        # lock (a logging stream's included): only flags and the lock-free
        # (to Python) native stop here. The runtime logs "draining" itself.
        if self._signalled is not None:
            self._forced = True
            raise KeyboardInterrupt
        self._signalled = signum
        self.stop()

    def __enter__(self) -> "Worker":
        if self._rt is None:
            self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
        if exc_info[0] is None:
            self.join(self._shutdown_bound())
        else:
            # The block's exception goes on, not a refusal behind it.
            self._done.wait(self._shutdown_bound())

    def __repr__(self) -> str:
        return f"<Worker {self.worker_id or '(not started)'} {self.state} handlers={self.handlers}>"

    def _shutdown_bound(self) -> float:
        return float(
            self.config["shutdown_timeout_ms"] / 1000.0 + self.config["linger_ms"] / 1000.0 + 2.0
        )

    # -- the threads ------------------------------------------------------

    def _pump(self, chunk: int) -> None:
        rt = self._rt
        assert rt is not None
        sync = self._run_sync  # the handlers inside their middleware
        runner = self._runner
        perf = time.perf_counter
        flush_after = _FLUSH_AFTER
        while True:
            try:
                steps = rt.next_steps(chunk)
            except TaskerError as exc:
                # The orchestrator refused the connection (WorkerRefused):
                # the runtime has stopped by itself; run() and join() raise it.
                if self._failure is None:
                    self._failure = exc
                rt.stop()
                return
            if steps is None:
                return
            if runner is not None:
                steps = self._hand_over_async(steps, runner)
            done: List[Tuple[Step, Any, float]] = []
            flushed = perf()
            for step in steps:
                fn = sync.get(step.handler_class)
                if fn is None:
                    rt.fail(
                        step,
                        UNKNOWN_HANDLER,
                        f"this worker has no handler {step.handler_class!r}",
                        False,
                    )
                    continue
                started = perf()
                if done and started - flushed >= flush_after:
                    rt.complete_many(done)
                    done = []
                    flushed = started
                try:
                    output = fn(step)
                except BaseException as exc:  # noqa: BLE001 - every failure is reported
                    self._fail(step, exc, perf() - started)
                    continue
                done.append((step, output, perf() - started))
            if done:
                rt.complete_many(done)

    def _hand_over_async(self, steps: List[Step], runner: _AsyncRunner) -> List[Step]:
        asynchronous = self._run_async  # the handlers inside their middleware
        items = []
        rest = []
        for step in steps:
            fn = asynchronous.get(step.handler_class)
            if fn is None:
                rest.append(step)
            else:
                items.append((fn, step))
        if items:
            runner.submit(items)
        return rest

    def _fail(self, step: Step, exc: BaseException, elapsed: float) -> None:
        rt = self._rt
        assert rt is not None
        # Duck-typed, as in the Ruby and Node SDKs: a HandlerError's, or any
        # exception's, str error_type and bool retryable attributes.
        declared_type = _attribute(exc, "error_type")
        error_type = (
            declared_type
            if isinstance(declared_type, str) and declared_type
            else type(exc).__name__
        )
        declared = _attribute(exc, "retryable")
        retryable = declared if isinstance(declared, bool) else self._default_retryable
        try:
            message = str(exc) or error_type
        except Exception:  # noqa: BLE001 - a broken __str__ must not kill the thread
            message = f"{error_type} (str() of the exception failed)"
        rt.fail(step, error_type, message, retryable, _backtrace(exc), elapsed)

    def _supervise(self) -> None:
        rt = self._rt
        assert rt is not None
        # Returns once the runtime said goodbye: every pulled step answered,
        # or shutdown_timeout_ms passed with a handler still running.
        while not rt.join(None):
            pass
        if self._failure is None:
            self._failure = rt.failure
        deadline = time.monotonic() + _THREAD_EXIT_GRACE
        for thread in self._pumps:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [t.name for t in self._pumps if t.is_alive()]
        if hung:
            # A handler past the drain deadline: its thread is a daemon and
            # is left to finish (or die with the process); its result, if
            # it ever comes, is dropped.
            log.warning("worker %s stopped with handlers still running in %s", rt.worker_id, hung)
        if self._runner is not None:
            self._runner.stop(_THREAD_EXIT_GRACE)
        _logging.flush()
        if self._failure is not None:
            log.info("worker %s stopped: %s", rt.worker_id, type(self._failure).__name__)
        elif self._signalled is not None:
            log.info("worker %s stopped (%s)", rt.worker_id, signal.Signals(self._signalled).name)
        else:
            log.info("worker %s stopped", rt.worker_id)
        self._done.set()


def _after_fork_in_child() -> None:
    # A started worker's threads and connection are not copied by fork():
    # in the child its copy serves nothing. Waiting for it at exit held
    # every forked child (gunicorn --preload's web workers) for the drain
    # time, and stop()/join()/run() on it waited for good.
    parent = os.getppid()
    for worker in list(_live_workers):
        worker._forked_from = parent
    _live_workers.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_live_workers() -> None:
    # Threads waiting inside Rust must be out before the interpreter
    # finalises: stop every running worker and give it its drain time.
    workers = list(_live_workers)
    for worker in workers:
        worker.stop()
    for worker in workers:
        # After a second Ctrl-C the user asked not to wait for the drain.
        worker._done.wait(_THREAD_EXIT_GRACE if worker._forced else worker._shutdown_bound())
