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

  spec.files = Dir.chdir(__dir__) do
    # sig/: the RBS signatures (rbs and steep find a gem's sig/ directory).
    Dir.glob(["README.md", "lib/**/*.rb", "sig/**/*.rbs", "sig/manifest.yaml", "ext/tasker_core/**/*"])
       .reject { |f| File.directory?(f) || f.match?(%r{/target/|\.so\z|/Makefile\z}) }
  end
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/tasker_core/extconf.rb"]

  unless File.directory?(File.join(__dir__, "ext/tasker_core/vendor"))
    warn "tasker_core.gemspec: no vendored crates; this gem only builds inside the repository. " \
         "Use `ruby script/build_gem.rb` for a standalone gem."
  end
end
