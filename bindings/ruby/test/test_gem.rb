# frozen_string_literal: true

require_relative "test_helper"

# `gem build` + `gem install` into an empty GEM_HOME, then a worker started
# from the installed gem serves a step (and its TaskerCore::Client loads),
# and rbs finds and validates the signatures the gem ships (sig/).
# The install compiles the vendored crates with cargo; CARGO_TARGET_DIR
# (default: the repository's target directory) and TASKER_GEM_PROFILE
# (default: dev) let it reuse the artifacts of earlier builds, libzmq above
# all.
class TestGem < Minitest::Test
  def run_command(env, *command, timeout:)
    out_r, out_w = IO.pipe
    pid = Process.spawn(env, *command, out: out_w, err: out_w, chdir: @tmp)
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
end
