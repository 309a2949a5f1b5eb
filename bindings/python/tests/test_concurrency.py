"""Per-handler concurrency (``concurrency=`` at registration): the limit is
announced to the real orchestrator, which never has more of that handler's
steps out at the worker, while the other handlers use the rest of its
capacity; bad values are refused at registration."""

import logging
import threading
import time

import pytest

from conftest import run_batch, step
from tasker_core import ConfigError, Worker


class Gauge:
    """How many run at once, and the most that ever did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def run(self, seconds: float) -> None:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(seconds)
        with self.lock:
            self.now -= 1


def test_a_limited_handler_never_runs_above_its_limit(dispatch, make_worker):
    limited, free = Gauge(), Gauge()

    def register(worker):
        @worker.handler("rate_limited", concurrency=2)
        def rate_limited(step):
            limited.run(0.1)
            return "limited"

        def unlimited(step):
            free.run(0.3)
            return "free"

        worker.register("free", unlimited)

    steps = [step(i, "rate_limited") for i in range(16)]
    steps += [step(100 + i, "free") for i in range(24)]
    results = run_batch(dispatch, make_worker, steps, register, capacity=8, threads=8)
    assert all(r["status"] == "completed" for r in results.values()), results
    assert limited.most == 2, f"a handler limited to 2 ran {limited.most} at once"
    # The other handler had the rest of the capacity: more than half of it.
    assert 5 <= free.most <= 6, f"the unlimited handler ran at most {free.most} at once"


def test_register_takes_the_limit_too_and_registering_again_replaces_it(
    dispatch, make_worker, caplog
):
    again, single = Gauge(), Gauge()

    def register(worker):
        worker.register("again", lambda step: "x", concurrency=1)
        # Registered again without the option: no limit any more.
        worker.register("again", lambda step: again.run(0.2))
        worker.register("single", lambda step: single.run(0.1), concurrency=1)

    steps = [step(i, "again") for i in range(6)] + [step(100 + i, "single") for i in range(4)]
    results = run_batch(dispatch, make_worker, steps, register, capacity=4, threads=4)
    assert all(r["status"] == "completed" for r in results.values()), results
    assert single.most == 1
    assert again.most >= 2, "the first registration's limit outlived it"
    replaced = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert replaced == ["handler 'again' registered again: this one replaces the first"], replaced


@pytest.mark.parametrize(
    "bad, error",
    [(0, ConfigError), (-1, ConfigError), (2**32, ConfigError), (1.5, TypeError),
     ("2", TypeError), (True, TypeError)],
)
def test_a_bad_concurrency_is_refused_naming_the_handler(bad, error):
    worker = Worker(endpoint="tcp://127.0.0.1:1")
    with pytest.raises(error, match=r"handler 'api'.*concurrency"):
        worker.register("api", lambda step: None, concurrency=bad)
    with pytest.raises(error, match=r"handler 'api'.*concurrency"):
        worker.handler("api", concurrency=bad)
    assert worker.handlers == []
