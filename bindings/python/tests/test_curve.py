"""CURVE: encrypted, authenticated connections to a real `tasker dispatch`
with CURVE on, keys made by the real `tasker keygen`. Never skipped: a build
without CURVE fails them."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import step, tasker_bin
from tasker_core import ConfigError, Worker, WorkerError, WorkerRefused

#: Longest a refusal may take to reach run().
REFUSAL_WITHIN = 10.0


class Keys:
    """Key pairs made with `tasker keygen` in a temporary folder: the
    orchestrator's, and workers' whose public key is copied into the
    orchestrator's authorized folder when admitted."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "keys"
        self.authorized = root / "authorized"
        self.dir.mkdir()
        self.authorized.mkdir()
        self.make("orchestrator")

    def make(self, name: str, admit: bool = False) -> None:
        subprocess.run(
            [str(tasker_bin()), "keygen", name, "--out", str(self.dir)],
            check=True,
            capture_output=True,
        )
        if admit:
            (self.authorized / f"{name}.pub").write_bytes((self.dir / f"{name}.pub").read_bytes())

    def secret(self, name: str) -> str:
        return str(self.dir / f"{name}.key")

    def public_file(self, name: str) -> str:
        return str(self.dir / f"{name}.pub")

    def public_key(self, name: str) -> str:
        """The Z85 public key in NAME.pub."""
        text = (self.dir / f"{name}.pub").read_text()
        match = re.search(r'public-key = "(.{40})"', text)
        assert match, text
        return match.group(1)

    def orchestrator_env(self) -> Dict[str, str]:
        """What turns CURVE on for `tasker dispatch`."""
        return {
            "TASKER_CURVE_AUTHORIZED_KEYS_DIR": str(self.authorized),
            "TASKER_CURVE_SECRET_KEY_FILE": self.secret("orchestrator"),
        }

    def worker_options(self, name: str) -> Dict[str, str]:
        """A worker's keyword options: its secret key, the orchestrator's
        public key."""
        return {
            "curve_secret_key_file": self.secret(name),
            "curve_server_public_key_file": self.public_file("orchestrator"),
        }


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


def refusal_of(worker: Worker) -> WorkerRefused:
    """Runs `worker` on this (the main) thread; returns what run() raised,
    checking it came promptly."""
    started = time.monotonic()
    with pytest.raises(WorkerRefused) as caught:
        worker.run()
    took = time.monotonic() - started
    assert took < REFUSAL_WITHIN, f"the refusal took {took:.1f}s to reach run()"
    assert worker.state == "stopped"
    assert worker.failure is caught.value
    return caught.value


def test_worker_with_keyword_keys_serves_a_step(keys, dispatch, make_worker):
    keys.make("alice", admit=True)
    run = dispatch(
        [step(1, "double", task_context={"n": 21})], env=keys.orchestrator_env()
    )
    worker = make_worker(endpoint=run.endpoint, **keys.worker_options("alice"))
    worker.register("double", lambda s: {"doubled": s.task_context["n"] * 2})
    worker.start()
    result = run.results()[1]
    assert result["status"] == "completed", result
    assert result["output"] == {"doubled": 42}
    assert result["metadata"]["worker_id"] == worker.worker_id
    assert worker.failure is None


def test_worker_process_configured_by_its_environment_serves_steps(
    keys, dispatch, worker_process
):
    keys.make("bob", admit=True)
    run = dispatch([step(i, "work") for i in range(3)], env=keys.orchestrator_env())
    proc = worker_process(
        run.endpoint,
        "--capacity",
        "2",
        env={
            "TASKER_CURVE_SECRET_KEY_FILE": keys.secret("bob"),
            "TASKER_CURVE_SERVER_PUBLIC_KEY_FILE": keys.public_file("orchestrator"),
        },
    )
    results = run.results()
    assert [results[i]["status"] for i in range(3)] == ["completed"] * 3, results
    assert {results[i]["output"]["pid"] for i in range(3)} == {proc.proc.pid}
    assert [results[i]["output"]["step_id"] for i in range(3)] == [0, 1, 2]


