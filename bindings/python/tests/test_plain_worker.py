"""The benchmark's hand-written pyzmq + json worker really speaks the
protocol: it serves steps from the real orchestrator and drains on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import step

zmq = pytest.importorskip("zmq")

PLAIN = Path(__file__).resolve().parents[1] / "bench" / "plain_worker.py"


def test_plain_worker_serves_steps_and_stops_on_sigterm(dispatch):
    n = 250
    steps = [step(i, "noop") for i in range(n)] + [step(n, "echo", task_context={"k": ["ü", 1]})]
    run = dispatch(steps)
    env = dict(os.environ, TASKER_ENDPOINT=run.endpoint, TASKER_WORKER_CAPACITY="50")
    proc = subprocess.Popen([sys.executable, str(PLAIN)], env=env, stderr=subprocess.PIPE)
    try:
        results = run.results()
        assert all(results[i]["status"] == "completed" for i in range(n))
        assert results[n]["output"] == {"k": ["ü", 1]}
        assert results[0]["metadata"]["worker_id"].startswith("plain-python-")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
