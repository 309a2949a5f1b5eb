# frozen_string_literal: true

require "json"
require "net/http"
require "openssl"
require "uri"

module TaskerCore
  class Client
    # The HTTP side of {Client} (protocol/CLIENT.md §2, §4, §5): Net::HTTP
    # connections kept alive in a pool (one request per connection at a
    # time, so any number of threads can share a transport), the headers,
    # the retries of idempotent calls, and problem documents turned into
    # {ClientError}s. Over HTTPS (a TLS-terminating proxy in front of the
    # server) the certificate and host name are always verified, against
    # OpenSSL's default verify paths (the system's CA certificates, or the
    # bundle `SSL_CERT_FILE` names), read when the transport is made.
    # Internal; use {Client}.
    class Transport
      # A TLS handshake that failed (most often: a certificate that is not
      # trusted); nothing was sent. Its `cause` is the OpenSSL error.
      class TlsFailure < StandardError; end

      # The server answered in ZeroMQ's protocol: the URL names an
      # orchestrator's ZeroMQ endpoint, not its HTTP API. Trying again cannot
      # help. The request may have been read (a ZeroMQ peer takes any bytes as
      # a greeting), but nothing acted on it.
      class NotHttp < StandardError; end

      # Looks at the first byte of a connection's first answer. A ZeroMQ
      # socket greets first, ten bytes starting with 0xFF and no line end,
      # then waits: Net::HTTP waited for a status line until the read
      # timeout, five times over (2.5 minutes for a call). No HTTP answer
      # starts with 0xFF, and the answer is waited for anyway.
      module FirstByteCheck
        # Net::HTTP reads the status line through this.
        def readuntil(...)
          unless @first_byte_checked
            @first_byte_checked = true
            check_first_byte
          end
          super
        end

        private

        def check_first_byte
          socket = io
          # Under TLS the handshake has already failed on such a peer.
          return unless socket.is_a?(BasicSocket)
          raise Net::ReadTimeout, socket unless socket.wait_readable(read_timeout)
          return unless socket.recv_nonblock(1, Socket::MSG_PEEK, exception: false) == "\xFF".b

          raise NotHttp, "it answered in ZeroMQ's protocol, not HTTP: that is an orchestrator's ZeroMQ " \
                         "endpoint; the API is the `api http://...` address tasker serve prints"
        end
      end

      # Net::HTTP whose connections check the first byte ({FirstByteCheck}).
      class Connection < Net::HTTP
        private

        # Net::HTTP's hook, called once the connection (and TLS) is up.
        def on_connect
          @socket.extend(FirstByteCheck)
        end
      end
      private_constant :FirstByteCheck, :Connection

      # Waits before the retries of an idempotent call, in seconds (each
      # ±20% at random): at most 4 retries after the first try.
      RETRY_DELAYS = [0.2, 0.4, 0.8, 1.6].freeze
      # How far past its deadline a call may run while the server does not
      # answer, in seconds: its tries are cut to end by then (CLIENT.md §3).
      DEADLINE_GRACE = 2
      # Most bytes of a request body `tasker serve` takes (`body-too-large`).
      MAX_BODY_BYTES = 1 << 20

      # Where problem types live; the rest of `type` is the slug.
      PROBLEM_BASE = "https://tasker-core.dev/problems/"

      # Problem type => error class (CLIENT.md §4); any other is {ApiError}
      # (a 5xx: {ServerUnavailable} once the retries are spent).
      PROBLEM_CLASSES = {
        "malformed-json" => ValidationError, "invalid-body" => ValidationError,
        "invalid-parameter" => ValidationError, "unsupported-media-type" => ValidationError,
        "body-too-large" => ValidationError, "unknown-workflow" => UnknownWorkflow,
        "task-not-found" => TaskNotFound, "idempotency-conflict" => IdempotencyConflict,
        "task-ended" => TaskEnded, "unauthorized" => Unauthorized
      }.freeze

      # Exceptions that mean there was no answer.
      NO_ANSWER = [SystemCallError, IOError, SocketError, Timeout::Error, Net::HTTPBadResponse,
                   Net::ProtocolError, OpenSSL::SSL::SSLError, TlsFailure].freeze

      # Failures to connect: the request was not sent.
      NOT_SENT = [Errno::ECONNREFUSED, Net::OpenTimeout, SocketError, TlsFailure].freeze

      # Most characters of a body quoted in a message.
      MAX_QUOTED = 200

      # Most idle connections kept.
      MAX_IDLE = 16

      # Most bytes of an answer read: a task with every step's output is far
      # smaller. A server that streams without end (hostile, or not tasker)
      # would otherwise take the process's memory.
      MAX_ANSWER_BYTES = 256 << 20

      # @return [String] the base URL, no trailing slash
      attr_reader :base_url

      # @param base_url [String] `http://HOST:PORT[/prefix]` or
      #   `https://HOST[:PORT][/prefix]`, checked
      # @param token [String, nil]
      # @param open_timeout [Numeric] seconds to connect
      # @param read_timeout [Numeric] seconds to wait for an answer (waits
      #   give their own)
      # @param logger [Logger, nil] nil: {TaskerCore.logger} at the time of
      #   each message
      def initialize(base_url, token:, open_timeout:, read_timeout:, logger:)
        @base_url = base_url
        uri = URI.parse(base_url)
        @host = uri.hostname
        @port = uri.port
        @tls = uri.scheme == "https"
        if @tls
          # Its own store, so that SSL_CERT_FILE is read now, not when
          # openssl was loaded (OpenSSL::X509::DEFAULT_CERT_STORE).
          @cert_store = OpenSSL::X509::Store.new
          @cert_store.set_default_paths
        end
        @prefix = uri.path.chomp("/")
        @headers = { "Accept" => "application/json", "User-Agent" => USER_AGENT }
        @headers["Authorization"] = "Bearer #{token}" if token
        @headers.freeze
        @open_timeout = open_timeout
        @read_timeout = read_timeout
        @logger = logger
        @idle = []
        @mutex = Mutex.new
        @pid = Process.pid
      end

      # One call, retried as CLIENT.md §5 says when `idempotent` is true.
      #
      # @param method [Symbol] :get or :post
      # @param path [String] under /v1, e.g. `"/v1/tasks"`
      # @param query [Hash, nil] query parameters (nil values left out)
      # @param body [Hash, nil] sent as JSON
      # @param idempotent [Boolean] whether the call may be retried
      # @param read_timeout [Numeric, nil] nil: the transport's
      # @param deadline [Float, nil] a wait's deadline (CLOCK_MONOTONIC):
      #   no retry starts after it, and each try ends by it and
      #   {DEADLINE_GRACE} more
      # @return [Array(Integer, Object)] the status and the parsed JSON body
      # @raise [ClientError]
      def call(method, path, query: nil, body: nil, idempotent: true, read_timeout: nil, expect: nil,
               deadline: nil)
        target = @prefix + path
        query = query&.compact
        target += "?#{URI.encode_www_form(query)}" if query && !query.empty?
        payload = body && encode(body)
        tries = 0
        # Answered `shutting-down` by an earlier try: a refusal after it is
        # the server gone, not a server never started.
        shut_down = false
        loop do
          tries += 1
          timeout = read_timeout || @read_timeout
          # A server holding each try (a PostgreSQL store down holds a read
          # 10 s) took a 3 s wait most of a minute to give up.
          timeout = [timeout, [deadline + DEADLINE_GRACE - monotonic, 0.05].max].min if deadline
          failure = attempt(method, target, payload, timeout)
          return check_shape(expect, failure, method, target) unless failure.is_a?(Exception)

          shut_down ||= failure.is_a?(ClientError) && failure.problem_type == "shutting-down"
          unless idempotent && tries <= RETRY_DELAYS.size && !failure.is_a?(NotHttp)
            raise unavailable(failure, retried: idempotent, tries: tries, shut_down: shut_down), cause: failure
          end

          delay = RETRY_DELAYS[tries - 1] * rand(0.8..1.2)
          if deadline && monotonic + delay >= deadline
            raise unavailable(failure, retried: true, tries: tries, past_deadline: true, shut_down: shut_down),
                  cause: failure
          end

          log_retry(method, target, failure, tries, delay)
          sleep(delay)
        end
      end

      # Closes the idle connections.
      # @return [void]
      def close
        connections = @mutex.synchronize do
          forget_inherited_connections
          @idle.slice!(0..)
        end
        connections.each { |http| finish(http) }
      end

      private

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end

      def encode(body)
        # Depth is for the server to judge (its `max_json_depth`).
        json = JSON.generate(body, max_nesting: false)
        # Said here, before the upload, as the Python and Node clients do:
        # a server refuses a body much larger than its limit unread.
        if json.bytesize > MAX_BODY_BYTES
          raise ValidationError.new(
            "the body is #{json.bytesize} bytes, larger than the server's limit of " \
            "#{MAX_BODY_BYTES} bytes (1 MiB); nothing was sent",
            problem_type: "body-too-large"
          )
        end
        json
      rescue JSON::GeneratorError => e
        raise ArgumentError, "the request has no JSON form: #{e.message}"
      end

      # [status, json] on success; raises a {ClientError} for a 4xx (and
      # other answers that end the call); returns the exception for no
      # answer or a 5xx (the caller retries or raises ServerUnavailable).
      def attempt(method, target, payload, read_timeout)
        response, text = begin
          exchange(method, target, payload, read_timeout)
        rescue NotHttp, *NO_ANSWER => e
          return e
        end
        status = response.code.to_i
        if text.nil?
          raise ApiError.new("#{method.upcase} #{@base_url}#{target} answered with more than " \
                             "#{MAX_ANSWER_BYTES >> 20} MiB, more than any answer of the API; stopped reading",
                             status: status)
        end
        text.force_encoding(Encoding::UTF_8)
        return [status, parse_success(status, text, method, target)] if (200..299).cover?(status)

        error = error_for(status, text, method, target)
        return error if status >= 500

        raise error
      end

      def exchange(method, target, payload, read_timeout)
        request = (method == :post ? Net::HTTP::Post : Net::HTTP::Get).new(target, @headers)
        if method == :post
          # Net::HTTP sends a body with every POST (empty for a cancel).
          request["Content-Type"] = "application/json"
          request.body = payload || ""
        end
        http = checkout
        reusable = false
        begin
          http.read_timeout = read_timeout
          text = +""
          response = http.request(request) do |answer|
            answer.read_body do |chunk|
              text << chunk
              # Stop reading: the connection is not reused.
              return [answer, nil] if text.bytesize > MAX_ANSWER_BYTES
            end
          end
          reusable = true
          [response, text]
        ensure
          reusable ? checkin(http) : finish(http)
        end
      end

      def checkout
        http = @mutex.synchronize do
          forget_inherited_connections
          @idle.pop
        end
        return http if http

        http = Connection.new(@host, @port)
        http.open_timeout = @open_timeout
        http.write_timeout = @read_timeout
        # This class retries itself, by the contract's rules; Net::HTTP's own
        # retry of idempotent requests would add tries (and a wait's read
        # timeout) it does not count.
        http.max_retries = 0
        return http.start unless @tls

        # Verification cannot be turned off: there is no option for it.
        http.use_ssl = true
        http.verify_mode = OpenSSL::SSL::VERIFY_PEER
        http.verify_hostname = true
        http.cert_store = @cert_store
        begin
          http.start
        rescue OpenSSL::SSL::SSLError => e
          raise TlsFailure, e.message
        end
      end

      # After a fork the child holds its parent's idle connections, the same
      # sockets: both processes wrote on one and read each other's answers
      # (a get returned another task). The child drops them unused, without
      # a close (of TLS, a close would end the parent's session too), and
      # opens its own. Called with the mutex held.
      def forget_inherited_connections
        return if @pid == Process.pid

        @pid = Process.pid
        @idle = []
      end

      def checkin(http)
        keep = @mutex.synchronize { @idle.size < MAX_IDLE && @idle.push(http) }
        finish(http) unless keep
      end

      def finish(http)
        http.finish if http.started?
      rescue IOError, SystemCallError
        nil
      end

      # Another JSON service's answer (a wrong path prefix, a proxy's own
      # page), read as a task, had "ended" with no status: an ApiError, as
      # Python and Node raise.
      def check_shape(expect, answer, method, target)
        status, json = answer
        wrong = case expect
                when :task then not_a_task(json, detail: true)
                when :page
                  tasks = json.is_a?(Hash) && json["tasks"]
                  if tasks.is_a?(Array)
                    tasks.lazy.map { |t| not_a_task(t, detail: false) }.find(&:itself)&.then { |w| "tasks: #{w}" }
                  else
                    "tasks: expected an array"
                  end
                end
        return answer unless wrong

        raise ApiError.new("unexpected answer to #{method.upcase} #{@base_url}#{target} (#{status}): #{wrong}: " \
                           "#{Transport.quote(JSON.generate(json))}", status: status)
      end

      def not_a_task(json, detail:)
        return "expected a task object" unless json.is_a?(Hash)
        return "task_id: expected an integer" unless json["task_id"].is_a?(Integer)
        return "workflow: expected a string" unless json["workflow"].is_a?(String)
        return "status: expected a string" unless json["status"].is_a?(String)
        return "steps: expected an array" if detail && !json["steps"].is_a?(Array)

        nil
      end

      def parse_success(status, text, method, target)
        JSON.parse(text, max_nesting: false, freeze: true)
      rescue JSON::ParserError
        raise ApiError.new("#{method.upcase} #{@base_url}#{target} answered #{status} without JSON: " \
                           "#{Transport.quote(text)}", status: status)
      end

      def error_for(status, text, method, target)
        problem = begin
          JSON.parse(text, max_nesting: false)
        rescue JSON::ParserError
          nil
        end
        unless problem.is_a?(Hash) && problem["type"].is_a?(String) && problem["detail"].is_a?(String)
          klass = status == 401 ? Unauthorized : ApiError
          return klass.new("#{method.upcase} #{@base_url}#{target} answered #{status}: #{Transport.quote(text)}",
                           status: status)
        end
        slug = problem["type"].delete_prefix(PROBLEM_BASE).split("/").last
        PROBLEM_CLASSES.fetch(slug, ApiError).new(problem["detail"], status: status, problem_type: slug,
                                                                     detail: problem["detail"], problem: problem)
      end

      def unavailable(failure, retried:, tries:, past_deadline: false, shut_down: false)
        answered = failure.is_a?(ClientError)
        reason = Transport.describe(failure)
        if failure.is_a?(NotHttp)
          # One try, and nothing acted on it.
          return ServerUnavailable.new("the tasker server at #{@base_url} is not reachable (#{reason})" \
                                       "#{'; no task was created' unless retried}")
        end
        message = if shut_down && !answered
                    +"the tasker server at #{@base_url} shut down (it answered shutting-down) " \
                     "and has not answered since (#{reason})"
                  elsif past_deadline
                    # Silent past a wait's deadline, it may be up and its store down: no hint to start it.
                    state = answered ? "was unavailable until" : "did not answer by"
                    +"the tasker server at #{@base_url} #{state} the wait's deadline (#{reason})"
                  elsif answered
                    +"the tasker server at #{@base_url} is unavailable (#{reason})"
                  else
                    +"the tasker server at #{@base_url} is not reachable (#{reason}); is tasker serve running?"
                  end
        message << if past_deadline
                     " (#{tries} #{tries == 1 ? 'try' : 'tries'})"
                   elsif retried
                     " (#{tries} tries)"
                   elsif NOT_SENT.any? { |klass| failure.is_a?(klass) }
                     " The task was not created (the request could not be sent; a submit without an " \
                       "idempotency_key is tried once)."
                   else
                     " A submit without an idempotency_key is tried once (a second try could start the " \
                       "task twice), so the task may or may not have been created; pass idempotency_key: " \
                       "to make retries safe."
                   end
        message << "; a restarted server carries on with the task: wait again once it is up" if shut_down && !answered
        if answered
          ServerUnavailable.new(message, status: failure.status, problem_type: failure.problem_type,
                                         detail: failure.detail, problem: failure.problem)
        else
          ServerUnavailable.new(message)
        end
      end

      def log_retry(method, target, failure, tries, delay)
        logger = @logger || TaskerCore.logger
        return unless logger

        logger.debug("tasker-client") do
          reason = if failure.is_a?(ClientError)
                     [failure.status, failure.problem_type].compact.join(" ")
                   else
                     Transport.describe(failure)
                   end
          format("%<m>s %<t>s failed (%<r>s); retry %<n>d of %<of>d in %<d>.2f s",
                 m: method.upcase, t: target, r: reason, n: tries, of: RETRY_DELAYS.size, d: delay)
        end
      end

      class << self
        # A body (or anything) in a message: at most {MAX_QUOTED}
        # characters, inspected so that control characters show.
        # @param text [String]
        # @return [String]
        def quote(text)
          text = text.to_s.scrub
          text.length > MAX_QUOTED ? "#{text[0, MAX_QUOTED].inspect}..." : text.inspect
        end

        # Why a try failed, in a few words: why there was no answer, or the
        # 5xx answered.
        # @param error [Exception]
        # @return [String]
        def describe(error)
          case error
          when ClientError
            error.problem_type ? "#{error.status} #{error.problem_type}: #{error.message}" : error.message
          when Net::OpenTimeout then "connect timed out"
          when Net::ReadTimeout then "no answer in time"
          when Net::WriteTimeout then "sending timed out"
          when EOFError then "connection closed without an answer"
          when TlsFailure then tls_failure(error.message)
          when NotHttp then error.message
          when SystemCallError then SystemCallError.new(nil, error.errno).message
          else "#{error.class}: #{quote(error.message)}"
          end
        end

        private

        def tls_failure(message)
          if message.match?(/certificate verify failed|does not match the server certificate/)
            why = message[/certificate verify failed.*|hostname .*/]
            "the server's TLS certificate was not trusted (#{why}); for a private CA, " \
              "name its certificate in SSL_CERT_FILE"
          else
            "TLS handshake failed: #{message}"
          end
        end
      end
    end
  end
end
