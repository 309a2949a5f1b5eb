# frozen_string_literal: true

module TaskerCore
  # A worker: named handlers served over ZeroMQ by the Rust worker runtime.
  #
  # The runtime (connection, hello, heartbeats, credit, reconnects, drain)
  # runs on its own native thread. Handlers run on a pool of Ruby threads;
  # each thread pulls a chunk of steps, runs them one after the other and
  # sends their results back together.
  #
  # == Capacity and threads
  #
  # `capacity` (default: the config's `worker_capacity`) is what the worker
  # declares to the orchestrator: the most steps it holds at once.
  # `threads` (default: `capacity`, at most {DEFAULT_MAX_THREADS}; never more
  # than `capacity`) is the pool size. Each thread pulls at most
  # `ceil(capacity / threads)` steps at a time, so the pool holds exactly
  # what was declared: with `capacity == threads` every step runs on its own
  # thread; with a larger capacity, steps of one chunk run in turn. These
  # rules are `tasker_worker::policy`'s, shared by every SDK.
  #
  # @example
  #   worker = TaskerCore::Worker.from_config("config/zeromq.yaml")
  #   worker.handle("validate_order") do |step|
  #     raise TaskerCore::PermanentError, "amount must be positive" if step.task_context["amount"] <= 0
  #     { valid: true }
  #   end
  #   worker.register("charge_card", ChargeCardHandler.new)
  #   worker.run # blocks; INT/TERM drain gracefully
  class Worker
    # Most pool threads when `threads` is not given (`tasker_worker::policy`).
    DEFAULT_MAX_THREADS = Native::DEFAULT_MAX_THREADS

    # Results of quick steps wait at most this long (seconds) for their
    # chunk-mates before they are sent.
    FLUSH_AFTER = 0.002

    # `capacity:` is the config key `worker_capacity` under the worker's
    # name for it: given both, neither silently wins.
    CAPACITY_TWICE = "capacity: %p and worker_capacity: %p are the same setting (the steps the worker " \
                     "holds at once): give only one"
    private_constant :CAPACITY_TWICE

    # Backtrace lines of this file start so.
    OWN_FRAMES = "#{__FILE__}:".freeze
    private_constant :OWN_FRAMES

    # @return [Config] the configuration in use
    attr_reader :config
    # @return [Integer] the capacity declared to the orchestrator
    attr_reader :capacity
    # @return [Integer] the number of handler threads
    attr_reader :threads
    # @return [Logger, nil] where this worker's own messages go
    attr_reader :logger

    # A worker configured from a YAML file (see {Config.load}).
    #
    # @param path [String, nil] the config file; nil: built-in defaults
    # @param env [String, nil] its section (default `TASKER_ENV`)
    # @param capacity [Integer, nil] declared capacity (default `worker_capacity`)
    # @param threads [Integer, nil] handler threads
    # @param worker_id [String, nil] stable id (default generated: `ruby-<pid>-<random>`)
    # @param logger [Logger, nil] for the worker's own messages
    # @param overrides [Hash{Symbol=>Object}] config keys, e.g. `endpoint:`
    # @return [Worker]
    # @raise [ConfigError] also when both `capacity:` and `worker_capacity:`
    #   are given
    def self.from_config(path = nil, env: nil, capacity: nil, threads: nil, worker_id: nil, logger: nil, **overrides)
      raise ConfigError, format(CAPACITY_TWICE, capacity, overrides[:worker_capacity]) if
        !capacity.nil? && overrides.key?(:worker_capacity)

      new(config: Config.load(path, env: env, **overrides),
          capacity: capacity, threads: threads, worker_id: worker_id, logger: logger)
    end

    # @param endpoint [String, nil] orchestrator endpoint (`tcp://host:port` or `ipc://path`)
    # @param capacity [Integer, nil] declared capacity (default `worker_capacity`)
    # @param threads [Integer, nil] handler threads (see the class notes)
    # @param worker_id [String, nil] stable id (default generated)
    # @param default_retryable [Boolean, nil] retryability of a handler error
    #   that is not a {RetryableError} or {PermanentError} (default: the
    #   config's `default_retryable`, false unless configured)
    # @param logger [Logger, nil] for the worker's own messages (default {TaskerCore.logger})
    # @param config [Config, nil] base configuration (default: built-in
    #   defaults plus `TASKER_*` variables)
    # @param settings [Hash{Symbol=>Object}] other config keys
    # @raise [ConfigError] for a bad key or value, and when both `capacity:`
    #   and `worker_capacity:` are given (the same setting twice)
    def initialize(endpoint: nil, capacity: nil, threads: nil, worker_id: nil,
                   default_retryable: nil, logger: nil, config: nil, **settings)
      raise ConfigError, format(CAPACITY_TWICE, capacity, settings[:worker_capacity]) if
        !capacity.nil? && settings.key?(:worker_capacity)

      overrides = settings.dup
      overrides[:endpoint] = endpoint if endpoint
      overrides[:default_retryable] = default_retryable unless default_retryable.nil?
      @config = if config
                  overrides.empty? ? config : config.merge(**overrides)
                else
                  Config.load(nil, **overrides)
                end
      @capacity = integer(:capacity, capacity || @config.worker_capacity)
      @threads = Native.handler_threads(@capacity, threads.nil? ? nil : integer(:threads, threads))
      @chunk = Native.chunk_size(@capacity, @threads)
      @worker_id = worker_id&.to_s
      @logger = logger || TaskerCore.logger
      @default_retryable = @config.default_retryable?
      @handlers = {}
      @limits = {}
      @middleware = []
      @mutex = Mutex.new
      @native = nil
      @pool = []
      @fatal = nil
      @signal = nil
      @watcher = nil
      @stopped = false
      @done_mutex = Mutex.new
      @done = ConditionVariable.new
      @forked_from = nil
    end

    # Registers a block as the handler of `name`. The block gets a {Step}
    # and returns the step's output (Hash, Array, String, Integer, Float,
    # true, false, nil; symbols become strings).
    #
    # @param name [String, Symbol] the handler class steps name
    # @param concurrency [Integer, nil] as in {#register}
    # @yieldparam step [Step]
    # @return [self]
    def handle(name, concurrency: nil, &block)
      raise ArgumentError, "handle(#{name.inspect}) needs a block" unless block

      register(name, block, concurrency: concurrency)
    end

    # Registers any object responding to `#call(step)` as the handler of
    # `name`.
    #
    # `concurrency`: at most this many steps of this handler at once on
    # this worker (e.g. a handler calling a rate-limited API); the other
    # handlers use the rest of its capacity. Announced to the orchestrator,
    # which sends no more of its steps while that many are out here. `nil`
    # (default): limited by the capacity only.
    #
    # @example
    #   worker.register("charge_card", ChargeCard.new, concurrency: 2)
    # @param name [String, Symbol]
    # @param callable [#call]
    # @param concurrency [Integer, nil] at least 1
    # @return [self]
    # @raise [ConfigError] when `concurrency` is not an Integer of at least 1
    # @raise [TypeError] when `name` is neither a String nor a Symbol
    def register(name, callable, concurrency: nil)
      unless name.is_a?(String) || name.is_a?(Symbol)
        raise TypeError, "handler name must be a String or Symbol, got #{name.inspect}"
      end

      name = name.to_s
      raise ArgumentError, "handler name must not be empty" if name.empty?
      raise ArgumentError, "handler for #{name.inspect} does not respond to #call" unless callable.respond_to?(:call)

      check_concurrency(name, concurrency)
      @mutex.synchronize do
        raise Error, "cannot add handlers to a started worker" if @native

        if @handlers.key?(name)
          # Allowed (it replaces the first, limit and all), but a copied
          # handler whose name was not changed hides another: say so.
          @logger&.warn("tasker_core") { "handler #{name.inspect} registered again: this one replaces the first" }
        end
        @handlers[name] = callable
        if concurrency.nil?
          @limits.delete(name)
        else
          @limits[name] = concurrency
        end
      end
      self
    end

    # Adds a middleware around every handler call, Sidekiq style: an object
    # whose `call(step)` yields to go on (to the next middleware, at the end
    # the handler) and returns the step's output, usually what `yield`
    # returned. A class is instantiated with the other arguments, as Rack's
    # and Sidekiq's `use`/`add` do.
    #
    # Middleware run in the order they were added, the first outermost, on
    # the handler's thread. What a middleware returns is the step's output
    # (checked as JSON, like a handler's); one that does not yield skips the
    # handler and the rest of the chain. An exception from a middleware or
    # the handler goes out through the middleware around it and fails the
    # step exactly as a handler's exception does.
    #
    # @example Timing every handler
    #   class Timing
    #     def call(step)
    #       started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    #       yield
    #     ensure
    #       METRICS.observe(step.handler_class, Process.clock_gettime(Process::CLOCK_MONOTONIC) - started)
    #     end
    #   end
    #   worker.use(Timing.new)  # or worker.use(Timing)
    #
    # @param middleware [#call, Class] a middleware, or its class
    # @param args arguments of the class's `new`
    # @return [self]
    # @raise [ArgumentError] when it does not respond to #call, or arguments
    #   come with an instance
    # @raise [Error] once the worker has started
    def use(middleware, *args, **kwargs)
      if middleware.is_a?(Class)
        middleware = middleware.new(*args, **kwargs)
      elsif !args.empty? || !kwargs.empty?
        raise ArgumentError, "use(middleware, ...) takes arguments only with a middleware class, for its new"
      end
      unless middleware.respond_to?(:call)
        raise ArgumentError, "middleware #{middleware.inspect[0, 80]} does not respond to #call"
      end

      @mutex.synchronize do
        raise Error, "cannot add middleware to a started worker" if @native

        @middleware << middleware
      end
      self
    end

    # @return [Array<String>] the registered handler names
    def handler_names
      @handlers.keys
    end

    # @return [String, nil] the id announced to the orchestrator (once started)
    def worker_id
      @native ? @native.worker_id : @worker_id
    end

    # @return [Symbol] `:idle` (not started), `:connecting`, `:connected`,
    #   `:draining` or `:stopped`
    def state
      return :stopped if @forked_from

      @native ? @native.state.to_sym : :idle
    end

    # Connects and starts the handler threads; returns at once.
    #
    # @return [self]
    # @raise [Error] when already started or without handlers
    # @raise [WorkerError, ConfigError] when the runtime refuses to start
    def start
      @mutex.synchronize do
        refuse_if_forked("start")
        raise Error, "worker already started" if @native
        raise Error, "no handlers registered: call #handle or #register first" if @handlers.empty?

        @handlers.freeze
        @middleware.freeze
        Logging.start
        @native = Native::Runtime.new(@config.to_h, @handlers.keys, @capacity, @worker_id, @limits)
        @pool = Array.new(@threads) { |i| spawn_thread("tasker-worker-#{i}") { pump } }
        @watcher = spawn_thread("tasker-watch") { watch }
        Worker.started(self)
      end
      @logger&.info("tasker_core") do
        # "connecting", as in Python and Node: the orchestrator may still
        # refuse the hello ("registered" is logged when it takes it).
        curve = @config.curve_server_public_key_file.to_s.empty? ? "" : " with CURVE"
        "worker #{worker_id} connecting to #{@config.endpoint}#{curve}, handlers #{@handlers.keys.join(', ')} " \
          "(capacity #{@capacity}, #{@threads} threads)"
      end
      self
    end

    # Starts (unless started) and blocks until the worker has stopped:
    # after {#stop} from another thread or a handler, or INT/TERM when
    # `trap_signals` (only on the main thread). The first signal drains:
    # steps not yet started go back to the orchestrator, running ones finish
    # (up to `shutdown_timeout_ms`); a second one raises as usual
    # (`Interrupt` / `SignalException`). An exception that ends the wait
    # early stops the worker without waiting for the drain.
    #
    # When the orchestrator refuses the connection (a CURVE key it does not
    # admit, CURVE on one side only), the worker stops at once and this
    # raises {WorkerRefused}, whose message says what to change.
    #
    # A worker runs once: on a stopped one this raises {Error} (make a new
    # worker).
    #
    # @param trap_signals [Boolean]
    # @return [self]
    # @raise [WorkerRefused] when the orchestrator refused the connection
    # @raise [Error] when the worker has stopped already
    # @raise [Exception] what killed a handler thread, if something did
    def run(trap_signals: true)
      refuse_if_forked("run")
      if @native && stopped?
        # Returning at once, as it did, made a supervisor's
        # `loop { worker.run }` spin.
        wait # raises what stopped it, if something did
        raise Error, "run called on a stopped worker; a Worker runs once: make a new one"
      end
      start unless @native
      previous = trap_signals && Thread.current == Thread.main ? install_traps : {}
      begin
        wait
      rescue Exception # rubocop:disable Lint/RescueException
        stop
        raise
      end
      self
    ensure
      previous&.each { |sig, handler| trap(sig, handler || "DEFAULT") }
    end

    # Begins a graceful stop; returns at once. Safe from any thread, from a
    # handler and from a signal trap. Idempotent.
    #
    # @return [self]
    def stop
      @native&.stop unless @forked_from
      self
    end

    # @return [Boolean] whether the worker has stopped and its threads ended
    def stopped?
      return true if @forked_from

      @done_mutex.synchronize { @stopped }
    end

    # Waits for the worker to stop (it stops only after {#stop} or a
    # signal) and its handler threads to end; handlers still running when
    # the runtime gave up on them (`shutdown_timeout_ms`) are killed.
    #
    # @param timeout [Numeric, nil] seconds; nil waits without limit
    # @return [Boolean] true once stopped, false on timeout
    # @raise [ArgumentError] for a negative or NaN timeout
    # @raise [WorkerRefused] when the worker stopped because the
    #   orchestrator refused the connection
    # @raise [Exception] what killed a handler thread, if something did
    def wait(timeout = nil)
      raise Error, "worker not started" unless @native
      return true if @forked_from

      timeout = Native.wait_seconds(timeout)
      deadline = timeout && monotonic + timeout
      @done_mutex.synchronize do
        # The calling thread sleeps in Ruby (not in native code), so it is
        # the one Ruby wakes for signals and trap handlers.
        until @stopped
          left = deadline && deadline - monotonic
          return false if left && left <= 0

          @done.wait(@done_mutex, left)
        end
      end
      raise @fatal if @fatal

      true
    end

    @started = ObjectSpace::WeakMap.new

    class << self
      # @api private
      def started(worker)
        @started[worker] = true
      end

      # Called in the child of a fork: `fork` copies none of a started
      # worker's threads or its connection, so in the child its copy said
      # `:connected` while nothing served, and #run and #wait never
      # returned. Each is marked, and answers as a stopped worker does.
      # @api private
      def forked
        parent = Process.ppid
        @started.each_key { |worker| worker.instance_variable_set(:@forked_from, parent) }
        @started = ObjectSpace::WeakMap.new
        nil
      end
    end

    # Ruby 3.1's hook around every fork (Kernel#fork, Process.fork, and so
    # Puma's and Unicorn's workers).
    module ForkHook
      def _fork
        pid = super
        TaskerCore::Worker.forked if pid.zero?
        pid
      end
    end
    Process.singleton_class.prepend(ForkHook) if Process.respond_to?(:_fork)

    private

    def refuse_if_forked(call)
      return unless @forked_from

      raise Error, "#{call} on a Worker started in process #{@forked_from}, which this process was " \
                   "forked from: its connection and threads stay in that process. Start a Worker in " \
                   "this process after the fork (Puma: in on_worker_boot; Unicorn: in after_fork)"
    end

    # The range rules are Rust's (Native.handler_threads).
    # An Integer, as given: `Integer("8")` would take a String, and
    # `Integer(2.7)` drop the fraction without a word, where the Python and
    # Node SDKs refuse both.
    def integer(name, value)
      return value if value.is_a?(Integer)

      raise ConfigError, "#{name} must be an Integer, got #{value.inspect}"
    end

    # A handler's `concurrency:`: nil, or an Integer from 1 to 2**32 - 1.
    def check_concurrency(name, value)
      return if value.nil?
      return if value.is_a?(Integer) && value.between?(1, 0xFFFF_FFFF)

      raise ConfigError, "handler #{name.inspect}: concurrency must be an Integer of at least 1, got #{value.inspect}"
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end

    def spawn_thread(name, &body)
      Thread.new(&body).tap do |thread|
        thread.name = name
        thread.report_on_exception = false
      end
    end

    def install_traps
      %w[INT TERM].to_h do |sig|
        previous = trap(sig) do
          # Second signal: stop waiting for the drain.
          raise(sig == "INT" ? Interrupt : SignalException.new(sig)) if @signal

          @signal = sig
          stop
          # A trap handler may not take the Logger's lock; a thread may.
          Thread.new { @logger&.info("tasker_core") { "SIG#{sig} received: draining (again to abort)" } }
        end
        [sig, previous]
      end
    end

    # Waits (without the GVL) for the runtime to finish, then for the pool.
    def watch
      native = @native
      nil until native.join(3600)
      # Refused by the orchestrator: the runtime stopped by itself.
      @fatal ||= native.failure
      reap_pool
      Logging.flush
      @logger&.info("tasker_core") { "worker #{native.worker_id} stopped#{": #{@fatal.class}" if @fatal}" }
    ensure
      @done_mutex.synchronize do
        @stopped = true
        @done.broadcast
      end
    end

    def reap_pool
      grace = monotonic + 1.0
      @pool.each do |thread|
        next if thread.join([grace - monotonic, 0].max)

        @logger&.warn("tasker_core") { "killing #{thread.name}: its handler outlived shutdown_timeout_ms" }
        thread.kill
        thread.join(1)
      end
    end

    # One handler thread: pull a chunk, run it, send the results.
    def pump
      native = @native
      chunk = @chunk
      while (steps = native.next_steps(chunk, nil))
        next if steps.empty?

        begin
          run_chunk(native, steps)
          steps = nil
        ensure
          # Interrupted mid-chunk (Thread#kill, an Exception from a handler):
          # the steps not run still get their one answer,
          # ErrorTypes::WORKER_INTERRUPTED, retryable.
          native.abandon(steps, "handler thread interrupted (#{$!&.class || 'killed'})") if steps
        end
      end
    rescue WorkerRefused => e
      # The orchestrator refused the connection: the runtime has stopped by
      # itself (and logged why); #wait raises it.
      @fatal ||= e
    rescue Exception => e # rubocop:disable Lint/RescueException
      # Not a handler's StandardError (those fail their step): e.g. `exit`
      # or NoMemoryError in a handler. Stop the worker and re-raise from #wait.
      @fatal ||= e
      @logger&.error("tasker_core") { "handler thread died: #{e.class}: #{e.message}" }
      native&.stop
    end

    def run_chunk(native, steps)
      if steps.size == 1
        execute(steps[0])
      else
        flushed_at = monotonic
        steps.each do |step|
          execute(step)
          next unless monotonic - flushed_at >= FLUSH_AFTER

          native.complete_many(steps)
          flushed_at = monotonic
        end
      end
      native.complete_many(steps)
    end

    def execute(step)
      handler = @handlers[step.handler_class]
      unless handler
        step._fail(ErrorTypes::UNKNOWN_HANDLER, "this worker has no handler #{step.handler_class.inspect}", false, nil)
        return
      end
      output = @middleware.empty? ? handler.call(step) : call_chain(0, step, handler)
      # An output with no JSON form fails the step (SerializationError,
      # naming the handler), and the runtime logs that as `step failed`:
      # a warning here too said it twice.
      step._succeed(output)
    rescue StandardError, ScriptError => e
      # NotImplementedError is a ScriptError, not a StandardError: without
      # it here, a handler raising it would kill this thread and leave its
      # step unanswered instead of failing it.
      record_error(step, e)
    end

    # The middleware from `index` on, then the handler.
    def call_chain(index, step, handler)
      middleware = @middleware[index]
      return handler.call(step) unless middleware

      middleware.call(step) { call_chain(index + 1, step, handler) }
    end

    def record_error(step, error)
      type = error.respond_to?(:error_type) ? error.error_type.to_s : (error.class.name || error.class.inspect)
      retryable = error.respond_to?(:retryable?) ? error.retryable? : nil
      retryable = @default_retryable if retryable.nil?
      # Without this file's frames (the SDK calling the handler), as the
      # Python and Node SDKs report them.
      backtrace = error.backtrace&.reject { |line| line.start_with?(OWN_FRAMES) }&.first(100)&.map { |line| utf8(line) }
      # The runtime logs the failure (at info, as every SDK's does).
      step._fail(utf8(type), utf8(error.message), retryable ? true : false, backtrace)
    end

    def utf8(text)
      text = text.to_s
      return text if text.encoding == Encoding::UTF_8 && text.valid_encoding?

      text.encode(Encoding::UTF_8, invalid: :replace, undef: :replace)
    end
  end
end
