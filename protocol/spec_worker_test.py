"""SPEC.md §11's minimal worker, taken from the SPEC as written, against the
reference orchestrator (`tasker dispatch`).

Readers copy that listing to start a worker of their own, so it must keep
working: a test of the SPEC's own words rather than of a copy of them. Only
its handler table is replaced, with handlers whose outputs the worker must
refuse itself (§5 rule 7). The outputs and the ordinary echo share result
messages, which is the point: an output the worker let through would make
the orchestrator refuse the whole message, and the echo would time out with
it.

Run by protocol/test.sh (which installs pyzmq); TASKER_BIN names the tasker
binary.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKER = os.environ.get("TASKER_BIN") or str(
    HERE.parent / "target" / "debug" / "tasker"
)

LISTING_HANDLERS = 'HANDLERS = {"echo": lambda step: step["task_context"]}'
TEST_HANDLERS = """\
def _nest(depth):
    v = 0
    for _ in range(depth):
        v = [v]
    return v

def _boom(step):
    raise KeyError("no such order")

HANDLERS = {
    "echo": lambda step: step["task_context"],
    "boom": _boom,
    "nan": lambda step: {"ratio": float("nan")},
    "infinite": lambda step: [float("inf")],
    "surrogate": lambda step: "\\udce9",
    "deep": lambda step: _nest(step["task_context"]["depth"]),
}"""


def listing() -> str:
    spec = (HERE / "SPEC.md").read_text(encoding="utf-8")
    found = re.search(r"A minimal pyzmq worker.*?```python\n(.*?)```", spec, re.S)
    assert found, "SPEC.md has no '```python' listing after 'A minimal pyzmq worker'"
    code = found.group(1)
    assert (
        code.count(LISTING_HANDLERS) == 1
    ), f"the listing's handler table is no longer {LISTING_HANDLERS!r}"
    return code.replace(LISTING_HANDLERS, TEST_HANDLERS)


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def dispatch(endpoint: str, steps: list) -> dict:
    batch = {"batch_id": "spec-11", "steps": steps}
    out = subprocess.run(
        [
            TASKER,
            "dispatch",
            "-",
            "--endpoint",
            endpoint,
            "--workers",
            "1",
            "--wait",
            "20",
        ],
        input=json.dumps(batch).encode(),
        capture_output=True,
        timeout=90,
        env={k: v for k, v in os.environ.items() if k != "TASKER_CONFIG"},
        check=False,
    )
    assert (
        out.returncode == 0
    ), f"tasker dispatch failed: {out.stderr.decode(errors='replace')[-2000:]}"
    printed = json.loads(out.stdout)
    return {r["step_id"]: r for r in printed["results"]}


def main() -> int:
    endpoint = free_endpoint()
    with tempfile.TemporaryDirectory() as tmp:
        worker_py = Path(tmp) / "spec_worker.py"
        worker_py.write_text(listing(), encoding="utf-8")
        log = open(Path(tmp) / "worker.log", "wb")
        worker = subprocess.Popen(
            [sys.executable, str(worker_py)],
            env={**os.environ, "TASKER_ENDPOINT": endpoint},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            context = {"name": "Zoë 🚀", "items": [{"sku": "ß-1", "qty": 2}]}
            # A timeout short enough that a lost result shows as TimedOut
            # within the test, long enough for a loaded machine.
            meta = {"timeout_ms": 8000}
            steps = [
                {
                    "step_id": 1,
                    "handler_class": "echo",
                    "task_context": context,
                    "metadata": meta,
                },
                {"step_id": 2, "handler_class": "nan", "metadata": meta},
                {"step_id": 3, "handler_class": "infinite", "metadata": meta},
                {"step_id": 4, "handler_class": "surrogate", "metadata": meta},
                {
                    "step_id": 5,
                    "handler_class": "deep",
                    "task_context": {"depth": 100},
                    "metadata": meta,
                },
                {
                    "step_id": 6,
                    "handler_class": "deep",
                    "task_context": {"depth": 101},
                    "metadata": meta,
                },
                {"step_id": 7, "handler_class": "boom", "metadata": meta},
                {
                    "step_id": 2**53 + 1,
                    "handler_class": "echo",
                    "task_context": [1],
                    "metadata": meta,
                },
            ]
            results = dispatch(endpoint, steps)
            problems = []

            def expect(step_id, status, error_type=None, output=None):
                r = results.get(step_id)
                got = (r or {}).get("status"), ((r or {}).get("error") or {}).get(
                    "error_type"
                )
                if got != (status, error_type):
                    problems.append(
                        f"step {step_id}: expected {(status, error_type)}, got {got}: {r}"
                    )
                elif output is not None and r.get("output") != output:
                    problems.append(
                        f"step {step_id}: output {r.get('output')!r}, expected {output!r}"
                    )

            expect(1, "completed", output=context)
            expect(2, "failed", "SerializationError")
            expect(3, "failed", "SerializationError")
            expect(4, "failed", "SerializationError")
            expect(5, "completed")
            expect(6, "failed", "SerializationError")
            expect(7, "failed", "KeyError")
            expect(2**53 + 1, "completed", output=[1])
            worker_id = (results.get(1) or {}).get("metadata", {}).get("worker_id", "")
            if not re.fullmatch(r"python-\d+-[0-9a-f]{8}", worker_id):
                problems.append(f"worker_id {worker_id!r} is not python-<pid>-<random>")
            if problems:
                print("SPEC §11 worker:\n  " + "\n  ".join(problems), file=sys.stderr)
                return 1
            print(f"SPEC §11 worker: {len(steps)} steps answered as the SPEC says")
            return 0
        finally:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
            log.close()
            if worker.returncode not in (0, 1, -signal.SIGINT):
                sys.stderr.write(
                    (Path(tmp) / "worker.log").read_text(errors="replace")[-3000:]
                )


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    print(f"({time.monotonic() - started:.1f} s)")
    sys.exit(code)
