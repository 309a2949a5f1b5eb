"""A worker process for the tests: serves the handler `work` with worker.run().

Prints `ready <worker_id>` once started and, with --announce, `started
<step_id>` when a step begins (stdout is a pipe the test reads). With
--record FILE, appends `<step_id> <attempt> <pid>` to FILE after each
execution (O_APPEND: one atomic write per line). --sleep S sleeps S seconds
per step; --block never returns (a hung handler, for the kill test). With
--closing, prints `closed` and `stopped` as the runtime and the worker log
them (debug level), and takes 0.3 s to log `draining`.
"""

import argparse
import logging
import os
import sys
import threading
import time

from tasker_core import Worker

parser = argparse.ArgumentParser()
parser.add_argument("--capacity", type=int, default=4)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--record")
parser.add_argument("--sleep", type=float, default=0.0)
parser.add_argument("--block", action="store_true")
parser.add_argument("--announce", action="store_true")
parser.add_argument("--closing", action="store_true")
args = parser.parse_args()

out_lock = threading.Lock()


def say(line: str) -> None:
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


worker = Worker(capacity=args.capacity, threads=args.threads)


@worker.handler("work")
def work(step):
    if args.announce:
        say(f"started {step.step_id}")
    if args.block:
        threading.Event().wait()
    if args.sleep:
        time.sleep(args.sleep)
    if args.record:
        fd = os.open(args.record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{step.step_id} {step.attempt} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
    return {"step_id": step.step_id, "pid": os.getpid()}


class Ready(logging.Handler):
    """Says `ready` when the worker logs that it started connecting (inside
    run(), after its signal handlers are in place) and `draining` when the
    runtime logs that it began the stop."""

    def emit(self, record):
        message = record.getMessage()
        if record.name == "tasker_core.worker" and " connecting to " in message:
            say(f"ready {worker.worker_id}")
        elif record.name == "tasker_core.tasker_worker.connection" and message.startswith(
            "draining"
        ):
            say("draining")
            if args.closing:
                # A slow handler: the runtime's next records wait behind it.
                time.sleep(0.3)
        elif args.closing and record.name == "tasker_core.tasker_worker.connection":
            if message.startswith("worker connection closed"):
                say("closed")
        elif args.closing and record.name == "tasker_core.worker" and " stopped" in message:
            say("stopped")


ready_logger = logging.getLogger("tasker_core")
ready_logger.setLevel(logging.DEBUG if args.closing else logging.INFO)
ready_logger.addHandler(Ready())
worker.run()
say("exited run")
