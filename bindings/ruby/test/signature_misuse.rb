# frozen_string_literal: true

# Calls that break the gem's signatures (sig/), and calls that keep them.
# test_signatures.rb runs this file twice: under the runtime type check
# (test/rbs_check.rb), where every WRONG call must be refused and every
# RIGHT one accepted, and without it, to show what the gem alone does with
# the wrong ones (a few run without complaint: the gem converts the
# value, so only the signatures catch them). No network, no orchestrator.
#
#   ruby -I tmp/native -I lib test/signature_misuse.rb   # one JSON line per call
#
# Each line: {"call", "kind" ("wrong"/"right"), "outcome" ("ok", "refused"
# (by rbs) or the class of the gem's own error), "message"}.

require "json"
require "logger"
require "tasker_core"

TASK_JSON = {
  "task_id" => 7, "workflow" => "signup", "status" => "complete", "cancel_requested" => false,
  "idempotency_key" => nil, "context" => { "email" => "a@example.com" },
  "started_at" => "2026-01-01T00:00:00Z", "finished_at" => "2026-01-01T00:00:01Z", "duration_ms" => 1000,
  "steps" => [{ "step_id" => 1, "name" => "create", "handler" => "create_user", "state" => "completed",
                "outcome" => "completed", "attempts" => 1, "duration_ms" => 5, "worker_id" => "ruby-1",
                "output" => { "id" => 1 }, "error" => nil, "blocked_by" => nil, "next_run_at" => nil,
                "depends_on" => [] }]
}.freeze

def worker
  TaskerCore::Worker.new(endpoint: "tcp://127.0.0.1:5555", capacity: 2, logger: nil)
end

def client
  TaskerCore::Client.new(url: "http://127.0.0.1:1", token: "")
end

WRONG = {
  # The gem accepts these (a message "42"); the signatures do not.
  "PermanentError.new(42)" => -> { TaskerCore::PermanentError.new(42) },
  # A server answering a String id: the report would carry it.
  'Task.from_json("task_id" => "7")' => -> { TaskerCore::Client::Task.from_json(TASK_JSON.merge("task_id" => "7")) },
  # The gem refuses these too, at run time.
  'Worker.new(capacity: "8")' => -> { TaskerCore::Worker.new(capacity: "8", logger: nil) },
  "Worker.new(capacity: 2.7)" => -> { TaskerCore::Worker.new(capacity: 2.7, logger: nil) },
  'register(42, handler)' => -> { worker.register(42, ->(step) { step.task_context }) },
  'Client.new(open_timeout: "5")' => lambda {
    TaskerCore::Client.new(url: "http://127.0.0.1:1", token: "", open_timeout: "5")
  },
  'PermanentError.new(msg, error_type: 42)' => -> { TaskerCore::PermanentError.new("declined", error_type: 42) },
  "Worker.new(endpont: ...)" => -> { TaskerCore::Worker.new(endpont: "tcp://127.0.0.1:5555", logger: nil) },
  'Config.load(worker_capacity: "4")' => -> { TaskerCore::Config.load(nil, worker_capacity: "4") },
  'merge(submit_policy: "sometimes")' => -> { TaskerCore::Config.new({}).merge(submit_policy: "sometimes") },
  "handle(name) without a block" => -> { worker.handle("greet") },
  "register(name, Object.new)" => -> { worker.register("greet", Object.new) },
  "get(7.5)" => -> { client.get(7.5) }
}.freeze

RIGHT = {
  "Worker.new(...)" => lambda {
    TaskerCore::Worker.new(endpoint: "tcp://127.0.0.1:5555", capacity: 8, threads: 2, shutdown_timeout_ms: 500,
                           logger: Logger.new(IO::NULL))
  },
  "handle(name) { |step| ... }" => lambda {
    worker.handle("greet") { |step| { greeting: "hi #{step.task_context['n']}" } }
  },
  "register(:sym, lambda)" => -> { worker.register(:charge, ->(step) { step.previous_results }) },
  "state, handler_names" => -> { [worker.state, worker.handler_names] },
  "Config.load(worker_capacity: 4, submit_policy: :reject)" => lambda {
    TaskerCore::Config.load(nil, worker_capacity: 4, submit_policy: :reject).to_h
  },
  'RetryableError.new(msg, error_type: "RateLimited")' => lambda {
    TaskerCore::RetryableError.new("busy", error_type: "RateLimited").error_type
  },
  "Client.new(url:, token:)" => -> { client.url },
  "Task.from_json" => lambda {
    task = TaskerCore::Client::Task.from_json(TASK_JSON)
    [task.complete?, task.step("create")&.output, task.outputs, task.started_at]
  }
}.freeze

def outcome(call)
  call.call
  ["ok", nil]
rescue Exception => e # rubocop:disable Lint/RescueException
  refused = defined?(RBS::Test::Tester::TypeError) && e.is_a?(RBS::Test::Tester::TypeError)
  [refused ? "refused" : e.class.name, e.message]
end

$stdout.sync = true
{ "wrong" => WRONG, "right" => RIGHT }.each do |kind, calls|
  calls.each do |name, call|
    result, message = outcome(call)
    puts JSON.generate("call" => name, "kind" => kind, "outcome" => result, "message" => message)
  end
end
