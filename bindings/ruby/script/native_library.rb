# frozen_string_literal: true

# Used by tasker_core.gemspec in the repository checkout, where the gem is a
# platform gem (x86_64-linux, say) carrying the compiled extension as
# lib/tasker_core/tasker_core.so: `gem install` then needs no compiler and no
# cargo. `gem build tasker_core.gemspec` calls TaskerCoreNativeLibrary.build,
# which runs cargo (a no-op when the library is up to date) and copies the
# library there, stripped. Merely loading the gemspec (Bundler does) builds
# nothing. Environment:
#   TASKER_CORE_CARGO_PROFILE  release (default) or dev
#   CARGO                      cargo to run (default: cargo on PATH)
#   CARGO_TARGET_DIR           where cargo builds (default: the workspace's target/)
#   STRIP                      strip to run (default: strip on PATH)

require "fileutils"
require_relative "../ext/tasker_core/build"

module TaskerCoreNativeLibrary
  # Where the platform gem carries the extension; lib/tasker_core.rb loads it
  # with `require "tasker_core/tasker_core"`. Ignored by git (*.so).
  PATH = "lib/tasker_core/tasker_core.so"

  # True while `gem build` runs (it loads the build command before the
  # gemspec); false when Bundler or anything else loads the gemspec.
  def self.gem_build?
    defined?(Gem::Commands::BuildCommand) ? true : false
  end

  # The Ruby versions the extension works with: the minor version it was
  # compiled against (its C ABI).
  def self.ruby_requirement
    major, minor = RbConfig::CONFIG.values_at("MAJOR", "MINOR").map(&:to_i)
    [">= #{major}.#{minor}", "< #{major}.#{minor + 1}.dev"]
  end

  # Builds the extension with cargo and writes it, stripped, to PATH under
  # ruby_dir.
  def self.build(ruby_dir)
    ruby_dir = File.expand_path(ruby_dir)
    profile = ENV.fetch("TASKER_CORE_CARGO_PROFILE", "release")
    manifest = File.join(ruby_dir, "ext", "tasker_core", "Cargo.toml")
    library = TaskerCoreCargo.build_library(manifest, profile: profile, who: "tasker_core.gemspec")

    target = File.join(ruby_dir, PATH)
    partial = "#{target}.partial"
    FileUtils.cp(library, partial)
    strip = ENV.fetch("STRIP", "strip")
    system(strip, partial) or abort "tasker_core.gemspec: `#{strip} #{partial}` failed"
    File.rename(partial, target)
    warn "tasker_core.gemspec: #{PATH} (#{profile} profile, stripped, #{File.size(target) / 1024} KiB)"
  end
end
