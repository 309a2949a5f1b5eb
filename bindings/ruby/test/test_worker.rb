# frozen_string_literal: true

require_relative "test_helper"

# Workers in this process against the real orchestrator (`tasker dispatch`).
class TestWorker < Minitest::Test
  class Doubler
    def call(step)
      { "doubled" => step.task_context.fetch("n") * 2 }
    end
  end

  class CardDeclined < TaskerCore::PermanentError; end

  def test_success_and_nested_unicode_output_round_trip
    endpoint = free_endpoint
    seen = Queue.new
    with_worker(endpoint: endpoint, capacity: 2) do |worker|
      worker.handle("echo") do |step|
        seen << step
        { echo: step.task_context, sym: :ok, list: [1, 2.5, nil, true, false, "é", :x], config: step.handler_config,
          previous: step.previous_results, attempt: step.attempt, timeout: step.timeout }
      end
      worker.start
      context = { "name" => "Zoë ✓ 東京 🚀", "nested" => { "a" => [1, { "b" => [] }], "big" => 2**62 }, "x" => nil }
      run = dispatch([step(7, "echo", task_id: 3, step_name: "greet", task_context: context,
                                      handler_config: { "k" => "v" }, previous_results: { "prev" => { "ok" => 1 } },
                                      metadata: { "timeout_ms" => 4000, "attempt" => 2, "retry_limit" => 5 })],
                     endpoint: endpoint)
      result = run.results.fetch(7)
      assert_equal "completed", result["status"]
      assert_equal({ "echo" => context, "sym" => "ok", "list" => [1, 2.5, nil, true, false, "é", "x"],
                     "config" => { "k" => "v" }, "previous" => { "prev" => { "ok" => 1 } }, "attempt" => 2,
                     "timeout" => 4.0 }, result["output"])
      assert_equal 2, result.dig("metadata", "attempt")
      assert_equal worker.worker_id, result.dig("metadata", "worker_id")
      assert_match(/\Aruby-#{Process.pid}-/, worker.worker_id)

      step = seen.pop
      assert_equal [7, 3, "greet", "echo", 2, 5, 4000], [step.step_id, step.task_id, step.step_name,
                                                       step.handler_class, step.attempt, step.retry_limit,
                                                       step.timeout_ms]
      assert_same step.task_context, step.task_context, "fields are converted once"
      assert_kind_of Time, step.created_at
    end
  end

  def test_handler_error_checks_its_options
    assert_operator TaskerCore::RetryableError, :<, TaskerCore::HandlerError
    assert_operator TaskerCore::PermanentError, :<, TaskerCore::HandlerError
    assert_nil TaskerCore::HandlerError.new("x").retryable?
    assert_equal [true, "Busy"], [TaskerCore::HandlerError.new("x", error_type: :Busy, retryable: true).retryable?,
                                  TaskerCore::HandlerError.new("x", error_type: :Busy).error_type]
    error = assert_raises(ArgumentError) { TaskerCore::RetryableError.new("x", retryable: false) }
    assert_match(/always retryable.*HandlerError/, error.message)
    error = assert_raises(ArgumentError) { TaskerCore::PermanentError.new("x", retryable: true) }
    assert_match(/never retryable/, error.message)
    assert_misuse(ArgumentError) { TaskerCore::HandlerError.new("x", retryable: "yes") }
    assert_raises(ArgumentError) { TaskerCore::HandlerError.new("x", error_type: "") }
  end

  def test_error_kinds
    endpoint = free_endpoint
    with_worker(endpoint: endpoint, capacity: 4) do |worker|
      worker.handle("retryable") { raise TaskerCore::RetryableError, "gateway busy" }
      worker.handle("permanent") { raise TaskerCore::PermanentError, "amount must be positive" }
      worker.handle("declined") { raise CardDeclined, "card declined" }
      worker.handle("typed") { raise TaskerCore::RetryableError.new("slow down", error_type: "RateLimited") }
      worker.handle("other") { raise ArgumentError, "bad argument" }
      worker.handle("not_implemented") { raise NotImplementedError, "later" }
      worker.handle("decided") do
        raise TaskerCore::HandlerError.new("rate limited", error_type: "RateLimited", retryable: true)
      end
      worker.handle("undecided") { raise TaskerCore::HandlerError, "left to the worker" }
      worker.start
      run = dispatch(%w[retryable permanent declined typed other not_implemented decided
                        undecided].each_with_index.map do |h, i|
        step(i + 1, h)
      end, endpoint: endpoint)
      results = run.results
      expect = {
        1 => ["RetryableError", "gateway busy", true],
        2 => ["PermanentError", "amount must be positive", false],
        3 => ["TestWorker::CardDeclined", "card declined", false],
        4 => ["RateLimited", "slow down", true],
        5 => ["ArgumentError", "bad argument", false],
        6 => ["NotImplementedError", "later", false],
        7 => ["RateLimited", "rate limited", true],
        8 => ["HandlerError", "left to the worker", false]
      }
      expect.each do |id, (type, message, retryable)|
        error = results.fetch(id).fetch("error")
        assert_equal "failed", results[id]["status"], "step #{id}"
        assert_equal [type, message, retryable], [error["error_type"], error["message"], error["retryable"]], "step #{id}"
        assert_equal retryable, results[id].dig("metadata", "retryable"), "step #{id}"
      end
      backtrace = results[5].dig("error", "backtrace")
      assert backtrace.first.include?("test_worker.rb"), "innermost frame first: #{backtrace.first}"
      assert backtrace.none? { |line| line.include?("tasker_core/worker.rb") }, "no SDK frames: #{backtrace}"
    end
  end

  def test_default_retryable_applies_to_other_errors_only
    endpoint = free_endpoint
    with_worker(endpoint: endpoint, capacity: 2, default_retryable: true) do |worker|
      worker.handle("other") { raise KeyError, "missing" }
      worker.handle("permanent") { raise TaskerCore::PermanentError, "no" }
      worker.start
      results = dispatch([step(1, "other"), step(2, "permanent")], endpoint: endpoint).results
      assert_equal ["KeyError", true], [results[1].dig("error", "error_type"), results[1].dig("error", "retryable")]
      assert_equal false, results[2].dig("error", "retryable")
    end
  end

  def test_unserialisable_output_fails_that_step_and_the_worker_keeps_serving
    endpoint = free_endpoint
    with_worker(endpoint: endpoint, capacity: 1) do |worker|
      worker.handle("object") { { "value" => Object.new } }
      worker.handle("nan") { [1, Float::NAN] }
      worker.handle("proc") { -> {} }
      worker.handle("binary") { "\xFF\xFE".b }
      worker.handle("key") { { [1] => 2 } }
      worker.handle("fine") { { ok: true } }
      worker.start
      steps = %w[object nan proc binary key fine].each_with_index.map { |h, i| step(i + 1, h) }
      results = dispatch(steps, endpoint: endpoint).results
      {
        1 => /output\["value"\]: cannot serialise #<Object/, 2 => /output\[1\]: float NaN/,
        3 => /output: cannot serialise #<Proc/, 4 => /UTF-8/, 5 => /hash key \[1\]/
      }.each do |id, pattern|
        error = results.fetch(id).fetch("error")
        assert_equal ["SerializationError", false], [error["error_type"], error["retryable"]], "step #{id}"
        assert_match pattern, error["message"], "step #{id}"
      end
      assert_equal({ "ok" => true }, results.fetch(6)["output"])
    end
  end

  def nested(depth)
    depth.times.reduce(7) { |value, _| [value] }
  end

  # Defect 1: an output the orchestrator would refuse is not sent; its step
  # fails, not retryable, and the rest of the message goes through.
  def test_output_nested_too_deep_or_not_utf8_fails_as_serialization_error
    endpoint = free_endpoint
    with_worker(endpoint: endpoint, capacity: 5) do |worker|
      worker.handle("deep_100") { { "v" => nested(99) } }
      worker.handle("deep_101") { { "v" => nested(100) } }
      worker.handle("invalid_utf8") { { "name" => (+"caf\xE9").force_encoding(Encoding::UTF_8) } }
      worker.handle("invalid_key") { { (+"k\xFF").force_encoding(Encoding::UTF_8) => 1 } }
      worker.handle("fine") { "caf\u00e9 \u{1F389}" }
      worker.start
      steps = %w[deep_100 deep_101 invalid_utf8 invalid_key fine].each_with_index.map { |h, i| step(i + 1, h) }
      results = dispatch(steps, endpoint: endpoint).results
      assert_equal "completed", results.fetch(1)["status"], results.fetch(1).inspect
      assert_equal({ "v" => nested(99) }, results.fetch(1)["output"])
      {
        2 => /output\["v"\](\[0\])+: nested more than 100 levels deep.*max_json_depth/,
        3 => /output\["name"\]: string .* is not UTF-8/, 4 => /hash key is not UTF-8/
      }.each do |id, pattern|
        result = results.fetch(id)
        error = result.fetch("error")
        assert_equal ["SerializationError", false, false],
                     [error["error_type"], error["retryable"], result.dig("metadata", "retryable")], "step #{id}"
        assert_match pattern, error["message"], "step #{id}"
      end
      assert_equal "caf\u00e9 \u{1F389}", results.fetch(5)["output"]
    end
  end

  # A non-StandardError from a handler kills its thread: the step it was on
  # still gets its one answer (ErrorTypes::WORKER_INTERRUPTED, retryable),
  # the worker stops and #wait re-raises it.
  def test_a_handler_killing_its_thread_fails_the_step_as_worker_interrupted
    endpoint = free_endpoint
    fatal = Class.new(Exception) # rubocop:disable Lint/InheritException
    worker = TaskerCore::Worker.new(endpoint: endpoint, capacity: 1, logger: Logger.new(IO::NULL))
    worker.handle("fatal") { raise fatal, "gone" }
    worker.start
    result = dispatch([step(1, "fatal")], endpoint: endpoint).results.fetch(1)
    assert_equal ["failed", TaskerCore::ErrorTypes::WORKER_INTERRUPTED, true],
                 [result["status"], result.dig("error", "error_type"), result.dig("error", "retryable")]
    assert_raises(fatal) { worker.wait(15) }
    assert worker.stopped?
  end

  def test_wait_refuses_a_negative_or_nan_timeout
    worker = TaskerCore::Worker.new(endpoint: free_endpoint, capacity: 1, logger: nil)
    worker.handle("noop") { nil }
    worker.start
    assert_raises(ArgumentError) { worker.wait(-1) }
    assert_raises(ArgumentError) { worker.wait(Float::NAN) }
    refute worker.wait(0.05)
  ensure
    worker.stop
    assert worker.wait(15)
  end

  def test_block_and_callable_handlers
    endpoint = free_endpoint
    with_worker(endpoint: endpoint, capacity: 2) do |worker|
      worker.register("double", Doubler.new)
      worker.register(:triple, ->(step) { step.task_context["n"] * 3 })
      worker.handle("square") { |step| step.task_context["n"]**2 }
      # A name is a String or Symbol, as the Python and Node SDKs take a
      # string: 42 is not quietly the handler "42".
      error = assert_misuse(TypeError) { worker.register(42, ->(step) { step }) }
      assert_match(/handler name must be a String or Symbol, got 42/, error.message)
      assert_equal %w[double triple square], worker.handler_names
      worker.start
      assert_raises(TaskerCore::Error) { worker.handle("late") { nil } }
      steps = %w[double triple square].each_with_index.map { |h, i| step(i + 1, h, task_context: { "n" => 7 }) }
      results = dispatch(steps, endpoint: endpoint).results
      assert_equal [{ "doubled" => 14 }, 21, 49], [1, 2, 3].map { |id| results[id]["output"] }
    end
  end

  def test_stop_from_inside_a_handler
    endpoint = free_endpoint
    worker = TaskerCore::Worker.new(endpoint: endpoint, capacity: 1, logger: nil)
    worker.handle("last") do
      worker.stop
      "stopped myself"
    end
    run = dispatch([step(1, "last")], endpoint: endpoint)
    runner = Thread.new { worker.run(trap_signals: false) }
    assert runner.join(15), "run did not return after stop from a handler"
    assert_equal "stopped myself", run.results.fetch(1)["output"]
    assert worker.stopped?
    assert_equal :stopped, worker.state
    # A worker runs once: returning at once here made a supervisor's
    # `loop { worker.run }` spin.
    error = assert_raises(TaskerCore::Error) { worker.run(trap_signals: false) }
    assert_match(/run called on a stopped worker; a Worker runs once/, error.message)
  end

  def test_graceful_stop_finishes_steps_in_flight
    endpoint = free_endpoint
    started = Queue.new
    executions = Queue.new
    worker = TaskerCore::Worker.new(endpoint: endpoint, capacity: 2, threads: 2, logger: nil)
    worker.handle("slow") do |step|
      started << step.step_id
      sleep 0.5
      executions << step.step_id
      { "done" => step.step_id }
    end
    worker.start
    steps = (1..6).map { |id| step(id, "slow", metadata: { "timeout_ms" => 2500 }) }
    run = dispatch(steps, endpoint: endpoint)
    in_flight = [Timeout.timeout(15) { started.pop }, Timeout.timeout(15) { started.pop }]
    stopping_at = monotonic
    worker.stop
    assert worker.wait(10), "worker did not stop"
    assert_operator monotonic - stopping_at, :<, 3.0
    results = run.results
    assert_equal 6, results.size
    in_flight.each do |id|
      assert_equal "completed", results[id]["status"], "step #{id} was running at stop: #{results[id]}"
    end
    ran = []
    ran << executions.pop until executions.empty?
    assert_equal ran.uniq, ran, "no step ran twice"
    (results.keys - ran).each do |id|
      refute_equal "completed", results[id]["status"], "step #{id} never ran here"
    end
  end

  def test_a_handler_sleeping_past_its_timeout_does_not_deadlock_stop
    endpoint = free_endpoint
    worker = TaskerCore::Worker.new(endpoint: endpoint, capacity: 1, shutdown_timeout_ms: 500, logger: nil)
    started = Queue.new
    worker.handle("sleepy") do
      started << true
      sleep 30
    end
    worker.start
    run = dispatch([step(1, "sleepy", metadata: { "timeout_ms" => 300 })], endpoint: endpoint)
    Timeout.timeout(15) { started.pop }
    result = run.results.fetch(1)
    assert_equal "timed_out", result["status"]
    stopping_at = monotonic
    worker.stop
    assert worker.wait(10), "stop deadlocked behind a sleeping handler"
    assert_operator monotonic - stopping_at, :<, 4.0
  end

  def test_runtime_logs_reach_the_logger
    endpoint = free_endpoint
    io = StringIO.new
    previous = TaskerCore.logger
    TaskerCore.logger = Logger.new(io, level: Logger::INFO)
    with_worker(endpoint: endpoint, capacity: 1, logger: TaskerCore.logger) do |worker|
      worker.handle("noop") { nil }
      worker.start
      dispatch([step(1, "noop")], endpoint: endpoint).results
      TaskerCore::Logging.flush
      TaskerCore::Native.log_emit("debug", "below the level")
      TaskerCore::Native.log_emit("warn", "bridge check")
      # flush hands over what is queued, after what the "tasker-log" thread
      # is handing over: once it returns, the record is in the log.
      TaskerCore::Logging.flush
      log = io.string
      assert_match(/INFO -- tasker_worker::connection: registered with orchestrator worker_id=#{worker.worker_id}/, log)
      assert_match(/WARN -- tasker_core_ruby: bridge check/, log)
      refute_match(/below the level/, log)
    end
  ensure
    TaskerCore.logger = previous
  end
end
