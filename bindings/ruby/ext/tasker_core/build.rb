# frozen_string_literal: true

# Builds the native extension with cargo (called by the Makefile that
# extconf.rb writes). `build` leaves tasker_core.so in the current
# directory, `install DIR` copies it to DIR/tasker_core/, `clean` removes it.
#
# In the gem, this directory holds a standalone cargo workspace (the binding
# crate plus the tasker-core crates it needs under vendor/, and a Cargo.lock)
# and builds into ./target unless CARGO_TARGET_DIR is set; ./target is
# removed after a successful build. In the repository the crate belongs to
# the project's workspace and builds into its target directory.

require "fileutils"
require "json"
require "open3"

EXT_DIR = __dir__
LIBRARY = "tasker_core.so"
PACKAGE = "tasker-core-ruby"

def vendored?
  File.directory?(File.join(EXT_DIR, "vendor"))
end

def build
  cargo = ENV.fetch("CARGO", "cargo")
  profile = ENV.fetch("TASKER_CORE_CARGO_PROFILE", "release")
  own_target = vendored? && !ENV.key?("CARGO_TARGET_DIR")
  env = own_target ? { "CARGO_TARGET_DIR" => File.join(EXT_DIR, "target") } : {}
  command = [cargo, "build", "--profile", profile, "--lib", "-p", PACKAGE,
             "--manifest-path", File.join(EXT_DIR, "Cargo.toml"),
             "--message-format=json-render-diagnostics"]
  warn "tasker_core: #{command.join(' ')}"
  library = nil
  Open3.popen2(env, *command) do |_stdin, stdout, wait|
    stdout.each_line do |line|
      message = begin
        JSON.parse(line)
      rescue JSON::ParserError
        next
      end
      next unless message["reason"] == "compiler-artifact" && message.dig("target", "kind")&.include?("cdylib")

      library = message["filenames"].find { |f| f.end_with?(".so", ".bundle", ".dylib", ".dll") }
    end
    abort "tasker_core: cargo build failed (#{wait.value})" unless wait.value.success?
  end
  abort "tasker_core: cargo built no cdylib for #{PACKAGE}" unless library

  FileUtils.cp(library, LIBRARY)
  FileUtils.rm_rf(File.join(EXT_DIR, "target")) if own_target && !ENV["TASKER_CORE_KEEP_TARGET"]
end

def install(dir)
  abort "tasker_core: usage: build.rb install DIR" unless dir
  FileUtils.mkdir_p(File.join(dir, "tasker_core"))
  FileUtils.cp(LIBRARY, File.join(dir, "tasker_core", LIBRARY))
end

case ARGV[0]
when "build" then build
when "install" then install(ARGV[1])
when "clean" then FileUtils.rm_f(LIBRARY)
else abort "tasker_core: usage: build.rb build|install DIR|clean"
end
