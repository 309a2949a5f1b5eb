"""`tasker_core.Client` and `AsyncClient` against a real `tasker serve` (on a
SQLite store in a temporary folder) whose steps run on a real Rust worker
(`tasker worker`): outputs, step errors, idempotency, cancel, every error
class from a real bad request, tokens, an unreachable server, the server
stopped mid-wait, wait timeouts, listing and paging, and the configuration
(protocol/CLIENT.md)."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import os
import pickle
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

import tasker_core
from conftest import ROOT, tasker_bin
from tasker_core import (
    ApiError,
    AsyncClient,
    Client,
    ClientError,
    ConfigError,
    IdempotencyConflict,
    ServerUnavailable,
    Task,
    TaskEnded,
    TaskerError,
    TaskNotFound,
    Unauthorized,
    UnknownWorkflow,
    ValidationError,
    WaitTimeout,
)

WORKFLOWS = {
    # Two echo steps: the second sees the first's output.
    "pipeline": """
name: pipeline
description: two echo steps in a row
steps:
  - name: fetch
    handler: echo
    handler_config: { source: "api" }
  - name: pack
    handler: echo
    depends_on: [fetch]
""",
    "mixed": """
name: mixed
steps:
  - name: fetch
    handler: echo
  - name: charge
    handler: fail_permanent
    depends_on: [fetch]
""",
    # Sleeps task_context.sleep_ms, then echoes: a cancel during the nap
    # leaves the last step cancelled.
    "slow": """
name: slow
defaults:
  timeout_ms: 120000
  retry: { max_attempts: 1 }
steps:
  - name: nap
    handler: sleep
  - name: after
    handler: echo
    depends_on: [nap]
""",
    # A stand-in for the demo's workflow, on the Rust worker's handlers, for
    # examples/python-client/submit_order.py.
    "order_fulfillment": """
name: order_fulfillment
steps:
  - name: validate_order
    handler: echo
  - name: send_confirmation
    handler: echo
    depends_on: [validate_order]
""",
    "listing": "name: listing\nsteps:\n  - name: only\n    handler: noop\n",
    "listing_async": "name: listing_async\nsteps:\n  - name: only\n    handler: noop\n",
}
HANDLERS = "echo,sleep,fail_permanent,noop"
# A self-signed certificate for localhost and 127.0.0.1, for the tests only
# (valid 2000-2125; its key is public, here).
TLS_CERT = Path(__file__).parent / "fixtures" / "test-only-localhost-cert.pem"
TLS_KEY = Path(__file__).parent / "fixtures" / "test-only-localhost-key.pem"
EXAMPLE = ROOT / "examples" / "python-client" / "submit_order.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment without any TASKER_* variable of the caller's, plus
    the test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    env.update(
        TASKER_ENV="test",
        TASKER_HEARTBEAT_INTERVAL_MS="200",
        TASKER_LIVENESS="3",
        # A stopping server waits this long for steps in flight.
        TASKER_SHUTDOWN_TIMEOUT_MS="2000",
        RUST_LOG="warn",
    )
    env.update(extra)
    return env


def stop_process(proc: "subprocess.Popen[bytes]", timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


class Serve:
    """A running `tasker serve` (and, with `workers`, `tasker worker`
    processes connected to it); `stop()` ends them all."""

    def __init__(self, folder: Path, workers: int = 1, **env: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        workflows = folder / "workflows"
        workflows.mkdir(exist_ok=True)
        for name, text in WORKFLOWS.items():
            (workflows / f"{name}.yaml").write_text(text, encoding="utf-8")
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.log = folder / "serve.log"
        self.workers: List["subprocess.Popen[bytes]"] = []
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(tasker_bin()),
                    "serve",
                    "--store",
                    f"sqlite:{folder / 't.db'}",
                    "--api-listen",
                    "127.0.0.1:0",
                    "--workflows-dir",
                    str(workflows),
                    "--endpoint",
                    self.endpoint,
                ],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=clean_env(**env),
            )
        try:
            self.url = self._read_url()
            for _ in range(workers):
                self.add_worker(folder)
        except BaseException:
            self.stop()
            raise

    def _read_url(self, timeout: float = 20.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buffer = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            chunk = os.read(fd, 4096) if ready else b""
            if not chunk:
                raise AssertionError(
                    f"tasker serve printed no address line ({buffer!r}); log:\n{self.log_text()}"
                )
            buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        words = line.split()
        assert words[:3] == ["tasker", "serve:", "api"], line
        return words[3]

    def add_worker(self, folder: Path) -> None:
        self.workers.append(
            subprocess.Popen(
                [
                    str(tasker_bin()),
                    "worker",
                    "--endpoint",
                    self.endpoint,
                    "--handlers",
                    HANDLERS,
                    "--capacity",
                    "16",
                ],
                cwd=folder,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=clean_env(),
            )
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        for proc in [self.proc, *self.workers]:
            stop_process(proc)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    """One server and one Rust worker for the module."""
    server = Serve(tmp_path_factory.mktemp("serve"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(serve: Serve) -> Client:
    return Client(serve.url, token="")


@pytest.fixture
def closed_url() -> str:
    """A loopback port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}"


