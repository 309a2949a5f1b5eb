# frozen_string_literal: true

module TaskerCore
  # A client of `tasker serve`'s HTTP API: start tasks from your application
  # (a Rails controller, a Sidekiq job, a script), follow them, cancel them,
  # list them. It follows the contract every tasker-core client follows
  # (protocol/CLIENT.md): the API address and token come from the same
  # configuration as workers (`api_url`, else `api_listen`; `api_token`),
  # errors are {ClientError}s with the server's message, and idempotent calls
  # are retried when the server does not answer.
  #
  # Every call blocks the calling thread (other Ruby threads run meanwhile).
  # A client is thread-safe: share one between Puma or Sidekiq threads; it
  # keeps a small pool of keep-alive connections, one per request in flight.
  # Net::HTTP and json from the standard library are its only needs.
  #
  # @example Start a task and wait for its report
  #   client = TaskerCore::Client.new   # TASKER_API_URL / api_listen, TASKER_API_TOKEN
  #   handle = client.submit("order", { "order_id" => 7 }, idempotency_key: "order-7")
  #   task = handle.wait(timeout: 60)
  #   if task.complete?
  #     puts task.step("charge").output["receipt"]
  #   else
  #     task.failed_steps.each { |s| warn "#{s.name}: #{s.error}" }
  #   end
  #
  # @example Explicit address and token
  #   client = TaskerCore::Client.new(url: "http://tasks.internal:8080", token: ENV.fetch("TASKS_TOKEN"))
  class Client
    # The User-Agent header of every request.
    USER_AGENT = "tasker-core-ruby/#{VERSION} (ruby #{RUBY_VERSION})".freeze

    # Longest single long-poll request of {#wait}, in seconds; a longer wait
    # asks again.
    WAIT_CHUNK = 20

    # Added to a long-poll's `wait` to make its read timeout, in seconds.
    WAIT_READ_MARGIN = 10

    # Seconds to connect before giving up on a try.
    DEFAULT_OPEN_TIMEOUT = 5

    # Seconds to wait for an answer (other than a long-poll's) before giving
    # up on a try.
    DEFAULT_READ_TIMEOUT = 30

    # The statuses a task can be in.
    TASK_STATUSES = %w[running complete failed cancelled].freeze

    # A client configured from a YAML file's section, `TASKER_*` variables
    # and overrides ({Config.load}); `url:` and `token:` win over them.
    #
    # @example
    #   client = TaskerCore::Client.from_config("config/zeromq.yaml", env: "production")
    # @param path [String, nil] the YAML file; nil for the built-in defaults
    # @param env [String, nil] its section (default `TASKER_ENV`, else
    #   development)
    # @param url [String, nil]
    # @param token [String, nil]
    # @param logger [Logger, nil]
    # @param overrides [Hash{Symbol=>Object}] config keys (`api_url:`,
    #   `api_token:`, ...)
    # @return [Client]
    # @raise [ConfigError]
    def self.from_config(path = nil, env: nil, url: nil, token: nil, logger: nil, **overrides)
      new(url: url, token: token, logger: logger, config: Config.load(path, env: env, **overrides))
    end

    # @return [String] the API's base URL, e.g. `"http://127.0.0.1:8080"`
    attr_reader :url

    # @param url [String, nil] the API's base URL, `http://HOST:PORT`, or
    #   `https://HOST[:PORT]` for a TLS-terminating proxy in front of the
    #   server (a path prefix allowed); nil: the configuration's (`api_url`, else `http://`
    #   + `api_listen` with `0.0.0.0`/`::` reached on loopback)
    # @param token [String, nil] the bearer token; nil: the configuration's
    #   `api_token` (empty: none)
    # @param config [Config, nil] nil: {Config.load} (built-in defaults and
    #   `TASKER_*` variables); not loaded when `url` and `token` are both
    #   given
    # @param logger [Logger, nil] where retries are logged (debug); nil:
    #   {TaskerCore.logger}
    # @param open_timeout [Numeric] seconds to connect
    # @param read_timeout [Numeric] seconds to wait for an answer (a
    #   long-poll waits its own `wait` + 10)
    # @raise [ConfigError] for a URL that is not `http://HOST:PORT[/prefix]`
    #   or `https://HOST[:PORT][/prefix]` (another scheme, a bad port)
    #
    # Over HTTPS the proxy's certificate is always verified, host name
    # included, against the system's CA certificates; for a private CA, set
    # `SSL_CERT_FILE` to a bundle that holds it before making the client.
    # There is no way to skip verification: a certificate that is not
    # trusted fails a call like an unreachable server ({ServerUnavailable},
    # after the retries).
    def initialize(url: nil, token: nil, config: nil, logger: nil,
                   open_timeout: DEFAULT_OPEN_TIMEOUT, read_timeout: DEFAULT_READ_TIMEOUT)
      config ||= Config.load if url.nil? || token.nil?
      @url = url.nil? ? config.api_base_url : Native.parse_api_url(url.to_s)
      token = config.api_token if token.nil?
      raise TypeError, "token must be a String, not #{token.class}" unless token.is_a?(String)

      # Checked in Rust as the configuration's api_token is (printable
      # ASCII only: a line break inside one went into the header); the
      # whitespace around it, as a file ends, is not the token's.
      Config.new("api_token" => token) unless token.empty?
      token = token.strip
      @token = token.empty? ? nil : token
      # A timeout of 0 made every call fail as an unreachable server, and a
      # negative or non-numeric one failed at the first call naming no option.
      seconds(open_timeout, name: "open_timeout", positive: true)
      seconds(read_timeout, name: "read_timeout", positive: true)
      @transport = Transport.new(@url, token: @token, open_timeout: open_timeout, read_timeout: read_timeout,
                                       logger: logger)
    end

    # Starts a task.
    #
    # With an `idempotency_key`, submitting again returns the task the key
    # created (`created?` false) instead of starting another, and the call is
    # retried when the server does not answer; without one it is tried once.
    #
    # @example
    #   handle = client.submit("order", { "order_id" => 7 }, idempotency_key: "order-7")
    #   handle.id        # => 42
    #   handle.created?  # => true
    # @param workflow [String, Symbol] a workflow the server has loaded
    # @param context [Hash, nil] the task's context (handlers see it as
    #   `task_context`), a JSON object: a Hash with String or Symbol keys
    #   whose values are Hashes (the same keys), Arrays, Strings, Symbols,
    #   Integers, finite Floats, true, false or nil; Symbols become Strings;
    #   nil is `{}`
    # @param idempotency_key [String, nil] 1 to 255 characters of your choosing
    # @return [TaskHandle]
    # @raise [ArgumentError] before any request, for a context that is not
    #   a Hash or holds anything else, naming where (`context["n"]: ...`)
    # @raise [UnknownWorkflow] with {UnknownWorkflow#closest}
    # @raise [ValidationError] e.g. a key too long
    # @raise [IdempotencyConflict] the key belongs to a task of another
    #   workflow or context
    # @raise [ServerUnavailable]
    def submit(workflow, context = {}, idempotency_key: nil)
      context = {} if context.nil?
      raise ArgumentError, "context: expected a Hash (a JSON object) or nil, got #{brief(context)}" unless
        context.is_a?(Hash)

      check_json(context, "context", {}.compare_by_identity)
      # A Symbol is a name too; anything else goes as it is, for the server
      # to name what is wrong as it does for every client (5 became "5").
      body = { "workflow" => name_or_as_is(workflow), "context" => context }
      body["idempotency_key"] = name_or_as_is(idempotency_key) unless idempotency_key.nil?
      status, json = @transport.call(:post, "/v1/tasks", body: body, idempotent: !idempotency_key.nil?, expect: :task)
      TaskHandle.new(self, Task.from_json(json), created: status == 201)
    end

    # The task as it is now.
    #
    # @param id [Integer] the task's id
    # @return [Task]
    # @raise [TaskNotFound]
    def get(id)
      Task.from_json(@transport.call(:get, task_path(id), expect: :task)[1])
    end

    # Waits until the task has ended and returns its report, long-polling the
    # server (`GET /v1/tasks/{id}?wait=`, at most 20 s per request).
    #
    # @example
    #   task = client.wait(42, timeout: 30)
    #   task.status   # => "complete"
    # @param id [Integer] the task's id
    # @param timeout [Numeric, nil] seconds; nil waits as long as it takes
    # @return [Task] the task, ended
    # @raise [WaitTimeout] when `timeout` passed first; {WaitTimeout#task} is
    #   the task as last seen
    # @raise [TaskNotFound]
    # @raise [ServerUnavailable] when the server stops answering (within the
    #   retries: a few seconds, never a hang), or does not answer by the
    #   deadline and two seconds more
    def wait(id, timeout: nil)
      path = task_path(id)
      deadline = monotonic + seconds(timeout) unless timeout.nil?
      loop do
        chunk = deadline ? (deadline - monotonic).clamp(0, WAIT_CHUNK) : WAIT_CHUNK
        chunk = chunk.round(3)
        json = @transport.call(:get, path, query: { "wait" => format_seconds(chunk) },
                                           read_timeout: chunk + WAIT_READ_MARGIN, expect: :task,
                                           deadline: deadline)[1]
        task = Task.from_json(json)
        return task if task.ended?
        next unless deadline && monotonic >= deadline

        raise WaitTimeout.new("task #{task.task_id} (#{task.workflow}) did not end within " \
                              "#{format_seconds(timeout)} s; it is #{task.status}", task: task)
      end
    end

    # Requests the task's cancellation: no step is dispatched any more, the
    # running ones finish, then the task ends `cancelled` (`complete` when
    # every step it still had was already running and completed).
    #
    # @param id [Integer] the task's id
    # @return [Task] the task as it is now (`cancel_requested?` true)
    # @raise [TaskEnded] when the task had ended ({TaskEnded#task_status})
    # @raise [TaskNotFound]
    def cancel(id)
      Task.from_json(@transport.call(:post, "#{task_path(id)}/cancel", expect: :task)[1])
    end

    # One page of tasks, newest first.
    #
    # @example
    #   page = client.list(status: "failed", workflow: "order", limit: 50)
    #   page.each { |t| puts t.task_id }
    #   client.list(status: "failed", cursor: page.next_cursor) if page.next_page?
    # @param status [String, Symbol, nil] `running`, `complete`, `failed` or
    #   `cancelled`
    # @param workflow [String, nil]
    # @param created_since [Time, String, nil] tasks created at or after it
    #   (a String: RFC 3339)
    # @param limit [Integer, nil] most tasks in the page (1 to 1000; default 50)
    # @param cursor [String, nil] the previous page's {TaskPage#next_cursor}
    # @return [TaskPage]
    # @raise [ValidationError] naming the bad parameter ({ValidationError#field})
    def list(status: nil, workflow: nil, created_since: nil, limit: nil, cursor: nil)
      query = { "status" => status&.to_s, "workflow" => workflow&.to_s,
                "created_since" => timestamp(created_since),
                "limit" => limit&.to_s, "cursor" => cursor&.to_s }
      TaskPage.from_json(@transport.call(:get, "/v1/tasks", query: query, expect: :page)[1])
    end

    # Every task matching the filters, newest first, following the pages.
    #
    # @example
    #   client.each_task(status: "running").count
    # @param status [String, Symbol, nil]
    # @param workflow [String, nil]
    # @param created_since [Time, String, nil]
    # @param page_size [Integer, nil] tasks asked for per page
    # @yieldparam task [TaskSummary]
    # @return [Enumerator<TaskSummary>, self] an Enumerator without a block
    def each_task(status: nil, workflow: nil, created_since: nil, page_size: nil, &block)
      unless block
        return enum_for(:each_task, status: status, workflow: workflow, created_since: created_since,
                                    page_size: page_size)
      end

      cursor = nil
      loop do
        page = list(status: status, workflow: workflow, created_since: created_since, limit: page_size,
                    cursor: cursor)
        page.each(&block)
        break unless (cursor = page.next_cursor)
      end
      self
    end

    # The workflows the server has loaded.
    #
    # @return [Array<Workflow>]
    def workflows
      @transport.call(:get, "/v1/workflows")[1].fetch("workflows").map { |w| Workflow.from_json(w) }
    end

    # Closes the idle keep-alive connections (the client stays usable).
    # @return [void]
    def close
      @transport.close
    end

    # @return [String] the URL, and whether a token is set (never the token)
    def inspect
      "#<TaskerCore::Client #{@url}#{@token ? ' token=[hidden]' : ''}>"
    end
    alias to_s inspect

    private

    def task_path(id)
      id = Integer(id, 10) if id.is_a?(String) && id.match?(/\A\d+\z/)
      unless id.is_a?(Integer) && id.positive?
        raise ArgumentError, "task id: expected a positive Integer (or a String of digits), got #{id.inspect[0, 80]}"
      end

      "/v1/tasks/#{id}"
    end

    # Raises ArgumentError unless `value` is JSON data, naming its place
    # (`context["items"][2]`): what JSON.generate would otherwise write as
    # the value's #to_s. `open` holds the Hashes and Arrays around it.
    def check_json(value, path, open)
      case value
      when nil, true, false, Symbol, Integer then nil
      when String then check_text(value, path)
      when Float
        raise ArgumentError, "#{path}: #{value} has no JSON form (JSON numbers are finite)" unless value.finite?
      when Hash, Array
        raise ArgumentError, "#{path}: contains itself (a cyclic structure has no JSON form)" if open.key?(value)

        open[value] = true
        if value.is_a?(Array)
          value.each_with_index { |item, i| check_json(item, "#{path}[#{i}]", open) }
        else
          value.each do |key, item|
            unless key.is_a?(String) || key.is_a?(Symbol)
              raise ArgumentError, "#{path}: key #{brief(key)} is not a String or Symbol (JSON keys are strings)"
            end

            check_text(key, "#{path}: key") if key.is_a?(String)

            check_json(item, "#{path}[#{key.inspect}]", open)
          end
        end
        open.delete(value)
      else
        raise ArgumentError, "#{path}: #{brief(value)} is not JSON data; use a Hash (String or Symbol keys), " \
                             "Array, String, Symbol, Integer, Float, true, false or nil"
      end
    end

    # Raises ArgumentError unless `text` can be JSON text (Unicode): JSON's
    # generator refused it anyway, but named neither the place nor the
    # string ("partial character in source, but hit end").
    def name_or_as_is(value)
      value.is_a?(Symbol) ? value.to_s : value
    end

    def check_text(text, path)
      unicode = if text.encoding == Encoding::BINARY
                  text.ascii_only?
                else
                  text.valid_encoding? &&
                    (text.encoding == Encoding::UTF_8 || text.encode(Encoding::UTF_8).valid_encoding?)
                end
      return if unicode

      raise ArgumentError, "#{path}: string #{cut_inspect(text)} (#{text.encoding}) is not valid UTF-8 text " \
                           "(JSON strings are Unicode)"
    rescue EncodingError
      raise ArgumentError, "#{path}: string (#{text.encoding}) cannot be converted to UTF-8 (JSON strings are Unicode)"
    end

    # `value`'s #inspect and class, the inspect cut at 80 characters.
    def brief(value)
      "#{cut_inspect(value)} (#{value.class})"
    end

    # `value`'s #inspect, cut at 80 characters.
    def cut_inspect(value)
      text = value.inspect
      text.length > 80 ? "#{text[0, 77]}..." : text
    end

    # `timeout` in seconds as a Float: at least 0 (a wait's, where
    # Infinity is no deadline), or with `positive` above 0 and finite (a
    # connection's).
    def seconds(timeout, name: "timeout", positive: false)
      number = timeout.is_a?(Numeric) && timeout.real? && !(timeout.is_a?(Float) && timeout.nan?)
      return timeout.to_f if number && (positive ? timeout.positive? && timeout.finite? : timeout >= 0)

      raise ArgumentError, "#{name} must be a positive number of seconds, got #{timeout.inspect[0, 40]}" if positive

      raise ArgumentError, "#{name}: expected seconds (a number >= 0) or nil, got #{timeout.inspect}"
    end

    # "20", "1.5", "0.25": what the server's `wait` parameter takes.
    def format_seconds(value)
      value = value.to_f.round(3)
      value == value.floor ? value.to_i.to_s : value.to_s
    end

    def timestamp(value)
      case value
      when nil, String then value
      when Time then value.utc.iso8601(6)
      else
        raise ArgumentError, "created_since: expected a Time or a String, got #{value.inspect}" unless
          value.respond_to?(:to_time)

        value.to_time.utc.iso8601(6)
      end
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end

require_relative "client/types"
require_relative "client/transport"
