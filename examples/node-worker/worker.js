// An order-processing worker: validate an order, charge the card, ship it.
//
//   node worker.js                # endpoint from config/zeromq.yaml or TASKER_ENDPOINT
//
// Ctrl-C (SIGINT) or SIGTERM drains: running steps finish, the rest go back
// to the orchestrator, then the process exits by itself.
import { existsSync } from "node:fs";
import { setTimeout as sleep } from "node:timers/promises";
import { Worker, RetryableError, PermanentError } from "tasker-core";

/** A declined card is final: retrying will not help. */
class CardDeclined extends PermanentError {}

const configFile = new URL("../../config/zeromq.yaml", import.meta.url).pathname;
const worker = existsSync(configFile) ? Worker.fromConfig(configFile) : new Worker();

worker.handle("validate_order", (step) => {
  const { amount, items = [] } = step.taskContext;
  if (typeof amount !== "number" || amount <= 0) {
    throw new PermanentError(`amount must be a positive number, got ${JSON.stringify(amount)}`);
  }
  if (items.length === 0) throw new PermanentError("an order needs at least one item");
  return { valid: true, amount, itemCount: items.length };
});

worker.handle("charge_card", async (step) => {
  const { amount, card } = step.taskContext;
  const validated = step.previousResults.validate_order;
  if (validated && !validated.valid) throw new PermanentError("order was not validated");
  await sleep(20); // the payment gateway
  if (card === "declined") throw new CardDeclined(`card declined for ${amount}`);
  if (card === "flaky" && step.attempt < 2) throw new RetryableError("gateway timeout, try again");
  return { charged: amount, transactionId: `tx-${step.taskId}-${step.attempt}` };
});

worker.handle("ship_order", async (step) => {
  const { address } = step.taskContext;
  await sleep(10); // the carrier's API
  return { carrier: "tasker-post", tracking: `TP${step.taskId}${step.stepId}`, to: address };
});

console.error(`order worker serving ${worker.config.endpoint}`);
await worker.run();
console.error("order worker stopped");