class TlsProxy:
    """A TLS-terminating proxy on a loopback port, in front of `upstream`
    (``HOST:PORT``, plain HTTP), with the test certificate: what Caddy or
    nginx would be in front of `tasker serve`. One thread per connection;
    `handshakes` counts the TLS handshakes that succeeded."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(TLS_CERT, TLS_KEY)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.handshakes = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except OSError:  # ssl.SSLError included: the client refused the certificate
            conn.close()
            return
        self.handshakes += 1
        try:
            plain = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            tls.close()
            return
        # One thread reads and writes both sides (an SSL object must not be
        # used by two threads at once); either side's end closes both.
        try:
            while True:
                if tls.pending():
                    ready = [tls]
                else:
                    ready, _, _ = select.select([tls, plain], [], [], 30)
                if not ready:
                    return
                for source in ready:
                    target = plain if source is tls else tls
                    try:
                        data = source.recv(65536)
                    except ssl.SSLWantReadError:
                        continue
                    if not data:
                        return
                    target.sendall(data)
        except OSError:
            return
        finally:
            tls.close()
            plain.close()

    def close(self) -> None:
        self.listener.close()


def wait_for_step_state(client: Client, task_id: int, name: str, state: str) -> Task:
    deadline = time.monotonic() + 15
    while True:
        task = client.get(task_id)
        if task.step(name).state == state:
            return task
        assert time.monotonic() < deadline, f"step {name} never {state}: {task}"
        time.sleep(0.02)


def wait_until_a_worker_holds_a_step(client: Client) -> None:
    """A `running` step may still be queued in the orchestrator (a cancel
    would withdraw it); this waits until a worker has taken one."""
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"{client.url}/v1/workers", timeout=5) as answer:
            workers = json.load(answer)["workers"]
        if any(w["in_flight"] > 0 for w in workers):
            return
        assert time.monotonic() < deadline, f"no worker took a step: {workers}"
        time.sleep(0.02)


# -- the blocking client -------------------------------------------------------


def test_submit_wait_returns_the_rust_workers_outputs(client: Client) -> None:
    context = {"order_id": "A-1", "note": "Été ärgerlich 🚀", "items": [1, 2.5, None, True]}
    handle = client.submit("pipeline", context)
    assert handle.created
    assert handle.task.task_id == handle.id and handle.task.workflow == "pipeline"
    assert handle.task.context == context

    task = handle.wait(timeout=30)
    assert task.status == "complete" and task.ended
    assert [s.name for s in task.steps] == ["fetch", "pack"]
    assert [s.depends_on for s in task.steps] == [[], ["fetch"]]
    fetch, pack = task.steps
    for step in task.steps:
        assert step.outcome == "completed" and step.state == "completed"
        assert step.attempts == 1
        assert step.error is None
        assert step.worker_id is not None and step.worker_id.startswith("rust-")
        assert step.handler == "echo"
    assert fetch.output["task_context"] == context
    assert fetch.output["handler_config"] == {"source": "api"}
    assert fetch.output["step_name"] == "fetch"
    assert pack.output["previous_results"] == {"fetch": fetch.output}
    assert task.started_at.tzinfo is not None and task.finished_at is not None
    assert task.started_at <= task.finished_at
    assert abs(task.started_at - datetime.now(timezone.utc)) < timedelta(minutes=5)
    assert task.duration_ms >= 0 and task.cancel_requested is False
    assert task.idempotency_key is None
    # The server's JSON is kept as it came: round-trips through json.
    raw = task.to_dict()
    assert raw == json.loads(json.dumps(raw))
    assert raw["task_id"] == task.task_id and raw["steps"][0]["output"] == fetch.output
    assert raw["started_at"].endswith("Z")
    assert handle.get() == task == client.get(handle.id)


def test_a_context_with_dates_decimals_and_uuids_is_encoded_as_outputs_are(
    client: Client,
) -> None:
    when = datetime(2025, 1, 23, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    order = uuid.UUID("12345678-1234-5678-1234-567812345678")
    context = {"at": when, "day": when.date(), "total": Decimal("12.50"), "id": order}
    task = client.submit("pipeline", context).wait(timeout=30)
    assert task.context == {
        "at": "2025-01-23T10:00:00+02:00",
        "day": "2025-01-23",
        "total": "12.50",
        "id": "12345678-1234-5678-1234-567812345678",
    }
    assert task.step("fetch").output["task_context"] == task.context
    # What a handler may not return, a context may not hold either.
    # Each refusal names the place of the value, as a handler's does.
    with pytest.raises(ValueError, match=r"^context\['at'\]: a naive datetime"):
        client.submit("pipeline", {"at": datetime(2025, 1, 23)})
    with pytest.raises(ValueError, match=r"^context\['order'\]\['total'\]: Decimal NaN"):
        client.submit("pipeline", {"order": {"id": 1, "total": Decimal("NaN")}})
    with pytest.raises(TypeError, match=r"^context\['items'\]\[1\]\['tags'\]: .*type set"):
        client.submit("pipeline", {"items": [{"tags": []}, {"tags": {"a"}}]})
    with pytest.raises(ValueError, match=r"^context\['x'\]: Out of range float"):
        client.submit("pipeline", {"x": float("inf")})
    loop: Dict[str, Any] = {"a": 1}
    loop["self"] = [loop]
    with pytest.raises(ValueError, match=r"^context\['self'\]\[0\]\['self'\]: Circular reference"):
        client.submit("pipeline", loop)
    # Half a character passes json.dumps and failed at the UTF-8 encoding
    # with no place named.
    with pytest.raises(
        ValueError,
        match=r"^context\['s'\]\[1\]: a string with a lone surrogate \('\\udce9'\), which is not Unicode text",
    ):
        client.submit("pipeline", {"s": ["ok", "\udce9"]})
    # A key json.dumps would turn into another ("1", "null").
    with pytest.raises(TypeError, match=r"^context\['m'\]: key 1 \(int\) is not a str"):
        client.submit("pipeline", {"m": {1: "one"}})


def test_a_context_that_is_not_a_json_object_is_refused_before_any_request(
    closed_url: str,
) -> None:
    # Nobody listens at closed_url: a request would end in ServerUnavailable
    # after a try; the TypeError comes first, and at once.
    client = Client(closed_url)
    started = time.monotonic()
    for context in ([1, 2], [("a", 1)], "abc", 7):
        with pytest.raises(TypeError) as refused:
            client.submit("audit", context)  # type: ignore[arg-type]
        assert str(refused.value) == (
            f"context must be a mapping (a JSON object) or None, got {type(context).__name__}"
        )

    async def run() -> None:
        async with AsyncClient(closed_url) as aclient:
            with pytest.raises(TypeError, match=r"context must be a mapping \(a JSON object\)"):
                await aclient.submit("audit", [1, 2])  # type: ignore[arg-type]

    asyncio.run(run())
    assert time.monotonic() - started < 1.0


def test_a_failed_task_reports_the_step_error(client: Client) -> None:
    task = client.submit("mixed", {"n": 1}).wait(timeout=30)
    assert task.status == "failed"
    fetch, charge = task.step("fetch"), task.step("charge")
    assert fetch.outcome == "completed" and fetch.error is None
    assert charge.outcome == "failed"
    assert charge.error is not None
    assert charge.error.error_type == "PermanentError"
    assert charge.error.message == "charge failed (permanent)"
    assert charge.error.retryable is False
    assert isinstance(charge.error.backtrace, tuple)
    with pytest.raises(KeyError):
        task.step("nope")


def test_idempotent_resubmit_returns_the_same_task(client: Client) -> None:
    key = f"order-{time.time_ns()}"
    first = client.submit("pipeline", {"order": 1}, idempotency_key=key)
    again = client.submit("pipeline", {"order": 1}, idempotency_key=key)
    assert first.created is True and again.created is False
    assert again.id == first.id and again.task.idempotency_key == key
    with pytest.raises(IdempotencyConflict) as conflict:
        client.submit("pipeline", {"order": 2}, idempotency_key=key)
    error = conflict.value
    assert error.task_id == first.id
    assert error.status == 409 and error.problem_type == "idempotency-conflict"
    assert key in str(error) and str(error) == error.detail == error.problem["detail"]  # type: ignore[index]
    assert first.wait(30).status == "complete"


def test_cancel_a_running_task(client: Client) -> None:
    handle = client.submit("slow", {"sleep_ms": 1500})
    wait_for_step_state(client, handle.id, "nap", "running")
    wait_until_a_worker_holds_a_step(client)
    answer = handle.cancel()
    assert answer.task_id == handle.id and answer.cancel_requested
    task = handle.wait(timeout=30)
    assert task.status == "cancelled"
    assert task.step("nap").outcome == "completed"  # it was running: it finished
    assert task.step("after").outcome == "cancelled"  # never dispatched

    with pytest.raises(TaskEnded) as ended:
        handle.cancel()
    assert ended.value.task_id == handle.id
    assert ended.value.task_status == "cancelled"
    assert ended.value.status == 409 and ended.value.problem_type == "task-ended"


def test_unknown_task_is_task_not_found(client: Client) -> None:
    with pytest.raises(TaskNotFound) as missing:
        client.get(987654321)
    assert missing.value.task_id == 987654321 and missing.value.status == 404
    with pytest.raises(TaskNotFound):
        client.wait(987654321, timeout=5)
    with pytest.raises(TaskNotFound):
        client.cancel(987654321)


def test_unknown_workflow_names_the_closest(client: Client) -> None:
    with pytest.raises(UnknownWorkflow) as unknown:
        client.submit("pipelin", {})
    error = unknown.value
    assert isinstance(error, ValidationError) and isinstance(error, ClientError)
    assert isinstance(error, TaskerError)
    assert error.field == "workflow" and error.closest == "pipeline"
    assert set(WORKFLOWS) <= set(error.known_workflows)
    assert error.status == 422 and error.problem_type == "unknown-workflow"
    assert "pipelin" in str(error)


def test_validation_errors_carry_their_field(client: Client) -> None:
    with pytest.raises(ValidationError) as bad_limit:
        client.list(limit=0)
    assert bad_limit.value.field == "limit" and bad_limit.value.status == 400
    assert type(bad_limit.value) is ValidationError

    with pytest.raises(ValidationError) as long_key:
        client.submit("pipeline", {}, idempotency_key="k" * 300)
    assert long_key.value.field == "idempotency_key"
    assert len(str(long_key.value)) < 300 + 200

    with pytest.raises(ValidationError) as bad_status:
        client.list(status="sleeping")
    assert bad_status.value.field == "status"

    # Over the server's 1 MiB: said before any upload, not a broken pipe
    # taken for a server gone (and a keyed submit retried five times).
    for size in (2 << 20, 20 << 20):
        started = time.monotonic()
        with pytest.raises(ValidationError) as too_large:
            client.submit("pipeline", {"pad": "x" * size}, idempotency_key=f"big-{size}")
        assert too_large.value.problem_type == "body-too-large", str(too_large.value)
        assert "1 MiB" in str(too_large.value) and time.monotonic() - started < 2
    assert not [t for t in client.list(limit=100).tasks if (t.idempotency_key or "").startswith("big-")]


def test_errors_pickle_with_their_attributes(client: Client) -> None:
    with pytest.raises(UnknownWorkflow) as unknown:
        client.submit("pipelin", {})
    copy = pickle.loads(pickle.dumps(unknown.value))
    assert type(copy) is UnknownWorkflow and str(copy) == str(unknown.value)
    assert copy.closest == "pipeline" and copy.status == 422


def test_a_client_pickles_to_one_that_reaches_the_same_server(client: Client) -> None:
    # A multiprocessing Pool or Process is handed its arguments pickled; a
    # client failed there ("cannot pickle 'SSLContext' object").
    slow = Client(client.url, "pickled-token-0123456789", timeout=7.5)
    copy = pickle.loads(pickle.dumps(slow))
    assert (copy.url, copy.timeout, repr(copy)) == (slow.url, 7.5, repr(slow))
    same = pickle.loads(pickle.dumps(client))
    task = same.submit("pipeline", {"n": 1}).wait(timeout=30)
    assert task.status == "complete", task
    lazy = AsyncClient(client.url, "pickled-token-0123456789", timeout=4.0, max_threads=3)
    again = pickle.loads(pickle.dumps(lazy))
    assert (again.url, again.timeout, again._pool._max_workers) == (client.url, 4.0, 3)
    asyncio.run(lazy.aclose())
    asyncio.run(again.aclose())


def test_wait_timeout_carries_the_task(client: Client) -> None:
    handle = client.submit("slow", {"sleep_ms": 2000})
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as timeout:
        handle.wait(timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < 1.5, elapsed
    assert isinstance(timeout.value, TimeoutError) and isinstance(timeout.value, ClientError)
    assert timeout.value.task.task_id == handle.id
    assert timeout.value.task.status == "running" and not timeout.value.task.ended
    assert timeout.value.status is None
    assert str(timeout.value) == f"task {handle.id} (slow) did not end within 0.5 s; it is running"
    # timeout=0 looks once.
    with pytest.raises(WaitTimeout):
        handle.wait(timeout=0)
    assert handle.wait(timeout=30).status == "complete"
    assert handle.wait(timeout=0).status == "complete"  # ended: no timeout


@contextlib.contextmanager
def holding_server() -> Iterator[str]:
    """A loopback HTTP address that takes connections and never answers (a
    server whose PostgreSQL store is down holds each read 10 s)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: List[socket.socket] = []
    done = threading.Event()

    def hold() -> None:
        listener.settimeout(0.1)
        while not done.is_set():
            with contextlib.suppress(socket.timeout):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


