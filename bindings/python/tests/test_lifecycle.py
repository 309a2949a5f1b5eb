"""Stopping (gracefully, from a handler, with a hung handler), the log
bridge, and configuration."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import CONFIG, free_endpoint, run_batch, step
from tasker_core import ConfigError, TaskerError, Worker, WorkerError


def test_graceful_stop_finishes_and_reports_steps_in_flight(dispatch, make_worker):
    n = 3
    started = threading.Barrier(n + 1, timeout=20)
    release = threading.Event()
    run = dispatch([step(i, "slow") for i in range(n)])
    worker = make_worker(endpoint=run.endpoint, capacity=n, threads=n)

    @worker.handler("slow")
    def slow(step):
        started.wait()
        assert release.wait(20)
        return {"finished": step.step_id}

    worker.start()
    started.wait()  # all n running
    worker.stop()
    assert worker.state == "draining"
    assert not worker.join(0.2)  # still waiting for the running handlers
    release.set()
    assert worker.join(15)
    assert worker.state == "stopped"
    results = run.results()
    assert {i: r["status"] for i, r in results.items()} == {i: "completed" for i in range(n)}
    assert {i: r["output"] for i, r in results.items()} == {i: {"finished": i} for i in range(n)}


def test_stop_called_from_a_handler(dispatch, make_worker):
    holder = {}

    def register(worker):
        holder["worker"] = worker

        @worker.handler("stopper")
        def stopper(step):
            worker.stop()
            with pytest.raises(WorkerError):
                worker.join()  # would wait for itself
            return "stopped myself"

    results = run_batch(dispatch, make_worker, [step(1, "stopper")], register)
    assert results[1]["output"] == "stopped myself"
    assert holder["worker"].join(15)


def test_hung_handler_does_not_block_stop_forever(dispatch, make_worker):
    release = threading.Event()
    entered = threading.Event()
    run = dispatch([step(1, "hang", metadata={"timeout_ms": 500})])
    worker = make_worker(endpoint=run.endpoint, capacity=1, shutdown_timeout_ms=500)

    @worker.handler("hang")
    def hang(step):
        entered.set()
        release.wait(60)
        return "too late"

    worker.start()
    try:
        results = run.results()
        assert entered.is_set()
        assert results[1]["status"] == "timed_out"
        assert results[1]["error"]["error_type"] == "TimedOut"
        worker.stop()
        # Bounded by shutdown_timeout_ms: the hung thread is left behind.
        assert worker.join(15)
        assert worker.state == "stopped"
    finally:
        release.set()


def test_an_async_handler_past_the_drain_deadline_is_cancelled_and_unwinds_before_join_returns(
    dispatch, make_worker, caplog
):
    entered = threading.Event()
    unwound = []
    run = dispatch([step(1, "hang_async", metadata={"timeout_ms": 500})])
    worker = make_worker(endpoint=run.endpoint, capacity=1, shutdown_timeout_ms=300)

    @worker.handler("hang_async")
    async def hang_async(step):
        entered.set()
        try:
            await asyncio.sleep(60)
        finally:
            unwound.append(step.step_id)
        return "too late"

    worker.start()
    results = run.results()
    assert entered.is_set() and results[1]["error"]["error_type"] == "TimedOut"
    with caplog.at_level(logging.DEBUG):
        worker.stop()
        assert worker.join(15)
        # Its finally ran before the worker said it had stopped, not at
        # interpreter exit; and asyncio had nothing to complain about.
        assert unwound == [1]
        gc.collect()
    assert not [r for r in caplog.records if "destroyed but it is pending" in r.getMessage()]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_runtime_log_events_reach_python_logging(dispatch, make_worker):
    registered = threading.Event()
    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record)
            if record.getMessage().startswith("registered with orchestrator"):
                registered.set()

    logger = logging.getLogger("tasker_core")
    handler = Collect(level=logging.INFO)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        run = dispatch([step(1, "noop")])
        worker = make_worker(endpoint=run.endpoint)
        worker.register("noop", lambda step: None)
        worker.start()
        assert run.results()[1]["status"] == "completed"
        assert registered.wait(10), [r.getMessage() for r in records]
        record = next(r for r in records if r.getMessage().startswith("registered"))
        assert record.name == "tasker_core.tasker_worker.connection"
        assert record.levelno == logging.INFO
        assert record.rust_target == "tasker_worker::connection"
        assert record.tasker_fields["worker_id"] == worker.worker_id
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def wait_for_record(caplog, prefix, timeout=10.0):
    """The first captured record whose message starts with `prefix`
    (records come from the log bridge's thread); None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        for record in caplog.records:
            if record.getMessage().startswith(prefix):
                return record
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def test_start_logs_the_endpoint_and_handlers_then_the_runtime_logs_registration(
    dispatch, make_worker, caplog
):
    """Issue 18 #4: the start message says the worker is connecting (not
    serving), to which endpoint, with which handlers; the runtime says when
    it has registered."""
    caplog.set_level(logging.INFO, logger="tasker_core")
    run = dispatch([step(1, "noop")])
    worker = make_worker(endpoint=run.endpoint, capacity=2, threads=1)
    assert worker.state == "idle"
    worker.register("noop", lambda step: None)
    worker.register("another", lambda step: None)
    worker.start()
    assert run.results()[1]["status"] == "completed"
    registered = wait_for_record(caplog, "registered with orchestrator")
    assert registered is not None, [r.getMessage() for r in caplog.records]
    assert registered.name == "tasker_core.tasker_worker.connection"

    started = [r for r in caplog.records if r.name == "tasker_core.worker"]
    assert started[0].levelno == logging.INFO
    assert started[0].getMessage() == (
        f"worker {worker.worker_id} connecting to {run.endpoint}, "
        "handlers [another, noop] (capacity 2, threads 1)"
    )
    assert not any("serving" in r.getMessage() for r in caplog.records)
    assert caplog.records.index(started[0]) < caplog.records.index(registered)


def test_start_message_is_true_when_no_orchestrator_answers(make_worker, caplog):
    """With nobody at the endpoint, the worker says it is connecting there,
    and the runtime (through the log bridge) that it waits for an
    orchestrator there: once, not at every reconnect."""
    caplog.set_level(logging.INFO, logger="tasker_core")
    endpoint = free_endpoint()  # nobody listens there
    # Silence for heartbeat × liveness (200 ms × 3) means "no orchestrator".
    worker = make_worker(endpoint=endpoint, liveness=3, reconnect_initial_ms=50, reconnect_max_ms=100)
    worker.register("work", lambda step: None)
    worker.start()
    record = wait_for_record(caplog, f"worker {worker.worker_id} connecting to {endpoint}")
    assert record is not None, [r.getMessage() for r in caplog.records]
    assert ", handlers [work] (capacity " in record.getMessage()
    waiting = wait_for_record(caplog, f"waiting for an orchestrator at {endpoint}")
    assert waiting is not None, [r.getMessage() for r in caplog.records]
    assert waiting.name == "tasker_core.tasker_worker.connection"
    assert waiting.tasker_fields["worker_id"] == worker.worker_id
    time.sleep(2.0)  # several more silent periods and reconnects
    assert worker.state == "connecting"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("waiting for an orchestrator" in m for m in messages) == 1, messages
    assert not any(m.startswith("registered with orchestrator") for m in messages)


def test_run_on_a_stopped_worker_is_an_error_not_a_return(make_worker):
    """A supervisor's `while True: worker.run()` spun at 100% CPU when run()
    returned at once on a stopped worker; it raises, as in Node and Ruby."""
    worker = make_worker(endpoint=free_endpoint(), shutdown_timeout_ms=300)
    worker.register("work", lambda step: None)
    worker.start()
    worker.stop()
    assert worker.join(15)
    with pytest.raises(WorkerError, match="run\\(\\) called on a stopped worker; a Worker runs once"):
        worker.run()
    with pytest.raises(WorkerError, match="already started"):
        worker.start()


def test_config_from_file_environment_and_keywords(monkeypatch):
    monkeypatch.setenv("TASKER_BATCH_SIZE", "17")
    worker = Worker.from_config(CONFIG, env="test", endpoint="tcp://127.0.0.1:6001", capacity=3)
    assert worker.config["heartbeat_interval_ms"] == 200  # the file's test section
    assert worker.config["batch_size"] == 17  # TASKER_BATCH_SIZE
    assert worker.config["endpoint"] == "tcp://127.0.0.1:6001"  # keyword
    assert worker.capacity == 3
    assert worker.threads == 3

    monkeypatch.setenv("TASKER_ENDPOINT", "tcp://127.0.0.1:6002")
    monkeypatch.setenv("TASKER_WORKER_CAPACITY", "20")
    worker = Worker()
    assert worker.config["endpoint"] == "tcp://127.0.0.1:6002"
    assert worker.capacity == 20
    assert worker.threads == 8


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"capacity": 0}, "worker_capacity"),
        ({"endpoint": "inproc://x"}, "endpoint"),
        ({"heartbeat_interval_ms": "soon"}, "heartbeat_interval_ms"),
        ({"config_path": "/nonexistent/tasker.yaml"}, "/nonexistent/tasker.yaml"),
        ({"config_path": CONFIG, "env": "staging"}, "staging"),
        ({"threads": 0}, "threads"),
    ],
)
def test_bad_configuration_is_named(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        Worker(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, TaskerError)


def test_a_bad_capacity_is_named_as_the_caller_wrote_it():
    # `capacity` is the config key `worker_capacity` underneath; the error
    # named the key the caller never wrote.
    with pytest.raises(ConfigError) as info:
        Worker(capacity="8")  # type: ignore[arg-type]
    assert "option `capacity`" in str(info.value), str(info.value)
    assert "worker_capacity" not in str(info.value)


def test_start_without_handlers_is_an_error():
    with pytest.raises(ConfigError, match="no handlers"):
        Worker(endpoint="tcp://127.0.0.1:6003").start()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"endpont": "tcp://127.0.0.1:6004"}, "'endpont'; did you mean 'endpoint'?"),
        ({"worker_capacity": 3}, "'worker_capacity'; did you mean 'capacity'?"),
        ({"worker_capcity": 3}, "'worker_capcity'; did you mean 'capacity'?"),
        ({"shutdown_timout_ms": 10}, "did you mean 'shutdown_timeout_ms'?"),
        ({"batch_size": 5}, "batch_size is a config key, but not a worker's"),
        ({"no_such_key": 1}, "'no_such_key'; the keywords are: endpoint, capacity"),
    ],
)
def test_an_unknown_keyword_is_a_type_error_naming_the_closest(kwargs, message):
    """Issue 18 #6: explicit keywords, no **config: a misspelt one is a
    TypeError (and a mypy error, see test_typing.py), not a config key."""
    with pytest.raises(TypeError, match=re.escape(message)) as info:
        Worker(**kwargs)
    assert "Worker() got an unexpected keyword argument" in str(info.value)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        Worker.from_config(CONFIG, env="test", **kwargs)


