"""Submits the demo order to a running `tasker serve` and prints the report.

    python examples/python-client/submit_order.py [--api URL] [--key KEY]
                                                  [--timeout SECONDS] [--json]

The order is examples/workflows/order.json (found from this file's
location), started as a task of the workflow `order_fulfillment` with
tasker_core.Client. The server is --api, else TASKER_API_URL (else the
configuration's api_listen, 127.0.0.1:8080 by default); a bearer token, if
the server wants one, comes from TASKER_API_TOKEN. --key is the idempotency
key (default: a fresh uuid4): running again with the same key reports the
same task instead of starting a second one.

Prints a summary (status, then each step's name, outcome, attempts and
worker) or, with --json, the task exactly as the server returned it. Exit
status: 0 when the task completed, 1 when it failed or was cancelled, 2 on
a client error (unreachable server, timeout, refused request; the message
goes to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import List, Optional

from tasker_core import Client, ClientError, ConfigError, Task

ROOT = Path(__file__).resolve().parents[2]
ORDER = ROOT / "examples" / "workflows" / "order.json"
WORKFLOW = "order_fulfillment"


def summary(task: Task) -> str:
    """The report as a few lines of text."""
    lines = [
        f"task {task.task_id} ({task.workflow}): {task.status} in {task.duration_ms} ms"
        + (" (cancel requested)" if task.cancel_requested and task.status != "cancelled" else "")
    ]
    width = max((len(step.name) for step in task.steps), default=0)
    for step in task.steps:
        attempts = f"{step.attempts} attempt" + ("" if step.attempts == 1 else "s")
        lines.append(
            f"  {step.name:<{width}}  {step.outcome or step.state:<9}  {attempts:<10}"
            f"  {step.worker_id or '-'}"
        )
        if step.error is not None and step.outcome != "completed":
            lines.append(f"  {'':<{width}}  {step.error.error_type}: {step.error.message}")
        elif step.blocked_by is not None:
            lines.append(f"  {'':<{width}}  blocked by {step.blocked_by}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=f"Submit {ORDER.relative_to(ROOT)} as a {WORKFLOW} task and print its report."
    )
    parser.add_argument("--api", help="the API's URL (default: TASKER_API_URL, else api_listen)")
    parser.add_argument("--key", help="idempotency key (default: a fresh uuid4)")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the end (default 120)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the task as the server returned it"
    )
    args = parser.parse_args(argv)

    context = json.loads(ORDER.read_text(encoding="utf-8"))
    key = args.key or str(uuid.uuid4())
    try:
        client = Client(args.api)
        handle = client.submit(WORKFLOW, context, idempotency_key=key)
        print(
            f"{'submitted' if handle.created else 'already submitted'}: task {handle.id}"
            f" (order {context.get('order_id')}, key {key}) at {client.url};"
            f" waiting up to {args.timeout:g} s",
            file=sys.stderr,
        )
        task = handle.wait(timeout=args.timeout)
    except (ClientError, ConfigError) as error:
        print(f"submit_order: {type(error).__name__}: {error}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(task.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(summary(task))
    return 0 if task.status == "complete" else 1


if __name__ == "__main__":
    sys.exit(main())
