# frozen_string_literal: true

require_relative "test_helper"
require "fileutils"
require "net/http"
require "openssl"

# TaskerCore::Client against a real `tasker serve` (SQLite store, free ports)
# whose steps run on a real Rust worker (`tasker worker`): the client is Ruby,
# the handlers are Rust. One server (and worker) is shared by the file's
# tests; the tests that need a server of their own (bearer tokens, a server
# stopped mid-wait) start one and stop it in teardown.
class TestClient < Minitest::Test
  WORKFLOWS = {
    "pipeline" => <<~YAML,
      name: pipeline
      description: Two echo steps, the second after the first.
      steps:
        - name: fetch
          handler: echo
          handler_config: { source: "warehouse" }
        - name: summarize
          handler: echo
          depends_on: [fetch]
    YAML
    "mixed" => <<~YAML,
      name: mixed
      steps:
        - name: fetch
          handler: echo
        - name: charge
          handler: fail_permanent
          depends_on: [fetch]
    YAML
    "slow" => <<~YAML,
      name: slow
      steps:
        - name: nap
          handler: sleep
          timeout_ms: 120000
        - name: after
          handler: echo
          depends_on: [nap]
    YAML
    "listing" => <<~YAML
      name: listing
      steps:
        - name: only
          handler: echo
    YAML
  }.freeze

  HANDLERS = "echo,sleep,fail_permanent"

  # A `tasker serve` and its Rust workers, started for the tests.
  class Server
    attr_reader :url, :endpoint, :dir, :pid, :worker_pids

    # Starts `tasker serve` in `dir` (workflows from WORKFLOWS), and
    # `workers` Rust workers; returns once the workers are connected.
    def self.start(dir, env: {}, workers: 1)
      server = new(dir, env)
      server.start_workers(workers)
      server
    rescue StandardError
      server&.stop
      raise
    end

    def initialize(dir, env)
      @dir = dir
      @env = TaskerTestHelpers::ORCHESTRATOR_ENV.merge("TASKER_ENV" => "test").merge(env)
      @worker_pids = []
      workflows = File.join(dir, "workflows")
      FileUtils.mkdir_p(workflows)
      WORKFLOWS.each { |name, yaml| File.write(File.join(workflows, "#{name}.yaml"), yaml) }
      @endpoint = free_endpoint
      out_r, out_w = IO.pipe
      @pid = Process.spawn(@env, TASKER, "serve", "--store", "sqlite:#{File.join(dir, 't.db')}",
                           "--api-listen", "127.0.0.1:0", "--workflows-dir", workflows, "--endpoint", @endpoint,
                           out: out_w, err: File.join(dir, "serve.log"), chdir: dir)
      out_w.close
      line = Timeout.timeout(60, RuntimeError, "tasker serve printed nothing within 60s: #{log}") { out_r.gets }
      @url = line && line[%r{\Atasker serve: api (http://\S+) }, 1] or
        raise "tasker serve did not print its address (#{line.inspect}): #{log}"
      # Drain the rest of its stdout so that it never blocks on a full pipe.
      @stdout = Thread.new { out_r.read }
    end

    # `wait: false` for a server that wants a token (its /v1/workers too):
    # a task waits until they connect.
    def start_workers(count, wait: true)
      count.times do |i|
        @worker_pids << Process.spawn(@env, TASKER, "worker", "--endpoint", @endpoint, "--handlers", HANDLERS,
                                      "--capacity", "16", "--worker-id", "rust-client-test-#{i}",
                                      out: File::NULL, err: File.join(dir, "worker-#{i}.log"), chdir: dir)
      end
      return if count.zero? || !wait

      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 30
      until connected_workers >= count
        raise "#{count} worker(s) not connected within 30s: #{log}" if
          Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        sleep 0.05
      end
    end

    def connected_workers
      response = Net::HTTP.get_response(URI("#{url}/v1/workers"))
      response.is_a?(Net::HTTPOK) ? JSON.parse(response.body).fetch("workers").size : 0
    rescue SystemCallError, IOError
      0
    end

    def log
      File.exist?(File.join(dir, "serve.log")) ? File.read(File.join(dir, "serve.log"))[-2000..] : ""
    end

    # SIGTERM to the server only.
    def terminate
      signal("TERM", @pid)
    end

    # TERM, then KILL whatever has not exited within `timeout`, for the
    # server and its workers.
    def stop(timeout: 10)
      pids = [@pid, *@worker_pids].compact
      pids.each { |pid| signal("TERM", pid) }
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      pids.each do |pid|
        loop do
          break if Process.wait(pid, Process::WNOHANG)

          if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
            signal("KILL", pid)
            Process.wait(pid)
            break
          end
          sleep 0.05
        end
      rescue Errno::ECHILD
        nil
      end
      @stdout&.join(5)
    end

    private

    def signal(name, pid)
      Process.kill(name, pid)
    rescue Errno::ESRCH
      nil
    end

    def free_endpoint
      server = TCPServer.new("127.0.0.1", 0)
      port = server.addr[1]
      server.close
      "tcp://127.0.0.1:#{port}"
    end
  end

  # A TLS-terminating proxy on a loopback port in front of `upstream` (a
  # URI, plain HTTP), as Caddy or nginx would be in front of `tasker serve`,
  # with a self-signed certificate for localhost made here (`cert_pem`).
  # One thread per connection; `handshakes` counts the TLS handshakes that
  # succeeded.
  class TlsProxy
    attr_reader :port, :cert_pem, :handshakes

    def initialize(upstream)
      @upstream = upstream
      key = OpenSSL::PKey::EC.generate("prime256v1")
      cert = self_signed(key)
      @cert_pem = cert.to_pem
      context = OpenSSL::SSL::SSLContext.new
      context.cert = cert
      context.key = key
      @tcp = TCPServer.new("127.0.0.1", 0)
      @port = @tcp.addr[1]
      @server = OpenSSL::SSL::SSLServer.new(@tcp, context)
      @server.start_immediately = false # the handshake on the connection's thread
      @handshakes = 0
      @thread = Thread.new { accept_loop }
      @thread.report_on_exception = false
    end

    def close
      @tcp.close
      @thread.join(5)
    end

    private

    def self_signed(key)
      cert = OpenSSL::X509::Certificate.new
      cert.version = 2
      cert.serial = OpenSSL::BN.rand(64)
      cert.subject = cert.issuer = OpenSSL::X509::Name.parse("/O=tasker-core tests/CN=localhost")
      cert.public_key = key
      cert.not_before = Time.now - 3600
      cert.not_after = Time.now + 3600
      extensions = OpenSSL::X509::ExtensionFactory.new(cert, cert)
      cert.add_extension(extensions.create_extension("basicConstraints", "CA:FALSE", true))
      cert.add_extension(extensions.create_extension("keyUsage", "digitalSignature", true))
      cert.add_extension(extensions.create_extension("extendedKeyUsage", "serverAuth"))
      cert.add_extension(extensions.create_extension("subjectAltName", "DNS:localhost,IP:127.0.0.1"))
      cert.add_extension(extensions.create_extension("subjectKeyIdentifier", "hash"))
      cert.sign(key, OpenSSL::Digest.new("SHA256"))
    end

    def accept_loop
      loop do
        tls = @server.accept
        Thread.new { relay(tls) }.report_on_exception = false
      end
    rescue IOError, SystemCallError, OpenSSL::SSL::SSLError
      nil # closed
    end

    # One thread reads and writes both sides (an SSL object must not be
    # used by two threads at once); either side's end closes both.
    def relay(tls)
      tls.accept
      @handshakes += 1
      plain = TCPSocket.new(@upstream.host, @upstream.port)
      loop do
        ready = tls.pending.positive? ? [tls] : IO.select([tls, plain], nil, nil, 30)&.first
        return unless ready

        ready.each do |from|
          data = from.read_nonblock(65_536, exception: false)
          next if data == :wait_readable || data == :wait_writable
          return if data.nil?

          (from.equal?(tls) ? plain : tls).write(data)
        end
      end
    rescue IOError, SystemCallError, OpenSSL::SSL::SSLError
      nil # the client refused the certificate, or a side closed
    ensure
      tls.close
      plain&.close
    end
  end

  class << self
    # The server shared by the file's tests, started on first use and
    # stopped when the test run ends.
    def shared_server
      @shared_server ||= begin
        dir = Dir.mktmpdir("tasker-ruby-client")
        server = Server.start(dir, workers: 1)
        Minitest.after_run do
          server.stop
          FileUtils.rm_rf(dir)
        end
        server
      end
    end
  end

  def setup
    super
    @servers = []
  end

  def teardown
    @servers.each(&:stop)
    super
  end

  def shared
    self.class.shared_server
  end

  def client(**options)
    TaskerCore::Client.new(url: shared.url, token: "", **options)
  end

  # A server of the test's own, stopped in teardown.
  def own_server(env: {}, workers: 0)
    dir = File.join(@tmp, "server-#{@servers.size}")
    FileUtils.mkdir_p(dir)
    Server.start(dir, env: env, workers: workers).tap { |s| @servers << s }
  end

  def with_env(vars)
    saved = vars.keys.to_h { |k| [k, ENV.fetch(k, nil)] }
    vars.each { |k, v| v.nil? ? ENV.delete(k) : ENV[k] = v }
    yield
  ensure
    saved.each { |k, v| v.nil? ? ENV.delete(k) : ENV[k] = v }
  end

  def free_port
    server = TCPServer.new("127.0.0.1", 0)
    server.addr[1]
  ensure
    server&.close
  end

  # Polls until the task's `step` is running at a worker.
  def wait_running(client, id, step, timeout: 15)
    deadline = monotonic + timeout
    loop do
      task = client.get(id)
      return task if task.step(step).state == "running"
      raise "step #{step} of task #{id} not running within #{timeout}s: #{task.inspect}" if monotonic > deadline

      sleep 0.05
    end
  end

  # A "running" step may still be queued in the orchestrator (a cancel
  # would withdraw it); this waits until a worker has taken one.
  def wait_until_a_worker_holds_a_step(client, timeout: 15)
    deadline = monotonic + timeout
    loop do
      workers = JSON.parse(Net::HTTP.get(URI("#{client.url}/v1/workers")))["workers"]
      return if workers.any? { |w| w["in_flight"].positive? }
      raise "no worker took a step within #{timeout}s: #{workers.inspect}" if monotonic > deadline

      sleep 0.02
    end
  end

  def test_submit_then_wait_reports_the_rust_workers_outputs
    c = client
    handle = c.submit("pipeline", { "order_id" => 7, "items" => ["a", "ü"], note: "sym key" })
    assert handle.created?
    assert_kind_of Integer, handle.id
    assert_equal handle.id, handle.task.task_id
    assert_equal "pipeline", handle.task.workflow

    task = handle.wait(timeout: 30)
    assert_instance_of TaskerCore::Client::Task, task
    assert task.complete?, task.inspect
    assert task.ended?
    refute task.failed?
    refute task.cancel_requested?
    assert_equal handle.id, task.id
    assert_equal({ "order_id" => 7, "items" => ["a", "ü"], "note" => "sym key" }, task.context)
    assert_nil task.idempotency_key
    assert_kind_of Time, task.started_at
    assert_kind_of Time, task.finished_at
    assert_operator task.finished_at, :>=, task.started_at
    assert_equal %w[fetch summarize], task.steps.map(&:name)
    assert_equal [[], ["fetch"]], task.steps.map(&:depends_on)

    fetch = task.step(:fetch)
    assert fetch.completed?
    assert_equal "echo", fetch.handler
    assert_equal 1, fetch.attempts
    assert_match(/\Arust-client-test-/, fetch.worker_id, "a Rust worker ran it")
    assert_equal task.context, fetch.output["task_context"]
    assert_equal({ "source" => "warehouse" }, fetch.output["handler_config"])
    assert_nil fetch.error
    summarize = task.step("summarize")
    assert_equal fetch.output, summarize.output.dig("previous_results", "fetch")
    assert_equal %w[fetch summarize], task.outputs.keys
    assert task.frozen? && task.steps.frozen? && task.context.frozen?, "reports are immutable"

    again = c.get(handle.id)
    assert_equal task, again
    assert_equal task, handle.get
    assert_equal task, c.wait(handle.id.to_s, timeout: 0), "an ended task is returned at once"
  end

  def test_a_failed_task_reports_the_step_error
    task = client.submit("mixed", { "amount" => 5 }).wait(timeout: 30)
    assert task.failed?, task.inspect
    assert task.ended?
    assert task.step("fetch").completed?
    charge = task.step("charge")
    assert charge.failed?
    assert_equal "failed", charge.state
    assert_instance_of TaskerCore::Client::StepError, charge.error
    assert_equal "PermanentError", charge.error.error_type
    assert_equal "charge failed (permanent)", charge.error.message
    refute charge.error.retryable?
    assert_equal "PermanentError: charge failed (permanent)", charge.error.to_s
    assert_equal [charge], task.failed_steps
    assert_equal({ "fetch" => task.step("fetch").output }, task.outputs)
  end

  def test_idempotent_resubmit_returns_the_same_task_and_a_conflict_for_another_context
    c = client
    key = "order-#{rand(1 << 40)}"
    first = c.submit("pipeline", { "order_id" => 1 }, idempotency_key: key)
    assert first.created?
    again = c.submit("pipeline", { "order_id" => 1 }, idempotency_key: key)
    refute again.created?
    assert_equal first.id, again.id
    assert_equal key, again.task.idempotency_key

    error = assert_raises(TaskerCore::IdempotencyConflict) do
      c.submit("pipeline", { "order_id" => 2 }, idempotency_key: key)
    end
    assert_equal first.id, error.task_id
    assert_equal 409, error.status
    assert_equal "idempotency-conflict", error.problem_type
    assert_equal error.detail, error.message
    assert_kind_of TaskerCore::ClientError, error
    assert_kind_of TaskerCore::Error, error
    assert first.wait(timeout: 30).complete?
  end

  def test_cancel_a_running_task_then_cancel_again_is_task_ended
    c = client
    handle = c.submit("slow", { "sleep_ms" => 1500 })
    wait_running(c, handle.id, "nap")
    wait_until_a_worker_holds_a_step(c)
    cancelled = handle.cancel
    assert cancelled.cancel_requested?
    assert_equal handle.id, cancelled.task_id

    task = handle.wait(timeout: 30)
    assert task.cancelled?, task.inspect
    assert task.ended?
    refute task.complete?
    assert task.step("nap").completed?, "the running step finished"
    assert task.step("after").cancelled?, "the next one was not run"

    error = assert_raises(TaskerCore::TaskEnded) { c.cancel(handle.id) }
    assert_equal handle.id, error.task_id
    assert_equal "cancelled", error.task_status
    assert_equal 409, error.status
    assert_match(/#{handle.id}/, error.message)
  end

  def test_get_wait_and_cancel_of_an_unknown_id_raise_task_not_found
    c = client
    error = assert_raises(TaskerCore::TaskNotFound) { c.get(987_654_321) }
    assert_equal 987_654_321, error.task_id
    assert_equal 404, error.status
    assert_equal "task-not-found", error.problem_type
    assert_equal "task-not-found", error.problem["type"].split("/").last
    assert_raises(TaskerCore::TaskNotFound) { c.wait(987_654_321, timeout: 1) }
    assert_raises(TaskerCore::TaskNotFound) { c.cancel(987_654_321) }
    assert_raises(ArgumentError) { c.get("12; drop") }
    # Refused here, as the other SDKs do, not sent to be refused there.
    error = assert_raises(ArgumentError) { c.get(0) }
    assert_includes error.message, "a positive Integer (or a String of digits)"
  end

  def test_unknown_workflow_names_the_field_and_the_closest
    error = assert_raises(TaskerCore::UnknownWorkflow) { client.submit("mixd", {}) }
    assert_kind_of TaskerCore::ValidationError, error
    assert_equal "workflow", error.field
    assert_equal "mixed", error.closest
    assert_equal WORKFLOWS.keys.sort, error.known_workflows.sort
    assert_equal 422, error.status
    assert_equal "unknown-workflow", error.problem_type
    assert_match(/mixd/, error.message)
  end

  def test_validation_errors_carry_their_field
    c = client
    error = assert_raises(TaskerCore::ValidationError) { c.list(limit: 0) }
    assert_equal "limit", error.field
    assert_equal "invalid-parameter", error.problem_type
    assert_equal 400, error.status
    assert_match(/limit/, error.message)

    # Over the server's 1 MiB: refused before any upload, as in Python and Node.
    [2 << 20, 20 << 20].each do |size|
      big = assert_raises(TaskerCore::ValidationError) do
        c.submit("pipeline", { "pad" => "x" * size }, idempotency_key: "big")
      end
      assert_equal "body-too-large", big.problem_type
      assert_match(/1 MiB\); nothing was sent/, big.message)
    end
    error = assert_raises(TaskerCore::ValidationError) { c.submit("pipeline", {}, idempotency_key: "k" * 300) }
    assert_equal "idempotency_key", error.field
    refute_kind_of TaskerCore::UnknownWorkflow, error

    # Not coerced to a string, as Python and Node do not: 5 created a task
    # keyed "5".
    error = assert_misuse(TaskerCore::ValidationError) { c.submit("pipeline", {}, idempotency_key: 5) }
    assert_equal "idempotency_key", error.field
    assert_match(/expected a string, got an integer/, error.message)
    error = assert_misuse(TaskerCore::ValidationError) { c.submit(nil, {}) }
    assert_equal "workflow", error.field
    assert_equal "pipeline", c.submit(:pipeline, {}).task.workflow, "a Symbol is a name"
    %w[open_timeout read_timeout].each do |name|
      [0, -1, "abc", Float::INFINITY].each do |value|
        make = -> { TaskerCore::Client.new(url: c.url, token: "", name.to_sym => value) }
        # A String is outside sig/ too; the numbers only the gem refuses.
        error = value.is_a?(Numeric) ? assert_raises(ArgumentError, &make) : assert_misuse(ArgumentError, &make)
        assert_match(/#{name} must be a positive number of seconds/, error.message)
      end
    end

    error = assert_misuse(TaskerCore::ValidationError) { c.list(status: "done") }
    assert_equal "status", error.field
  end

  def test_wait_timeout_carries_the_task_as_last_seen
    c = client
    handle = c.submit("slow", { "sleep_ms" => 4000 })
    started = monotonic
    error = assert_raises(TaskerCore::WaitTimeout) { handle.wait(timeout: 0.6) }
    elapsed = monotonic - started
    assert_operator elapsed, :>=, 0.55
    assert_operator elapsed, :<, 3, "the wait ends at its timeout, not at the task's end"
    assert_equal handle.id, error.task.task_id
    assert error.task.running?
    assert_nil error.status
    assert_match(/\Atask #{handle.id} \(slow\) did not end within 0\.6 s; it is running\z/, error.message)
    assert_kind_of TaskerCore::ClientError, error

    assert_raises(TaskerCore::WaitTimeout) { c.wait(handle.id, timeout: 0) }
    assert_raises(ArgumentError) { c.wait(handle.id, timeout: -1) }
    assert_raises(ArgumentError) { c.wait(handle.id, timeout: Float::NAN) }
    assert c.wait(handle.id, timeout: 30).complete?
  end

  def test_list_filters_by_status_and_workflow_and_pages_with_the_cursor
    c = client
    before = Time.now - 5
    ids = Array.new(5) { c.submit("listing", { "n" => rand(1000) }).id }
    ids.each { |id| assert c.wait(id, timeout: 30).complete? }
    failed = c.submit("mixed", {}).wait(timeout: 30)
    assert failed.failed?

    pages = []
    cursor = nil
    loop do
      page = c.list(workflow: "listing", limit: 2, cursor: cursor)
      assert_instance_of TaskerCore::Client::TaskPage, page
      pages << page
      break if page.last_page?

      cursor = page.next_cursor
      assert_kind_of String, cursor
    end
    assert_equal [2, 2, 1], pages.map(&:size)
    listed = pages.flat_map(&:to_a)
    assert_equal ids.reverse, listed.map(&:task_id), "newest first, each once"
    summary = listed.first
    assert_instance_of TaskerCore::Client::TaskSummary, summary
    assert summary.complete? && summary.ended?
    assert_equal "listing", summary.workflow
    assert_equal [1, 1], [summary.steps_total, summary.steps_completed]
    assert_kind_of Time, summary.started_at

    assert_equal ids.reverse, c.each_task(workflow: "listing", page_size: 2).map(&:task_id)
    assert_equal ids.sort, c.list(workflow: "listing", status: :complete).map(&:task_id).sort
    assert c.list(workflow: "listing", status: "failed").empty?
    failed_ones = c.list(status: "failed", limit: 1000).to_a
    assert_includes failed_ones.map(&:task_id), failed.task_id
    assert failed_ones.all?(&:failed?)
    assert c.list(workflow: "listing", created_since: Time.now + 3600).empty?
    assert_equal 5, c.list(workflow: "listing", created_since: before).size
    assert_equal 5, c.list(workflow: "listing", created_since: before.utc.iso8601).size
  end

  def test_workflows_lists_the_loaded_ones
    workflows = client.workflows.to_h { |w| [w.name, w] }
    assert_equal WORKFLOWS.keys.sort, workflows.keys.sort
    pipeline = workflows.fetch("pipeline")
    assert_equal "Two echo steps, the second after the first.", pipeline.description
    assert_equal %w[fetch summarize], pipeline.steps.map(&:name)
    assert_equal ["fetch"], pipeline.steps.last.depends_on
    assert_equal "echo", pipeline.steps.first.handler
  end

  def test_one_client_shared_by_threads
    c = client
    results = Array.new(8) do |i|
      Thread.new { c.submit("pipeline", { "thread" => i }).wait(timeout: 60) }
    end.map(&:value)
    assert results.all?(&:complete?)
    assert_equal 8, results.map(&:task_id).uniq.size
    assert_equal (0...8).to_a, results.map { |t| t.step("fetch").output.dig("task_context", "thread") }
    c.close
    assert c.get(results.first.task_id).complete?, "usable after close"
  end

  # A client used before a fork (Puma's cluster mode, Unicorn, Resque) is
  # used by both processes after it: each must read its own answers. They
  # shared its idle connection, and a get returned another task.
  def test_a_client_used_before_a_fork_gives_each_process_its_own_answers
    c = client
    ids = Array.new(2) { |i| c.submit("pipeline", { "n" => i }).task_id }
    c.get(ids[0]) # leaves a connection idle in the client
    reader, writer = IO.pipe
    child = fork do
      reader.close
      writer.write(mismatches(c, ids[1]).to_s)
      writer.close
      exit!(0)
    end
    writer.close
    parent_mismatches = mismatches(c, ids[0])
    child_mismatches = reader.read.to_i
    Process.wait(child)
    assert_equal [0, 0], [parent_mismatches, child_mismatches], "answers crossed between the processes"
  end

  def mismatches(client, id)
    40.times.count do
      client.get(id).task_id != id
    rescue StandardError, JSON::ParserError
      true
    end
  end

  def test_bearer_tokens
    tokens = File.join(@tmp, "tokens.yaml")
    # The server wants tokens of 16 characters or more.
    File.write(tokens, "ci: secret-token-0123456789\n")
    server = own_server(env: { "TASKER_API_TOKENS_FILE" => tokens })

    error = assert_raises(TaskerCore::Unauthorized) { TaskerCore::Client.new(url: server.url, token: "").workflows }
    assert_equal 401, error.status
    assert_equal "unauthorized", error.problem_type
    assert_kind_of TaskerCore::ClientError, error
    wrong = TaskerCore::Client.new(url: server.url, token: "wrong-token")
    assert_raises(TaskerCore::Unauthorized) { wrong.submit("pipeline", {}) }
    assert_raises(TaskerCore::Unauthorized) { wrong.get(1) }

    right = TaskerCore::Client.new(url: server.url, token: "secret-token-0123456789")
    assert_equal WORKFLOWS.keys.sort, right.workflows.map(&:name).sort
    handle = right.submit("pipeline", {})
    assert handle.created?
    assert_equal handle.id, right.list.first.task_id
    refute_match(/secret-token/, right.inspect)
    # A token read from a file ends in a line break: not the token's.
    assert TaskerCore::Client.new(url: server.url, token: "secret-token-0123456789\n").workflows.any?
    # One with a line break inside goes into no header: refused when the
    # client is made, naming the setting, never quoting the token.
    bad = assert_raises(TaskerCore::ConfigError) do
      TaskerCore::Client.new(url: server.url, token: "secret-token\r\nX-Injected: 1")
    end
    assert_match(/api_token.*a line break/, bad.message)
    refute_match(/secret-token/, bad.message)
    assert_misuse(TypeError) { TaskerCore::Client.new(url: server.url, token: 5) }

    with_env("TASKER_API_URL" => server.url, "TASKER_API_TOKEN" => "secret-token-0123456789") do
      from_env = TaskerCore::Client.new
      assert_equal server.url, from_env.url
      assert_equal handle.id, from_env.get(handle.id).task_id
      assert_raises(TaskerCore::Unauthorized) { TaskerCore::Client.new(token: "").get(handle.id) }
    end
  end

  def test_config_from_environment_file_and_arguments
    url = shared.url
    port = URI(url).port
    with_env("TASKER_API_URL" => "#{url}/", "TASKER_API_TOKEN" => nil, "TASKER_API_LISTEN" => nil) do
      c = TaskerCore::Client.new
      assert_equal url, c.url
      assert_equal WORKFLOWS.keys.sort, c.workflows.map(&:name).sort
      assert_equal "http://127.0.0.1:1", TaskerCore::Client.new(url: "http://127.0.0.1:1").url, "arguments win"
    end
    with_env("TASKER_API_URL" => nil, "TASKER_API_LISTEN" => "0.0.0.0:#{port}") do
      assert_equal "http://127.0.0.1:#{port}", TaskerCore::Client.new.url, "0.0.0.0 is reached on loopback"
    end
    path = File.join(@tmp, "zeromq.yaml")
    File.write(path, "test:\n  api_url: #{url}\n  api_token: from-file\n")
    c = TaskerCore::Client.from_config(path, env: "test")
    assert_equal url, c.url
    assert_match(/token=\[hidden\]/, c.inspect)
    refute_match(/from-file/, c.inspect)
    refute_match(/from-file/, TaskerCore::Config.load(path, env: "test").inspect)
    assert_equal "http://127.0.0.1:9999/tasker", TaskerCore::Client.new(url: "127.0.0.1:9999/tasker/", token: "").url

    # https:// is for a TLS-terminating proxy; other schemes are refused.
    assert_equal "https://tasks.example.com", TaskerCore::Client.new(url: "https://tasks.example.com/", token: "").url
    assert_equal "https://tasks.example.com:8443/tasker",
                 TaskerCore::Client.new(url: "https://tasks.example.com:8443/tasker", token: "").url
    error = assert_raises(TaskerCore::ConfigError) { TaskerCore::Client.new(url: "ftp://127.0.0.1:21") }
    assert_match(%r{https://HOST\[:PORT\] for a TLS proxy}, error.message)
    assert_raises(TaskerCore::ConfigError) { TaskerCore::Client.new(url: "http://user@127.0.0.1:21") }
    with_env("TASKER_API_URL" => "https://tasks.example.com") do
      assert_equal "https://tasks.example.com", TaskerCore::Client.new(token: "").url
    end
    with_env("TASKER_API_URL" => "ftp://tasks.example.com") do
      assert_raises(TaskerCore::ConfigError) { TaskerCore::Client.new }
    end
  end

  # `tasker serve` behind a TLS-terminating proxy (protocol/CLIENT.md §1):
  # an https:// URL works once the proxy's certificate is trusted (through
  # SSL_CERT_FILE, as a private CA would be); a certificate nobody vouches
  # for fails the call like an unreachable server, saying why.
  def test_https_through_a_tls_proxy_checks_the_certificate
    tokens = File.join(@tmp, "tokens.yaml")
    File.write(tokens, "app: https-only-token-0123456789\n")
    server = own_server(env: { "TASKER_API_TOKENS_FILE" => tokens })
    server.start_workers(1, wait: false)
    proxy = TlsProxy.new(URI(server.url))
    url = "https://localhost:#{proxy.port}"
    token = "https-only-token-0123456789"

    with_env("SSL_CERT_FILE" => nil, "SSL_CERT_DIR" => nil) do
      untrusted = TaskerCore::Client.new(url: url, token: token)
      started = monotonic
      error = assert_raises(TaskerCore::ServerUnavailable) { untrusted.workflows }
      assert_operator monotonic - started, :>=, 2.3, "retried like no answer"
      assert_includes error.message, url
      assert_includes error.message, "certificate was not trusted"
      assert_includes error.message, "SSL_CERT_FILE"
      assert_includes error.message, "(5 tries)"
      assert_kind_of OpenSSL::SSL::SSLError, error.cause.cause

      error = assert_raises(TaskerCore::ServerUnavailable) { untrusted.submit("pipeline", {}) }
      assert_match(/not created/, error.message) # the handshake failed: nothing was sent
      assert_equal 0, proxy.handshakes
    end

    ca = File.join(@tmp, "proxy-ca.pem")
    File.write(ca, proxy.cert_pem)
    with_env("SSL_CERT_FILE" => ca) do
      c = TaskerCore::Client.new(url: url, token: token)
      assert_equal url, c.url
      assert_equal WORKFLOWS.keys.sort, c.workflows.map(&:name).sort
      handle = c.submit("pipeline", { "tls" => true }, idempotency_key: "tls-1")
      assert handle.created?
      assert_equal handle.id, c.get(handle.id).task_id
      task = c.wait(handle.id, timeout: 30)
      assert task.complete?, task.inspect
      assert_equal({ "tls" => true }, task.step("fetch").output["task_context"])
      assert_raises(TaskerCore::Unauthorized) { TaskerCore::Client.new(url: url, token: "").workflows }
      c.close
    end
    assert_operator proxy.handshakes, :>=, 2
  ensure
    proxy&.close
  end

  # A context is a JSON object: anything else is refused before any request
  # (nobody listens at the URL, so a request would be a ServerUnavailable),
  # naming where, rather than sent as its #to_s.
  def test_a_context_that_is_not_json_data_is_an_argument_error_before_any_request
    c = TaskerCore::Client.new(url: "http://127.0.0.1:#{free_port}", token: "")
    error = assert_misuse(ArgumentError) { c.submit("audit", [1, 2]) }
    assert_equal "context: expected a Hash (a JSON object) or nil, got [1, 2] (Array)", error.message
    assert_misuse(ArgumentError) { c.submit("audit", "order 7") }

    error = assert_raises(ArgumentError) { c.submit("audit", { "n" => Object.new }) }
    assert_match(/\Acontext\["n"\]: #<Object:0x\h+> \(Object\) is not JSON data; use a Hash/, error.message)
    # (A context whose keys are all Symbols would look like keywords to rbs's check.)
    error = assert_raises(ArgumentError) { c.submit("audit", { "items" => [1, { at: Time.at(0) }] }) }
    assert_match(/\Acontext\["items"\]\[1\]\[:at\]: .* \(Time\) is not JSON data/, error.message)
    error = assert_raises(ArgumentError) { c.submit("audit", { "x" => Float::NAN }, idempotency_key: "k") }
    assert_equal 'context["x"]: NaN has no JSON form (JSON numbers are finite)', error.message
    error = assert_raises(ArgumentError) { c.submit("audit", { "m" => { 1 => "one" } }) }
    assert_equal 'context["m"]: key 1 (Integer) is not a String or Symbol (JSON keys are strings)', error.message
    error = assert_raises(ArgumentError) { c.submit("audit", { "s" => [(+"ok \xff").force_encoding("UTF-8")] }) }
    assert_equal 'context["s"][0]: string "ok \xFF" (UTF-8) is not valid UTF-8 text (JSON strings are Unicode)',
                 error.message
    error = assert_raises(ArgumentError) { c.submit("audit", { "\xfe".b => 1 }) }
    assert_match(/\Acontext: key: string "\\xFE" \(ASCII-8BIT\) is not valid UTF-8 text/, error.message)
    cyclic = { "items" => [] }
    cyclic["items"] << cyclic
    error = assert_raises(ArgumentError) { c.submit("audit", cyclic) }
    assert_match(/\Acontext\["items"\]\[0\]: contains itself/, error.message)

    # JSON data gets as far as the request: a submit without key is tried once.
    shared_twice = [1, 2]
    json = { "a" => [1, -2.5, nil, true, false, "s", :sym, "ascii".b, "caf\xE9".dup.force_encoding("ISO-8859-1")],
             b: { "c" => shared_twice, "d" => shared_twice } }
    assert_raises(TaskerCore::ServerUnavailable) { c.submit("audit", json) }
    assert_raises(TaskerCore::ServerUnavailable) { c.submit("audit", nil) }
  end

  def test_server_unavailable_after_the_retries_and_at_once_for_a_submit_without_key
    url = "http://127.0.0.1:#{free_port}"
    log = StringIO.new
    c = TaskerCore::Client.new(url: url, token: "", logger: Logger.new(log, level: Logger::DEBUG))

    started = monotonic
    error = assert_raises(TaskerCore::ServerUnavailable) { c.get(1) }
    elapsed = monotonic - started
    assert_operator elapsed, :>=, 2.3, "4 retries wait 0.2+0.4+0.8+1.6 s (±20%)"
    assert_operator elapsed, :<, 8
    assert_includes error.message, url
    assert_includes error.message, "Connection refused"
    assert_nil error.status
    assert_kind_of Errno::ECONNREFUSED, error.cause
    assert_equal 4, log.string.scan(/retry \d of 4/).size, log.string

    started = monotonic
    error = assert_raises(TaskerCore::ServerUnavailable) { c.submit("pipeline", {}) }
    assert_operator monotonic - started, :<, 0.5, "a submit without idempotency key is tried once"
    assert_match(/not created/, error.message)

    started = monotonic
    assert_raises(TaskerCore::ServerUnavailable) { c.submit("pipeline", {}, idempotency_key: "k1") }
    assert_operator monotonic - started, :>=, 2.3, "a submit with a key is retried"
  end

  # Each try was held for the wait plus 10 s, five times over: against a
  # server whose PostgreSQL store is down, a 3 s wait gave up after most of
  # a minute.
  def test_a_waits_timeout_bounds_it_against_a_server_that_holds_every_request
    server = TCPServer.new("127.0.0.1", 0)
    held = []
    holder = Thread.new { loop { held << server.accept } }
    c = TaskerCore::Client.new(url: "http://127.0.0.1:#{server.addr[1]}", token: "")
    started = monotonic
    error = assert_raises(TaskerCore::ServerUnavailable) { c.wait(1, timeout: 1) }
    elapsed = monotonic - started
    assert_operator elapsed, :>=, 1
    assert_operator elapsed, :<, 1 + 2 + 1, "the deadline, two seconds more at most"
    assert_match(/\Athe tasker server at \S+ did not answer by the wait's deadline \(/, error.message)
    refute_includes error.message, "is tasker serve running"
  ensure
    holder&.kill
    held&.each(&:close)
    server&.close
  end

  def test_an_answer_without_end_is_refused_at_its_limit_not_read_into_memory
    # A server that streamed 2 GB took a client's memory with it.
    server = TCPServer.new("127.0.0.1", 0)
    streamed = 0
    thread = Thread.new do
      socket = server.accept
      socket.readpartial(4096)
      socket.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
      chunk = "100000\r\n#{'7' * (1 << 20)}\r\n"
      while streamed < (1 << 30)
        socket.write(chunk)
        streamed += 1 << 20
      end
    rescue IOError, SystemCallError
      nil
    ensure
      socket&.close
    end
    c = TaskerCore::Client.new(url: "http://127.0.0.1:#{server.addr[1]}", token: "")
    error = assert_raises(TaskerCore::ApiError) { c.get(1) }
    assert_includes error.message, "more than 256 MiB"
    thread.join(10)
    assert_operator streamed, :<, 300 << 20
  ensure
    server&.close
  end

  def test_a_json_answer_that_is_no_task_is_an_api_error
    # Another JSON service behind the URL (a wrong path prefix, a proxy's
    # own page): its `{"hello":"world"}` read as a task had ended, with no
    # status, and a keyed submit "was already started".
    server = TCPServer.new("127.0.0.1", 0)
    thread = Thread.new do
      loop do
        socket = server.accept
        socket.readpartial(65_536)
        body = '{"hello":"world"}'
        socket.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: #{body.bytesize}\r\n" \
                     "Connection: close\r\n\r\n#{body}")
        socket.close
      end
    rescue IOError, SystemCallError
      nil
    end
    c = TaskerCore::Client.new(url: "http://127.0.0.1:#{server.addr[1]}", token: "")
    [-> { c.get(1) }, -> { c.wait(1) }, -> { c.submit("pipeline", {}, idempotency_key: "k") },
     -> { c.cancel(1) }, -> { c.list }].each do |call|
      error = assert_raises(TaskerCore::ApiError, &call)
      assert_match(/unexpected answer to .*\(200\): (task_id: expected an integer|tasks: expected an array)/,
                   error.message)
    end
  ensure
    server&.close
    thread&.join(5)
  end

  def test_a_url_naming_a_zeromq_endpoint_fails_at_once_saying_so
    # What a user gets who copies the orchestrator's endpoint for the API's:
    # a ZeroMQ socket greets and then waits, and each try waited out its read
    # timeout (2.5 minutes for a get).
    url = shared.endpoint.sub("tcp://", "http://")
    c = TaskerCore::Client.new(url: url, token: "", read_timeout: 30)
    [-> { c.get(1) }, -> { c.submit("pipeline", {}) }, -> { c.submit("pipeline", {}, idempotency_key: "z") }]
      .each do |call|
        started = monotonic
        error = assert_raises(TaskerCore::ServerUnavailable, &call)
        assert_operator monotonic - started, :<, 5
        assert_includes error.message, "ZeroMQ endpoint"
        refute_includes error.message, "tries"
      end
    error = assert_raises(TaskerCore::ServerUnavailable) { c.submit("pipeline", {}) }
    assert_includes error.message, "no task was created"
  end

  def test_server_stopped_mid_wait_is_server_unavailable_not_a_hang
    server = own_server(workers: 1)
    c = TaskerCore::Client.new(url: server.url, token: "")
    handle = c.submit("slow", { "sleep_ms" => 60_000 })
    wait_running(c, handle.id, "nap")
    waiter = Thread.new do
      c.wait(handle.id, timeout: 120)
    rescue TaskerCore::ClientError => e
      e
    end
    sleep 0.5
    assert waiter.alive?, "the wait is in progress"
    stopped = monotonic
    server.terminate
    assert waiter.join(30), "the wait did not end within 30s of SIGTERM"
    elapsed = monotonic - stopped
    error = waiter.value
    assert_instance_of TaskerCore::ServerUnavailable, error
    assert_operator elapsed, :<, 15
    assert_includes error.message, server.url
    return unless error.status.nil?

    # Refused after it answered shutting-down: said as a stop, not as a
    # server that may never have run.
    assert_includes error.message, "shut down (it answered shutting-down)"
    refute_includes error.message, "is tasker serve running"
  end

  def test_answers_that_are_not_problem_documents_are_quoted_briefly
    # Stands for a misconfigured reverse proxy in front of the server.
    listener = TCPServer.new("127.0.0.1", 0)
    status_line = "404 Not Found"
    proxy = Thread.new do
      loop do
        socket = listener.accept
        nil while (line = socket.gets) && line != "\r\n"
        body = "<html>#{'x' * 1000}</html>"
        socket.write("HTTP/1.1 #{status_line}\r\nContent-Type: text/html\r\nContent-Length: #{body.bytesize}\r\n" \
                     "Connection: close\r\n\r\n#{body}")
        socket.close
      end
    rescue IOError
      nil
    end
    c = TaskerCore::Client.new(url: "http://127.0.0.1:#{listener.addr[1]}", token: "")
    error = assert_raises(TaskerCore::ApiError) { c.get(1) }
    assert_equal 404, error.status
    assert_nil error.problem_type
    assert_equal({}, error.problem)
    assert_includes error.message, "<html>xxx"
    assert_operator error.message.length, :<, 320, "at most 200 characters of the body"

    status_line = "502 Bad Gateway"
    error = assert_raises(TaskerCore::ServerUnavailable) { c.workflows }
    assert_equal 502, error.status
    assert_kind_of TaskerCore::ApiError, error.cause
    assert_operator error.message.length, :<, 500
  ensure
    listener&.close
    proxy&.kill&.join
  end
end
