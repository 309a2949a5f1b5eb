"""Serves one step with the installed package (not the source tree): run
by test.sh with the python of a virtualenv the wheel was installed into.
Needs TASKER_BIN (the `tasker` CLI)."""

import json
import os
import socket
import subprocess
import sys
import tempfile

import tasker_core
from tasker_core import Worker

assert "site-packages" in tasker_core.__file__, tasker_core.__file__

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"

with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"steps": [{"step_id": 1, "handler_class": "hello", "task_context": {"name": "wheel"}}]}, f)

worker = Worker(endpoint=endpoint, heartbeat_interval_ms=200, linger_ms=100)


@worker.handler("hello")
def hello(step):
    return {"greeting": f"hello, {step.task_context['name']}"}


worker.start()
try:
    out = subprocess.run(
        [os.environ["TASKER_BIN"], "dispatch", f.name, "--env", "test", "--endpoint", endpoint,
         "--workers", "1", "--wait", "20"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
finally:
    os.unlink(f.name)
    worker.stop()
    worker.join(10)
result = json.loads(out)["results"][0]
assert result["status"] == "completed" and result["output"] == {"greeting": "hello, wheel"}, result
print(f"wheel OK: tasker_core {tasker_core.__version__} from {os.path.dirname(tasker_core.__file__)}",
      file=sys.stderr)
