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

  # The orchestrator refused this worker's connection in the handshake: its
  # CURVE key is not in the orchestrator's `curve_authorized_keys_dir`, the
  # orchestrator requires CURVE and the worker has none, or the other way
  # round. The message says which and what to change; no retry would help,
  # so the worker has stopped. {Worker#run} and {Worker#wait} raise it.
  #
  # @example
  #   begin
  #     worker.run
  #   rescue TaskerCore::WorkerRefused => e
  #     abort e.message # "the orchestrator at tcp://... refused this worker's CURVE key ..."
  #   end
  class WorkerRefused < WorkerError; end

  # Raised by a handler: the step failed, with {#error_type} (default: the
  # class name) and a retryability decided when it is raised. Without
  # `retryable:`, the worker's `default_retryable` decides, as for any other
  # exception. {RetryableError} and {PermanentError} are its subclasses for
  # failures whose kind fixes the retryability.
  #
  # @example Retryability decided at run time
  #   raise TaskerCore::HandlerError.new("rate limited", error_type: "RateLimited",
  #                                      retryable: step.attempt < 3)
  class HandlerError < Error
    # @param message [String]
    # @param error_type [String, nil] reported instead of the class name
    # @param retryable [Boolean, nil] nil: the worker's `default_retryable`
    # @raise [ArgumentError] for an empty `error_type` or a `retryable:`
    #   that is not true, false or nil
    def initialize(message = nil, error_type: nil, retryable: nil)
      unless error_type.nil? || ((error_type.is_a?(String) || error_type.is_a?(Symbol)) && !error_type.empty?)
        raise ArgumentError, "error_type must be a non-empty String, got #{error_type.inspect[0, 80]}"
      end
      unless [true, false, nil].include?(retryable)
        raise ArgumentError, "retryable must be true, false or nil, got #{retryable.inspect[0, 80]}"
      end

      super(message, error_type: error_type)
      @retryable = retryable
    end

    # @return [Boolean, nil] the `retryable:` given; nil leaves it to the
    #   worker's `default_retryable`
    def retryable?
      @retryable
    end
  end

  # Raised by a handler: the step failed and may succeed if tried again
  # (`retryable: true`). Subclass it to report your own `error_type`:
  #
  #   class GatewayBusy < TaskerCore::RetryableError; end
  #   raise GatewayBusy, "try later"          # error_type "GatewayBusy"
  class RetryableError < HandlerError
    # @raise [ArgumentError] for `retryable: false` (use {HandlerError})
    def initialize(message = nil, error_type: nil, retryable: nil)
      if retryable == false
        raise ArgumentError, "a RetryableError is always retryable (#{self.class.name}); " \
                             "to decide at run time, raise HandlerError.new(message, error_type: ..., retryable: ...)"
      end

      super
    end

    # @return [true]
    def retryable?
      true
    end
  end

  # Raised by a handler: the step failed and no retry can fix it
  # (`retryable: false`).
  #
  #   raise TaskerCore::PermanentError, "amount must be positive"
  class PermanentError < HandlerError
    # @raise [ArgumentError] for `retryable: true` (use {HandlerError})
    def initialize(message = nil, error_type: nil, retryable: nil)
      if retryable == true
        raise ArgumentError, "a PermanentError is never retryable (#{self.class.name}); " \
                             "to decide at run time, raise HandlerError.new(message, error_type: ..., retryable: ...)"
      end

      super
    end

    # @return [false]
    def retryable?
      false
    end
  end

  # Base of the errors {Client} raises (the contract's `ClientError`,
  # protocol/CLIENT.md §4). When the server answered with a problem document
  # (RFC 9457), the message is its `detail`, unchanged.
  #
  # @example
  #   begin
  #     client.submit("checkout", order_id: 7)
  #   rescue TaskerCore::UnknownWorkflow => e
  #     e.closest    # => "check_out"
  #   rescue TaskerCore::ClientError => e
  #     warn "#{e.class}: #{e.message} (#{e.status} #{e.problem_type})"
  #   end
  class ClientError < Error
    # @return [Integer, nil] the HTTP status; nil when there was no answer
    attr_reader :status

    # @return [String, nil] the problem's type without
    #   `https://tasker-core.dev/problems/` (e.g. `"task-not-found"`); nil
    #   without a problem document
    attr_reader :problem_type

    # @return [String, nil] the problem's `detail`; nil without one
    attr_reader :detail

    # @return [Hash{String=>Object}] the whole problem document (String
    #   keys; empty without one)
    attr_reader :problem

    # @param message [String]
    # @param status [Integer, nil]
    # @param problem_type [String, nil]
    # @param detail [String, nil]
    # @param problem [Hash, nil]
    def initialize(message = nil, status: nil, problem_type: nil, detail: nil, problem: nil)
      super(message || detail)
      @status = status
      @problem_type = problem_type
      @detail = detail
      @problem = (problem || {}).freeze
    end
  end

  # The request was refused as invalid (problem types `malformed-json`,
  # `invalid-body`, `invalid-parameter`, `unsupported-media-type`,
  # `body-too-large`; 400, 413, 415, 422).
  #
  # @example
  #   client.list(limit: 0)
  #   # raises TaskerCore::ValidationError: limit: expected an integer from 1 to 1000, got `0`
  #   #   (#field == "limit")
  class ValidationError < ClientError
    # @return [String, nil] the request field or query parameter at fault
    def field
      problem["field"]
    end
  end

  # The workflow named is not one the server has loaded (`unknown-workflow`,
  # 422); {#field} is `"workflow"`.
  class UnknownWorkflow < ValidationError
    # @return [Array<String>] the workflows the server has loaded
    def known_workflows
      problem["known_workflows"] || []
    end

    # @return [String, nil] the loaded workflow closest to the name given
    def closest
      problem["closest"]
    end
  end

  # No task has this id (`task-not-found`, 404).
  class TaskNotFound < ClientError
    # @return [Integer, nil]
    def task_id
      problem["task_id"]
    end
  end

  # The idempotency key belongs to a task of another workflow or context
  # (`idempotency-conflict`, 409).
  class IdempotencyConflict < ClientError
    # @return [Integer, nil] the task the key belongs to
    def task_id
      problem["task_id"]
    end
  end

  # Cancelling a task that has ended (`task-ended`, 409).
  class TaskEnded < ClientError
    # @return [Integer, nil]
    def task_id
      problem["task_id"]
    end

    # @return [String, nil] how it ended: `"complete"`, `"failed"` or
    #   `"cancelled"`
    def task_status
      problem["task_status"]
    end
  end

  # The server wants a bearer token and got none or a wrong one
  # (`unauthorized`, 401). Set `api_token` (`TASKER_API_TOKEN`) or pass
  # `token:` to {Client.new}.
  class Unauthorized < ClientError; end

  # No answer (connection refused or reset, a timeout), or a 5xx, left after
  # the retries (protocol/CLIENT.md §5); `shutting-down` (503) is one. The
  # message names the URL and the last cause; {#status} and
  # {#problem_type} are those of the last answer, if there was one, and
  # `cause` is the last exception (an {ApiError} for a 5xx).
  class ServerUnavailable < ClientError; end

  # {Client#wait}'s timeout passed before the task ended (raised by the
  # client, not the server).
  class WaitTimeout < ClientError
    # @return [Client::Task] the task as last seen
    attr_reader :task

    # @param message [String]
    # @param task [Client::Task]
    def initialize(message = nil, task: nil)
      super(message)
      @task = task
    end
  end

  # Any other answer that is not a success: a problem type this client does
  # not know, or a body that is not a problem document (quoted in the
  # message, at most 200 characters).
  class ApiError < ClientError; end

  # The `error_type` values the system itself reports, as constants the
  # native extension exports from Rust (`tasker_protocol::error_types`):
  # `UNKNOWN_HANDLER` ("UnknownHandler"), `SERIALIZATION_ERROR`,
  # `OUTPUT_TOO_LARGE`, `INVALID_STEP`, `INVALID_RESULT`, `TIMED_OUT`,
  # `WORKER_LOST`, `NO_WORKER_FOR_HANDLER`, `SCHEDULE_TIMEOUT`, `ABANDONED`,
  # `STEP_TOO_LARGE`, `EXECUTOR_STOPPED`, `WITHDRAWN`, `PANIC`; and the gem's own
  # `WORKER_INTERRUPTED` (the steps of a chunk whose handler thread was
  # interrupted before running them; retryable).
  module ErrorTypes; end
end
