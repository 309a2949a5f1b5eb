"""Stopping (gracefully, from a handler, with a hung handler), the log
bridge, and configuration."""

from __future__ import annotations

import logging
import threading

import pytest

from conftest import CONFIG, run_batch, step
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
        ({"no_such_key": 1}, "`no_such_key`"),
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


def test_start_without_handlers_is_an_error():
    with pytest.raises(ConfigError, match="no handlers"):
        Worker(endpoint="tcp://127.0.0.1:6003").start()