def test_a_waits_timeout_bounds_it_against_a_server_that_holds_every_request() -> None:
    # Each try was held for the wait plus 10 s, five times over: a 3 s wait
    # gave up after 53 s.
    with holding_server() as url:
        for wait in (lambda: Client(url).wait(1, timeout=1), lambda: asyncio.run(
            AsyncClient(url).wait(1, timeout=1)
        )):
            started = time.monotonic()
            with pytest.raises(ServerUnavailable) as unavailable:
                wait()
            elapsed = time.monotonic() - started
            assert 1.0 <= elapsed < 1.0 + 2.0 + 1.0, elapsed
            message = str(unavailable.value)
            assert message.startswith(
                f"the tasker server at {url} did not answer by the wait's deadline (no answer"
            ), message
            assert "is tasker serve running" not in message, message


def test_wait_long_polls_and_returns_as_soon_as_the_task_ends(client: Client) -> None:
    handle = client.submit("slow", {"sleep_ms": 700})
    started = time.monotonic()
    task = handle.wait(timeout=30)
    elapsed = time.monotonic() - started
    assert task.status == "complete"
    assert elapsed < 0.7 + 1.0, elapsed  # not a poll every few seconds


def test_list_filters_and_pages(client: Client) -> None:
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    ids = [client.submit("listing", {"i": i}).id for i in range(5)]
    for task_id in ids:
        assert client.wait(task_id, timeout=30).status == "complete"
    newest_first = list(reversed(ids))

    seen: List[int] = []
    sizes = []
    cursor: Optional[str] = None
    while True:
        page = client.list(workflow="listing", limit=2, cursor=cursor)
        sizes.append(len(page.tasks))
        seen += [t.task_id for t in page.tasks]
        for summary in page.tasks:
            assert summary.workflow == "listing" and summary.status == "complete"
            assert summary.steps_total == 1 and summary.steps_completed == 1
            assert summary.ended and summary.finished_at is not None
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first and sizes[:2] == [2, 2] and sum(sizes) == 5

    assert [t.task_id for t in client.iter_tasks(workflow="listing", page_size=2)] == newest_first
    assert client.list(workflow="listing", status="failed").tasks == ()
    assert len(client.list(workflow="listing", status="complete").tasks) == 5
    assert [t.task_id for t in client.list(workflow="listing", created_since=since).tasks] == (
        newest_first
    )
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert client.list(workflow="listing", created_since=later).tasks == ()
    assert client.list(workflow="listing", created_since=since.isoformat()).tasks != ()
    with pytest.raises(ValueError):
        client.list(created_since=datetime.now())  # naive: which zone?

    client.submit("mixed", {"list": True}).wait(30)
    failed = client.list(workflow="mixed", status="failed").tasks
    assert failed and all(t.status == "failed" and t.workflow == "mixed" for t in failed)


