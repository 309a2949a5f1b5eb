# frozen_string_literal: true

require "time"

module TaskerCore
  class Client
    # Reading the API's JSON into the report objects: the fields this
    # client knows, others ignored (the server may add some).
    module Parse
      module_function

      # @param value [String, nil] an RFC 3339 timestamp
      # @return [Time, nil]
      def time(value)
        value && Time.iso8601(value)
      end

      # @param json [Hash] a JSON object
      # @param members [Array<Symbol>] the Struct's members
      # @return [Hash{Symbol=>Object}] the members' values (nil when absent)
      def fields(json, members)
        members.to_h { |m| [m, json[m.to_s]] }
      end
    end

    # The status readers {Task} and {TaskSummary} share; `status` is one of
    # `"running"`, `"complete"`, `"failed"`, `"cancelled"`.
    module TaskStatus
      # @return [Integer] {#task_id}
      def id
        task_id
      end

      # @return [Boolean] whether steps are running or will
      def running?
        status == "running"
      end

      # @return [Boolean] whether it has ended (complete, failed or cancelled)
      def ended?
        status != "running"
      end

      # @return [Boolean] whether every step completed
      def complete?
        status == "complete"
      end

      # @return [Boolean] whether a step failed for good
      def failed?
        status == "failed"
      end

      # @return [Boolean] whether it was cancelled before it finished
      def cancelled?
        status == "cancelled"
      end

      # @return [Boolean] whether a cancel was asked for (it may still be
      #   winding down)
      def cancel_requested?
        cancel_requested
      end
    end

    # What went wrong with a step: the error of its latest failed attempt.
    #
    # @!attribute [r] error_type
    #   @return [String] the handler's exception class, or one of the kinds
    #     the system reports ({TaskerCore::ErrorTypes}, e.g. `"TimedOut"`)
    # @!attribute [r] message
    #   @return [String]
    # @!attribute [r] retryable
    #   @return [Boolean] whether trying again may succeed
    # @!attribute [r] backtrace
    #   @return [Array<String>] innermost first; empty when the handler's
    #     language has none
    StepError = Struct.new(:error_type, :message, :retryable, :backtrace, keyword_init: true) do
      # @param json [Hash, nil]
      # @return [StepError, nil]
      def self.from_json(json)
        return nil unless json

        values = Parse.fields(json, members)
        values[:backtrace] ||= []
        new(**values).freeze
      end

      # @return [Boolean]
      def retryable?
        retryable == true
      end

      # @return [String] `"ErrorType: message"`
      def to_s
        "#{error_type}: #{message}"
      end
    end

    # One step of a {Task}.
    #
    # @!attribute [r] step_id
    #   @return [Integer] the id the step's workers see
    # @!attribute [r] name
    #   @return [String] its name in the workflow
    # @!attribute [r] handler
    #   @return [String]
    # @!attribute [r] state
    #   @return [String] `"waiting"`, `"running"`, `"retry_wait"`,
    #     `"completed"`, `"failed"`, `"blocked"` or `"cancelled"`
    # @!attribute [r] outcome
    #   @return [String, nil] how it ended: `"completed"`, `"failed"`,
    #     `"blocked"` or `"cancelled"`; nil while it has not
    # @!attribute [r] attempts
    #   @return [Integer] attempts dispatched
    # @!attribute [r] duration_ms
    #   @return [Integer] from first dispatch to end (0 until both happened)
    # @!attribute [r] worker_id
    #   @return [String, nil] for a running step, the worker it is out at now
    #     (nil while it waits for one); for any other, the worker of its
    #     latest result
    # @!attribute [r] output
    #   @return [Object, nil] the handler's output (parsed JSON, String keys),
    #     once completed
    # @!attribute [r] error
    #   @return [StepError, nil] the latest failed attempt's error
    # @!attribute [r] blocked_by
    #   @return [String, nil] for a blocked step, the failed step upstream
    # @!attribute [r] next_run_at
    #   @return [Time, nil] while waiting out a retry backoff, when the next
    #     attempt is due
    # @!attribute [r] depends_on
    #   @return [Array<String>] the steps it waits for, by name
    Step = Struct.new(:step_id, :name, :handler, :state, :outcome, :attempts, :duration_ms, :worker_id,
                      :output, :error, :blocked_by, :next_run_at, :depends_on, keyword_init: true) do
      # @param json [Hash]
      # @return [Step]
      def self.from_json(json)
        values = Parse.fields(json, members)
        values[:error] = StepError.from_json(values[:error])
        values[:next_run_at] = Parse.time(values[:next_run_at])
        values[:depends_on] = (values[:depends_on] || []).freeze
        new(**values).freeze
      end

      # @return [Integer] {#step_id}
      def id
        step_id
      end

      # @return [Boolean] whether it has ended (it has an {#outcome})
      def ended?
        !outcome.nil?
      end

      # @return [Boolean] whether its handler returned an output
      def completed?
        outcome == "completed"
      end

      # @return [Boolean] whether its last attempt failed for good
      def failed?
        outcome == "failed"
      end

      # @return [Boolean] whether it was not run because a step it depends
      #   on failed
      def blocked?
        outcome == "blocked"
      end

      # @return [Boolean] whether it was not run (or not retried) because the
      #   task was cancelled
      def cancelled?
        outcome == "cancelled"
      end
    end

    # A task and its steps, as `GET /v1/tasks/{id}` reports it (the
    # contract's `TaskDetail`). Frozen, JSON values (`context`, outputs)
    # included.
    #
    # @example
    #   task = client.wait(42, timeout: 60)
    #   task.complete?                       # => true
    #   task.step("fetch").output["total"]   # => 99
    #   task.outputs                         # => {"fetch"=>{...}, "charge"=>{...}}
    #
    # @!attribute [r] task_id
    #   @return [Integer]
    # @!attribute [r] workflow
    #   @return [String]
    # @!attribute [r] status
    #   @return [String] `"running"`, `"complete"`, `"failed"` or `"cancelled"`
    # @!attribute [r] cancel_requested
    #   @return [Boolean] whether a cancel was requested
    # @!attribute [r] idempotency_key
    #   @return [String, nil] the key it was created with
    # @!attribute [r] context
    #   @return [Hash{String=>Object}] the task's context (what handlers see
    #     as `task_context`)
    # @!attribute [r] started_at
    #   @return [Time] when it was created
    # @!attribute [r] finished_at
    #   @return [Time, nil] when it ended
    # @!attribute [r] duration_ms
    #   @return [Integer] from creation to end (or to the answer)
    # @!attribute [r] steps
    #   @return [Array<Step>] in workflow order
    Task = Struct.new(:task_id, :workflow, :status, :cancel_requested, :idempotency_key, :context,
                      :started_at, :finished_at, :duration_ms, :steps, keyword_init: true) do
      # @param json [Hash]
      # @return [Task]
      def self.from_json(json)
        values = Parse.fields(json, members)
        values[:started_at] = Parse.time(values[:started_at])
        values[:finished_at] = Parse.time(values[:finished_at])
        values[:steps] = (values[:steps] || []).map { |s| Step.from_json(s) }.freeze
        values[:cancel_requested] = values[:cancel_requested] == true
        new(**values).freeze
      end

      include TaskStatus

      # @param name [String, Symbol] a step's name in the workflow
      # @return [Step, nil]
      def step(name)
        name = name.to_s
        steps.find { |s| s.name == name }
      end

      # @return [Hash{String=>Object}] the output of each completed step, by
      #   step name
      def outputs
        steps.select(&:completed?).to_h { |s| [s.name, s.output] }
      end

      # @return [Array<Step>] the steps that failed for good
      def failed_steps
        steps.select(&:failed?)
      end
    end

    # A task in a {TaskPage}: no context and no steps, only their counts.
    #
    # @!attribute [r] task_id
    #   @return [Integer]
    # @!attribute [r] workflow
    #   @return [String]
    # @!attribute [r] status
    #   @return [String] `"running"`, `"complete"`, `"failed"` or `"cancelled"`
    # @!attribute [r] cancel_requested
    #   @return [Boolean]
    # @!attribute [r] idempotency_key
    #   @return [String, nil]
    # @!attribute [r] started_at
    #   @return [Time]
    # @!attribute [r] finished_at
    #   @return [Time, nil]
    # @!attribute [r] steps_total
    #   @return [Integer]
    # @!attribute [r] steps_completed
    #   @return [Integer]
    TaskSummary = Struct.new(:task_id, :workflow, :status, :cancel_requested, :idempotency_key, :started_at,
                             :finished_at, :steps_total, :steps_completed, keyword_init: true) do
      # @param json [Hash]
      # @return [TaskSummary]
      def self.from_json(json)
        values = Parse.fields(json, members)
        values[:started_at] = Parse.time(values[:started_at])
        values[:finished_at] = Parse.time(values[:finished_at])
        values[:cancel_requested] = values[:cancel_requested] == true
        new(**values).freeze
      end

      include TaskStatus
    end

    # One page of {Client#list}: tasks, newest first, and the cursor of the
    # next page. Enumerable over its tasks.
    #
    # @example
    #   page = client.list(status: "failed", limit: 20)
    #   page.each { |t| puts "#{t.task_id} #{t.workflow}" }
    #   page = client.list(status: "failed", limit: 20, cursor: page.next_cursor) if page.next_page?
    class TaskPage
      include Enumerable

      # @return [Array<TaskSummary>]
      attr_reader :tasks

      # @return [String, nil] pass as `cursor:` for the next page; nil on the
      #   last page
      attr_reader :next_cursor

      # @param json [Hash]
      # @return [TaskPage]
      def self.from_json(json)
        new(tasks: (json["tasks"] || []).map { |t| TaskSummary.from_json(t) }, next_cursor: json["next_cursor"])
      end

      # @param tasks [Array<TaskSummary>]
      # @param next_cursor [String, nil]
      def initialize(tasks:, next_cursor: nil)
        @tasks = tasks.dup.freeze
        @next_cursor = next_cursor
        freeze
      end

      # @yieldparam task [TaskSummary]
      # @return [Enumerator, self]
      def each(&block)
        return enum_for(:each) { size } unless block

        tasks.each(&block)
        self
      end

      # @return [Integer] tasks in this page
      def size
        tasks.size
      end

      # @return [Boolean]
      def empty?
        tasks.empty?
      end

      # @return [Boolean] whether a next page may hold more tasks
      def next_page?
        !next_cursor.nil?
      end

      # @return [Boolean]
      def last_page?
        next_cursor.nil?
      end

      # @return [String]
      def inspect
        "#<TaskerCore::Client::TaskPage tasks=#{size} next_cursor=#{next_cursor.inspect}>"
      end
    end

    # A workflow the server can run ({Client#workflows}).
    #
    # @!attribute [r] name
    #   @return [String] what {Client#submit} takes
    # @!attribute [r] description
    #   @return [String, nil]
    # @!attribute [r] steps
    #   @return [Array<WorkflowStep>] in workflow order
    Workflow = Struct.new(:name, :description, :steps, keyword_init: true) do
      # @param json [Hash]
      # @return [Workflow]
      def self.from_json(json)
        values = Parse.fields(json, members)
        values[:steps] = (values[:steps] || []).map { |s| WorkflowStep.from_json(s) }.freeze
        new(**values).freeze
      end
    end

    # One step of a {Workflow}.
    #
    # @!attribute [r] name
    #   @return [String]
    # @!attribute [r] handler
    #   @return [String]
    # @!attribute [r] depends_on
    #   @return [Array<String>] the steps it waits for
    WorkflowStep = Struct.new(:name, :handler, :depends_on, keyword_init: true) do
      # @param json [Hash]
      # @return [WorkflowStep]
      def self.from_json(json)
        values = Parse.fields(json, members)
        values[:depends_on] ||= []
        new(**values).freeze
      end
    end

    # What {Client#submit} returns: the task's id, whether this call created
    # it, the task as the server answered, and {#get}, {#wait} and {#cancel}
    # bound to the id.
    #
    # @example
    #   handle = client.submit("order", { "order_id" => 7 }, idempotency_key: "order-7")
    #   handle.created?                  # => false when order-7 was submitted before
    #   task = handle.wait(timeout: 60)  # the report, once the task has ended
    class TaskHandle
      # @return [Integer] the task's id
      attr_reader :id

      # @return [Task] the task as the submit's answer showed it
      attr_reader :task

      # @return [Client]
      attr_reader :client

      # @param client [Client]
      # @param task [Task]
      # @param created [Boolean]
      def initialize(client, task, created:)
        @client = client
        @task = task
        @id = task.task_id
        @created = created
        freeze
      end

      # @return [Boolean] true when this call created the task; false when
      #   its idempotency key returned a task created before
      def created?
        @created
      end

      # @return [Integer] {#id}
      def task_id
        id
      end

      # @return [Task] the task now ({Client#get})
      def get
        client.get(id)
      end

      # Waits for the task to end ({Client#wait}).
      # @param timeout [Numeric, nil] seconds; nil waits as long as it takes
      # @return [Task]
      # @raise [WaitTimeout] carrying the task as last seen
      def wait(timeout: nil)
        client.wait(id, timeout: timeout)
      end

      # Requests the task's cancellation ({Client#cancel}).
      # @return [Task]
      def cancel
        client.cancel(id)
      end

      # @return [String]
      def inspect
        "#<TaskerCore::Client::TaskHandle id=#{id} created=#{@created} status=#{task.status.inspect}>"
      end
    end
  end
end
