# frozen_string_literal: true

# The Ruby conformance worker: the handlers of the cross-language scenario
# (protocol/conformance/scenario.json, "handlers"), written with the gem as
# a user would, configured with the scenario's "config" as keyword options.
#
#   ruby -I bindings/ruby/tmp/native -I bindings/ruby/lib \
#     bindings/ruby/test/conformance_worker.rb protocol/conformance/scenario.json tcp://127.0.0.1:5555
#
# test_conformance.rb runs it against the real orchestrator.

require "json"
require "tasker_core"

module ConformanceWorker
  # The scenario's handlers, by name.
  HANDLERS = {
    "echo" => ->(step) { step.task_context },
    "previous" => ->(step) { step.previous_results },
    "fail" => lambda do |step|
      context = step.task_context
      kind = context["retryable"] == true ? TaskerCore::RetryableError : TaskerCore::PermanentError
      raise kind.new(context["message"], error_type: context["error_type"])
    end,
    "raise" => ->(step) { raise step.task_context["message"] },
    "nest" => ->(step) { step.task_context["depth"].times.reduce(0) { |value, _| [value] } },
    "big" => ->(step) { "x" * step.task_context["bytes"] },
    # Invalid UTF-8: a String Ruby holds but JSON cannot carry.
    "bad_text" => ->(_step) { (+"\xff").force_encoding(Encoding::UTF_8) }
  }.freeze

  # A worker serving every handler of `scenario` (its "handlers" must be
  # the ones above), configured with its "config".
  #
  # @param scenario [Hash] the parsed scenario file
  # @param endpoint [String]
  # @return [TaskerCore::Worker]
  def self.worker(scenario, endpoint:, **options)
    missing = scenario.fetch("handlers").keys - HANDLERS.keys
    raise ArgumentError, "the conformance worker lacks handlers #{missing.join(', ')}" unless missing.empty?

    config = scenario.fetch("config").transform_keys(&:to_sym)
    worker = TaskerCore::Worker.new(endpoint: endpoint, **config, **options)
    HANDLERS.each { |name, handler| worker.register(name, handler) }
    worker
  end
end

if $PROGRAM_NAME == __FILE__
  abort "usage: conformance_worker.rb SCENARIO_JSON ENDPOINT" unless ARGV.size == 2
  ConformanceWorker.worker(JSON.parse(File.read(ARGV[0])), endpoint: ARGV[1]).run
end
