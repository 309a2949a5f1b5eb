# frozen_string_literal: true

module TaskerCore
  # The settings shared by the orchestrator and the workers, as loaded by the
  # Rust `tasker_config` crate: one section per environment of a YAML file
  # (`config/zeromq.yaml`), then `TASKER_<KEY>` environment variables, then
  # the overrides given in Ruby. Immutable; every key has a reader.
  #
  # @example
  #   config = TaskerCore::Config.load("config/zeromq.yaml", env: "test", worker_capacity: 4)
  #   config.endpoint        # => "tcp://127.0.0.1:5655"
  #   config.worker_capacity # => 4
  class Config
    # Every configuration key, in file order (from the Rust `tasker_config`).
    KEYS = Native::CONFIG_KEYS.map(&:to_sym).freeze

    # Loads a configuration.
    #
    # @param path [String, nil] the YAML file; nil for the built-in defaults
    # @param env [String, nil] the section (default `TASKER_ENV`, else
    #   `development`); ignored without a file
    # @param overrides [Hash{Symbol=>Object}] keys that win over the file and
    #   the environment variables
    # @return [Config]
    # @raise [ConfigError] naming the file, key or variable at fault
    def self.load(path = nil, env: nil, **overrides)
      new(Native.load_config(path&.to_s, env&.to_s, overrides))
    end

    # @param values [Hash{String=>Object}] a complete configuration
    # @raise [ConfigError] when a key is unknown, missing or invalid
    def initialize(values)
      @values = Native.check_config(values.transform_keys(&:to_s)).freeze
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
    # @param overrides [Hash{Symbol=>Object}]
    # @return [Config]
    # @raise [ConfigError] for an unknown key or a bad value
    def merge(**overrides)
      unknown = overrides.keys - KEYS
      raise ConfigError, "unknown config key `#{unknown.first}`; expected one of #{KEYS.join(', ')}" unless unknown.empty?

      Config.new(@values.merge(overrides.transform_keys(&:to_s)))
    end

    # @return [Hash{String=>Object}] every key and value
    def to_h
      @values.dup
    end

    # @return [String]
    def inspect
      "#<TaskerCore::Config #{@values.map { |k, v| "#{k}=#{v.inspect}" }.join(' ')}>"
    end
  end
end
