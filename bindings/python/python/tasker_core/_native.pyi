"""Type stubs of the native module (Rust, pyo3). Use the :mod:`tasker_core`
package rather than this module directly."""

import datetime
from os import PathLike
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

# -- errors: the error_type values the system reports (tasker_protocol::error_types)

TIMED_OUT: str
WORKER_LOST: str
NO_WORKER_FOR_HANDLER: str
SCHEDULE_TIMEOUT: str
ABANDONED: str
UNKNOWN_HANDLER: str
SERIALIZATION_ERROR: str
PANIC: str
OUTPUT_TOO_LARGE: str
STEP_TOO_LARGE: str
INVALID_STEP: str
INVALID_RESULT: str
EXECUTOR_STOPPED: str
WITHDRAWN: str
#: Every constant above, name to value (a read-only mapping).
ERROR_TYPES: Mapping[str, str]

class TaskerError(Exception):
    """Base class of every error raised by tasker_core."""

class ConfigError(TaskerError):
    """The configuration (file, environment variable or keyword) is invalid."""

class WorkerError(TaskerError):
    """The worker runtime could not start, failed, or was used wrongly."""

class WorkerRefused(WorkerError):
    """The orchestrator refused this worker's connection in the handshake
    (its CURVE key not admitted, CURVE on one side only, a wrong server
    key); the message says which and what to change. The worker has
    stopped."""

# -- config: TaskerConfig::resolve

#: Every config key, in file order (tasker_config::KEYS).
CONFIG_KEYS: Tuple[str, ...]

def load_config(
    path: Union[str, "PathLike[str]", None] = None,
    environment: Optional[str] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Resolves a configuration (file section or built-in defaults, then
    TASKER_* variables, then options: config keys to plain values, None
    meaning not given) and returns every key. Raises ConfigError naming the
    bad key (and the closest valid one) or value."""

def api_base_url(config: Mapping[str, Any]) -> str:
    """Where a client reaches the API for `config` (a dict as load_config
    returns), without a trailing slash: api_url, else http:// + api_listen
    with an unspecified address reached on loopback. ConfigError when
    neither gives a usable URL (ftp://, port 0, ...)."""

def parse_api_url(url: str) -> str:
    """`url` as an API base URL without a trailing slash (http://HOST:PORT,
    or https://HOST[:PORT] for a TLS proxy; an optional path prefix).
    ConfigError otherwise (another scheme)."""

# -- policy: tasker_worker::policy

#: Handler threads when not requested: one per slot, up to this.
DEFAULT_MAX_THREADS: int
#: Deepest nesting of an output the orchestrator accepts by default.
MAX_JSON_DEPTH: int

def handler_threads(capacity: int, requested: Optional[int] = None) -> int:
    """Threads running handlers: requested, or min(capacity,
    DEFAULT_MAX_THREADS); never more than capacity. ConfigError when the
    request is not a positive integer."""

def chunk_size(capacity: int, threads: int) -> int:
    """Steps one thread pulls at a time: ceil(capacity / threads); half the
    capacity when there is one thread."""

# -- step, runtime

class Step:
    """One step to run; the request's fields as read-only attributes."""

    @property
    def step_id(self) -> int: ...
    @property
    def task_id(self) -> int: ...
    @property
    def step_name(self) -> str: ...
    @property
    def handler_class(self) -> str: ...
    @property
    def task_context(self) -> Any:
        """The task's input: plain JSON data, built on first access."""
    @property
    def handler_config(self) -> Any:
        """The handler's configuration: plain JSON data."""
    @property
    def previous_results(self) -> Dict[str, Any]:
        """Outputs of the steps this one depends on, by step name."""
    @property
    def attempt(self) -> int:
        """1 for the first attempt, incremented by each retry."""
    @property
    def retry_limit(self) -> int:
        """Retries the workflow allows after the first attempt (its
        ``max_attempts`` - 1): the last attempt has ``attempt > retry_limit``."""
    @property
    def timeout_ms(self) -> int: ...
    @property
    def timeout(self) -> float:
        """The step's timeout in seconds."""
    @property
    def created_at(self) -> datetime.datetime:
        """When the attempt was created (aware, UTC)."""

class WorkerRuntime:
    """The native worker runtime: one connection to the orchestrator."""

    def __init__(
        self,
        config: Mapping[str, Any],
        handlers: Sequence[str],
        worker_id: Optional[str] = None,
        handler_limits: Optional[Mapping[str, int]] = None,
    ) -> None:
        """Starts connecting in the background. `config` is a complete dict
        as load_config returns (resolved again as options over the built-in
        defaults: ConfigError names a bad key); `handlers` the names
        announced; `handler_limits` the most steps of each named handler
        held at once (each a handler of `handlers`, at least 1: else
        ConfigError), enforced by the orchestrator."""
    @property
    def worker_id(self) -> str: ...
    @property
    def capacity(self) -> int: ...
    @property
    def state(self) -> str:
        """connecting, connected, draining or stopped."""
    @property
    def in_hand(self) -> int: ...
    @property
    def failure(self) -> Optional[WorkerError]:
        """Why the runtime stopped by itself (a WorkerRefused), else None."""
    def next_steps(self, max: int, timeout: Optional[float] = None) -> Optional[List[Step]]:
        """Waits (GIL released) for up to `max` steps; [] on timeout; None
        once stopping and empty; raises WorkerRefused once the orchestrator
        refused the connection. ValueError for a negative or NaN timeout."""
    def complete_many(self, results: List[Tuple[Step, Any, float]]) -> None:
        """Hands back (step, output, elapsed_seconds) results. Aware
        datetimes and dates become ISO 8601 strings, Decimals and UUIDs
        their str(); an output that is not JSON otherwise (a naive datetime,
        a set, NaN, ...), holds a lone surrogate or nests deeper than the
        orchestrator's max_json_depth fails its step with SerializationError
        naming the place of the bad value."""
    def fail(
        self,
        step: Step,
        error_type: str,
        message: str,
        retryable: bool,
        backtrace: Sequence[str] = ...,
        elapsed: float = 0.0,
    ) -> None:
        """Fails one step (a lone surrogate in its texts is sent as U+FFFD)."""
    def stop(self) -> None:
        """Begins a graceful stop; returns at once."""
    def join(self, timeout: Optional[float] = None) -> bool:
        """Waits (GIL released) for the runtime to finish after stop()."""

# -- logging

def install_log_bridge(level: str) -> bool:
    """Routes the runtime's tracing events to take_log_records; False if
    another tracing subscriber owns the process."""

def set_log_level(level: str) -> None: ...
def wait_for_log_records(timeout: Optional[float] = None) -> bool:
    """Waits (GIL released) until records are queued, taking none."""

def take_log_records(max: int = 256) -> List[Tuple[int, str, str, Dict[str, str]]]:
    """Takes queued (levelno, target, text, fields) records without waiting."""

def wake_logs() -> None: ...