def test_worker_whose_key_is_not_admitted_raises_worker_refused(keys, dispatch, make_worker):
    keys.make("admitted", admit=True)
    keys.make("mallory")  # its .pub is not in the authorized folder
    run = dispatch([step(1, "work")], env=keys.orchestrator_env())
    ran: List[int] = []

    refused = make_worker(endpoint=run.endpoint, **keys.worker_options("mallory"))
    refused.register("work", lambda s: ran.append(s.step_id) or "mallory")
    error = refusal_of(refused)
    assert isinstance(error, WorkerError)
    message = str(error)
    assert keys.public_key("mallory") in message
    assert "curve_authorized_keys_dir" in message
    assert run.endpoint in message

    # The step waits for a worker the orchestrator admits, which runs it.
    good = make_worker(endpoint=run.endpoint, **keys.worker_options("admitted"))
    good.register("work", lambda s: "admitted")
    good.start()
    result = run.results()[1]
    assert result["status"] == "completed", result
    assert result["output"] == "admitted"
    assert result["metadata"]["worker_id"] == good.worker_id
    assert ran == [], "the refused worker ran no step"
    # join() raises the refusal too, and goes on raising it.
    with pytest.raises(WorkerRefused):
        refused.join(1)


def test_plaintext_worker_against_a_curve_orchestrator_raises_worker_refused(
    keys, dispatch, make_worker
):
    run = dispatch([step(1, "work")], workers=1, env=keys.orchestrator_env())
    worker = make_worker(endpoint=run.endpoint)
    ran: List[int] = []
    worker.register("work", lambda s: ran.append(s.step_id))
    message = str(refusal_of(worker))
    assert "requires CURVE" in message
    assert "curve_server_public_key_file" in message
    assert ran == []


def test_refused_worker_process_exits_with_the_error(keys, dispatch, worker_process):
    run = dispatch([step(1, "work")], env=keys.orchestrator_env())
    proc = worker_process(run.endpoint, "--capacity", "1")
    code = proc.wait(timeout=REFUSAL_WITHIN + 5)
    err = proc.stderr()
    assert code == 1, err
    assert "WorkerRefused: " in err, err
    assert "requires CURVE" in err


def test_worker_refused_from_start_in_background_threads(keys, dispatch, make_worker):
    """start() + join(): the refusal reaches join() and `failure`, and the
    worker's threads end."""
    keys.make("eve")
    run = dispatch([step(1, "work")], env=keys.orchestrator_env())
    worker = make_worker(endpoint=run.endpoint, threads=3, capacity=3, **keys.worker_options("eve"))
    worker.register("work", lambda s: None)
    before = {t.name for t in threading.enumerate()}
    worker.start()
    with pytest.raises(WorkerRefused, match="curve_authorized_keys_dir"):
        worker.join(REFUSAL_WITHIN)
    assert isinstance(worker.failure, WorkerRefused)
    time.sleep(0.2)
    left = {t.name for t in threading.enumerate()} - before
    assert not {n for n in left if n.startswith("tasker-core-worker-")}, left


def test_bad_curve_configuration_is_a_config_error_at_start(keys, tmp_path):
    keys.make("carol")
    server = keys.public_file("orchestrator")
    cases = [
        # The server key without this worker's secret key.
        ({"curve_server_public_key_file": server}, "curve_secret_key_file"),
        # A key file that does not exist.
        (
            {
                "curve_server_public_key_file": server,
                "curve_secret_key_file": str(tmp_path / "nowhere.key"),
            },
            "nowhere.key",
        ),
        # A public key where the secret key belongs.
        (
            {
                "curve_server_public_key_file": server,
                "curve_secret_key_file": keys.public_file("carol"),
            },
            "curve_secret_key_file",
        ),
    ]
    for options, named in cases:
        with pytest.raises(ConfigError, match=named):
            worker = Worker(endpoint="tcp://127.0.0.1:9", **options)
            worker.register("work", lambda s: None)
            worker.start()
