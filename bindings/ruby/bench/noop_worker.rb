# frozen_string_literal: true

# The tasker_core no-op worker measured by bench.sh: endpoint and capacity
# come from TASKER_ENDPOINT / TASKER_WORKER_CAPACITY (set by
# `tasker bench-workers`); TASKER_RUBY_THREADS sets the pool size.

require "tasker_core"

TaskerCore.logger = Logger.new($stderr, level: Logger::WARN)
threads = ENV["TASKER_RUBY_THREADS"]&.then { |t| Integer(t) }
worker = TaskerCore::Worker.from_config(nil, threads: threads)
worker.handle("noop") { nil }
worker.run
