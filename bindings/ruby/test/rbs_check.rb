# frozen_string_literal: true

# Checks every call into the gem against its signatures (sig/) at run time,
# with rbs's runtime type checker (RBS::Test, rbs 2.1, a bundled gem of Ruby
# 3.1). Load it before the gem, e.g. for the test suite (test.sh does):
#
#   RUBYOPT="-Ibindings/ruby/test -rrbs_check" ruby ... test/test_worker.rb
#
# Each call to a method that has a signature, in a class or module of
# `TaskerCore` that has one, is checked once it returns: its arguments, the
# block's presence (and, for a block called during the call, its arguments
# and result) and the value returned. A mismatch raises
# `RBS::Test::Tester::TypeError` (an Exception, not a StandardError: it goes
# through `rescue => e`), naming the method, the signature and the value.
#
# Why not rbs's own `rbs/test/setup`: it hooks a class when a
# `class ... end` body of it ends, which never happens for the classes made
# by `Struct.new` (Client::Task, Client::Step, ...) nor for those only the
# extension defines (Native, Native::Runtime). This file hooks every class
# and module under `TaskerCore` that has a signature, each time a body in
# that namespace ends (rbs hooks each method once, when it exists).
#
# It reads rbs's variables: RBS_TEST_TARGET (default `TaskerCore::*`, `*`
# for a namespace, comma-separated), RBS_TEST_SKIP, RBS_TEST_OPT (default:
# `-I <sig/> -r logger -r monitor`), RBS_TEST_LOGLEVEL (default `warn`),
# RBS_TEST_SAMPLE_SIZE (elements of a collection checked, default 100).
# Child processes inherit RUBYOPT, so worker processes a test starts are
# checked too.

require "optparse"
require "shellwords"
require "rbs"
require "rbs/test"
require "rbs/cli"

# The runtime type check of TaskerCore against sig/, once loaded.
module TaskerRbsCheck
  extend RBS::Test::SetupHelper

  SIG_DIR = File.expand_path("../sig", __dir__)
  TARGETS = ENV.fetch("RBS_TEST_TARGET", "TaskerCore::*").split(",").map(&:strip)
  SKIPS = ENV.fetch("RBS_TEST_SKIP", "").split(",").map(&:strip)

  class << self
    attr_reader :tester

    def setup
      RBS.logger_level = ENV.fetch("RBS_TEST_LOGLEVEL", "warn")
      options = RBS::CLI::LibraryOptions.new
      OptionParser.new { |parser| options.setup_library_options(parser) }
                  .parse!(Shellwords.split(ENV.fetch("RBS_TEST_OPT", "-I #{SIG_DIR} -r logger -r monitor")))
      @env = RBS::Environment.from_loader(options.loader).resolve_type_names
      @tester = RBS::Test::Tester.new(env: @env)
      @sample_size = get_sample_size(ENV.fetch("RBS_TEST_SAMPLE_SIZE", ""))
      @name_of = Module.instance_method(:name)
      @trace = TracePoint.trace(:end) { |tp| install_all if in_namespace?(tp.self) }
    end

    # Every class and module under TaskerCore that has a signature.
    def install_all
      return unless Object.const_defined?(:TaskerCore, false)

      each_module(Object.const_get(:TaskerCore)) do |mod, name|
        next unless target?(name) && @env.class_decls.key?(TypeName("::#{name}"))

        @tester.install!(mod, sample_size: @sample_size, unchecked_classes: [])
      end
    end

    private

    def in_namespace?(mod)
      name = @name_of.bind_call(mod)
      name&.start_with?("TaskerCore")
    end

    def target?(name)
      matches = lambda do |pattern|
        pattern.end_with?("*") ? name.start_with?(pattern.chomp("*").chomp("::")) : name == pattern
      end
      TARGETS.any?(&matches) && SKIPS.none?(&matches)
    end

    def each_module(mod, seen = {}, &block)
      name = @name_of.bind_call(mod)
      return if name.nil? || seen[mod]

      seen[mod] = true
      yield mod, name
      mod.constants(false).each do |const|
        next if mod.autoload?(const)

        value = mod.const_get(const, false)
        each_module(value, seen, &block) if value.is_a?(Module) && @name_of.bind_call(value)&.start_with?("#{name}::")
      end
    end
  end
end

TaskerRbsCheck.setup
