// The Node part of the order-fulfilment demo
// (examples/workflows/order_fulfillment.yaml): books the shipment once stock
// is reserved (Rust) and the card charged (Ruby), joining both branches'
// outputs, and quotes shipping (a sync handler).
//
//   node examples/node-worker/worker.js   # endpoint from config/zeromq.yaml or TASKER_ENDPOINT
//
// Ctrl-C (SIGINT) or SIGTERM drains: running steps finish, the rest go back
// to the orchestrator, then the process exits by itself.
import { existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { Worker, RetryableError, PermanentError } from "tasker-core";

/** The carrier refuses the parcel: retrying will not help. */
class UndeliverableAddress extends PermanentError {}

const configFile = process.env.TASKER_CONFIG ?? new URL("../../config/zeromq.yaml", import.meta.url).pathname;
const worker = existsSync(configFile) ? Worker.fromConfig(configFile) : new Worker();

worker.handle("ship_order", async (step) => {
  const reservation = step.previousResults.reserve_inventory;
  const charge = step.previousResults.charge_payment;
  if (!reservation || !charge) {
    throw new PermanentError("ship_order needs the reserve_inventory and charge_payment results");
  }
  const { address = "unknown" } = step.taskContext;
  if (address === "unknown") throw new UndeliverableAddress("task_context.address is missing");
  await sleep(20); // the carrier's API
  if (step.handlerConfig.carrier_down) throw new RetryableError("carrier API unavailable");
  return {
    carrier: step.handlerConfig.carrier ?? "tasker-post",
    tracking_number: `TRK-${step.taskContext.order_id}-${step.stepId}`,
    reservation_id: reservation.reservation_id,
    charge_id: charge.charge_id,
    parcels: reservation.lines.length,
    to: address,
  };
});

worker.handle("quote_shipping", (step) => {
  const { items = [] } = step.taskContext;
  const parcels = items.reduce((n, item) => n + (item.qty ?? 1), 0);
  return { parcels, price: Math.round((4.95 + 1.5 * parcels) * 100) / 100 };
});

console.error(`order worker started for ${worker.config.endpoint}`);
await worker.run();
console.error("order worker stopped");
