"""Fixtures: the real orchestrator (`tasker dispatch`) on a free loopback
port, in-process workers that are always stopped, and worker processes that
are always killed."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from tasker_core import Worker, WorkerRefused

ROOT = Path(__file__).resolve().parents[3]
# The orchestrator runs the config's `test` section (heartbeat 200 ms,
# liveness 3). Workers use the same interval: the runtime adopts the
# welcome's interval only after the heartbeat already scheduled with its own,
# so a worker configured slower than the orchestrator looks dead for its
# first interval after the welcome (reported to the runtime's owners).
HEARTBEAT_MS = 200
CONFIG = ROOT / "config" / "zeromq.yaml"
WORKER_SCRIPT = Path(__file__).resolve().parent / "worker_script.py"


def tasker_bin() -> Path:
    path = Path(os.environ.get("TASKER_BIN", ROOT / "target" / "debug" / "tasker"))
    if not path.exists():
        pytest.exit(f"{path} not found: run `cargo build -p tasker-cli` first", returncode=2)
    return path


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def step(step_id: int, handler: str, **fields: Any) -> Dict[str, Any]:
    """A step in `tasker dispatch`'s lenient input form."""
    return {"step_id": step_id, "handler_class": handler, **fields}


class Dispatch:
    """One `tasker dispatch` run: binds, waits for workers, sends one batch,
    prints one result per step."""

    def __init__(
        self,
        steps: List[Dict[str, Any]],
        workers: int = 1,
        wait: float = 30.0,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.endpoint = free_endpoint()
        self.steps = steps
        env = dict(os.environ, TASKER_ENV="test", RUST_LOG="warn", **(env or {}))
        fd, self.batch_file = tempfile.mkstemp(prefix="tasker-batch-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"steps": steps}, f)
        self.proc = subprocess.Popen(
            [
                str(tasker_bin()),
                "dispatch",
                self.batch_file,
                "--config",
                str(CONFIG),
                "--endpoint",
                self.endpoint,
                "--workers",
                str(workers),
                "--wait",
                str(wait),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def results(self, timeout: float = 60.0) -> Dict[int, Dict[str, Any]]:
        """Waits for the batch's results, keyed by step id; checks there is
        exactly one per step."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(f"tasker dispatch did not finish in {timeout}s; stderr:\n{err}")
        assert self.proc.returncode == 0, f"tasker dispatch failed:\n{err}"
        results = json.loads(out)["results"]
        ids = [r["step_id"] for r in results]
        assert sorted(ids) == sorted(s["step_id"] for s in self.steps), "one result per step"
        return {r["step_id"]: r for r in results}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        os.unlink(self.batch_file)


class WorkerProcess:
    """A Python worker process running `script` (tests/worker_script.py
    unless told otherwise)."""

    def __init__(
        self,
        endpoint: str,
        *args: str,
        script: Path = WORKER_SCRIPT,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        env = dict(
            os.environ,
            TASKER_ENDPOINT=endpoint,
            TASKER_HEARTBEAT_INTERVAL_MS=str(HEARTBEAT_MS),
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._buffer = b""

    def expect_line(self, prefix: str, timeout: float = 20.0) -> str:
        """Reads stdout until a line starting with `prefix` (bounded)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode()
                if text.startswith(prefix):
                    return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} line from the worker within {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise AssertionError(f"worker exited before {prefix!r}; stderr:\n{err}")
                self._buffer += chunk

    def remaining_lines(self) -> List[str]:
        """The stdout lines `expect_line` has not read, up to the end (call
        it once the process exited)."""
        assert self.proc.stdout is not None
        rest, self._buffer = self._buffer + self.proc.stdout.read(), b""
        return rest.decode().splitlines()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def dispatch() -> Iterator[Any]:
    """Factory: dispatch(steps, workers=1, env=None) -> Dispatch (`env`: more
    environment variables for the orchestrator); killed at teardown."""
    runs: List[Dispatch] = []

    def start(
        steps: List[Dict[str, Any]], workers: int = 1, env: Optional[Dict[str, str]] = None
    ) -> Dispatch:
        run = Dispatch(steps, workers, env=env)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


@pytest.fixture
def make_worker() -> Iterator[Any]:
    """Factory: make_worker(**kwargs) -> Worker (not started); every worker
    made is stopped and joined at teardown."""
    workers: List[Worker] = []

    def make(**kwargs: Any) -> Worker:
        kwargs.setdefault("linger_ms", 200)
        kwargs.setdefault("heartbeat_interval_ms", HEARTBEAT_MS)
        worker = Worker(**kwargs)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        worker.stop()
    for worker in workers:
        try:
            stopped = worker.join(15)
        except WorkerRefused:  # the refusal was the test's to check
            stopped = True
        assert stopped, f"{worker!r} did not stop"


@pytest.fixture
def worker_process() -> Iterator[Any]:
    """Factory: worker_process(endpoint, *args, script=WORKER_SCRIPT,
    env=None) -> WorkerProcess (`env`: more environment variables for the
    worker); killed at teardown."""
    procs: List[WorkerProcess] = []

    def start(
        endpoint: str,
        *args: str,
        script: Path = WORKER_SCRIPT,
        env: Optional[Dict[str, str]] = None,
    ) -> WorkerProcess:
        proc = WorkerProcess(endpoint, *args, script=script, env=env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()


def run_batch(dispatch: Any, make_worker: Any, steps: List[Dict[str, Any]],
              register: Any, **worker_kwargs: Any) -> Dict[int, Dict[str, Any]]:
    """Dispatches `steps` to one in-process worker set up by `register(worker)`."""
    run = dispatch(steps)
    worker = make_worker(endpoint=run.endpoint, **worker_kwargs)
    register(worker)
    worker.start()
    return run.results()