def test_workflows_lists_the_loaded_templates(client: Client) -> None:
    workflows = {w.name: w for w in client.workflows()}
    assert set(workflows) == set(WORKFLOWS)
    pipeline = workflows["pipeline"]
    assert pipeline.description == "two echo steps in a row"
    assert [(s.name, s.handler, s.depends_on) for s in pipeline.steps] == [
        ("fetch", "echo", ()),
        ("pack", "echo", ("fetch",)),
    ]


def test_a_url_naming_a_zeromq_endpoint_fails_at_once_saying_so() -> None:
    # What a user gets who copies the orchestrator's endpoint for the API's:
    # a ZeroMQ socket greets and then waits, and each try waited out its read
    # timeout (2.5 minutes for a get).
    zmq = pytest.importorskip("zmq")
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        client = Client(f"http://127.0.0.1:{port}", timeout=30)
        for call in (lambda: client.get(1), lambda: client.submit("pipeline", {})):
            started = time.monotonic()
            with pytest.raises(ServerUnavailable) as unavailable:
                call()
            assert time.monotonic() - started < 5
            message = str(unavailable.value)
            assert "ZeroMQ endpoint" in message and "tries" not in message, message
        assert "no task was created" in message, message
    finally:
        router.close(linger=0)
        context.term()


