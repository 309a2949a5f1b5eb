"""The Python conformance worker: serves the handlers that
protocol/conformance/scenario.json describes, written with the SDK as an
application would, configured by the scenario's `config` (as keyword
options) over TASKER_* variables (endpoint, heartbeat).

    python conformance_worker.py path/to/scenario.json
"""

import json
import sys

from tasker_core import PermanentError, RetryableError, Worker


def register(worker: Worker) -> None:
    """Registers the scenario's handlers on `worker`."""

    @worker.handler("echo")
    def echo(step):
        return step.task_context

    @worker.handler("previous")
    def previous(step):
        return step.previous_results

    @worker.handler("fail")
    def fail(step):
        context = step.task_context
        error = RetryableError if context.get("retryable") is True else PermanentError
        raise error(context["message"], error_type=context.get("error_type"))

    @worker.handler("raise")
    def raise_(step):
        raise RuntimeError(step.task_context["message"])

    @worker.handler("nest")
    def nest(step):
        output = 0
        for _ in range(step.task_context["depth"]):
            output = [output]
        return output

    @worker.handler("big")
    def big(step):
        return "x" * step.task_context["bytes"]

    @worker.handler("bad_text")
    def bad_text(step):
        return "\udce9"


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        scenario = json.load(f)
    worker = Worker(**scenario["config"])
    register(worker)
    worker.run()


if __name__ == "__main__":
    main()
