# frozen_string_literal: true

# The Ruby part of the order-fulfilment demo
# (examples/workflows/order_fulfillment.yaml): charges the order's card
# (`charge_payment`, a callable handler) and checks stock levels
# (`reserve_stock`, a block handler). Run it against the orchestrator (see
# README.md):
#
#   ruby -I bindings/ruby/tmp/native -I bindings/ruby/lib examples/ruby-worker/order_worker.rb
#
# or, with the gem installed, simply `ruby examples/ruby-worker/order_worker.rb`.

require "tasker_core"

# A card the bank refused: permanent, reported as error_type "CardDeclined".
class CardDeclined < TaskerCore::PermanentError; end

# The payment gateway timed out: worth retrying later.
class GatewayTimeout < TaskerCore::RetryableError; end

# Charges the total that validate_order computed. Any object with
# #call(step) can be a handler.
class ChargePaymentHandler
  def call(step)
    validation = step.previous_results.fetch("validate_order") do
      raise TaskerCore::PermanentError, "charge_payment needs the validate_order result"
    end
    card = step.task_context.fetch("card", "")
    raise CardDeclined, "card ending #{card[-4..]} declined" if card.end_with?("0000")
    # The demo's gateway times out on the first attempt of every order.
    if step.handler_config["fail_first_attempt"] && step.attempt == 1
      raise GatewayTimeout, "#{step.handler_config.fetch('gateway', 'gateway')} timed out (attempt #{step.attempt})"
    end

    {
      charge_id: "ch_#{step.task_context['order_id']}_#{step.attempt}",
      amount: validation.fetch("total"),
      currency: validation.fetch("currency", "EUR"),
      gateway: step.handler_config.fetch("gateway", "default"),
      card_last4: card[-4..]
    }
  end
end

config = ENV.fetch("TASKER_CONFIG", File.expand_path("../../config/zeromq.yaml", __dir__))
worker = TaskerCore::Worker.from_config(File.exist?(config) ? config : nil)

worker.register("charge_payment", ChargePaymentHandler.new)

worker.handle("reserve_stock") do |step|
  items = step.task_context.fetch("items", [])
  limit = step.handler_config.fetch("max_items", 10)
  raise ArgumentError, "too many items: #{items.size} > #{limit}" if items.size > limit

  { reserved: items.map { |item| { sku: item["sku"], qty: item.fetch("qty", 1) } } }
end

worker.run # Ctrl-C or TERM: finishes the steps in hand, then exits