def test_server_unavailable_after_the_retries(closed_url: str, caplog: Any) -> None:
    client = Client(closed_url)
    caplog.set_level(logging.DEBUG, logger="tasker_core.client")
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as unavailable:
        client.get(1)
    elapsed = time.monotonic() - started
    assert 2.2 <= elapsed <= 5.0, elapsed  # 0.2 + 0.4 + 0.8 + 1.6 s, ±20 %
    error = unavailable.value
    assert error.status is None and error.problem is None
    assert isinstance(error.cause, ConnectionRefusedError)
    assert closed_url in str(error) and "is tasker serve running?" in str(error)
    assert "5 tries" in str(error)
    retries = [r for r in caplog.records if r.name == "tasker_core.client"]
    assert len(retries) == 4 and all(r.levelno == logging.DEBUG for r in retries)

    # A submit with an idempotency key is retried too...
    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        client.submit("pipeline", {}, idempotency_key="k-1")
    assert 2.2 <= time.monotonic() - started <= 5.0

    # ...one without is tried once, and says so.
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as once:
        client.submit("pipeline", {})
    assert time.monotonic() - started < 1.0
    assert "tried only once" in str(once.value) and "no task was created" in str(once.value)


def test_server_stopped_mid_wait_is_server_unavailable(tmp_path: Path) -> None:
    server = Serve(tmp_path / "stopping")
    try:
        client = Client(server.url)
        handle = client.submit("slow", {"sleep_ms": 60000})
        wait_for_step_state(client, handle.id, "nap", "running")
        stopper = threading.Timer(1.0, server.proc.send_signal, (signal.SIGTERM,))
        stopper.start()
        started = time.monotonic()
        try:
            with pytest.raises(ServerUnavailable) as unavailable:
                handle.wait()  # no deadline: only the server's end ends it
        finally:
            stopper.cancel()
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 15, elapsed
        assert server.url in str(unavailable.value)
        if unavailable.value.status is None:
            # Refused after it answered shutting-down: said as a stop, not
            # as a server that may never have run.
            assert "shut down (it answered shutting-down)" in str(unavailable.value)
            assert "is tasker serve running" not in str(unavailable.value)
    finally:
        server.stop()


