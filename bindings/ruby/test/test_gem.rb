# frozen_string_literal: true

require_relative "test_helper"
require "rubygems/package"

# `gem build` + `gem install` into an empty GEM_HOME, then a worker started
# from the installed gem serves a step (and its TaskerCore::Client loads),
# and rbs finds and validates the signatures the gem ships (sig/).
# The install compiles the vendored crates with cargo; CARGO_TARGET_DIR
# (default: the repository's target directory) and TASKER_GEM_PROFILE
# (default: dev) let it reuse the artifacts of earlier builds, libzmq above
# all.
#
# In the checkout, `gem build tasker_core.gemspec` makes the platform gem
# instead (the extension compiled, stripped and carried in lib/), which
# installs and loads with no cargo on PATH; loading the gemspec without
# `gem build` (as Bundler does) runs no cargo.
class TestGem < Minitest::Test
  def run_command(env, *command, timeout:, chdir: @tmp)
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, *command, out: out_w, err: out_w, chdir: chdir)
    out_w.close
    @children << pid
    reader = Thread.new { out_r.read }
    status = wait_exit(pid, timeout: timeout)
    [reader.value, status]
  end

  def test_gem_build_install_and_serve_from_the_installed_gem
    out, status = run_command({}, RbConfig.ruby, File.join(RUBY_DIR, "script", "build_gem.rb"), timeout: 120)
    assert status.success?, "build_gem.rb failed:\n#{out}"
    gem_file = out.lines.last.strip
    assert_match(/tasker_core-#{Regexp.escape(TaskerCore::VERSION)}\.gem\z/, gem_file)

    gem_home = File.join(@tmp, "gem-home")
    env = { "GEM_HOME" => gem_home, "GEM_PATH" => gem_home, "RUBYLIB" => nil, "RUBYOPT" => nil,
            "CARGO_TARGET_DIR" => TARGET_DIR,
            "TASKER_CORE_CARGO_PROFILE" => ENV.fetch("TASKER_GEM_PROFILE", "dev") }
    out, status = run_command(env, "gem", "install", "--local", "--no-document", gem_file, timeout: 900)
    assert status.success?, "gem install failed:\n#{out}"
    assert_match(/Successfully installed tasker_core-/, out)

    # The RBS signatures ship in the gem's sig/, where rbs (and steep's
    # `library "tasker_core"`) look for them, and validate from there.
    rbs_env = env.merge("GEM_PATH" => [gem_home, *Gem.path].uniq.join(File::PATH_SEPARATOR))
    out, status = run_command(rbs_env, RbConfig.ruby, "-e", <<~RUBY, timeout: 120)
      require "rbs"
      require "rbs/cli"
      puts RBS::EnvironmentLoader.gem_sig_path("tasker_core", nil)&.last
      RBS::CLI.new(stdout: $stdout, stderr: $stderr).run(%w[-r logger -r monitor -r tasker_core validate --silent])
    RUBY
    assert status.success?, "rbs validate of the installed gem's signatures failed:\n#{out}"
    assert out.start_with?(File.join(gem_home, "gems", "tasker_core-")), "signatures found at #{out.lines.first}"

    endpoint = free_endpoint
    script = File.join(@tmp, "installed_worker.rb")
    File.write(script, <<~RUBY)
      $stdout.sync = true
      require "tasker_core"
      puts $LOADED_FEATURES.grep(%r{tasker_core/tasker_core\\.so}).first
      puts $LOADED_FEATURES.grep(%r{tasker_core/client/transport\\.rb}).first
      puts TaskerCore::Client.new(url: "0.0.0.0:1/x/", token: "").url
      worker = TaskerCore::Worker.new(endpoint: #{endpoint.dump}, capacity: 1, logger: nil)
      worker.handle("hello") { |step| { "greeting" => "hello \#{step.task_context['name']}", "gem" => TaskerCore::VERSION } }
      worker.run
    RUBY
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, RbConfig.ruby, script, out: out_w, err: File.join(@tmp, "installed_worker.log"),
                        chdir: @tmp)
    out_w.close
    @children << pid
    loaded = read_line(out_r)
    assert loaded&.start_with?(gem_home), "extension loaded from #{loaded.inspect}, not from #{gem_home}"
    client_file = read_line(out_r)
    assert client_file&.start_with?(gem_home), "the client loaded from #{client_file.inspect}, not from #{gem_home}"
    assert_equal "http://0.0.0.0:1/x", read_line(out_r), "TaskerCore::Client works from the installed gem"
    result = dispatch([step(1, "hello", task_context: { "name" => "gem" })], endpoint: endpoint).results.fetch(1)
    assert_equal({ "greeting" => "hello gem", "gem" => TaskerCore::VERSION }, result["output"])
    Process.kill("TERM", pid)
    assert wait_exit(pid, timeout: 10).success?
  end

  # PATH without the directories that hold cargo or rustc.
  def path_without_cargo
    ENV.fetch("PATH").split(File::PATH_SEPARATOR).reject do |dir|
      File.exist?(File.join(dir, "cargo")) || File.exist?(File.join(dir, "rustc"))
    end.join(File::PATH_SEPARATOR)
  end

  def test_loading_the_gemspec_in_the_checkout_runs_no_cargo
    marker = File.join(@tmp, "cargo-ran")
    fake_cargo = File.join(@tmp, "cargo")
    File.write(fake_cargo, "#!/bin/sh\ntouch #{marker}\nexit 1\n")
    File.chmod(0o755, fake_cargo)
    env = { "CARGO" => fake_cargo, "RUBYLIB" => nil, "RUBYOPT" => nil }
    out, status = run_command(env, RbConfig.ruby, "-e", <<~RUBY, timeout: 60)
      spec = Gem::Specification.load(#{File.join(RUBY_DIR, 'tasker_core.gemspec').dump})
      puts spec.platform, spec.extensions.inspect, spec.required_ruby_version
    RUBY
    assert status.success?, out
    refute File.exist?(marker), "loading the gemspec ran cargo:\n#{out}"
    platform, extensions, requirement = out.lines.map(&:strip).last(3)
    assert_equal Gem::Platform.local.to_s, platform
    assert_equal "[]", extensions
    assert Gem::Requirement.new(requirement.split(", ")).satisfied_by?(Gem::Version.new(RUBY_VERSION)), requirement
  end

  def test_gem_build_in_the_checkout_makes_a_platform_gem_that_installs_without_cargo
    gem_file = File.join(@tmp, "tasker_core-platform.gem")
    env = { "CARGO_TARGET_DIR" => TARGET_DIR, "RUBYLIB" => nil, "RUBYOPT" => nil,
            "TASKER_CORE_CARGO_PROFILE" => ENV.fetch("TASKER_GEM_PROFILE", "dev") }
    out, status = run_command(env, "gem", "build", "tasker_core.gemspec", "--output", gem_file,
                              timeout: 900, chdir: RUBY_DIR)
    assert status.success?, "gem build failed:\n#{out}"
    assert_match(/Name: tasker_core/, out)
    spec = Gem::Package.new(gem_file).spec
    assert_equal Gem::Platform.local, spec.platform
    assert_empty spec.extensions
    assert_includes spec.files, "lib/tasker_core/tasker_core.so"
    refute spec.files.any? { |f| f.start_with?("ext/") }, "Rust sources packed: #{spec.files.grep(%r{\Aext/})}"

    gem_home = File.join(@tmp, "gem-home")
    env = { "GEM_HOME" => gem_home, "GEM_PATH" => gem_home, "RUBYLIB" => nil, "RUBYOPT" => nil,
            "PATH" => path_without_cargo }
    out, status = run_command(env, "sh", "-c", "command -v cargo || command -v rustc", timeout: 10)
    refute status.success?, "cargo is still on PATH: #{out}"
    out, status = run_command(env, "gem", "install", "--local", "--no-document", gem_file, timeout: 60)
    assert status.success?, "gem install failed:\n#{out}"
    assert_match(/Successfully installed tasker_core-#{Regexp.escape(TaskerCore::VERSION)}-#{Gem::Platform.local}/, out)
    refute_match(/native extension/i, out)

    out, status = run_command(env, RbConfig.ruby, "-e", <<~RUBY, timeout: 60)
      require "tasker_core"
      puts $LOADED_FEATURES.grep(%r{tasker_core/tasker_core\\.so}).first
      puts TaskerCore::Native.handler_threads(4, nil)
    RUBY
    assert status.success?, "require of the installed gem failed:\n#{out}"
    assert out.start_with?(File.join(gem_home, "gems", "tasker_core-")), "extension loaded from #{out.lines.first}"
  end
end