def test_every_worker_config_keyword_reaches_the_config(tmp_path):
    keys = {
        "endpoint": "tcp://127.0.0.1:6005",
        "default_retryable": True,
        "heartbeat_interval_ms": 250,
        "liveness": 4,
        "shutdown_timeout_ms": 1234,
        "linger_ms": 55,
        "reconnect_initial_ms": 20,
        "reconnect_max_ms": 400,
        "max_message_bytes": 123456,
        "send_hwm": 77,
        "recv_hwm": 88,
        "curve_secret_key_file": str(tmp_path / "w.key"),
        "curve_server_public_key_file": str(tmp_path / "o.pub"),
    }
    worker = Worker(capacity=5, **keys)
    assert {k: worker.config[k] for k in keys} == keys
    assert worker.config["worker_capacity"] == 5
    # Paths may be path objects.
    worker = Worker(curve_secret_key_file=Path(keys["curve_secret_key_file"]))
    assert worker.config["curve_secret_key_file"] == keys["curve_secret_key_file"]
    # from_config takes the same keywords.
    init = inspect.signature(Worker.__init__).parameters
    from_config = inspect.signature(Worker.from_config).parameters
    assert set(from_config) - {"path"} == set(init) - {"self", "config_path"}
    worker = Worker.from_config(CONFIG, "test", capacity=5, **keys)
    assert {k: worker.config[k] for k in keys} == keys
