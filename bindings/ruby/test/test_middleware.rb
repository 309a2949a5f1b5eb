# frozen_string_literal: true

require_relative "test_helper"

# Middleware (Worker#use) around handlers in this process, against the real
# orchestrator (`tasker dispatch`); and the thread-per-step mode
# (`threads: capacity`) beyond the default thread cap.
class TestMiddleware < Minitest::Test
  # Records its way in and out, and wraps the output under its name.
  class Wrap
    def initialize(name, events)
      @name = name
      @events = events
    end

    def call(step)
      @events << [:"#{@name}_in", step.step_id, Thread.current.name]
      output = yield
      @events << [:"#{@name}_out", step.step_id, Thread.current.name]
      { @name => output }
    end
  end

  # Sidekiq style, with the arguments of `use` given to `new`.
  class Guard
    def initialize(deny:)
      @deny = deny
    end

    def call(step)
      case step.task_context["deny"]
      when "typed" then raise TaskerCore::PermanentError.new("denied by policy", error_type: "PolicyDenied")
      when "plain" then raise Denied, "not allowed"
      when @deny then raise KeyError, "configured denial"
      end
      yield
    end
  end

  class Denied < StandardError; end

  def test_two_middleware_run_in_order_around_the_handler_on_its_thread_and_change_the_output
    endpoint = free_endpoint
    events = Queue.new
    with_worker(endpoint: endpoint, capacity: 1) do |worker|
      worker.use(Wrap.new("outer", events))
      worker.use(Wrap.new("inner", events))
      worker.handle("double") do |step|
        events << [:handler, step.step_id, Thread.current.name]
        step.task_context["n"] * 2
      end
      worker.start
      result = dispatch([step(1, "double", task_context: { "n" => 21 })], endpoint: endpoint).results.fetch(1)
      assert_equal "completed", result["status"]
      # What the outermost middleware returned is the output at the orchestrator.
      assert_equal({ "outer" => { "inner" => 42 } }, result["output"])
      seen = Array.new(events.size) { events.pop }
      assert_equal %i[outer_in inner_in handler inner_out outer_out], seen.map(&:first)
      assert_equal ["tasker-worker-0"], seen.map(&:last).uniq, "on the handler's thread"
    end
  end

  def test_middleware_exceptions_fail_the_step_as_handler_exceptions_do
    endpoint = free_endpoint
    seen = Queue.new
    observe = lambda do |step, &continue|
      continue.call
    rescue StandardError => e
      seen << [step.step_id, e.class.name]
      raise
    end
    with_worker(endpoint: endpoint, capacity: 2) do |worker|
      worker.use(observe)
      worker.use(Guard, deny: "configured")
      worker.handle("work") do |step|
        raise TaskerCore::RetryableError, "gateway busy" if step.task_context["fail"]

        "done"
      end
      worker.start
      contexts = [{ "deny" => "typed" }, { "deny" => "plain" }, { "deny" => "configured" }, { "fail" => true }, {}]
      steps = contexts.each_with_index.map { |context, i| step(i + 1, "work", task_context: context) }
      results = dispatch(steps, endpoint: endpoint).results
      {
        1 => ["PolicyDenied", "denied by policy", false],
        2 => ["TestMiddleware::Denied", "not allowed", false],
        3 => ["KeyError", "configured denial", false],
        4 => ["RetryableError", "gateway busy", true]
      }.each do |id, (type, message, retryable)|
        error = results.fetch(id).fetch("error")
        assert_equal "failed", results[id]["status"], "step #{id}"
        assert_equal [type, message, retryable], [error["error_type"], error["message"], error["retryable"]],
                     "step #{id}"
      end
      assert_match(/test_middleware\.rb:\d+:in .*call/, results[1].dig("error", "backtrace").first)
      assert_equal "done", results[5]["output"]
      assert_equal [[1, "TaskerCore::PermanentError"], [2, "TestMiddleware::Denied"], [3, "KeyError"],
                    [4, "TaskerCore::RetryableError"]], Array.new(seen.size) { seen.pop }.sort
    end
  end

  def test_a_middleware_that_does_not_yield_skips_the_handler
    endpoint = free_endpoint
    called = Queue.new
    cache = lambda do |step, &continue|
      step.task_context["cached"] ? { "from" => "cache" } : continue.call
    end
    with_worker(endpoint: endpoint, capacity: 2) do |worker|
      worker.use(cache)
      worker.handle("lookup") do |step|
        called << step.step_id
        { "from" => "handler" }
      end
      worker.start
      results = dispatch([step(1, "lookup", task_context: { "cached" => true }), step(2, "lookup")],
                         endpoint: endpoint).results
      assert_equal [{ "from" => "cache" }, { "from" => "handler" }], [results[1]["output"], results[2]["output"]]
      assert_equal [2], Array.new(called.size) { called.pop }, "the short-circuited step never reached the handler"
    end
  end

  def test_a_middleware_output_is_checked_as_json_like_a_handler_output
    endpoint = free_endpoint
    with_worker(endpoint: endpoint, capacity: 1) do |worker|
      worker.use(->(_step, &continue) { { "bad" => [continue.call, Object.new] } })
      worker.handle("one") { 1 }
      worker.start
      error = dispatch([step(1, "one")], endpoint: endpoint).results.fetch(1).fetch("error")
      assert_equal ["SerializationError", false], [error["error_type"], error["retryable"]]
      assert_match(/output\["bad"\]\[1\]: cannot serialise #<Object/, error["message"])
    end
  end

  def test_use_refuses_misuse_and_middleware_after_start
    worker = TaskerCore::Worker.new(endpoint: free_endpoint, capacity: 1, logger: nil)
    assert_misuse(ArgumentError) { worker.use(42) }
    error = assert_misuse(ArgumentError) { worker.use(Wrap.new("x", []), "extra") }
    assert_match(/only with a middleware class/, error.message)
    assert_same worker, worker.use(Wrap, "x", [])
    worker.handle("noop") { nil }
    worker.start
    error = assert_raises(TaskerCore::Error) { worker.use(Wrap.new("late", [])) }
    assert_equal "cannot add middleware to a started worker", error.message
  ensure
    worker&.stop
    assert worker.wait(15) if worker && worker.state != :idle
  end

  # `threads:` given is capped by the capacity only (DEFAULT_MAX_THREADS
  # caps the default): with `threads: capacity` every step of a full
  # delivery runs on a thread of its own, at the same time.
  def test_threads_equal_to_capacity_run_every_step_on_its_own_thread
    endpoint = free_endpoint
    capacity = TaskerCore::Worker::DEFAULT_MAX_THREADS + 4
    arrived = Queue.new
    release = Queue.new
    with_worker(endpoint: endpoint, capacity: capacity, threads: capacity) do |worker|
      assert_equal capacity, worker.threads
      worker.handle("io") do |step|
        arrived << Thread.current.name
        # Waits for every step to be running: only possible when each has a thread.
        Timeout.timeout(10) { release.pop }
        step.step_id
      end
      worker.start
      run = dispatch(Array.new(capacity) { |i| step(i + 1, "io") }, endpoint: endpoint)
      names = Timeout.timeout(20) { Array.new(capacity) { arrived.pop } }
      assert_equal capacity, names.uniq.size, "one thread per step: #{names.tally}"
      capacity.times { release << true }
      results = run.results
      assert_equal (1..capacity).to_a, results.values.map { |r| r["output"] }.sort
    end
  end
end
