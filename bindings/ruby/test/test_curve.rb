# frozen_string_literal: true

require_relative "test_helper"

# CURVE: encrypted, authenticated connections to a real `tasker dispatch`
# with CURVE on, keys made by the real `tasker keygen`. Never skipped: a
# build without CURVE fails them.
class TestCurve < Minitest::Test
  # Longest a refusal may take to reach #run.
  REFUSAL_WITHIN = 10

  def setup
    super
    @keys = File.join(@tmp, "keys")
    @authorized = File.join(@tmp, "authorized")
    Dir.mkdir(@keys)
    Dir.mkdir(@authorized)
    keygen("orchestrator")
  end

  # A key pair NAME made by `tasker keygen`; `admit` copies NAME.pub into
  # the orchestrator's authorized folder.
  def keygen(name, admit: false)
    out = IO.popen([TASKER, "keygen", name, "--out", @keys], err: %i[child out], &:read)
    assert $?.success?, "tasker keygen failed: #{out}"
    FileUtils.cp(public_file(name), @authorized) if admit
  end

  def secret(name)
    File.join(@keys, "#{name}.key")
  end

  def public_file(name)
    File.join(@keys, "#{name}.pub")
  end

  # The Z85 public key in NAME.pub.
  def public_key(name)
    File.read(public_file(name))[/public-key = "(.{40})"/, 1] || flunk("no public key in #{public_file(name)}")
  end

  # What turns CURVE on for `tasker dispatch`.
  def orchestrator_env
    { "TASKER_CURVE_AUTHORIZED_KEYS_DIR" => @authorized, "TASKER_CURVE_SECRET_KEY_FILE" => secret("orchestrator") }
  end

  # A worker's options: its secret key, the orchestrator's public key.
  def worker_keys(name)
    { curve_secret_key_file: secret(name), curve_server_public_key_file: public_file("orchestrator") }
  end

  # Runs `worker` on this thread; returns what #run raised, checking it came
  # promptly and left the worker stopped.
  def refusal_of(worker)
    started = monotonic
    error = assert_raises(TaskerCore::WorkerRefused) { worker.run(trap_signals: false) }
    took = monotonic - started
    assert_operator took, :<, REFUSAL_WITHIN, "the refusal took #{took.round(1)}s to reach #run"
    assert_kind_of TaskerCore::WorkerError, error
    assert worker.stopped?
    assert_equal :stopped, worker.state
    error
  end

  # A worker whose refusal is the test's to check: built, not yet started,
  # and never left running.
  def refused_worker(**options)
    worker = TaskerCore::Worker.new(**{ logger: Logger.new(IO::NULL) }.merge(options))
    yield worker
  ensure
    worker&.stop
  end

  def test_worker_with_option_keys_serves_a_step
    keygen("alice", admit: true)
    endpoint = free_endpoint
    run = dispatch([step(1, "double", task_context: { "n" => 21 })], endpoint: endpoint, env: orchestrator_env)
    said = StringIO.new
    with_worker(endpoint: endpoint, logger: Logger.new(said), **worker_keys("alice")) do |worker|
      worker.handle("double") { |s| { "doubled" => s.task_context.fetch("n") * 2 } }
      worker.start
      # Its start line says CURVE is on, as Python's and Node's do.
      assert_match(/connecting to #{Regexp.escape(endpoint)} with CURVE, handlers double/, said.string)
      result = run.results.fetch(1)
      assert_equal "completed", result["status"], result.inspect
      assert_equal({ "doubled" => 42 }, result["output"])
      assert_equal worker.worker_id, result.dig("metadata", "worker_id")
    end
  end

  def test_worker_process_configured_by_its_environment_serves_steps
    keygen("bob", admit: true)
    endpoint = free_endpoint
    run = dispatch((1..3).map { |id| step(id, "work") }, endpoint: endpoint, env: orchestrator_env)
    env = { "TASKER_CURVE_SECRET_KEY_FILE" => secret("bob"),
            "TASKER_CURVE_SERVER_PUBLIC_KEY_FILE" => public_file("orchestrator") }
    pid, = spawn_worker(<<~RUBY, endpoint: endpoint, env: env)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 2)
      worker.handle("work") { |step| { "id" => step.step_id, "pid" => Process.pid } }
      worker.run
    RUBY
    results = run.results
    assert_equal [1, 2, 3], results.keys.sort
    results.each do |id, result|
      assert_equal ["completed", id, pid], [result["status"], result.dig("output", "id"), result.dig("output", "pid")],
                   "step #{id}"
    end
  end

  def test_worker_whose_key_is_not_admitted_raises_worker_refused
    keygen("admitted", admit: true)
    keygen("mallory") # its .pub is not in the authorized folder
    endpoint = free_endpoint
    run = dispatch([step(1, "work")], endpoint: endpoint, env: orchestrator_env)
    ran = Queue.new
    refused_worker(endpoint: endpoint, **worker_keys("mallory")) do |worker|
      worker.handle("work") { |s| ran << s.step_id }
      error = refusal_of(worker)
      assert_includes error.message, public_key("mallory")
      assert_includes error.message, "curve_authorized_keys_dir"
      assert_includes error.message, endpoint
      # #wait raises it too.
      assert_raises(TaskerCore::WorkerRefused) { worker.wait(1) }
    end

    # The step waits for a worker the orchestrator admits, which runs it.
    with_worker(endpoint: endpoint, **worker_keys("admitted")) do |worker|
      worker.handle("work") { "admitted" }
      worker.start
      result = run.results.fetch(1)
      assert_equal ["completed", "admitted", worker.worker_id],
                   [result["status"], result["output"], result.dig("metadata", "worker_id")]
    end
    assert_empty ran, "the refused worker ran no step"
  end

  def test_plaintext_worker_against_a_curve_orchestrator_raises_worker_refused
    endpoint = free_endpoint
    dispatch([step(1, "work")], endpoint: endpoint, env: orchestrator_env)
    ran = Queue.new
    refused_worker(endpoint: endpoint, threads: 3, capacity: 3) do |worker|
      worker.handle("work") { |s| ran << s.step_id }
      error = refusal_of(worker)
      assert_includes error.message, "requires CURVE"
      assert_includes error.message, "curve_server_public_key_file"
    end
    assert_empty ran
  end

  def test_refused_worker_process_dies_with_the_error
    endpoint = free_endpoint
    dispatch([step(1, "work")], endpoint: endpoint, env: orchestrator_env)
    log = File.join(@tmp, "worker-#{@children.size}.log")
    pid, = spawn_worker(<<~RUBY, endpoint: endpoint)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT)
      worker.handle("work") { |step| step.step_id }
      worker.run
    RUBY
    status = wait_exit(pid, timeout: REFUSAL_WITHIN + 5)
    refute status.success?, "a refused worker's script fails"
    stderr = File.read(log)
    assert_match(/requires CURVE.*\(TaskerCore::WorkerRefused\)/m, stderr)
  end

  def test_bad_curve_settings_are_config_errors_at_start
    keygen("carol")
    server = public_file("orchestrator")
    [
      [{ curve_server_public_key_file: server }, /curve_secret_key_file/],
      [{ curve_server_public_key_file: server, curve_secret_key_file: File.join(@tmp, "nowhere.key") }, /nowhere\.key/],
      [{ curve_server_public_key_file: server, curve_secret_key_file: public_file("carol") }, /curve_secret_key_file/]
    ].each do |options, named|
      error = assert_raises(TaskerCore::ConfigError, options.inspect) do
        worker = TaskerCore::Worker.new(endpoint: "tcp://127.0.0.1:9", logger: Logger.new(IO::NULL), **options)
        worker.handle("work") { nil }
        worker.start
      end
      assert_match named, error.message
    end
  end
end
