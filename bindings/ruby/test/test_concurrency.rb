# frozen_string_literal: true

require_relative "test_helper"

# Per-handler concurrency (`concurrency:` at registration): the limit is
# announced to the real orchestrator (`tasker dispatch`), which never has
# more of that handler's steps out at the worker, while the other handlers
# use the rest of its capacity; bad values are refused at registration.
class TestConcurrency < Minitest::Test
  # How many run at once, and the most that ever did.
  class Gauge
    attr_reader :most

    def initialize
      @mutex = Mutex.new
      @now = 0
      @most = 0
    end

    def run(seconds)
      @mutex.synchronize do
        @now += 1
        @most = [@most, @now].max
      end
      sleep seconds
      @mutex.synchronize { @now -= 1 }
    end
  end

  def test_a_limited_handler_never_runs_above_its_limit
    endpoint = free_endpoint
    limited = Gauge.new
    free = Gauge.new
    with_worker(endpoint: endpoint, capacity: 8, threads: 8) do |worker|
      worker.handle("rate_limited", concurrency: 2) do |_step|
        limited.run(0.1)
        "limited"
      end
      worker.register("free", ->(_step) { free.run(0.3) || "free" })
      worker.start
      steps = (0...16).map { |i| step(i, "rate_limited") } + (0...24).map { |i| step(100 + i, "free") }
      results = dispatch(steps, endpoint: endpoint).results
      assert_equal 40, results.size
      assert(results.values.all? { |r| r["status"] == "completed" }, results.inspect)
    end
    assert_equal 2, limited.most, "a handler limited to 2 ran #{limited.most} at once"
    assert_includes 5..6, free.most, "the unlimited handler ran at most #{free.most} at once beside it"
  end

  def test_registering_again_replaces_the_limit
    endpoint = free_endpoint
    again = Gauge.new
    single = Gauge.new
    log = StringIO.new
    with_worker(endpoint: endpoint, capacity: 4, threads: 4, logger: Logger.new(log)) do |worker|
      worker.register("again", ->(_step) { "x" }, concurrency: 1)
      # Registered again without the option: no limit any more.
      worker.handle("again") { |_step| again.run(0.2) }
      worker.register("single", ->(_step) { single.run(0.1) }, concurrency: 1)
      worker.start
      steps = (0...6).map { |i| step(i, "again") } + (0...4).map { |i| step(100 + i, "single") }
      results = dispatch(steps, endpoint: endpoint).results
      assert(results.values.all? { |r| r["status"] == "completed" }, results.inspect)
    end
    assert_equal 1, single.most
    assert_operator again.most, :>=, 2, "the first registration's limit outlived it"
    assert_equal ['handler "again" registered again: this one replaces the first'],
                 log.string.lines.grep(/WARN/).map { |l| l.split(": ", 2).last.chomp }
  end

  def test_a_bad_concurrency_is_refused_naming_the_handler
    worker = TaskerCore::Worker.new(endpoint: "tcp://127.0.0.1:1", logger: Logger.new(IO::NULL))
    [0, -1, 2**32].each do |bad|
      error = assert_raises(TaskerCore::ConfigError) { worker.register("api", ->(_step) {}, concurrency: bad) }
      assert_match(/handler "api": concurrency must be an Integer of at least 1/, error.message)
      error = assert_raises(TaskerCore::ConfigError) { worker.handle("api", concurrency: bad) { nil } }
      assert_match(/handler "api": concurrency/, error.message)
    end
    [1.5, "2", true].each do |bad|
      error = assert_misuse(TaskerCore::ConfigError) { worker.register("api", ->(_step) {}, concurrency: bad) }
      assert_match(/handler "api": concurrency/, error.message)
    end
    assert_empty worker.handler_names
  end
end