def test_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("ci: ci-secret-token-0123456789\n", encoding="utf-8")
    server = Serve(tmp_path / "auth", workers=0, TASKER_API_TOKENS_FILE=str(tokens))
    try:
        for token in ("", "wrong-token"):
            with pytest.raises(Unauthorized) as refused:
                Client(server.url, token=token).workflows()
            assert refused.value.status == 401 and refused.value.problem_type == "unauthorized"
            with pytest.raises(Unauthorized):
                Client(server.url, token=token).submit("pipeline", {})
        assert {w.name for w in Client(server.url, token="ci-secret-token-0123456789").workflows()} == set(
            WORKFLOWS
        )
        # A token read from a file ends in a line break: not the token's.
        assert Client(server.url, token="ci-secret-token-0123456789\n").workflows()
        # One with a line break inside goes into no header: refused when
        # the client is made, naming the setting, never quoting the token.
        with pytest.raises(ConfigError) as bad:
            Client(server.url, token="ci-secret\r\nX-Injected: 1")
        assert "api_token" in str(bad.value) and "a line break" in str(bad.value)
        assert "ci-secret" not in str(bad.value)
        with pytest.raises(TypeError, match="token must be a str"):
            Client(server.url, token=5)  # type: ignore[arg-type]
        # From the environment, like a worker's configuration.
        monkeypatch.setenv("TASKER_API_URL", server.url)
        monkeypatch.setenv("TASKER_API_TOKEN", "ci-secret-token-0123456789")
        handle = Client().submit("pipeline", {"auth": True})
        assert handle.created
        with pytest.raises(Unauthorized):
            Client(token="wrong-token").get(handle.id)  # the argument wins

        async def run() -> None:
            async with AsyncClient() as ok, AsyncClient(token="") as anonymous:
                assert (await ok.get(handle.id)).task_id == handle.id
                with pytest.raises(Unauthorized):
                    await anonymous.get(handle.id)

        asyncio.run(run())
    finally:
        server.stop()


def test_configuration(serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("TASKER_")]:
        monkeypatch.delenv(key)
    assert Client().url == "http://127.0.0.1:8080"  # the default api_listen

    monkeypatch.setenv("TASKER_API_URL", serve.url + "/")
    client = Client()
    assert client.url == serve.url and client.workflows()

    monkeypatch.setenv("TASKER_API_URL", "http://127.0.0.1:1")
    assert Client(serve.url).url == serve.url  # the argument wins
    monkeypatch.delenv("TASKER_API_URL")

    port = serve.url.rsplit(":", 1)[1]
    monkeypatch.setenv("TASKER_API_LISTEN", f"0.0.0.0:{port}")
    assert Client().url == f"http://127.0.0.1:{port}"  # unspecified: loopback
    assert Client().workflows()
    monkeypatch.setenv("TASKER_API_LISTEN", "127.0.0.1:0")
    with pytest.raises(ConfigError, match="api_url"):
        Client()
    monkeypatch.delenv("TASKER_API_LISTEN")

    config = tmp_path / "tasker.yaml"
    config.write_text(f"test:\n  api_url: {serve.url}\n  api_token: from-file\n", encoding="utf-8")
    from_file = Client.from_config(config, "test")
    assert from_file.url == serve.url and "token=set" in repr(from_file)
    assert "from-file" not in repr(from_file)

    # https:// is for a TLS-terminating proxy; other schemes are refused.
    assert Client("https://tasks.example.com/").url == "https://tasks.example.com"
    assert Client("https://tasks.example.com:8443/tasker").url == "https://tasks.example.com:8443/tasker"
    monkeypatch.setenv("TASKER_API_URL", "https://tasks.example.com")
    assert Client().url == "https://tasks.example.com"
    with pytest.raises(ConfigError, match="https://HOST"):
        Client("ftp://tasks.example.com")
    monkeypatch.setenv("TASKER_API_URL", "ftp://tasks.example.com")
    with pytest.raises(ConfigError, match="api_url"):
        Client()
    monkeypatch.delenv("TASKER_API_URL")
    for bad in ("ftp://host:21", "http://host:port", "http://"):
        with pytest.raises(ConfigError):
            Client(bad)
    for bad_timeout in (0, -1):
        with pytest.raises(ValueError, match="^timeout must be a positive number of seconds"):
            Client(serve.url, timeout=bad_timeout)


