# frozen_string_literal: true

require "time"

module TaskerCore
  # One step handed to a handler. Instances are made by the worker; the
  # JSON fields become Ruby objects (Hashes with String keys) the first time
  # they are read.
  #
  # Readers implemented natively: {#step_id}, {#task_id}, {#step_name},
  # {#handler_class}, {#attempt}, {#retry_limit}, {#timeout_ms}.
  #
  # @!method step_id
  #   @return [Integer] the step's id
  # @!method task_id
  #   @return [Integer] the task (workflow instance) it belongs to
  # @!method step_name
  #   @return [String] its name within the workflow
  # @!method handler_class
  #   @return [String] the handler that runs it
  # @!method attempt
  #   @return [Integer] 1 for the first attempt, incremented by each retry
  # @!method retry_limit
  #   @return [Integer] retries the workflow allows after the first attempt
  #     (its max_attempts - 1): the last attempt has attempt > retry_limit
  # @!method timeout_ms
  #   @return [Integer] the step's timeout in milliseconds, counted by the
  #     orchestrator from delivery
  class Step
    # @return [Object] the task's input (usually a Hash with String keys)
    def task_context
      return @task_context if defined?(@task_context)

      @task_context = _task_context
    end

    # @return [Object] handler-specific configuration from the workflow
    def handler_config
      return @handler_config if defined?(@handler_config)

      @handler_config = _handler_config
    end

    # @return [Hash{String=>Object}] outputs of the steps this one depends
    #   on, by step name
    def previous_results
      @previous_results ||= _previous_results
    end

    # @return [Float] the step's timeout in seconds
    def timeout
      timeout_ms / 1000.0
    end

    # @return [Time] when the step attempt was created
    def created_at
      Time.iso8601(created_at_iso8601)
    end

    # @return [Hash{Symbol=>Object}] every field
    def to_h
      {
        step_id: step_id, task_id: task_id, step_name: step_name, handler_class: handler_class,
        handler_config: handler_config, task_context: task_context,
        previous_results: previous_results, attempt: attempt, retry_limit: retry_limit,
        timeout_ms: timeout_ms
      }
    end

    # @return [String]
    def inspect
      "#<TaskerCore::Step step_id=#{step_id} task_id=#{task_id} step_name=#{step_name.inspect} " \
        "handler_class=#{handler_class.inspect} attempt=#{attempt}>"
    end
  end
end
