# frozen_string_literal: true

require "monitor"

module TaskerCore
  # Carries the Rust runtime's `tracing` records to {TaskerCore.logger}.
  #
  # The runtime's I/O thread never calls Ruby: records are queued natively
  # and one Ruby thread ("tasker-log") waits for them without the GVL and
  # hands them to the logger, with the Rust module as `progname`.
  module Logging
    # Rust level => Logger severity.
    SEVERITY = {
      "error" => Logger::ERROR, "warn" => Logger::WARN, "info" => Logger::INFO,
      "debug" => Logger::DEBUG, "trace" => Logger::DEBUG
    }.freeze

    @mutex = Mutex.new
    # Held while records are taken and logged; a Monitor, so a logger that
    # flushes does not deadlock.
    @emit = Monitor.new
    @thread = nil

    class << self
      # The Rust level matching a logger's level (`error` when nil).
      # @param logger [Logger, nil]
      # @return [String]
      def level_for(logger)
        return "error" unless logger

        case logger.level
        when Logger::DEBUG then "debug"
        when Logger::INFO then "info"
        when Logger::WARN then "warn"
        else "error"
        end
      end

      # Installs the bridge at the logger's level and starts the forwarding
      # thread (once per process).
      # @return [void]
      def start
        @mutex.synchronize do
          Native.log_install(level_for(TaskerCore.logger))
          @thread = nil unless @thread&.alive?
          @thread ||= Thread.new { forward }.tap do |t|
            t.name = "tasker-log"
            t.report_on_exception = false
          end
          unless @flush_at_exit
            at_exit { flush }
            @flush_at_exit = true
          end
        end
      end

      # Re-reads the logger's level (after {TaskerCore.logger=}).
      # @return [void]
      def refresh
        @mutex.synchronize { Native.log_install(level_for(TaskerCore.logger)) if @thread }
      end

      # Hands every queued record to the logger now, on the calling thread,
      # after any the "tasker-log" thread is handing over (so records keep
      # their order). A worker calls it before it says it stopped, and the
      # process at exit, where the "tasker-log" thread is killed.
      # @return [void]
      def flush
        @emit.synchronize do
          loop do
            records = Native.take_log_records(1024)
            break if records.empty?

            emit(records)
          end
        end
      end

      private

      def forward
        loop do
          next unless Native.wait_for_log_records(nil)

          @emit.synchronize { emit(Native.take_log_records(256)) }
        end
      end

      def emit(records)
        logger = TaskerCore.logger
        return unless logger

        records.each do |level, target, line|
          logger.add(SEVERITY.fetch(level, Logger::INFO), line, target)
        end
      rescue StandardError
        # A failing logger must not take the bridge down; records are lost.
        nil
      end
    end
  end
end
