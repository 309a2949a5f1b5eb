# frozen_string_literal: true

# A small order-processing worker: validates orders, charges cards and
# reserves stock. Run it against the orchestrator (see README.md):
#
#   ruby -I ../../bindings/ruby/tmp/native -I ../../bindings/ruby/lib order_worker.rb
#
# or, with the gem installed, simply `ruby order_worker.rb`.

require "tasker_core"

# A card the bank refused: permanent, reported as error_type "CardDeclined".
class CardDeclined < TaskerCore::PermanentError; end

# The payment gateway is overloaded: worth retrying later.
class GatewayBusy < TaskerCore::RetryableError; end

# Charges the order's card. Any object with #call(step) can be a handler.
class ChargeCardHandler
  def call(step)
    order = step.task_context
    validation = step.previous_results.fetch("validate_order", {})
    raise TaskerCore::PermanentError, "order was not validated" unless validation["valid"]
    raise CardDeclined, "card ending #{order['card'][-4..]} declined" if order["card"].end_with?("0000")
    raise GatewayBusy, "gateway busy, attempt #{step.attempt}" if order["card"].end_with?("9999") && step.attempt < 2

    { charged: order["amount"], currency: order.fetch("currency", "EUR"), reference: "ch_#{step.step_id}" }
  end
end

config = ENV.fetch("TASKER_CONFIG", File.expand_path("../../config/zeromq.yaml", __dir__))
worker = TaskerCore::Worker.from_config(File.exist?(config) ? config : nil)

worker.handle("validate_order") do |step|
  amount = step.task_context["amount"]
  raise TaskerCore::PermanentError, "amount must be positive" unless amount.is_a?(Numeric) && amount.positive?

  { valid: true, items: step.task_context.fetch("items", []).size }
end

worker.register("charge_card", ChargeCardHandler.new)

worker.handle("reserve_stock") do |step|
  items = step.task_context.fetch("items", [])
  limit = step.handler_config.fetch("max_items", 10)
  raise ArgumentError, "too many items: #{items.size} > #{limit}" if items.size > limit

  { reserved: items.map { |item| { sku: item["sku"], quantity: item.fetch("quantity", 1) } } }
end

worker.run # Ctrl-C or TERM: finishes the steps in hand, then exits
