# frozen_string_literal: true

require_relative "lib/tasker_core/version"

Gem::Specification.new do |spec|
  spec.name = "tasker_core"
  spec.version = TaskerCore::VERSION
  spec.summary = "Ruby workers for tasker-core: step handlers served over ZeroMQ by a Rust runtime"
  spec.description = <<~TEXT
    Write tasker-core step handlers in Ruby. The ZeroMQ protocol (hello, credit,
    heartbeats, reconnects, drain) runs in the Rust worker runtime; this gem runs
    your handlers on a pool of Ruby threads and reports their results. It also
    has TaskerCore::Client, a client of tasker serve's HTTP API (Net::HTTP), to
    start and follow tasks from an application.
  TEXT
  spec.authors = ["tasker-core developers"]
  spec.license = "MIT"
  spec.homepage = "https://example.invalid/tasker-core"
  spec.required_ruby_version = ">= 3.1"
  spec.metadata["rubygems_mfa_required"] = "true"

  # Three ways this file is used:
  # - in the repository checkout, `gem build tasker_core.gemspec` makes a
  #   platform gem (tasker_core-VERSION-x86_64-linux.gem) carrying the
  #   extension, compiled by cargo (release; TASKER_CORE_CARGO_PROFILE=dev
  #   for the dev profile) and stripped: `gem install` then needs no Rust.
  #   Loading the gemspec otherwise (Bundler) runs no cargo;
  # - in the copy script/build_gem.rb stages, with the crates vendored under
  #   ext/tasker_core/vendor: the source gem, whose install compiles with cargo;
  # - elsewhere, without vendored crates: a source gem that only builds
  #   inside the repository (with a warning).
  ext_dir = File.join(__dir__, "ext", "tasker_core")
  vendored = File.directory?(File.join(ext_dir, "vendor"))
  checkout = !vendored && File.file?(File.join(__dir__, "..", "..", "Cargo.toml")) &&
             File.file?(File.join(__dir__, "script", "native_library.rb"))
  if checkout
    require_relative "script/native_library"
    TaskerCoreNativeLibrary.build(__dir__) if TaskerCoreNativeLibrary.gem_build?
  end

  # sig/: the RBS signatures (rbs and steep find a gem's sig/ directory).
  ruby_files = Dir.glob(%w[README.md lib/**/*.rb sig/**/*.rbs sig/manifest.yaml], base: __dir__)
  spec.require_paths = ["lib"]
  if checkout
    spec.platform = Gem::Platform.local
    # The extension is built for this Ruby's minor version (its C ABI).
    spec.required_ruby_version = TaskerCoreNativeLibrary.ruby_requirement
    native = TaskerCoreNativeLibrary::PATH
    spec.files = ruby_files + (File.exist?(File.join(__dir__, native)) ? [native] : [])
  else
    spec.files = ruby_files + Dir.glob("ext/tasker_core/**/*", base: __dir__).reject do |f|
      File.directory?(File.join(__dir__, f)) || f.match?(%r{/target/|\.so\z|/Makefile\z})
    end
    spec.extensions = ["ext/tasker_core/extconf.rb"]
    unless vendored
      warn "tasker_core.gemspec: no vendored crates; this gem only builds inside the repository. " \
           "Use `ruby script/build_gem.rb` for a standalone gem."
    end
  end
end
