# frozen_string_literal: true

# Builds a standalone tasker_core gem: pkg/tasker_core-VERSION.gem.
#
#   ruby bindings/ruby/script/build_gem.rb
#
# In the repository the binding crate is a member of the project's cargo
# workspace and depends on ../../crates by path. A gem cannot, so this
# script stages a copy of the gem in pkg/stage where ext/tasker_core is a
# workspace of its own: the binding crate, the tasker-core crates it needs
# copied under vendor/ (with the patched zmq-sys), the workspace's shared
# package fields, dependency versions and patches, and the repository's
# Cargo.lock trimmed to those crates. Then it
# runs `gem build` there. Nothing outside pkg/ is written.

require "fileutils"
require "open3"

# It takes no arguments: one it does not know is a mistake, not a build.
unless ARGV.empty?
  usage = "usage: ruby bindings/ruby/script/build_gem.rb (builds pkg/tasker_core-VERSION.gem; takes no arguments)"
  if ARGV == ["--help"] || ARGV == ["-h"]
    puts usage
    exit 0
  end
  abort "build_gem: unknown argument #{ARGV.first.inspect}\n#{usage}"
end

RUBY_DIR = File.expand_path("..", __dir__)
ROOT = File.expand_path("../..", RUBY_DIR)
STAGE = File.join(RUBY_DIR, "pkg", "stage")
EXT = File.join(STAGE, "ext", "tasker_core")
VENDORED = %w[tasker-protocol tasker-config tasker-transport tasker-worker].freeze

def copy_tree(from, to)
  Dir.glob("**/*", base: from).each do |rel|
    next if rel.split("/").first == "target" || rel.end_with?(".so") || rel == "Makefile"

    source = File.join(from, rel)
    next if File.directory?(source)

    FileUtils.mkdir_p(File.dirname(File.join(to, rel)))
    FileUtils.cp(source, File.join(to, rel))
  end
end

# The text of a `[section]` of a TOML file, header included, up to the next
# top-level header.
def toml_section(text, header)
  lines = text.lines
  start = lines.index { |l| l.strip == "[#{header}]" } or abort "build_gem: no [#{header}] in Cargo.toml"
  stop = ((start + 1)...lines.size).find { |i| lines[i].start_with?("[") } || lines.size
  lines[start...stop].join
end

root_toml = File.read(File.join(ROOT, "Cargo.toml"))
workspace_package = toml_section(root_toml, "workspace.package")
workspace_deps = toml_section(root_toml, "workspace.dependencies").lines.reject do |line|
  # Path dependencies on crates the gem does not carry.
  line =~ /path = "crates\/([^"]+)"/ && !VENDORED.include?(Regexp.last_match(1))
end.join.gsub('path = "crates/', 'path = "vendor/')
# The patched zmq-sys (libzmq with CURVE) and zeromq-src (its ROUTER names
# connections itself) travel with the gem, as in the repository: under
# vendor/, wired in by [patch.crates-io].
patches = toml_section(root_toml, "patch.crates-io")
profiles = root_toml.scan(/^\[profile\.[^\]]+\]\n(?:[^\[].*\n?)*/).join

FileUtils.rm_rf(STAGE)
FileUtils.mkdir_p(EXT)
%w[tasker_core.gemspec README.md].each { |f| FileUtils.cp(File.join(RUBY_DIR, f), STAGE) }
copy_tree(File.join(RUBY_DIR, "lib"), File.join(STAGE, "lib"))
copy_tree(File.join(RUBY_DIR, "sig"), File.join(STAGE, "sig"))
copy_tree(File.join(RUBY_DIR, "ext", "tasker_core"), EXT)
VENDORED.each do |name|
  copy_tree(File.join(ROOT, "crates", name), File.join(EXT, "vendor", name))
  # Their tests and benches need the whole repository; the gem needs none.
  %w[tests benches].each { |dir| FileUtils.rm_rf(File.join(EXT, "vendor", name, dir)) }
end
# Every crate [patch.crates-io] names travels too (zmq-sys, zeromq-src),
# under vendor/patched/: cargo names a path crate's artifacts by its path
# from the workspace root, and zeromq-src compiles its own directory into
# itself, so at the repository's vendor/zeromq-src a gem built in the
# shared target directory left the repository's builds compiling libzmq
# from the gem's (deleted) copy.
patches.scan(/path = "vendor\/([^"]+)"/).flatten.each do |name|
  copy_tree(File.join(ROOT, "vendor", name), File.join(EXT, "vendor", "patched", name))
end
patches = patches.gsub('path = "vendor/', 'path = "vendor/patched/')

binding_toml = File.read(File.join(EXT, "Cargo.toml"))
# Another library name than the repository's build, so that both can share
# one CARGO_TARGET_DIR without overwriting each other's artifact; build.rb
# installs it as tasker_core.so whatever its name (Init_tasker_core inside).
binding_toml = binding_toml.sub(/^name = "tasker_core"$/, 'name = "tasker_core_gem"')
File.write(File.join(EXT, "Cargo.toml"), <<~TOML)
  #{binding_toml.rstrip}

  # Added by script/build_gem.rb: this directory is a workspace of its own in
  # the gem, with the tasker-core crates under vendor/.
  [workspace]
  resolver = "2"
  members = [".", #{VENDORED.map { |c| "\"vendor/#{c}\"" }.join(', ')}]

  #{workspace_package.rstrip}

  #{workspace_deps.rstrip}

  #{patches.rstrip}
  #{profiles}
TOML

FileUtils.cp(File.join(ROOT, "Cargo.lock"), File.join(EXT, "Cargo.lock"))
# Trims the lock file to this workspace's crates (no network needed: every
# version is already locked).
_, err, status = Open3.capture3("cargo", "metadata", "--format-version", "1", "--offline",
                                "--manifest-path", File.join(EXT, "Cargo.toml"))
abort "build_gem: cargo metadata failed:\n#{err}" unless status.success?

Dir.chdir(STAGE) do
  out, status = Open3.capture2e("gem", "build", "tasker_core.gemspec")
  abort "build_gem: gem build failed:\n#{out}" unless status.success?
  gem = out[/File: (\S+\.gem)/, 1] or abort "build_gem: no gem file in:\n#{out}"
  FileUtils.mv(gem, File.join(RUBY_DIR, "pkg", gem))
  puts File.join(RUBY_DIR, "pkg", gem)
end
