# frozen_string_literal: true

require_relative "test_helper"

# Ruby worker processes against the real orchestrator.
class TestProcesses < Minitest::Test
  def test_several_worker_processes_share_a_handler_without_duplicates
    endpoint = free_endpoint
    log = File.join(@tmp, "executions.log")
    3.times do
      spawn_worker(<<~RUBY, endpoint: endpoint)
        worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 4)
        worker.handle("record") do |step|
          File.open(#{log.dump}, "a") { |f| f.flock(File::LOCK_EX); f.puts(step.step_id) }
          sleep 0.002
          { "pid" => Process.pid }
        end
        worker.run
      RUBY
    end
    steps = (1..300).map { |id| step(id, "record") }
    results = dispatch(steps, endpoint: endpoint, workers: 3).results(timeout: 90)
    assert_equal (1..300).to_a, results.keys.sort
    assert(results.values.all? { |r| r["status"] == "completed" }, "every step completed")
    executions = File.readlines(log, chomp: true).map(&:to_i)
    assert_equal (1..300).to_a, executions.sort, "each step ran exactly once"
    pids = results.values.map { |r| r.dig("output", "pid") }.uniq
    assert_operator pids.size, :>=, 2, "the work was shared (#{pids})"
  end

  # Puma's and Unicorn's workers are forks: the child has a copy of a
  # started worker but none of its threads. It said :connected while
  # nothing served, and its #run and #wait never returned.
  def test_a_worker_started_before_a_fork_is_stopped_in_the_child_and_one_started_there_serves
    endpoint = free_endpoint
    pid, out = spawn_worker(<<~RUBY, endpoint: endpoint)
      require "timeout"
      $stdout.sync = true
      parent = TaskerCore::Worker.new(endpoint: ENDPOINT, heartbeat_interval_ms: 200)
      parent.handle("elsewhere") { |_step| nil }
      parent.start
      sleep 0.01 until parent.state == :connected
      child = fork do
        puts "state \#{parent.state} \#{parent.stopped?} \#{parent.wait(0)}"
        begin
          parent.run
        rescue TaskerCore::Error => e
          puts "run refused: \#{e.message}"
        end
        served = Queue.new
        worker = TaskerCore::Worker.new(endpoint: ENDPOINT, heartbeat_interval_ms: 200)
        worker.handle("echo") { |_step| served << true; { "pid" => Process.pid } }
        worker.start
        puts "served \#{Timeout.timeout(20) { served.pop }}"
        worker.stop
        worker.wait(15)
      end
      started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
      Process.wait(child)
      puts "child exited \#{$?.exitstatus} after \#{(Process.clock_gettime(Process::CLOCK_MONOTONIC) - started).round(1)}"
      parent.stop
      puts "parent stopped \#{parent.wait(15)}"
    RUBY
    run = dispatch([step(1, "echo")], endpoint: endpoint, workers: 2)
    assert_equal "state stopped true true", read_line(out)
    refused = read_line(out)
    assert_match(/\Arun refused: run on a Worker started in process \d+, which this process was forked from/, refused)
    assert_includes refused, "after the fork"
    assert_equal "served true", read_line(out)
    assert_equal "completed", run.results.fetch(1)["status"]
    assert_match(/\Achild exited 0 after /, read_line(out))
    assert_equal "parent stopped true", read_line(out)
    assert_predicate wait_exit(pid, timeout: 20), :success?
  end

  def test_a_worker_killed_mid_batch_loses_only_its_steps
    endpoint = free_endpoint
    stuck, stuck_out = spawn_worker(<<~RUBY, endpoint: endpoint)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 2, worker_id: "stuck")
      worker.handle("work") do |step|
        puts "started \#{step.step_id}"
        sleep 60
      end
      worker.run
    RUBY
    spawn_worker(<<~RUBY, endpoint: endpoint)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 4, worker_id: "healthy")
      worker.handle("work") { |step| { "id" => step.step_id } }
      worker.run
    RUBY
    steps = (1..40).map { |id| step(id, "work", metadata: { "timeout_ms" => 30_000 }) }
    run = dispatch(steps, endpoint: endpoint, workers: 2)
    held = [read_line(stuck_out), read_line(stuck_out)].map { |line| Integer(line[/\d+/]) }
    Process.kill("KILL", stuck)
    wait_exit(stuck, timeout: 10)
    results = run.results(timeout: 60)
    assert_equal (1..40).to_a, results.keys.sort, "exactly one result per step"
    held.each do |id|
      result = results.fetch(id)
      assert_equal ["failed", "WorkerLost", true],
                   [result["status"], result.dig("error", "error_type"), result.dig("error", "retryable")], "step #{id}"
    end
    (results.keys - held).each do |id|
      assert_equal ["completed", "healthy"], [results[id]["status"], results[id].dig("metadata", "worker_id")],
                   "step #{id}"
    end
  end

  def test_int_drains_and_exits_zero
    endpoint = free_endpoint
    pid, out = spawn_worker(<<~RUBY, endpoint: endpoint)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 2, threads: 2)
      worker.handle("slow") do |step|
        puts "started \#{step.step_id}"
        sleep 0.5
        { "finished" => step.step_id }
      end
      worker.run
      puts "run returned"
    RUBY
    steps = (1..4).map { |id| step(id, "slow", metadata: { "timeout_ms" => 3000 }) }
    run = dispatch(steps, endpoint: endpoint)
    in_flight = [read_line(out), read_line(out)].map { |line| Integer(line[/\d+/]) }
    signalled_at = monotonic
    Process.kill("INT", pid)
    status = wait_exit(pid, timeout: 10)
    assert_operator monotonic - signalled_at, :<, 2.5, "drained within a couple of seconds"
    assert status.success?, "exit status #{status}"
    assert_equal "run returned", read_line(out)
    results = run.results
    in_flight.each { |id| assert_equal({ "finished" => id }, results.fetch(id)["output"]) }
    (results.keys - in_flight).each do |id|
      refute_equal "completed", results[id]["status"], "step #{id} was not started before INT"
      assert results[id].dig("error", "retryable"), "step #{id} can be retried"
    end
  end

  def test_term_drains_and_exits_zero
    endpoint = free_endpoint
    pid, out = spawn_worker(<<~RUBY, endpoint: endpoint)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 1)
      worker.handle("slow") { |step| puts "started"; sleep 0.3; "ok" }
      worker.run
    RUBY
    run = dispatch([step(1, "slow")], endpoint: endpoint)
    read_line(out)
    Process.kill("TERM", pid)
    assert wait_exit(pid, timeout: 10).success?
    assert_equal "ok", run.results.fetch(1)["output"]
  end

  def test_the_runtimes_last_records_are_logged_before_the_worker_says_it_stopped
    endpoint = free_endpoint
    # Behind a slow logger the "tasker-log" thread held the runtime's records
    # while the worker flushed the rest and said it stopped: they came after
    # "stopped", or never, when the process ended first.
    pid, out = spawn_worker(<<~RUBY, endpoint: endpoint)
      class SlowLogger < Logger
        def add(severity, message = nil, progname = nil, &block)
          sleep 0.3 if message.to_s.start_with?("draining")
          super
        end
      end
      TaskerCore.logger = SlowLogger.new($stdout, level: Logger::DEBUG)
      worker = TaskerCore::Worker.new(endpoint: ENDPOINT, capacity: 1)
      worker.handle("noop") { nil }
      worker.run
      puts "exited run"
    RUBY
    # Waiting for a second worker keeps the orchestrator up meanwhile.
    dispatch([step(1, "noop")], endpoint: endpoint, workers: 2)
    lines = []
    lines << read_line(out) until lines.last&.include?("registered with orchestrator")
    Process.kill("TERM", pid)
    assert wait_exit(pid, timeout: 10).success?
    lines.concat(out.read.lines.map(&:chomp))
    closing = lines.filter_map do |line|
      case line
      when /tasker_worker::connection: draining/ then "draining"
      when /tasker_worker::connection: worker connection closed/ then "closed"
      when /tasker_core: worker \S+ stopped/ then "stopped"
      when "exited run" then line
      end
    end
    assert_equal ["draining", "closed", "stopped", "exited run"], closing, lines.last(30).join("\n")
  end
end
