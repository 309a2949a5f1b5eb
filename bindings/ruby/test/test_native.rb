# frozen_string_literal: true

require_relative "test_helper"

# The native runtime's blocking calls: they run without the GVL and Ruby's
# interrupts end them.
class TestNative < Minitest::Test
  def runtime(**overrides)
    config = TaskerCore::Config.load(nil, endpoint: free_endpoint, linger_ms: 100, **overrides)
    TaskerCore::Native::Runtime.new(config.to_h, ["noop"], 2, nil, {})
  end

  def test_next_steps_times_out_empty_and_returns_nil_once_stopped
    native = runtime
    started = monotonic
    assert_equal [], native.next_steps(10, 0.2)
    assert_operator monotonic - started, :>=, 0.19
    native.stop
    assert_nil native.next_steps(10, nil)
    assert native.join(5)
    assert_equal "stopped", native.state
  end

  def test_thread_kill_interrupts_a_blocked_next_steps
    native = runtime
    blocked = Thread.new { native.next_steps(10, nil) }
    Thread.pass until blocked.status == "sleep" || !blocked.alive?
    sleep 0.1 # let it enter the native wait
    killed_at = monotonic
    blocked.kill
    assert blocked.join(2), "Thread#kill did not end next_steps"
    assert_operator monotonic - killed_at, :<, 1.0
    native.stop
    assert native.join(5)
  end

  def test_thread_raise_and_timeout_interrupt_waits
    native = runtime
    error = assert_raises(Timeout::Error) { Timeout.timeout(0.3) { native.next_steps(10, nil) } }
    assert_kind_of Timeout::Error, error
    assert_raises(Timeout::Error) { Timeout.timeout(0.3) { native.join(60) } }
    assert_raises(Timeout::Error) { Timeout.timeout(0.3) { loop { TaskerCore::Native.next_log_records(10, nil) } } }
    native.stop
    assert native.join(5)
  end

  def test_other_threads_run_while_one_waits
    native = runtime
    waiter = Thread.new { native.next_steps(10, 1.0) }
    counted = 0
    started = monotonic
    counted += 1 while monotonic - started < 0.3
    assert_operator counted, :>, 1000, "the GVL was held by the waiting thread"
    assert_equal [], waiter.value
    native.stop
    assert native.join(5)
  end

  # policy::wait_timeout: negative and NaN refused, anything longer than
  # policy::FOREVER (a year) waits that long instead of overflowing.
  def test_waits_are_bounded_by_the_rust_policy
    native = runtime
    assert_raises(ArgumentError) { native.next_steps(1, Float::NAN) }
    assert_raises(ArgumentError) { native.join(-0.5) }
    assert_raises(ArgumentError) { TaskerCore::Native.next_log_records(1, -1) }
    year = 365 * 24 * 3600.0
    assert_equal year, TaskerCore::Native.wait_seconds(1e300)
    assert_equal year, TaskerCore::Native.wait_seconds(Float::INFINITY)
    assert_equal 0.25, TaskerCore::Native.wait_seconds(0.25)
    assert_nil TaskerCore::Native.wait_seconds(nil)
    error = assert_raises(ArgumentError) { TaskerCore::Native.wait_seconds(-1) }
    assert_match(/non-negative/, error.message)
    native.stop
    assert_nil native.next_steps(1, 1e300)
    assert native.join(Float::INFINITY)
  end

  def test_error_kinds_are_rust_constants_and_the_gem_spells_none
    kinds = TaskerCore::ErrorTypes
    assert_equal "UnknownHandler", kinds::UNKNOWN_HANDLER
    assert_equal "SerializationError", kinds::SERIALIZATION_ERROR
    assert_equal "OutputTooLarge", kinds::OUTPUT_TOO_LARGE
    assert_equal "InvalidStep", kinds::INVALID_STEP
    assert_equal "WorkerLost", kinds::WORKER_LOST
    assert_equal "WorkerInterrupted", kinds::WORKER_INTERRUPTED
    assert(kinds.constants.all? { |name| kinds.const_get(name).frozen? })
    sources = Dir[File.join(RUBY_DIR, "lib", "**", "*.rb")].to_h do |file|
      [file, File.readlines(file).grep_v(/\A\s*#/).join] # code, not comments
    end
    kinds.constants.each do |name|
      value = kinds.const_get(name)
      sources.each { |file, text| refute_includes text, "\"#{value}\"", "#{file} spells ErrorTypes::#{name}" }
    end
  end

  def test_bad_arguments_raise
    native = runtime
    assert_raises(ArgumentError) { native.next_steps(1, -1) }
    assert_misuse(TypeError) { native.complete_many([Object.new]) }
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Native::Runtime.new({ "endpoint" => "x" }, ["a"], 1, nil, {}) }
    assert_match(/endpoint/, error.message)
    assert_raises(TaskerCore::ConfigError) { TaskerCore::Native::Runtime.new(TaskerCore::Config.load.to_h, [], 1, nil, {}) }
    error = assert_raises(TaskerCore::ConfigError) do
      TaskerCore::Native::Runtime.new(TaskerCore::Config.load.to_h, ["a"], 1, nil, { "b" => 1 })
    end
    assert_match(/handler "b"/, error.message)
    native.stop
    assert native.join(5)
  end
end
