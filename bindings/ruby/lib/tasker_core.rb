# frozen_string_literal: true

require "logger"

require_relative "tasker_core/version"
require_relative "tasker_core/errors"

begin
  # Built by ext/tasker_core/extconf.rb on `gem install`; in the repository,
  # bindings/ruby/test.sh links the cargo build onto the load path.
  require "tasker_core/tasker_core"
rescue LoadError => e
  raise LoadError, "tasker_core: the native extension is not built (#{e.message}); " \
                   "install the gem, or run bindings/ruby/test.sh in the repository"
end

require_relative "tasker_core/config"
require_relative "tasker_core/step"
require_relative "tasker_core/logging"
require_relative "tasker_core/worker"
require_relative "tasker_core/client"

# Ruby workers for tasker-core: handlers written in Ruby serve workflow steps
# sent by the tasker orchestrator over ZeroMQ. See {TaskerCore::Worker}. And
# a client of `tasker serve`'s HTTP API, to start and follow tasks from an
# application: {TaskerCore::Client}.
module TaskerCore
  @logger = Logger.new($stderr, level: Logger::INFO)

  class << self
    # Where the Rust runtime's log records and, by default, each worker's
    # messages go. Default: `Logger.new($stderr)` at INFO.
    # @return [Logger, nil]
    attr_reader :logger

    # Sets {logger}; nil silences the runtime. The runtime's level follows
    # the logger's level at the time of this call.
    # @param logger [Logger, nil]
    def logger=(logger)
      @logger = logger
      Logging.refresh
    end
  end
end
