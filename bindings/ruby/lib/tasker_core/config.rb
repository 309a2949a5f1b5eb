# frozen_string_literal: true

module TaskerCore
  # The settings shared by the orchestrator and the workers, resolved by the
  # Rust `tasker_config` crate (`TaskerConfig::resolve`, the one resolution
  # every SDK uses): one section per environment of a YAML file
  # (`config/zeromq.yaml`), then `TASKER_<KEY>` environment variables, then
  # the options given in Ruby. A key that is not a config key, in any of the
  # three, is a {ConfigError} naming it and the closest valid one. Immutable;
  # every key has a reader.
  #
  # @example
  #   config = TaskerCore::Config.load("config/zeromq.yaml", env: "test", worker_capacity: 4)
  #   config.endpoint        # => "tcp://127.0.0.1:5655"
  #   config.worker_capacity # => 4
  class Config
    # Every configuration key, in file order: `tasker_config::KEYS`,
    # exported by the native extension (for documentation and the readers;
    # the keys are checked in Rust).
    KEYS = Native::CONFIG_KEYS.map(&:to_sym).freeze

    # Loads a configuration.
    #
    # @param path [String, nil] the YAML file; nil for the built-in defaults
    # @param env [String, nil] the section (default `TASKER_ENV`, else
    #   `development`); ignored without a file
    # @param options [Hash{Symbol=>Object}] config keys that win over the
    #   file and the environment variables
    # @return [Config]
    # @raise [ConfigError] naming the file, key or variable at fault
    def self.load(path = nil, env: nil, **options)
      new(Native.resolve_config(path&.to_s, env&.to_s, nil, options))
    end

    # @param values [Hash{String,Symbol=>Object}] the configuration: config
    #   keys and their values (a key left out takes its built-in default;
    #   neither a file nor `TASKER_*` variables are read)
    # @raise [ConfigError] when a key is unknown or a value invalid
    def initialize(values)
      @values = Native.resolve_config(nil, nil, {}, values).freeze
    end

    KEYS.each do |key|
      name = key.to_s
      define_method(key) { @values.fetch(name) }
    end

    # @return [Boolean] the retryability of a handler error of unknown kind
    def default_retryable?
      @values.fetch("default_retryable")
    end

    # A copy with some keys changed.
    #
    # @param options [Hash{Symbol=>Object}]
    # @return [Config]
    # @raise [ConfigError] for an unknown key or a bad value
    def merge(**options)
      Config.new(@values.merge(options.transform_keys(&:to_s)))
    end

    # Where a client reaches `tasker serve`'s API: `api_url`, else
    # `http://` + `api_listen` with an unspecified address (`0.0.0.0`, `::`)
    # reached on loopback; no trailing slash. Derived in Rust
    # (`TaskerConfig::api_base_url`), as every SDK does.
    #
    # @example
    #   TaskerCore::Config.new("api_listen" => "0.0.0.0:8080").api_base_url # => "http://127.0.0.1:8080"
    # @return [String]
    # @raise [ConfigError] when `api_url` is not `http://HOST:PORT[/prefix]`
    #   or `api_listen` has no usable port
    def api_base_url
      Native.api_base_url(@values)
    end

    # @return [Hash{String=>Object}] every key and value
    def to_h
      @values.dup
    end

    # The token (`api_token`) is shown as `"[hidden]"` when set.
    # @return [String]
    def inspect
      shown = @values.map do |k, v|
        "#{k}=#{k == 'api_token' && !v.to_s.empty? ? '"[hidden]"' : v.inspect}"
      end
      "#<TaskerCore::Config #{shown.join(' ')}>"
    end
  end
end
