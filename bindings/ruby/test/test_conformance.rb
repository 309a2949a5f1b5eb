# frozen_string_literal: true

require_relative "test_helper"

# The cross-language conformance scenario (protocol/conformance/scenario.json,
# read at run time): the Ruby conformance worker (conformance_worker.rb, its
# own process) serves every case not skipped for Ruby, sent by the real
# orchestrator, and each final result must match the case's `expect`. The
# Rust, Python and Node suites run the same file through their SDKs.
class TestConformance < Minitest::Test
  LANGUAGE = "ruby"
  SCENARIO = File.join(REPO, "protocol", "conformance", "scenario.json")

  # Nesting of Arrays and Hashes: `7` is 0 deep, `[7]` 1.
  def depth(value)
    case value
    when Array then 1 + (value.map { |v| depth(v) }.max || 0)
    when Hash then 1 + (value.values.map { |v| depth(v) }.max || 0)
    else 0
    end
  end

  # What of `result` differs from `expect` (the fields the scenario's
  # "about" describes; absent ones are not compared).
  def mismatches(result, expect)
    wrong = []
    wrong << "status #{result['status'].inspect} (expected #{expect['status'].inspect})" if result["status"] != expect["status"]
    if expect.key?("output") && (!result.key?("output") || result["output"] != expect["output"])
      wrong << "output #{result['output'].inspect[0, 200]}"
    end
    output = result["output"]
    if expect.key?("output_depth") && (!result.key?("output") || depth(output) != expect["output_depth"])
      wrong << "output depth #{depth(output)} (expected #{expect['output_depth']})"
    end
    if expect.key?("output_bytes") && !(output.is_a?(String) && output.bytesize == expect["output_bytes"])
      wrong << "output of #{output.is_a?(String) ? output.bytesize : output.class} bytes (expected #{expect['output_bytes']})"
    end
    error = result["error"]
    if expect.key?("error_type")
      kind = expect["error_type"]
      kind = kind.fetch(LANGUAGE) if kind.is_a?(Hash)
      wrong << "error_type #{error&.fetch('error_type').inspect} (expected #{kind.inspect})" if error&.fetch("error_type") != kind
    end
    if expect.key?("retryable")
      retryable = result["status"] != "completed" &&
                  (error ? error["retryable"] : result.dig("metadata", "retryable")) == true
      wrong << "retryable #{retryable}" if retryable != expect["retryable"]
    end
    if expect.key?("message_contains") && !error&.fetch("message", nil)&.include?(expect["message_contains"])
      wrong << "message #{error&.fetch('message', nil).inspect} lacks #{expect['message_contains'].inspect}"
    end
    wrong
  end

  def test_the_ruby_worker_gives_the_results_the_conformance_scenario_expects
    scenario = JSON.parse(File.read(SCENARIO))
    cases = scenario.fetch("cases").reject { |c| c.fetch("skip", []).include?(LANGUAGE) }
    assert_operator cases.size, :>=, 10, "the scenario has its cases"

    endpoint = free_endpoint
    spawn_worker(<<~RUBY, endpoint: endpoint)
      require #{File.join(__dir__, 'conformance_worker.rb').dump}
      ConformanceWorker.worker(JSON.parse(File.read(#{SCENARIO.dump})), endpoint: ENDPOINT).run
    RUBY
    steps = cases.each_with_index.map do |c, i|
      spec = c.fetch("step")
      step = { "step_id" => i + 1, "step_name" => c.fetch("name"), "handler_class" => spec.fetch("handler_class"),
               "task_context" => spec["task_context"], "metadata" => { "timeout_ms" => 10_000 } }
      step["previous_results"] = spec["previous_results"] if spec.key?("previous_results")
      step
    end
    # The orchestrator takes the scenario's config too (max_message_bytes,
    # so that OutputTooLarge is reachable).
    orchestrator_env = scenario.fetch("config").to_h { |key, value| ["TASKER_#{key.upcase}", value.to_s] }
    results = dispatch(steps, endpoint: endpoint, env: orchestrator_env).results(timeout: 90)

    failures = cases.each_with_index.filter_map do |c, i|
      result = results[i + 1]
      next "#{c['name']}: no result" unless result

      wrong = mismatches(result, c.fetch("expect"))
      "#{c['name']}: #{wrong.join('; ')}" unless wrong.empty?
    end
    assert_empty failures, "conformance failures:\n#{failures.join("\n")}"
  end
end