def test_https_through_a_tls_proxy_checks_the_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tasker serve` behind a TLS-terminating proxy (protocol/CLIENT.md
    §1): an https:// URL works once the proxy's certificate is trusted
    (here through SSL_CERT_FILE, as a private CA would be), and a
    certificate nobody vouches for fails the call like an unreachable
    server, saying why."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("app: https-only-token-0123456789\n", encoding="utf-8")
    server = Serve(tmp_path / "tls", TASKER_API_TOKENS_FILE=str(tokens))
    proxy = TlsProxy(server.url.removeprefix("http://"))
    url = f"https://localhost:{proxy.port}"
    token = "https-only-token-0123456789"
    try:
        # Not trusted: the system's CA certificates do not vouch for it.
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        monkeypatch.delenv("SSL_CERT_DIR", raising=False)
        untrusted = Client(url, token=token)
        started = time.monotonic()
        with pytest.raises(ServerUnavailable) as refused:
            untrusted.workflows()
        assert 2.2 <= time.monotonic() - started <= 5.0  # after the retries
        message = str(refused.value)
        assert url in message and "5 tries" in message, message
        assert "certificate was not trusted" in message and "SSL_CERT_FILE" in message, message
        assert isinstance(refused.value.cause, ssl.SSLCertVerificationError)
        # A submit without a key is tried once; the handshake failed, so
        # nothing was sent.
        with pytest.raises(ServerUnavailable) as once:
            untrusted.submit("pipeline", {})
        assert "no task was created" in str(once.value), str(once.value)
        assert proxy.handshakes == 0

        # Trusted through SSL_CERT_FILE (read when the client is made).
        monkeypatch.setenv("SSL_CERT_FILE", str(TLS_CERT))
        client = Client(url, token=token)
        assert client.url == url
        assert {w.name for w in client.workflows()} == set(WORKFLOWS)
        handle = client.submit("pipeline", {"tls": True}, idempotency_key="tls-1")
        assert handle.created
        assert client.get(handle.id).task_id == handle.id
        task = handle.wait(timeout=30)
        assert task.status == "complete", task
        assert task.step("fetch").output["task_context"] == {"tls": True}
        with pytest.raises(Unauthorized):  # the proxy passes the token through
            Client(url, token="").workflows()

        async def run() -> None:
            async with AsyncClient(url, token=token) as async_client:
                assert (await async_client.get(handle.id)).status == "complete"

        asyncio.run(run())
        assert proxy.handshakes >= 5
    finally:
        proxy.close()
        server.stop()


def test_a_wrong_prefix_is_an_api_error(serve: Serve) -> None:
    with pytest.raises(ApiError) as wrong:
        Client(serve.url + "/nope").get(1)
    assert wrong.value.status == 404 and wrong.value.problem_type == "not-found"


class _OddHandler(http.server.BaseHTTPRequestHandler):
    """Answers no tasker server gives, to check what the client does with
    them: `/v1/tasks/1` a 502 with an HTML page, `/v1/tasks/2` a 418 that is
    not a problem document, `/v1/tasks/3` a 200 that is not JSON, `/v1/tasks/4`
    a 401 from something in front of the server (a proxy's login page)."""

    hits: List[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        page = b"<html><body>" + b"x" * 5000 + b"</body></html>"
        status = {"/v1/tasks/1": 502, "/v1/tasks/2": 418, "/v1/tasks/3": 200, "/v1/tasks/4": 401}
        status = status.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(handler: "type[http.server.BaseHTTPRequestHandler]") -> Iterator[str]:
    """An HTTP server answering with ``handler`` on a free port, its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_answers_that_are_not_problem_documents() -> None:
    with _serving(_OddHandler) as url:
        client = Client(url)
        with pytest.raises(ServerUnavailable) as bad_gateway:
            client.get(1)
        assert _OddHandler.hits.count("/v1/tasks/1") == 5  # the first try and 4 retries
        assert bad_gateway.value.status == 502 and bad_gateway.value.problem is None
        with pytest.raises(ApiError) as teapot:
            client.get(2)
        assert _OddHandler.hits.count("/v1/tasks/2") == 1
        assert teapot.value.status == 418
        with pytest.raises(ApiError) as not_json:
            client.get(3)
        # A 401 is Unauthorized whatever its body, as in the Node and Ruby clients.
        with pytest.raises(Unauthorized) as login_page:
            client.get(4)
        assert login_page.value.status == 401 and login_page.value.problem is None
        for error in (bad_gateway.value, teapot.value, not_json.value, login_page.value):
            assert "<html><body>xxx" in str(error)
            assert len(str(error)) < 200 + 150, str(error)  # quoted, not the whole body


class _EndlessHandler(http.server.BaseHTTPRequestHandler):
    """Streams a chunked 200 without end, until the client hangs up."""

    protocol_version = "HTTP/1.1"
    streamed = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"100000\r\n" + b"7" * (1 << 20) + b"\r\n"
        try:
            while type(self).streamed < 1 << 30:
                self.wfile.write(chunk)
                type(self).streamed += 1 << 20
        except OSError:
            pass

    def log_message(self, *args: Any) -> None:
        pass


def test_an_answer_without_end_is_refused_at_its_limit_not_read_into_memory() -> None:
    # A server that streamed 2 GB took the client to 5.7 GB of memory.
    with _serving(_EndlessHandler) as url:
        with pytest.raises(ApiError) as endless:
            Client(url).get(1)
        assert "more than 256 MiB" in str(endless.value), str(endless.value)
        assert _EndlessHandler.streamed < 300 << 20


def test_the_example_script(serve: Serve, closed_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run(
            [sys.executable, str(EXAMPLE), *args],
            cwd=tmp_path,
            env=clean_env(TASKER_API_URL=serve.url),
            capture_output=True,
            text=True,
            timeout=30,
        )

    key = f"example-{time.time_ns()}"
    human = run("--key", key)
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert lines[0].startswith("task ") and "(order_fulfillment): complete" in lines[0]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["validate_order", "completed", "1"],
        ["send_confirmation", "completed", "1"],
    ]
    assert all("rust-" in line for line in lines[1:])
    assert key in human.stderr

    as_json = run("--key", key, "--json")  # the same key: the same task, reported again
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report == Client(serve.url).get(report["task_id"]).to_dict()
    assert lines[0].startswith(f"task {report['task_id']} ")
    order = json.loads((ROOT / "examples" / "workflows" / "order.json").read_text("utf-8"))
    assert report["context"] == order and report["idempotency_key"] == key

    unreachable = run("--api", closed_url)
    assert unreachable.returncode == 2 and unreachable.stdout == ""
    assert "ServerUnavailable" in unreachable.stderr and closed_url in unreachable.stderr


# -- the asyncio client ----------------------------------------------------------


def test_async_submit_wait_and_errors(serve: Serve) -> None:
    async def run() -> None:
        async with AsyncClient(serve.url) as client:
            handle = await client.submit("pipeline", {"async": True})
            assert handle.created
            task = await handle.wait(timeout=30)
            assert task.status == "complete"
            assert task.step("fetch").output["task_context"] == {"async": True}
            assert await handle.get() == task

            failed = await (await client.submit("mixed", {"async": 1})).wait(30)
            error = failed.step("charge").error
            assert error is not None and error.error_type == "PermanentError"

            key = f"async-{time.time_ns()}"
            first = await client.submit("pipeline", {"k": 1}, key)
            again = await client.submit("pipeline", {"k": 1}, key)
            assert (again.id, again.created) == (first.id, False)
            with pytest.raises(IdempotencyConflict):
                await client.submit("pipeline", {"k": 2}, key)
            with pytest.raises(TaskNotFound):
                await client.get(987654321)
            with pytest.raises(UnknownWorkflow) as unknown:
                await client.submit("pipelin")
            assert unknown.value.closest == "pipeline"
            with pytest.raises(ValidationError) as bad_limit:
                await client.list(limit=0)
            assert bad_limit.value.field == "limit"
            assert {w.name for w in await client.workflows()} == set(WORKFLOWS)

            # Several waits at once.
            handles = [await client.submit("slow", {"sleep_ms": 300 + 50 * i}) for i in range(6)]
            tasks = await asyncio.gather(*(h.wait(30) for h in handles))
            assert [t.status for t in tasks] == ["complete"] * 6

    asyncio.run(run())


def test_async_cancel_timeout_and_cancelled_wait(serve: Serve) -> None:
    async def run() -> None:
        async with AsyncClient(serve.url) as client:
            handle = await client.submit("slow", {"sleep_ms": 2500})
            started = time.monotonic()
            with pytest.raises(WaitTimeout) as timeout:
                await handle.wait(timeout=0.4)
            assert 0.35 <= time.monotonic() - started < 1.5
            assert timeout.value.task.status == "running"

            # Cancelling the coroutine that awaits a wait ends it at once.
            waiter = asyncio.ensure_future(handle.wait())
            await asyncio.sleep(0.3)
            started = time.monotonic()
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            assert time.monotonic() - started < 0.5

            assert (await handle.cancel()).cancel_requested
            task = await handle.wait(30)
            assert task.status == "cancelled"
            with pytest.raises(TaskEnded) as ended:
                await handle.cancel()
            assert ended.value.task_status == "cancelled"

    started = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - started < 15


def test_async_list_paging(serve: Serve) -> None:
    async def run() -> None:
        async with AsyncClient(serve.url) as client:
            ids = [(await client.submit("listing_async", {"i": i})).id for i in range(3)]
            for task_id in ids:
                await client.wait(task_id, 30)
            page = await client.list(workflow="listing_async", limit=2)
            assert [t.task_id for t in page.tasks] == ids[::-1][:2]
            assert page.next_cursor is not None
            rest = await client.list(workflow="listing_async", limit=2, cursor=page.next_cursor)
            assert [t.task_id for t in rest.tasks] == ids[:1] and rest.next_cursor is None
            every = [t.task_id async for t in client.iter_tasks(workflow="listing_async", page_size=1)]
            assert every == ids[::-1]

    asyncio.run(run())


def test_async_server_unavailable(closed_url: str) -> None:
    async def run() -> None:
        async with AsyncClient(closed_url) as client:
            started = time.monotonic()
            with pytest.raises(ServerUnavailable):
                await client.wait(1, timeout=30)
            assert 2.2 <= time.monotonic() - started <= 5.0
            started = time.monotonic()
            with pytest.raises(ServerUnavailable, match="tried only once"):
                await client.submit("pipeline", {})
            assert time.monotonic() - started < 1.0

    asyncio.run(run())


def test_the_client_is_exported_and_typed() -> None:
    for name in (
        "Client",
        "AsyncClient",
        "TaskHandle",
        "AsyncTaskHandle",
        "Task",
        "TaskStep",
        "StepError",
        "TaskSummary",
        "TaskPage",
        "Workflow",
        "ClientError",
        "ValidationError",
        "UnknownWorkflow",
        "TaskNotFound",
        "IdempotencyConflict",
        "TaskEnded",
        "Unauthorized",
        "ServerUnavailable",
        "WaitTimeout",
        "ApiError",
    ):
        assert name in tasker_core.__all__ and hasattr(tasker_core, name), name
    for cls in (ValidationError, TaskNotFound, IdempotencyConflict, TaskEnded, Unauthorized,
                ServerUnavailable, WaitTimeout, ApiError):
        assert issubclass(cls, ClientError) and issubclass(cls, TaskerError)
    assert issubclass(UnknownWorkflow, ValidationError)
    assert (Path(tasker_core.__file__).parent / "py.typed").exists()
