"""A worker started, then the process forked (gunicorn --preload, a
multiprocessing fork pool): run by test_processes.py against the
orchestrator at TASKER_ENDPOINT. Prints what it saw, a line each."""

import logging
import os
import sys
import threading
import time

from tasker_core import Worker, WorkerError

endpoint = os.environ["TASKER_ENDPOINT"]
logging.basicConfig(
    level=logging.INFO, stream=sys.stdout, format="%(process)d %(name)s %(message)s"
)


def make(handler: str) -> Worker:
    worker = Worker(endpoint=endpoint, heartbeat_interval_ms=200, shutdown_timeout_ms=10_000)
    worker.register(handler, lambda step: {"pid": os.getpid()})
    return worker


parent = make("elsewhere").start()
while parent.state != "connected":
    time.sleep(0.01)
pid = os.fork()
if pid == 0:
    print(f"CHILD {os.getpid()} parent's worker state {parent.state}", flush=True)
    try:
        parent.run()
    except WorkerError as e:
        print(f"CHILD run refused: {e}", flush=True)
    print(f"CHILD join {parent.join(0)}", flush=True)
    served = threading.Event()
    child = Worker(endpoint=endpoint, heartbeat_interval_ms=200, shutdown_timeout_ms=10_000)
    child.register("echo", lambda step: served.set())
    child.start()
    served.wait(20)
    # The runtime's own record of its registration has been logged by now,
    # not held back until the stop.
    time.sleep(0.5)
    print(f"CHILD served {served.is_set()}", flush=True)
    child.stop()
    child.join(15)
    sys.exit(0)  # atexit runs: it must not wait for the parent's worker
else:
    started = time.monotonic()
    _, status = os.waitpid(pid, 0)
    print(f"PARENT child exited {os.waitstatus_to_exitcode(status)} "
          f"after {time.monotonic() - started:.1f}s", flush=True)
    parent.stop()
    print(f"PARENT stopped {parent.join(15)}", flush=True)
