# frozen_string_literal: true

require_relative "test_helper"

class TestConfig < Minitest::Test
  def write_config(text)
    path = File.join(@tmp, "zeromq.yaml")
    File.write(path, text)
    path
  end

  def test_loads_a_section_then_overrides
    path = write_config("test:\n  endpoint: tcp://127.0.0.1:7001\n  worker_capacity: 3\n")
    config = TaskerCore::Config.load(path, env: "test", batch_size: 7)
    assert_equal "tcp://127.0.0.1:7001", config.endpoint
    assert_equal 3, config.worker_capacity
    assert_equal 7, config.batch_size
    assert_equal 3, config.liveness # built-in default
    refute config.default_retryable?
  end

  def test_the_project_config_file_loads
    config = TaskerCore::Config.load(File.join(REPO, "config", "zeromq.yaml"), env: "production")
    assert_equal 16, config.worker_capacity
  end

  def test_env_variables_override_the_file_and_ruby_overrides_win
    path = write_config("development:\n  worker_capacity: 3\n")
    ENV["TASKER_WORKER_CAPACITY"] = "5"
    assert_equal 5, TaskerCore::Config.load(path).worker_capacity
    assert_equal 6, TaskerCore::Config.load(path, worker_capacity: 6).worker_capacity
  ensure
    ENV.delete("TASKER_WORKER_CAPACITY")
  end

  def test_bad_input_names_the_problem
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, worker_capacityy: 2) }
    assert_match(/worker_capacityy/, error.message)
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, worker_capacity: 0) }
    assert_match(/worker_capacity/, error.message)
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, endpoint: "inproc://x") }
    assert_match(/endpoint/, error.message)
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.load(File.join(@tmp, "missing.yaml")) }
    assert_match(/missing\.yaml/, error.message)
    path = write_config("staging:\n  liveness: 2\n")
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.load(path) }
    assert_match(/staging/, error.message)
    assert_kind_of TaskerCore::Error, error
  end

  def test_keys_are_the_rust_list_and_each_has_a_reader
    assert_equal TaskerCore::Native::CONFIG_KEYS.map(&:to_sym), TaskerCore::Config::KEYS
    assert TaskerCore::Native::CONFIG_KEYS.frozen?
    config = TaskerCore::Config.load
    assert_equal TaskerCore::Native::CONFIG_KEYS, config.to_h.keys, "what Rust resolves is exactly KEYS"
    TaskerCore::Config::KEYS.each { |key| assert_equal config.to_h.fetch(key.to_s), config.public_send(key), key }
  end

  def test_unknown_keys_are_named_with_the_closest_valid_one_by_rust_in_every_source
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, worker_capcity: 2) }
    assert_equal "unknown config key `worker_capcity` (option); did you mean `worker_capacity`?", error.message
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Config.load.merge(heartbeat_interval: 5) }
    assert_match(/`heartbeat_interval` \(option\); did you mean `heartbeat_interval_ms`\?/, error.message)
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Worker.new(batch_sise: 5, logger: nil) }
    assert_match(/did you mean `batch_size`/, error.message)
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.new("liveness" => 2, "livenes" => 3) }
    assert_match(/`livenes`.*did you mean `liveness`/, error.message)

    path = write_config("test:\n  batch_sise: 5\n")
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.load(path, env: "test") }
    assert_match(/batch_sise.*did you mean `batch_size`/, error.message)

    ENV["TASKER_WORKER_CAPACTY"] = "3"
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Config.load }
    assert_match(/environment variable TASKER_WORKER_CAPACTY.*did you mean `worker_capacity`/, error.message)
    # A Config given whole reads no variables.
    assert_equal 4, TaskerCore::Config.new(worker_capacity: 4).worker_capacity
  ensure
    ENV.delete("TASKER_WORKER_CAPACTY")
  end

  def test_bad_option_values_name_the_option
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, liveness: "many") }
    assert_match(/option `liveness`/, error.message)
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, endpoint: Object.new) }
    assert_match(/option `endpoint`: value: cannot serialise #<Object/, error.message)
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Config.load(nil, submit_policy: "sometimes") }
    assert_match(/submit_policy/, error.message)
    assert_equal "reject", TaskerCore::Config.load(nil, submit_policy: :reject).submit_policy
  end

  def test_capacity_and_threads_rule
    worker = TaskerCore::Worker.new(endpoint: "tcp://127.0.0.1:7002", capacity: 20, logger: nil)
    assert_equal 20, worker.capacity
    assert_equal TaskerCore::Worker::DEFAULT_MAX_THREADS, worker.threads
    worker = TaskerCore::Worker.new(capacity: 3, threads: 10, logger: nil)
    assert_equal 3, worker.threads, "never more threads than capacity"
    worker = TaskerCore::Worker.new(worker_capacity: 2, logger: nil)
    assert_equal 2, worker.capacity, "capacity defaults to worker_capacity"
    assert_raises(TaskerCore::ConfigError) { TaskerCore::Worker.new(capacity: 0) }
    assert_misuse(TaskerCore::ConfigError) { TaskerCore::Worker.new(threads: "many") }
    # Taken as given, as the Python and Node SDKs do: "8" is not converted,
    # nor 2.7 cut to 2.
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Worker.new(capacity: "8", logger: nil) }
    assert_match(/capacity must be an Integer, got "8"/, error.message)
    error = assert_misuse(TaskerCore::ConfigError) { TaskerCore::Worker.new(capacity: 2.7, logger: nil) }
    assert_match(/capacity must be an Integer, got 2.7/, error.message)
    assert_misuse(TaskerCore::ConfigError) { TaskerCore::Worker.new(threads: 2.0, logger: nil) }
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Worker.new(threads: 0) }
    assert_match(/threads must be at least 1, got 0/, error.message)
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Worker.new(threads: -2) }
    assert_match(/threads must be at least 1, got -2/, error.message)
  end

  # `capacity:` is `worker_capacity` under the worker's name: given both,
  # neither silently wins.
  def test_capacity_and_worker_capacity_together_are_a_config_error
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Worker.new(capacity: 5, worker_capacity: 3) }
    assert_equal "capacity: 5 and worker_capacity: 3 are the same setting (the steps the worker holds at once): " \
                 "give only one", error.message
    path = write_config("test:\n  worker_capacity: 2\n")
    error = assert_raises(TaskerCore::ConfigError) do
      TaskerCore::Worker.from_config(path, env: "test", capacity: 5, worker_capacity: 3, logger: nil)
    end
    assert_match(/capacity: 5 and worker_capacity: 3/, error.message)
    # Either alone is fine; `capacity:` wins over a config's worker_capacity.
    assert_equal 3, TaskerCore::Worker.new(worker_capacity: 3, logger: nil).capacity
    assert_equal 5, TaskerCore::Worker.new(capacity: 5, logger: nil).capacity
    assert_equal 5, TaskerCore::Worker.from_config(path, env: "test", capacity: 5, logger: nil).capacity
    assert_equal 5, TaskerCore::Worker.new(capacity: 5, config: TaskerCore::Config.load(path, env: "test"),
                                           logger: nil).capacity
  end

  # The rules are tasker_worker::policy's, through the native module.
  def test_threads_and_chunks_come_from_the_rust_policy
    assert_equal 8, TaskerCore::Native::DEFAULT_MAX_THREADS
    assert_equal TaskerCore::Native::DEFAULT_MAX_THREADS, TaskerCore::Worker::DEFAULT_MAX_THREADS
    assert_equal 4, TaskerCore::Native.handler_threads(4, nil)
    assert_equal 8, TaskerCore::Native.handler_threads(100, nil)
    assert_equal 4, TaskerCore::Native.handler_threads(4, 10)
    assert_equal 3, TaskerCore::Native.chunk_size(10, 4)
    assert_equal 1, TaskerCore::Native.chunk_size(4, 4)
    assert_equal 100, TaskerCore::Native.chunk_size(200, 1), 'a lone thread pulls half'
    (1..20).each do |capacity|
      [nil, 1, 3, 64].each do |requested|
        threads = TaskerCore::Native.handler_threads(capacity, requested)
        chunk = TaskerCore::Native.chunk_size(capacity, threads)
        # A lone thread pulls half the capacity at a time.
        pulls = [threads, 2].max
        assert_operator pulls * chunk, :>=, capacity
        assert_operator (chunk - 1) * pulls, :<, capacity
      end
    end
    worker = TaskerCore::Worker.new(capacity: 10, threads: 4, logger: nil)
    assert_equal [10, 4], [worker.capacity, worker.threads]
  end

  def test_from_config_takes_file_env_and_overrides
    path = write_config("test:\n  endpoint: tcp://127.0.0.1:7003\n  default_retryable: true\n")
    worker = TaskerCore::Worker.from_config(path, env: "test", threads: 2, worker_capacity: 4, logger: nil)
    assert_equal "tcp://127.0.0.1:7003", worker.config.endpoint
    assert_equal 4, worker.capacity
    assert_equal 2, worker.threads
    assert worker.config.default_retryable?
  end

  def test_handlers_are_checked
    worker = TaskerCore::Worker.new(logger: nil)
    assert_misuse(ArgumentError) { worker.handle("x") }
    assert_misuse(ArgumentError) { worker.register("x", Object.new) }
    assert_raises(ArgumentError) { worker.register("", ->(_s) {}) }
    error = assert_raises(TaskerCore::Error) { worker.start }
    assert_match(/no handlers/, error.message)
  end
end
