# frozen_string_literal: true

module TaskerCore
  # Base class of every error this gem raises, and of the errors a handler
  # raises to say how its step failed.
  #
  # A handler error is reported with {#error_type} (by default its class
  # name, without the `TaskerCore::` prefix) and {#retryable?}.
  class Error < StandardError
    # @return [String] the `error_type` reported to the orchestrator
    def error_type
      @error_type || self.class.name.to_s.delete_prefix("TaskerCore::")
    end

    # @return [Boolean, nil] whether a retry may succeed; nil leaves it to
    #   the worker's `default_retryable`
    def retryable?
      nil
    end

    # @param message [String]
    # @param error_type [String, nil] reported instead of the class name
    def initialize(message = nil, error_type: nil)
      super(message)
      @error_type = error_type&.to_s
    end
  end

  # A configuration that cannot be loaded or is invalid (unknown key, bad
  # value, unknown environment, unreadable file). The message names the key.
  class ConfigError < Error; end

  # The worker runtime refused to start or failed (e.g. a bad endpoint).
  class WorkerError < Error; end

  # Raised by a handler: the step failed and may succeed if tried again
  # (`retryable: true`). Subclass it to report your own `error_type`:
  #
  #   class GatewayBusy < TaskerCore::RetryableError; end
  #   raise GatewayBusy, "try later"          # error_type "GatewayBusy"
  class RetryableError < Error
    # @return [true]
    def retryable?
      true
    end
  end

  # Raised by a handler: the step failed and no retry can fix it
  # (`retryable: false`).
  #
  #   raise TaskerCore::PermanentError, "amount must be positive"
  class PermanentError < Error
    # @return [false]
    def retryable?
      false
    end
  end

  # The `error_type` values the system itself reports, as constants the
  # native extension exports from Rust (`tasker_protocol::error_types`):
  # `UNKNOWN_HANDLER` ("UnknownHandler"), `SERIALIZATION_ERROR`,
  # `OUTPUT_TOO_LARGE`, `INVALID_STEP`, `INVALID_RESULT`, `TIMED_OUT`,
  # `WORKER_LOST`, `NO_WORKER_FOR_HANDLER`, `SCHEDULE_TIMEOUT`, `ABANDONED`,
  # `STEP_TOO_LARGE`, `EXECUTOR_STOPPED`, `PANIC`; and the gem's own
  # `WORKER_INTERRUPTED` (the steps of a chunk whose handler thread was
  # interrupted before running them; retryable).
  module ErrorTypes; end
end
