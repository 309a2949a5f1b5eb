# frozen_string_literal: true

# A plain Ruby tasker worker: ffi-rzmq (Debian's ruby-ffi-rzmq) and JSON
# speaking protocol/SPEC.md directly, without the tasker_core gem. It is the
# baseline of bench.sh: the loop a Ruby developer would write by hand.
#
#   TASKER_ENDPOINT=tcp://127.0.0.1:5555 TASKER_WORKER_CAPACITY=100 ruby plain_worker.rb
#
# Hello (with in_progress), welcome (adopts the interval and liveness),
# heartbeats, step batches run inline by one thread, results batched per
# delivery, unknown_worker -> hello again, goodbye or silence -> reconnect
# with backoff, and on INT/TERM: drain, goodbye, exit 0.

require "ffi-rzmq"
require "json"
require "time"

class PlainWorker
  HEADER = "tasker/1.0"

  def initialize(endpoint:, capacity:, handlers:)
    @endpoint = endpoint
    @capacity = capacity
    @handlers = handlers
    @worker_id = "ruby-plain-#{Process.pid}"
    @context = ZMQ::Context.new
    @interval = 1.0
    @expiry = 3.0
    @backoff = 0.1
    @stopping = false
  end

  def stop
    @stopping = true
  end

  def run
    connect
    until @stopping
      wait = [@last_sent + @interval - now, 0].max
      receive_all if @poller.poll((wait * 1000).ceil).positive?
      heartbeat if now - @last_sent >= @interval
      reconnect if now - @heard > @expiry
    end
    send_message("type" => "drain", "returned" => [])
    send_message("type" => "goodbye", "reason" => "worker stopping")
    @socket.close
    @context.terminate
  end

  private

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  def connect
    @socket = @context.socket(ZMQ::DEALER)
    @socket.setsockopt(ZMQ::LINGER, 1000)
    @socket.setsockopt(ZMQ::RCVHWM, 100_000)
    @socket.setsockopt(ZMQ::SNDHWM, 100_000)
    check(@socket.connect(@endpoint), "connect")
    @poller = ZMQ::Poller.new
    @poller.register_readable(@socket)
    @heard = now
    hello
  end

  def reconnect
    @socket.setsockopt(ZMQ::LINGER, 0)
    @socket.close
    sleep @backoff
    @backoff = [@backoff * 2, 5.0].min
    connect
  end

  def hello
    # Steps run inline and are answered before the next receive, so nothing
    # is ever in progress at a hello.
    send_message("type" => "hello", "worker_id" => @worker_id, "handlers" => @handlers.keys,
                 "capacity" => @capacity, "in_progress" => [], "language" => "ruby", "pid" => Process.pid)
  end

  def heartbeat
    send_message("type" => "heartbeat")
  end

  def send_message(message)
    check(@socket.send_strings([HEADER, JSON.generate(message)], ZMQ::DONTWAIT), "send")
    @last_sent = now
  end

  def check(rc, what)
    return if ZMQ::Util.resultcode_ok?(rc) || ZMQ::Util.errno == ZMQ::EAGAIN

    warn "plain_worker: #{what} failed: #{ZMQ::Util.error_string}"
  end

  def receive_all
    parts = []
    while ZMQ::Util.resultcode_ok?(@socket.recv_strings(parts, ZMQ::DONTWAIT))
      @heard = now
      handle_message(parts)
      parts = []
    end
  end

  def handle_message(parts)
    return unless parts.size == 2 && parts[0].start_with?("tasker/1.")

    message = JSON.parse(parts[1])
    case message["type"]
    when "welcome"
      @orchestrator_id = message["orchestrator_id"]
      @interval = message["heartbeat_interval_ms"] / 1000.0
      @expiry = @interval * message["liveness"]
      @backoff = 0.1
    when "step_batch_request"
      run_batch(message)
    when "goodbye"
      @heard = -Float::INFINITY
    when "protocol_error"
      hello if message["code"] == "unknown_worker"
    end
  rescue JSON::ParserError
    nil
  end

  def run_batch(batch)
    steps = batch["steps"]
    if @stopping
      returned = steps.map do |s|
        { "step_id" => s["step_id"], "attempt" => s["metadata"]["attempt"], "orchestrator_id" => @orchestrator_id }
      end
      send_message("type" => "drain", "returned" => returned)
      return
    end
    results = steps.map { |step| execute(step) }
    # Answered before the next receive: the steps came under the last welcome.
    send_message("type" => "step_batch_response", "batch_id" => batch["batch_id"],
                 "orchestrator_id" => @orchestrator_id, "protocol_version" => "1.0", "results" => results)
  end

  def execute(step)
    started = now
    handler = @handlers[step["handler_class"]]
    result =
      begin
        raise KeyError, "no handler #{step['handler_class']}" unless handler

        { "status" => "completed", "output" => handler.call(step) }
      rescue StandardError => e
        { "status" => "failed",
          "error" => { "message" => e.message, "error_type" => e.class.name, "retryable" => false } }
      end
    result["step_id"] = step["step_id"]
    result["metadata"] = {
      "attempt" => step["metadata"]["attempt"], "worker_id" => @worker_id, "retryable" => false,
      "execution_time_ms" => ((now - started) * 1000).to_i,
      "completed_at" => Time.now.utc.iso8601(6)
    }
    result
  end
end

worker = PlainWorker.new(endpoint: ENV.fetch("TASKER_ENDPOINT", "tcp://127.0.0.1:5555"),
                         capacity: Integer(ENV.fetch("TASKER_WORKER_CAPACITY", "8")),
                         handlers: { "noop" => ->(_step) {} })
%w[INT TERM].each { |sig| trap(sig) { worker.stop } }
worker.run
