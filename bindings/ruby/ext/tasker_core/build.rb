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

# The one place that runs cargo for the extension: this script (gem install
# of the source gem) and script/native_library.rb (`gem build` in the
# checkout) both call it.
module TaskerCoreCargo
  PACKAGE = "tasker-core-ruby"

  # Builds the binding crate of `manifest` with cargo and returns the path of
  # the library it wrote. `who` prefixes the messages; a failure aborts.
  def self.build_library(manifest, profile:, who:, env: {})
    cargo = ENV.fetch("CARGO", "cargo")
    command = [cargo, "build", "--profile", profile, "--lib", "-p", PACKAGE, "--manifest-path", manifest,
               "--message-format=json-render-diagnostics"]
    warn "#{who}: #{command.join(' ')}"
    library = nil
    begin
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
        abort "#{who}: cargo build failed (#{wait.value})" unless wait.value.success?
      end
    rescue Errno::ENOENT
      abort "#{who}: #{cargo} not found: building the extension needs Rust (cargo); " \
            "or install a platform gem built by scripts/package.sh"
    end
    abort "#{who}: cargo built no cdylib for #{PACKAGE}" unless library
    library
  end
end

return unless File.expand_path($PROGRAM_NAME) == File.expand_path(__FILE__)

EXT_DIR = __dir__
LIBRARY = "tasker_core.so"

def vendored?
  File.directory?(File.join(EXT_DIR, "vendor"))
end

def build
  profile = ENV.fetch("TASKER_CORE_CARGO_PROFILE", "release")
  own_target = vendored? && !ENV.key?("CARGO_TARGET_DIR")
  env = own_target ? { "CARGO_TARGET_DIR" => File.join(EXT_DIR, "target") } : {}
  library = TaskerCoreCargo.build_library(File.join(EXT_DIR, "Cargo.toml"),
                                         profile: profile, who: "tasker_core", env: env)
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
