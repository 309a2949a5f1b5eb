"""The :class:`Worker`: register handlers, then serve steps.

How it runs
-----------
The native runtime (Rust) owns the ZeroMQ connection: hello, heartbeats,
credit, reconnects, drain and goodbye. This module only runs handlers:

* ``threads`` Python threads each pull a chunk of up to
  ``ceil(capacity / threads)`` steps (waiting with the GIL released), run the
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
"""

from __future__ import annotations

import asyncio
import atexit
import inspect
import logging
import os
import signal
import threading
import time
import traceback
import weakref
from types import FrameType
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar, Union

from . import _logging, _native
from ._native import Step
from .error_types import UNKNOWN_HANDLER
from .errors import HandlerError, TaskerError

__all__ = ["Worker", "Handler"]

log = logging.getLogger("tasker_core.worker")

Handler = Callable[[Step], Any]
F = TypeVar("F")

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
        self.thread = threading.Thread(target=self._run, name="tasker-core-asyncio", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            for task in list(self._tasks):
                task.cancel()
            self.loop.close()

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


class Worker:
    """A tasker worker serving steps with Python handlers.

    >>> worker = Worker(endpoint="tcp://127.0.0.1:5555", capacity=4)
    >>> @worker.handler("echo")
    ... def echo(step):
    ...     return step.task_context
    >>> worker.run()  # doctest: +SKIP

    Keyword arguments:

    * ``endpoint``, ``default_retryable`` and any other config key
      (``heartbeat_interval_ms``, ``shutdown_timeout_ms``, ...) override the
      configuration (file section, then ``TASKER_<KEY>`` variables, then
      these keywords, last wins; ``None`` means not given). The resolution
      is the one every SDK shares (``TaskerConfig::resolve`` in Rust).
      ``curve_secret_key_file`` (this worker's ``NAME.key`` from ``tasker
      keygen``) and ``curve_server_public_key_file`` (the orchestrator's
      ``NAME.pub``) connect with CURVE;
    * ``capacity``: steps held at once (default: ``worker_capacity``);
    * ``threads``: threads running sync handlers, never more than
      ``capacity`` (see the module doc);
    * ``worker_id``: the id announced (default: ``python-<pid>-<random>``);
    * ``config_path`` / ``env``: a YAML configuration file and its section;
    * ``log_level``: most verbose runtime level forwarded to ``logging``
      (default: the ``tasker_core`` logger's effective level).

    Raises :class:`ConfigError` when the configuration is invalid;
    :meth:`run` raises :class:`~tasker_core.WorkerRefused` when the
    orchestrator refuses the connection.
    """

    def __init__(
        self,
        *,
        endpoint: Optional[str] = None,
        capacity: Optional[int] = None,
        threads: Optional[int] = None,
        worker_id: Optional[str] = None,
        default_retryable: Optional[bool] = None,
        config_path: Union[str, "os.PathLike[str]", None] = None,
        env: Optional[str] = None,
        log_level: Union[int, str, None] = None,
        **config: Any,
    ) -> None:
        options: Dict[str, Any] = dict(config)
        if endpoint is not None:
            options["endpoint"] = endpoint
        if default_retryable is not None:
            options["default_retryable"] = default_retryable
        if capacity is not None:
            options["worker_capacity"] = capacity
        #: The effective configuration (every key), as a dict.
        self.config: Dict[str, Any] = _native.load_config(
            os.fspath(config_path) if config_path is not None else None, env, options
        )
        if threads is not None:
            # Refused here, not at start(): a bad count is a configuration error.
            _native.handler_threads(int(self.config["worker_capacity"]), threads)
        self._threads_wanted = threads
        self._worker_id = worker_id
        self._log_level = log_level
        self._sync: Dict[str, Handler] = {}
        self._async: Dict[str, Callable[[Step], Awaitable[Any]]] = {}
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

    @classmethod
    def from_config(
        cls, path: Union[str, "os.PathLike[str]"], env: Optional[str] = None, **options: Any
    ) -> "Worker":
        """A worker configured from a YAML file (section ``env``, default
        ``TASKER_ENV`` or ``development``), ``TASKER_<KEY>`` variables, then
        ``options`` (config keys and the keywords of :class:`Worker`)."""
        return cls(config_path=path, env=env, **options)

    # -- registration -----------------------------------------------------

    def handler(self, name: str) -> Callable[[F], F]:
        """Decorator registering a function, an ``async def`` function, or a
        class with a ``call(step)`` method (instantiated without arguments)
        as the handler called ``name``; returns it unchanged."""

        def register(fn: F) -> F:
            self.register(name, fn)
            return fn

        return register

    def register(self, name: str, handler: Any) -> None:
        """Registers ``handler`` under ``name``.

        ``handler`` is a callable taking the :class:`Step`, an object with a
        ``call(step)`` method, or a class of such objects (instantiated
        without arguments). ``async def`` callables run on the event loop.
        Its return value is the step's output: anything JSON-serialisable.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"handler name must be a non-empty string, got {name!r}")
        if self._rt is not None:
            raise _native.WorkerError("register handlers before the worker starts")
        if isinstance(handler, type):
            handler = handler()
        fn = getattr(handler, "call", None)
        if fn is None or not callable(fn):
            if not callable(handler):
                raise TypeError(
                    f"handler {name!r} must be callable or have a call(step) method, "
                    f"got {type(handler).__name__}"
                )
            fn = handler
        self._sync.pop(name, None)
        self._async.pop(name, None)
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)
        ):
            self._async[name] = fn
        else:
            self._sync[name] = fn

    @property
    def handlers(self) -> List[str]:
        """Names of the registered handlers, sorted."""
        return sorted([*self._sync, *self._async])

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
        """``new``, ``connecting``, ``connected``, ``draining`` or ``stopped``."""
        if self._rt is None:
            return "new"
        if self._done.is_set():
            return "stopped"
        return "draining" if self._stopping else self._rt.state

    @property
    def in_hand(self) -> int:
        """Steps pulled and not yet answered."""
        return self._rt.in_hand if self._rt is not None else 0

    @property
    def failure(self) -> Optional[BaseException]:
        """Why the worker stopped by itself, once it has: the
        :class:`~tasker_core.WorkerRefused` the orchestrator's refusal of
        the connection raised (:meth:`run` and :meth:`join` raise it too);
        ``None`` otherwise."""
        return self._failure if self._done.is_set() else None

    # -- lifecycle --------------------------------------------------------

    def start(self) -> "Worker":
        """Connects and starts serving in background threads; returns at once.

        Raises :class:`ConfigError` when no handler is registered or the
        options are invalid, :class:`WorkerError` when already started.
        """
        with self._lock:
            if self._rt is not None:
                raise _native.WorkerError("this worker was already started")
            _logging.enable_log_bridge(self._log_level)
            rt = _native.WorkerRuntime(
                self.config, self.handlers, worker_id=self._worker_id
            )
            self._rt = rt
            if self._async:
                self._runner = _AsyncRunner(self)
            threads = self.threads
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
        log.info(
            "worker %s serving %s (capacity %d, %d threads)",
            rt.worker_id,
            ", ".join(self.handlers),
            rt.capacity,
            threads,
        )
        return self

    def stop(self) -> None:
        """Begins a graceful stop and returns at once; safe from any thread,
        a signal handler or a handler.

        Steps received but not started go back to the orchestrator; running
        ones finish and are reported; then the worker says goodbye. Use
        :meth:`join` (or :meth:`run`) to wait for the end.
        """
        rt = self._rt
        if rt is not None:
            self._stopping = True
            rt.stop()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Waits up to ``timeout`` seconds (None: no limit) for the worker to
        stop; True if it did. Must not be called from a handler (the handler
        would wait for itself); :meth:`stop` may be.

        Raises :class:`~tasker_core.WorkerRefused` when the worker stopped
        because the orchestrator refused its connection (see
        :attr:`failure`)."""
        if self._rt is None:
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
        to change, and no retry would help.
        """
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
        sync = self._sync
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
        asynchronous = self._async
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
        if isinstance(exc, HandlerError):
            error_type, retryable = exc.error_type, exc.retryable
        else:
            error_type = type(exc).__name__
            declared = getattr(exc, "retryable", None) if isinstance(exc, TaskerError) else None
            retryable = declared if isinstance(declared, bool) else self._default_retryable
        message = str(exc) or error_type
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
        if self._failure is not None:
            log.info("worker %s stopped: %s", rt.worker_id, type(self._failure).__name__)
        elif self._signalled is not None:
            log.info("worker %s stopped (%s)", rt.worker_id, signal.Signals(self._signalled).name)
        else:
            log.info("worker %s stopped", rt.worker_id)
        self._done.set()


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
