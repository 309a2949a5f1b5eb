# frozen_string_literal: true

# Shared set-up of the minitest suite: loads the gem from lib/ with the
# extension cargo built into the shared target directory, and runs the real
# orchestrator (`tasker dispatch`) and real worker processes. Every wait has
# a timeout; every child process is killed in teardown.

require "json"
require "minitest/autorun"
require "rbconfig"
require "socket"
require "stringio"
require "timeout"
require "tmpdir"

RUBY_DIR = File.expand_path("..", __dir__)
REPO = File.expand_path("../..", RUBY_DIR)
TARGET_DIR = ENV.fetch("CARGO_TARGET_DIR", File.join(REPO, "target"))
TASKER = ENV.fetch("TASKER_BIN", File.join(TARGET_DIR, "debug", "tasker"))
NATIVE_DIR = File.join(RUBY_DIR, "tmp", "native")

# `require "tasker_core/tasker_core"` must find a file named tasker_core.so.
native_link = File.join(NATIVE_DIR, "tasker_core", "tasker_core.so")
unless File.exist?(native_link)
  require "fileutils"
  FileUtils.mkdir_p(File.dirname(native_link))
  FileUtils.ln_sf(File.join(TARGET_DIR, "debug", "libtasker_core.so"), native_link)
end
$LOAD_PATH.unshift(File.join(RUBY_DIR, "lib"))
$LOAD_PATH.unshift(NATIVE_DIR)
require "tasker_core"

TaskerCore.logger = Logger.new($stderr, level: ENV["TASKER_TEST_LOG"] ? Logger::DEBUG : Logger::WARN)

module TaskerTestHelpers
  # Orchestrator timings for tests: dead workers are noticed in under a second.
  ORCHESTRATOR_ENV = { "TASKER_HEARTBEAT_INTERVAL_MS" => "200", "TASKER_LIVENESS" => "5",
                       "TASKER_SHUTDOWN_TIMEOUT_MS" => "2000", "RUST_LOG" => "warn" }.freeze

  def setup
    super
    @children = []
    @tmp = Dir.mktmpdir("tasker-ruby-test")
  end

  def teardown
    @children.each do |pid|
      Process.kill("KILL", pid)
      Process.wait(pid)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    FileUtils.rm_rf(@tmp) if @tmp
    super
  end

  def free_endpoint
    server = TCPServer.new("127.0.0.1", 0)
    port = server.addr[1]
    server.close
    "tcp://127.0.0.1:#{port}"
  end

  # A running `tasker dispatch`: the batch is sent once `workers` workers
  # are connected; #result waits for its JSON output.
  class Dispatch
    def initialize(pid, stdout, stderr)
      @pid = pid
      @out = Thread.new { stdout.read }
      @err = Thread.new { stderr.read }
    end

    attr_reader :pid

    def result(timeout: 60)
      raise "tasker dispatch did not finish within #{timeout}s" unless @out.join(timeout)

      _, status = Process.wait2(@pid)
      raise "tasker dispatch failed (#{status}): #{@err.value}" unless status.success?

      # Outputs may nest 100 deep (max_json_depth) inside the report.
      JSON.parse(@out.value, max_nesting: false)
    end

    # Results by step id.
    def results(timeout: 60)
      result(timeout: timeout).fetch("results").to_h { |r| [r.fetch("step_id"), r] }
    end
  end

  # `env`: more variables for the orchestrator (e.g. `TASKER_*` settings).
  def dispatch(steps, endpoint:, workers: 1, wait: 30, env: {})
    args = [TASKER, "dispatch", "-", "--endpoint", endpoint, "--workers", workers.to_s, "--wait", wait.to_s]
    in_r, in_w = IO.pipe
    out_r, out_w = IO.pipe
    err_r, err_w = IO.pipe
    pid = Process.spawn(ORCHESTRATOR_ENV.merge(env), *args, in: in_r, out: out_w, err: err_w, chdir: @tmp)
    [in_r, out_w, err_w].each(&:close)
    @children << pid
    in_w.write(JSON.generate("steps" => steps))
    in_w.close
    Dispatch.new(pid, out_r, err_r)
  end

  def step(id, handler, **fields)
    { "step_id" => id, "handler_class" => handler, "task_context" => {},
      "metadata" => { "timeout_ms" => 10_000 } }.merge(fields.transform_keys(&:to_s))
  end

  # An in-process worker, started; stopped and waited for after the block.
  def with_worker(**options)
    worker = TaskerCore::Worker.new(**{ logger: Logger.new(IO::NULL) }.merge(options))
    yield worker
  ensure
    if worker&.state != :idle
      worker.stop
      assert worker.wait(15), "worker did not stop within 15s"
    end
  end

  # A worker in its own Ruby process, running `body` (Ruby code that has
  # `require "tasker_core"` done and `ENDPOINT` set). Its stdout is a pipe
  # the test reads with #read_line.
  def spawn_worker(body, endpoint:, env: {})
    script = File.join(@tmp, "worker-#{@children.size}.rb")
    File.write(script, <<~RUBY)
      $stdout.sync = true
      require "tasker_core"
      TaskerCore.logger = Logger.new($stderr, level: Logger::WARN)
      ENDPOINT = #{endpoint.dump}
      #{body}
    RUBY
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, RbConfig.ruby, "-I", NATIVE_DIR, "-I", File.join(RUBY_DIR, "lib"), script,
                        out: out_w, err: File.join(@tmp, "worker-#{@children.size}.log"), chdir: @tmp)
    out_w.close
    @children << pid
    [pid, out_r]
  end

  def read_line(io, timeout: 30)
    Timeout.timeout(timeout, RuntimeError, "no line from the worker within #{timeout}s") { io.gets&.chomp }
  end

  def wait_exit(pid, timeout:)
    status = Timeout.timeout(timeout, RuntimeError, "process #{pid} did not exit within #{timeout}s") do
      Process.wait2(pid)[1]
    end
    @children.delete(pid)
    status
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Whether this process checks every call into the gem against sig/ (the
  # suite's second run, under test/rbs_check.rb).
  def rbs_checking?
    defined?(TaskerRbsCheck) ? true : false
  end

  # A call a test makes against the signatures on purpose (an unknown config
  # key, a value of the wrong type, a missing block), to see the gem's own
  # error: it must raise `error`, which is returned. Under the runtime type
  # check the signatures must refuse the call too: rbs raises its TypeError,
  # whose cause (under the refusals of the calls it made, if any) is the
  # gem's error.
  def assert_misuse(error, &call)
    raised = assert_raises(error, *(rbs_checking? ? [RBS::Test::Tester::TypeError] : []), &call)
    return raised unless rbs_checking?

    assert_kind_of RBS::Test::Tester::TypeError, raised, "sig/ accepted a call the gem refuses: #{raised.inspect}"
    cause = raised.cause
    cause = cause.cause while cause.is_a?(RBS::Test::Tester::TypeError)
    assert_kind_of error, cause, "the gem's error under rbs's refusal (#{raised.message})"
    cause
  end
end

Minitest::Test.include(TaskerTestHelpers)
