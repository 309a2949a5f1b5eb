"""Bridge from the runtime's Rust ``tracing`` events to Python ``logging``.

The Rust side only queues records (its I/O thread must never call into
Python); one daemon thread here waits for them with the GIL released and
hands each to the logger ``tasker_core.<rust module path>``, e.g.
``tasker_core.tasker_worker.connection``. The record's structured fields are
in ``record.tasker_fields`` and the Rust module path in ``record.rust_target``.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Dict, List, Optional, Tuple, Union

from . import _native

__all__ = ["enable_log_bridge", "set_log_level", "flush", "LOGGER_NAME"]

#: Root of the loggers that receive the runtime's records.
LOGGER_NAME = "tasker_core"

_lock = threading.Lock()
#: Held while records are taken and logged, so records reach the loggers in
#: the order they were queued whichever thread logs them; re-entrant for a
#: logging handler that flushes. Holding it keeps the runtime's records back.
emit_lock = threading.RLock()
_thread: Optional[threading.Thread] = None
#: Whether the runtime's subscriber is installed: once per process, and a
#: forked child inherits it (but not the thread).
_installed = False
_stopping = False
_loggers: Dict[str, logging.Logger] = {}


def _rust_level(level: Union[int, str]) -> str:
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(
                f"unknown log level {level!r}: one of DEBUG, INFO, WARNING, ERROR, CRITICAL "
                "(or a number)"
            )
        level = number
    if level <= 5:
        return "trace"
    if level <= logging.DEBUG:
        return "debug"
    if level <= logging.INFO:
        return "info"
    if level <= logging.WARNING:
        return "warn"
    return "error"


def enable_log_bridge(level: Union[int, str, None] = None) -> bool:
    """Starts forwarding the runtime's log records to ``logging``.

    ``level`` (a ``logging`` level or name; default: the effective level of
    the ``tasker_core`` logger) is the most verbose level the runtime queues.
    Called by :meth:`Worker.start`; calling it again only changes the level.
    Returns False when another Rust ``tracing`` subscriber owns the process.
    """
    global _thread, _installed
    if level is None:
        level = logging.getLogger(LOGGER_NAME).getEffectiveLevel()
    rust_level = _rust_level(level)
    with _lock:
        if _installed:
            _native.set_log_level(rust_level)
        elif _native.install_log_bridge(rust_level):
            _installed = True
        else:
            logging.getLogger(LOGGER_NAME).warning(
                "another tracing subscriber is installed; runtime logs are not forwarded"
            )
            return False
        if _thread is None:
            _thread = threading.Thread(target=_pump, name="tasker-core-logs", daemon=True)
            _thread.start()
        return True


def set_log_level(level: Union[int, str]) -> None:
    """Changes the most verbose level the runtime queues for ``logging``."""
    enable_log_bridge(level)


def _logger(target: str) -> logging.Logger:
    logger = _loggers.get(target)
    if logger is None:
        logger = logging.getLogger(f"{LOGGER_NAME}.{target.replace('::', '.')}")
        _loggers[target] = logger
    return logger


def _emit(records: List[Tuple[int, str, str, Dict[str, str]]]) -> None:
    for levelno, target, text, fields in records:
        logger = _logger(target)
        if logger.isEnabledFor(levelno):
            logger.log(levelno, "%s", text, extra={"rust_target": target, "tasker_fields": fields})


def _pump() -> None:
    while not _stopping:
        if _native.wait_for_log_records(None):
            with emit_lock:
                _emit(_native.take_log_records(256))


def flush() -> None:
    """Hands every record the runtime has queued to ``logging`` now, on the
    calling thread, after any the log thread is handing over.

    The worker calls it before it says it stopped, and the interpreter at
    exit: the log thread is a daemon, and records still queued when the
    interpreter ends were lost ("goodbye", "worker connection closed").
    """
    if not _installed:
        return
    with emit_lock:
        while True:
            records = _native.take_log_records(1024)
            if not records:
                return
            _emit(records)


def _after_fork_in_child() -> None:
    # fork() copies no thread: without a new one, a worker started in the
    # child had its runtime's records held until it stopped. Locks a
    # parent's thread held at the fork would stay held here.
    global _thread, _lock, emit_lock
    _thread = None
    _lock = threading.Lock()
    emit_lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _shutdown() -> None:
    # The thread waits inside Rust; it must be out of there before the
    # interpreter finalises, or re-taking the GIL would end it mid-Rust.
    global _stopping
    _stopping = True
    thread = _thread
    if thread is not None:
        _native.wake_logs()
        thread.join(timeout=2.0)
        flush()
