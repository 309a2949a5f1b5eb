"""The demo's Python worker: serves `validate_order` and `send_confirmation`
for the order-fulfilment workflow (examples/workflows/order_fulfillment.yaml).

It reads config/zeromq.yaml when run from the repository root (or the file in
TASKER_CONFIG), then TASKER_* variables, so an orchestrator can point it
anywhere with TASKER_ENDPOINT. Ctrl-C or SIGTERM drains it: running steps
finish and are reported, unstarted ones go back to the orchestrator.

    python examples/python-worker/worker.py
"""

import asyncio
import logging
import os
from decimal import Decimal

from tasker_core import PermanentError, RetryableError, Worker

log = logging.getLogger("order_worker")


class InvalidOrder(PermanentError):
    """The order can never be processed as it is: no retry."""


def make_worker() -> Worker:
    path = os.environ.get("TASKER_CONFIG", "config/zeromq.yaml")
    if os.path.exists(path):
        return Worker.from_config(path)
    return Worker()  # built-in defaults plus TASKER_* variables


worker = make_worker()


@worker.handler("validate_order")
def validate_order(step):
    """Checks the order's lines and totals it. A bad order is permanent."""
    order = step.task_context or {}
    items = order.get("items")
    if not isinstance(items, list) or not items:
        raise InvalidOrder("task_context.items must be a non-empty list")
    total = Decimal(0)
    for item in items:
        qty = item.get("qty", 0)
        if not isinstance(qty, int) or qty <= 0:
            raise InvalidOrder(f"{item.get('sku', '?')}: quantity must be a positive integer")
        total += Decimal(str(item.get("price", 0))) * qty
    if total <= 0:
        raise InvalidOrder("amount must be positive")
    return {
        "order_id": order.get("order_id"),
        "valid": True,
        "lines": len(items),
        "total": float(total),
        "currency": order.get("currency", "EUR"),
    }


class Mailer:
    """A class handler: an object with call(step); async, so many
    confirmations wait on the (simulated) mail server at once."""

    def __init__(self, sender: str = "orders@example.invalid") -> None:
        self.sender = sender

    async def call(self, step):
        shipment = step.previous_results.get("ship_order")
        if shipment is None:
            raise InvalidOrder("send_confirmation needs the ship_order result")
        email = (step.task_context or {}).get("email")
        if not email:
            raise InvalidOrder("task_context.email is missing")
        if step.handler_config.get("mail_server_down") and step.attempt == 1:
            # First attempt fails like a flaky SMTP server would.
            raise RetryableError("mail server unavailable")
        await asyncio.sleep(0.01)  # talking to the mail server
        return {
            "sent_to": email,
            "from": self.sender,
            "subject": f"Your order {step.task_context.get('order_id')} is on its way",
            "tracking": shipment.get("tracking_number") if isinstance(shipment, dict) else None,
        }


worker.register("send_confirmation", Mailer())

if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    worker.start()
    log.info("order worker %s started, handlers: %s", worker.worker_id, ", ".join(worker.handlers))
    worker.run()
