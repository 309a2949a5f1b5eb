# frozen_string_literal: true

require_relative "test_helper"
require "open3"
require "rbs"
require "rbs/test"

# The RBS signatures in sig/ (shipped in the gem): `rbs validate`, every
# public method and constant of the gem has a signature and every signature
# a method (constants' values checked against their types), the config-key
# keywords are `Config::KEYS` with the types of the built-in defaults, and
# rbs's runtime type check (test/rbs_check.rb) refuses wrong calls that the
# gem alone lets through. test.sh also runs the worker, client, config,
# native and conformance tests under that check.
class TestSignatures < Minitest::Test
  SIG = File.join(RUBY_DIR, "sig")
  LIBRARIES = %w[logger monitor].freeze
  RBS_CLI = ["-e", 'load Gem.bin_path("rbs", "rbs")', "--"].freeze

  # Methods Struct.new defines on each report class: the writers (the
  # reports are frozen, so they only raise) and the class methods Struct's
  # own signature declares.
  STRUCT_GENERATED = %i[[] members keyword_init? inspect].freeze

  # The keywords of these methods that are not config keys; the ones listed
  # second may also be nil (they default to the configuration's).
  CONFIG_KEYWORD_METHODS = {
    ["::TaskerCore::Config", :singleton, :load] => [%i[env], []],
    ["::TaskerCore::Config", :instance, :merge] => [[], []],
    ["::TaskerCore::Worker", :singleton, :from_config] => [%i[env capacity threads worker_id logger], []],
    ["::TaskerCore::Worker", :instance, :initialize] => [%i[capacity threads worker_id logger config],
                                                         %i[endpoint default_retryable]],
    ["::TaskerCore::Client", :singleton, :from_config] => [%i[env url token logger], []]
  }.freeze

  class << self
    def env
      @env ||= begin
        loader = RBS::EnvironmentLoader.new
        loader.add(path: Pathname(SIG))
        LIBRARIES.each { |lib| loader.add(library: lib) }
        RBS::Environment.from_loader(loader).resolve_type_names
      end
    end

    def builder
      @builder ||= RBS::DefinitionBuilder.new(env: env)
    end
  end

  def env
    self.class.env
  end

  def builder
    self.class.builder
  end

  def type_name(name)
    TypeName(name.start_with?("::") ? name : "::#{name}")
  end

  # Every class and module of the gem, by name.
  def gem_modules(mod = TaskerCore, found = {})
    found[mod.name] = mod
    mod.constants(false).each do |const|
      value = mod.const_get(const, false)
      gem_modules(value, found) if value.is_a?(Module) && value.name&.start_with?("#{mod.name}::")
    end
    found
  end

  # The methods a signature declares in the type itself (not inherited).
  def declared(definition, name)
    definition.methods.select { |_, method| method.implemented_in == name }.keys
  end

  def test_rbs_validate
    out, status = Open3.capture2e(RbConfig.ruby, *RBS_CLI, "-I", SIG, *LIBRARIES.flat_map { |l| ["-r", l] },
                                  "validate", "--silent")
    assert status.success?, "rbs validate failed:\n#{out}"
  end

  def test_every_public_method_has_a_signature_and_every_signature_a_method
    missing = []
    stale = []
    gem_modules.each do |name, mod|
      tn = type_name(name)
      unless env.class_decls.key?(tn)
        missing << "#{name} (no signature)"
        next
      end
      struct = mod.is_a?(Class) && mod < Struct

      instance = declared(builder.build_instance(tn), tn)
      public_methods = mod.public_instance_methods(false)
      public_methods.reject! { |m| m.end_with?("=") } if struct
      missing.concat((public_methods - instance).map { |m| "#{name}##{m}" })
      defined = mod.instance_methods(false) + mod.private_instance_methods(false)
      stale.concat((instance - defined).map { |m| "#{name}##{m}" })

      singleton = declared(builder.build_singleton(tn), tn)
      public_singleton = mod.singleton_methods(false)
      public_singleton -= STRUCT_GENERATED if struct
      missing.concat((public_singleton - singleton).map { |m| "#{name}.#{m}" })
      defined = mod.singleton_methods(false) + mod.singleton_class.private_instance_methods(false)
      # rbs derives `new` from `initialize`.
      defined << :new if mod.is_a?(Class) && mod.private_instance_methods(false).include?(:initialize)
      stale.concat((singleton - defined).map { |m| "#{name}.#{m}" })
    end
    assert_empty missing.map { |m| "no signature in sig/: #{m}" } +
                 stale.map { |m| "a signature in sig/ of a method the gem does not define: #{m}" }
  end

  def test_every_constant_has_a_signature_its_value_matches
    problems = []
    gem_modules.each do |name, mod|
      mod.constants(false).each do |const|
        value = mod.const_get(const, false)
        next if value.is_a?(Module)

        decl = env.constant_decls[type_name("#{name}::#{const}")]
        next problems << "#{name}::#{const} has no signature" unless decl

        check = RBS::Test::TypeCheck.new(self_class: mod, builder: builder, sample_size: nil, unchecked_classes: [])
        problems << "#{name}::#{const} = #{value.inspect} is not a #{decl.decl.type}" unless
          check.value(value, decl.decl.type)
      end
    end
    env.constant_decls.each_key do |const|
      const = const.to_s.delete_prefix("::")
      problems << "#{const} is in sig/, not in the gem" if const.start_with?("TaskerCore::") &&
                                                            !Object.const_defined?(const)
    end
    assert_empty problems
  end

  # The config keys come from Rust (tasker_config::KEYS): a key added there
  # must be added to the keyword lists of sig/ and get a reader there.
  def test_config_keywords_are_the_config_keys_with_their_types
    defaults = TaskerCore::Config.new({}).to_h
    expected = defaults.to_h do |key, value|
      type = if key == "submit_policy" then "::TaskerCore::submit_policy"
             else { String => "::String", Integer => "::Integer", TrueClass => "bool", FalseClass => "bool" }
                    .fetch(value.class)
             end
      [key.to_sym, type]
    end
    assert_equal TaskerCore::Config::KEYS, expected.keys

    CONFIG_KEYWORD_METHODS.each do |(klass, kind, method), (own, nilable)|
      definition = builder.public_send(kind == :singleton ? :build_singleton : :build_instance, type_name(klass))
      types = definition.methods.fetch(method).method_types
      assert_equal 1, types.size, "#{klass} #{method}: one overload"
      fun = types.first.type
      assert_empty fun.required_keywords, "#{klass} #{method}"
      assert_nil fun.rest_keywords, "#{klass} #{method}: no **options, the keys are listed"
      keywords = fun.optional_keywords.transform_values { |param| param.type.to_s }
      own.each { |key| keywords.delete(key) }
      assert_equal expected.keys.sort, keywords.keys.sort, "#{klass} #{method}: the keywords are Config::KEYS"
      expected.each do |key, type|
        type = "#{type}?" if nilable.include?(key)
        assert_equal type, keywords[key], "#{klass} #{method}(#{key}:)"
      end
    end

    readers = builder.build_instance(type_name("TaskerCore::Config")).methods
    defaults.each do |key, value|
      type = readers.fetch(key.to_sym).method_types.first.type.return_type
      check = RBS::Test::TypeCheck.new(self_class: TaskerCore::Config, builder: builder, sample_size: nil,
                                       unchecked_classes: [])
      assert check.value(value, type), "Config##{key}: #{value.inspect} is not a #{type}"
      assert_equal expected[key.to_sym], type.to_s, "Config##{key}" unless key == "submit_policy"
    end
  end

  def run_misuse(env = {})
    script = File.join(__dir__, "signature_misuse.rb")
    out, err, status = Open3.capture3(env, RbConfig.ruby, "-I", NATIVE_DIR, "-I", File.join(RUBY_DIR, "lib"), script)
    assert status.success?, "signature_misuse.rb failed:\n#{err}"
    out.lines.map { |line| JSON.parse(line) }
  end

  # Wrong calls, some of which the gem lets through, refused by rbs's
  # runtime check; right calls accepted.
  def test_the_runtime_check_refuses_wrong_calls
    checked = run_misuse("RUBYOPT" => "-I#{__dir__} -rrbs_check")
    plain = run_misuse("RUBYOPT" => nil).to_h { |r| [r["call"], r] }
    assert_operator checked.size, :>=, 15

    checked.each do |result|
      if result["kind"] == "wrong"
        assert_equal "refused", result["outcome"], "sig/ accepted #{result['call']}"
        assert_match(/TypeError: \[[^\]]*\] \w+Error: /, result["message"])
      else
        assert_equal "ok", result["outcome"], "sig/ refused #{result['call']}: #{result['message']}"
      end
    end
    assert_equal checked.map { |r| r["call"] }, plain.keys
    plain.each_value do |result|
      assert_equal "ok", result["outcome"], "#{result['call']} without the check" if result["kind"] == "right"
    end
    let_through = plain.values.select { |r| r["kind"] == "wrong" && r["outcome"] == "ok" }.map { |r| r["call"] }
    assert_operator let_through.size, :>=, 2, "wrong calls the gem alone accepts: #{let_through}"
  end
end
