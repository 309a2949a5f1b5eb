"""The Python worker of `tasker soak`: serves the handler `soak` with the
`tasker_core` SDK and records every run the way the Rust `soak` handler
does (crates/tasker-cli/src/soak/handler.rs).

Records, one ``os.write`` each on a file opened ``O_APPEND`` (so lines of
concurrent writers never interleave), in the file named by TASKER_SOAK_LOG:

* ``STEP_ID ATTEMPT PID`` when a run starts;
* ``max PID N CAPACITY`` whenever this process reaches a new most steps
  running at once.

The handler is ``async``: every step this process holds runs at once on the
SDK's event loop, so if the orchestrator ever handed it more than its
capacity, the count would show it. It sleeps ``handler_config.sleep_us``
microseconds and fails the first attempt of steps marked ``fail_first``
with a retryable error.

Configured from the environment, as `tasker soak` starts it:
TASKER_ENDPOINT, TASKER_WORKER_CAPACITY and the other TASKER_* keys,
TASKER_SOAK_WORKER_ID (the id announced), TASKER_SOAK_LOG, and
TASKER_SOAK_PARENT (the soak's pid: when it is gone, this exits). SIGTERM
drains it: running steps finish and are reported, then it says goodbye.

    TASKER_SOAK_LOG=/tmp/runs.log TASKER_ENDPOINT=tcp://127.0.0.1:5555 \\
        bindings/python/.venv/bin/python crates/tasker-cli/soak/python_worker.py
"""

import os
import signal

# Until Worker.run() installs the SDK's draining handler, SIGTERM (the soak
# stopping a worker that is still importing) ends the process cleanly: it
# holds no step yet.
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

import asyncio  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from tasker_core import RetryableError, Worker  # noqa: E402

PID = os.getpid()


def watch_parent() -> None:
    """Exits the process when the soak that started it is gone."""
    parent = os.environ.get("TASKER_SOAK_PARENT")
    if not parent:
        return

    def watch() -> None:
        while True:
            if os.getppid() != int(parent):
                print(f"soak controller {parent} is gone: exiting", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.25)

    threading.Thread(target=watch, name="soak-parent-watch", daemon=True).start()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    watch_parent()
    fd = os.open(os.environ["TASKER_SOAK_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    worker = Worker(worker_id=os.environ.get("TASKER_SOAK_WORKER_ID"))
    capacity = worker.capacity
    # Every handler runs on the SDK's one event loop thread: plain ints do.
    state = {"running": 0, "most": 0}

    @worker.handler("soak")
    async def soak(step):
        attempt = step.attempt
        os.write(fd, f"{step.step_id} {attempt} {PID}\n".encode())
        state["running"] += 1
        try:
            running = state["running"]
            if running > state["most"]:
                state["most"] = running
                os.write(fd, f"max {PID} {running} {capacity}\n".encode())
            config = step.handler_config or {}
            if attempt == 1 and config.get("fail_first") is True:
                raise RetryableError(f"step {step.step_id} fails its first attempt on purpose")
            sleep_us = config.get("sleep_us") or 0
            # Yield even for 0: steps that arrive together overlap.
            await asyncio.sleep(sleep_us / 1e6)
            return {"step_id": step.step_id, "attempt": attempt, "pid": PID}
        finally:
            state["running"] -= 1

    worker.run()


if __name__ == "__main__":
    main()
